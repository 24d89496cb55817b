//! A minimal WebSocket reader for `stream --raw`: the upgrade written by hand, then frames
//! parsed straight out of one large read buffer, with no per-message allocation. It exists
//! so that the client costs far less per message than the server, so that an overload test
//! overloads the server and not the client. It answers pings (a pong masked with a zero
//! key) and reports how the socket ended, as `ws::end_of` does.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens `ws://HOST:PORT/PATH?QUERY` (TCP_NODELAY on); retries briefly on 503.
pub async fn connect(url: &str) -> Result<TcpStream, String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("not a ws:// URL: {url}"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut attempt = 0u64;
    loop {
        let mut tcp = TcpStream::connect(hostport)
            .await
            .map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        // Read the response head byte by byte: nothing after it may be consumed here.
        let mut head = Vec::with_capacity(256);
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if tcp.read(&mut b).await.map_err(|e| e.to_string())? == 0 {
                return Err("connection closed during the upgrade".into());
            }
            head.push(b[0]);
            if head.len() > 8192 {
                return Err("upgrade response head too long".into());
            }
        }
        let status = head.get(9..12).unwrap_or_default();
        match status {
            b"101" => return Ok(tcp),
            b"503" if attempt < 50 => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20 * attempt.min(10))).await;
            }
            _ => {
                return Err(format!(
                    "upgrade refused: {}",
                    String::from_utf8_lossy(&head)
                        .lines()
                        .next()
                        .unwrap_or_default()
                ));
            }
        }
    }
}

/// What one parsed frame is.
pub enum Frame<'a> {
    Text(&'a [u8]),
    Ping(&'a [u8]),
    Close(Option<u16>),
    Other,
}

/// Reads frames from `tcp` into `buf` (its capacity is the read size), handing each text
/// message to `on_text`, until the socket ends; returns how it ended.
pub async fn read_all(
    mut tcp: TcpStream,
    buf_size: usize,
    mut on_text: impl FnMut(&[u8]),
) -> String {
    let mut buf = vec![0u8; buf_size.max(1024)];
    let (mut start, mut end) = (0usize, 0usize);
    loop {
        // Parse every whole frame in the buffer.
        while let Some((frame_len, frame)) = parse(&buf[start..end]) {
            match frame {
                Frame::Text(t) => on_text(t),
                Frame::Ping(p) => {
                    let mut pong = Vec::with_capacity(p.len() + 6);
                    pong.extend_from_slice(&[0x8A, 0x80 | p.len() as u8, 0, 0, 0, 0]);
                    pong.extend_from_slice(p);
                    if tcp.write_all(&pong).await.is_err() {
                        return "reset".into();
                    }
                }
                Frame::Close(code) => {
                    return match code {
                        Some(c) => format!("close {c}"),
                        None => "close (no code)".into(),
                    };
                }
                Frame::Other => {}
            }
            start += frame_len;
        }
        // Make room: move a partial frame to the front, grow for one larger than the buffer.
        if start > 0 {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        if end == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match tcp.read(&mut buf[end..]).await {
            Ok(0) => return "eof (no close frame)".into(),
            Ok(n) => end += n,
            Err(_) => return "reset".into(),
        }
    }
}

/// One whole frame at the start of `b` (server frames are never masked): its length and
/// what it is; `None` while it is incomplete. Fragmented messages are not used by the
/// servers measured here and are reported as `Other`.
pub fn parse(b: &[u8]) -> Option<(usize, Frame<'_>)> {
    let (&b0, &b1) = (b.first()?, b.get(1)?);
    let (len, head) = match b1 & 0x7f {
        126 => (u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize, 4),
        127 => {
            let mut l = [0u8; 8];
            l.copy_from_slice(b.get(2..10)?);
            (u64::from_be_bytes(l) as usize, 10)
        }
        n => (n as usize, 2),
    };
    let payload = b.get(head..head + len)?;
    let frame = match (b0 & 0x80 != 0, b0 & 0x0f) {
        (true, 0x1) => Frame::Text(payload),
        (_, 0x9) => Frame::Ping(payload),
        (_, 0x8) => Frame::Close(payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]))),
        _ => Frame::Other,
    };
    Some((head + len, frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_of_every_length_form_and_incomplete_ones() {
        let small = [&[0x81u8, 3][..], b"abc"].concat();
        assert!(matches!(parse(&small), Some((5, Frame::Text(b"abc")))));
        assert!(parse(&small[..4]).is_none());
        let mid: Vec<u8> = [&[0x81u8, 126, 1, 0][..], &[b'x'; 256][..]].concat();
        assert!(matches!(parse(&mid), Some((260, Frame::Text(t))) if t.len() == 256));
        let big: Vec<u8> = [
            &[0x81u8, 127, 0, 0, 0, 0, 0, 1, 0, 0][..],
            &vec![b'y'; 65536][..],
        ]
        .concat();
        assert!(matches!(parse(&big), Some((65546, Frame::Text(t))) if t.len() == 65536));
        let close = [0x88u8, 2, 0x0f, 0xa8];
        assert!(matches!(parse(&close), Some((4, Frame::Close(Some(4008))))));
        assert!(matches!(parse(&[0x89, 0]), Some((2, Frame::Ping(b"")))));
    }
}
