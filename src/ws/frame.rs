//! WebSocket framing (RFC 6455, server side), written for two properties no kept crate
//! offers together: an idle socket holds no read buffer at all (incoming bytes are read into
//! a small stack array and kept only while a frame is incomplete), and outgoing frames are
//! written with vectored writes of each frame's header and the shared payload bytes, many
//! frames per system call, never copying a payload into a per-socket buffer.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Frames written per vectored write at most (two slices each, within Linux's 1,024). A
/// socket that has fallen behind writes its whole backlog in few calls: the kernel's cost
/// per write is fixed (~8 µs here) and its cost per frame small (~0.1 µs), so the larger
/// the write, the more messages per second a core delivers.
const FRAMES_PER_WRITE: usize = 256;
/// Bytes read per system call: client messages are small, and this array lives in every
/// idle socket's task.
const READ_CHUNK: usize = 256;

/// One complete incoming message.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    Text(String),
    /// A binary message (no API accepts one; the test echo endpoint returns it).
    Binary(Vec<u8>),
    Ping,
    Pong,
    /// The peer closed (its close was answered already).
    Close,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection ended")]
    Eof,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A protocol violation: the close code to send (1002, 1007) and why.
    #[error("{1}")]
    Protocol(u16, &'static str),
    #[error("message too big")]
    TooBig,
}

struct OutFrame {
    head: [u8; 10],
    head_len: u8,
    payload: Bytes,
}

impl OutFrame {
    fn new(opcode: u8, payload: Bytes) -> Self {
        let mut head = [0u8; 10];
        head[0] = 0x80 | opcode;
        let len = payload.len();
        let head_len = if len < 126 {
            head[1] = len as u8;
            2
        } else if len <= u16::MAX as usize {
            head[1] = 126;
            head[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        } else {
            head[1] = 127;
            head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        Self {
            head,
            head_len,
            payload,
        }
    }

    fn len(&self) -> usize {
        self.head_len as usize + self.payload.len()
    }
}

/// A server-side WebSocket over an upgraded connection.
pub struct WebSocket<S> {
    io: S,
    /// Bytes of an incomplete incoming frame (empty, and unallocated, when idle).
    rbuf: Vec<u8>,
    /// A fragmented message being assembled: its opcode and bytes so far.
    partial: Option<(u8, Vec<u8>)>,
    max_message: usize,
    out: VecDeque<OutFrame>,
    /// Bytes of the first queued frame already written.
    written: usize,
    closing: bool,
    /// Incoming bytes still to be thrown away unread: the rest of a frame over the limit
    /// (so that the peer's answer to our close can still be parsed after it), or, once the
    /// stream cannot be parsed any more, everything (`u64::MAX`).
    skip: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    pub fn new(io: S, max_message: usize) -> Self {
        Self {
            io,
            rbuf: Vec::new(),
            partial: None,
            max_message,
            out: VecDeque::new(),
            written: 0,
            closing: false,
            skip: 0,
        }
    }

    /// Changes the incoming message limit (first-message authentication raises it once the
    /// peer is known).
    pub fn set_max_message(&mut self, max_message: usize) {
        self.max_message = max_message;
    }

    /// The stream underneath (the connection core reads its meter).
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Queues a text message whose bytes are valid UTF-8 (shared, not copied).
    pub fn queue_text(&mut self, payload: Bytes) {
        if !self.closing {
            self.out.push_back(OutFrame::new(OP_TEXT, payload));
        }
    }

    /// Queues a binary message (shared, not copied).
    pub fn queue_binary(&mut self, payload: Bytes) {
        if !self.closing {
            self.out.push_back(OutFrame::new(OP_BINARY, payload));
        }
    }

    pub fn queue_ping(&mut self) {
        if !self.closing {
            self.out.push_back(OutFrame::new(OP_PING, Bytes::new()));
        }
    }

    /// Queues a close frame; nothing is queued after it.
    pub fn queue_close(&mut self, code: u16, reason: &str) {
        if self.closing {
            return;
        }
        let mut p = Vec::with_capacity(2 + reason.len().min(123));
        p.extend_from_slice(&code.to_be_bytes());
        let mut cut = reason.len().min(123);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        p.extend_from_slice(&reason.as_bytes()[..cut]);
        self.out.push_back(OutFrame::new(OP_CLOSE, Bytes::from(p)));
        self.closing = true;
    }

    /// Drops every queued frame not yet begun; a frame partly written stays, so that the
    /// stream remains well-formed for a close frame queued after it.
    pub fn discard_unsent(&mut self) {
        self.out.truncate(usize::from(self.written > 0));
    }

    pub fn has_pending(&self) -> bool {
        !self.out.is_empty()
    }

    /// Writes everything queued, many frames per vectored write.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        while !self.out.is_empty() {
            let n = {
                let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(FRAMES_PER_WRITE * 2);
                let mut skip = self.written;
                for f in self.out.iter().take(FRAMES_PER_WRITE) {
                    let head = &f.head[..f.head_len as usize];
                    if skip < head.len() {
                        slices.push(IoSlice::new(&head[skip..]));
                        skip = 0;
                    } else {
                        skip -= head.len();
                    }
                    if skip < f.payload.len() {
                        slices.push(IoSlice::new(&f.payload[skip..]));
                    }
                    skip = 0;
                }
                self.io.write_vectored(&slices).await?
            };
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.advance(n);
        }
        self.io.flush().await
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.out.front() else {
                return;
            };
            let left = front.len() - self.written;
            if n >= left {
                n -= left;
                self.out.pop_front();
                self.written = 0;
            } else {
                self.written += n;
                n = 0;
            }
        }
    }

    /// Reads the next complete message. Pings are answered (queued pongs, flushed by the
    /// caller), a close is answered and reported. Cancel-safe: bytes are consumed only
    /// whole frames at a time and a pending read consumes nothing.
    pub async fn read(&mut self) -> Result<Incoming, FrameError> {
        loop {
            if let Some(m) = self.parse()? {
                return Ok(m);
            }
            let mut chunk = [0u8; READ_CHUNK];
            let n = self.io.read(&mut chunk).await?;
            if n == 0 {
                return Err(FrameError::Eof);
            }
            let skipped = n.min(usize::try_from(self.skip).unwrap_or(usize::MAX));
            self.skip -= skipped as u64;
            self.rbuf.extend_from_slice(&chunk[skipped..n]);
        }
    }

    /// Throws away buffered bytes still to be skipped; true when none are left to skip.
    fn skip_buffered(&mut self) -> bool {
        if self.skip > 0 && !self.rbuf.is_empty() {
            let k = self
                .rbuf
                .len()
                .min(usize::try_from(self.skip).unwrap_or(usize::MAX));
            self.rbuf.drain(..k);
            self.skip -= k as u64;
            if self.rbuf.is_empty() {
                self.rbuf = Vec::new();
            }
        }
        self.skip == 0
    }

    /// Takes one message out of the buffered bytes, if a complete one is there.
    fn parse(&mut self) -> Result<Option<Incoming>, FrameError> {
        if !self.skip_buffered() {
            return Ok(None);
        }
        loop {
            let Some((fin, opcode, payload)) = self.take_frame()? else {
                return Ok(None);
            };
            match opcode {
                OP_PING => {
                    if !self.closing {
                        self.out
                            .push_back(OutFrame::new(OP_PONG, Bytes::from(payload)));
                    }
                    return Ok(Some(Incoming::Ping));
                }
                OP_PONG => return Ok(Some(Incoming::Pong)),
                OP_CLOSE => {
                    let code = match payload.len() {
                        0 => 1000,
                        1 => return Err(FrameError::Protocol(1002, "malformed close frame")),
                        _ => u16::from_be_bytes([payload[0], payload[1]]),
                    };
                    if payload.len() > 2 && std::str::from_utf8(&payload[2..]).is_err() {
                        return Err(FrameError::Protocol(1007, "close reason is not UTF-8"));
                    }
                    if !valid_close_code(code) {
                        return Err(FrameError::Protocol(1002, "invalid close code"));
                    }
                    self.queue_close(code, "");
                    return Ok(Some(Incoming::Close));
                }
                OP_TEXT | OP_BINARY => {
                    if self.partial.is_some() {
                        return Err(FrameError::Protocol(
                            1002,
                            "new message inside a fragmented one",
                        ));
                    }
                    if fin {
                        return self.complete(opcode, payload).map(Some);
                    }
                    self.partial = Some((opcode, payload));
                }
                OP_CONT => {
                    let Some((op, mut buf)) = self.partial.take() else {
                        return Err(FrameError::Protocol(1002, "continuation without a message"));
                    };
                    if buf.len() + payload.len() > self.max_message {
                        return Err(FrameError::TooBig);
                    }
                    buf.extend_from_slice(&payload);
                    if fin {
                        return self.complete(op, buf).map(Some);
                    }
                    self.partial = Some((op, buf));
                }
                _ => return Err(FrameError::Protocol(1002, "unknown opcode")),
            }
        }
    }

    fn complete(&mut self, opcode: u8, payload: Vec<u8>) -> Result<Incoming, FrameError> {
        if opcode == OP_BINARY {
            return Ok(Incoming::Binary(payload));
        }
        String::from_utf8(payload)
            .map(Incoming::Text)
            .map_err(|_| FrameError::Protocol(1007, "text is not UTF-8"))
    }

    /// One whole frame from `rbuf`: `(fin, opcode, unmasked payload)`.
    fn take_frame(&mut self) -> Result<Option<(bool, u8, Vec<u8>)>, FrameError> {
        let b = &self.rbuf;
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        if b[0] & 0x70 != 0 {
            return Err(FrameError::Protocol(1002, "reserved bits set"));
        }
        let opcode = b[0] & 0x0F;
        if b[1] & 0x80 == 0 {
            return Err(FrameError::Protocol(1002, "client frames must be masked"));
        }
        let (len, mut at) = match b[1] & 0x7F {
            126 => {
                if b.len() < 4 {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([b[2], b[3]])), 4)
            }
            127 => {
                if b.len() < 10 {
                    return Ok(None);
                }
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(n), 10)
            }
            n => (u64::from(n), 2),
        };
        if opcode >= OP_CLOSE && (len > 125 || !fin) {
            return Err(FrameError::Protocol(1002, "malformed control frame"));
        }
        if len > self.max_message as u64 {
            // Its bytes are skipped from here on, so the stream stays parseable behind it.
            self.skip = (at as u64 + 4).saturating_add(len);
            self.skip_buffered();
            return Err(FrameError::TooBig);
        }
        let len = len as usize;
        if b.len() < at + 4 + len {
            return Ok(None);
        }
        let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        at += 4;
        let mut payload = b[at..at + len].to_vec();
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i & 3];
        }
        let consumed = at + len;
        if consumed == self.rbuf.len() {
            // Idle again: give the buffer back.
            self.rbuf = Vec::new();
        } else {
            self.rbuf.drain(..consumed);
        }
        Ok(Some((fin, opcode, payload)))
    }

    /// After sending a close: reads until the peer answers or the connection ends (callers
    /// bound the wait). Everything the peer still sends is read, never left unread: closing a
    /// socket with unread bytes makes the kernel send a reset, which can destroy the close
    /// frame before the peer reads it. Once the stream cannot be parsed (the error that
    /// caused the close), the rest is read raw and thrown away until the peer hangs up.
    pub async fn drain_until_closed(&mut self) {
        loop {
            match self.read().await {
                Ok(Incoming::Close) | Err(FrameError::Eof | FrameError::Io(_)) => return,
                Ok(_) => {}
                Err(FrameError::Protocol(..) | FrameError::TooBig) => {
                    self.rbuf = Vec::new();
                    self.partial = None;
                    self.skip = u64::MAX;
                }
            }
        }
    }
}

/// Close codes a peer may send (RFC 6455 7.4).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    /// A masked client frame.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        if payload.len() < 126 {
            f.push(0x80 | payload.len() as u8);
        } else {
            f.push(0x80 | 126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        f
    }

    #[tokio::test]
    async fn reads_text_fragments_pings_and_close() {
        let (mut client, server) = duplex(64 * 1024);
        let mut ws = WebSocket::new(server, 1024);
        let mut bytes = client_frame(false, OP_TEXT, b"hel");
        bytes.extend(client_frame(true, OP_PING, b"p"));
        bytes.extend(client_frame(true, OP_CONT, "lo é".as_bytes()));
        bytes.extend(client_frame(true, OP_CLOSE, &1000u16.to_be_bytes()));
        client.write_all(&bytes).await.unwrap();
        assert_eq!(ws.read().await.unwrap(), Incoming::Ping);
        assert_eq!(ws.read().await.unwrap(), Incoming::Text("hello é".into()));
        assert_eq!(ws.read().await.unwrap(), Incoming::Close);
        assert!(ws.rbuf.capacity() == 0, "idle sockets hold no read buffer");
        ws.flush().await.unwrap();
        // Pong with the ping's payload, then the close answer.
        let mut got = [0u8; 7];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [0x8A, 1, b'p', 0x88, 2, 0x03, 0xE8]);
    }

    #[tokio::test]
    async fn protocol_errors_and_limits() {
        for (bytes, code) in [
            (vec![0x81, 0x01, b'a'], Some(1002)),            // unmasked
            (client_frame(true, 0x3, b""), Some(1002)),      // unknown opcode
            (client_frame(true, OP_CONT, b"x"), Some(1002)), // stray continuation
            (client_frame(false, OP_PING, b""), Some(1002)), // fragmented control
            (client_frame(true, OP_TEXT, &[0xff, 0xfe]), Some(1007)), // bad UTF-8
            (client_frame(true, OP_TEXT, &[b'a'; 300]), None), // over the limit
        ] {
            let (mut client, server) = duplex(64 * 1024);
            let mut ws = WebSocket::new(server, 256);
            client.write_all(&bytes).await.unwrap();
            match (ws.read().await, code) {
                (Err(FrameError::Protocol(c, _)), Some(want)) => assert_eq!(c, want),
                (Err(FrameError::TooBig), None) => {}
                (other, _) => panic!("unexpected {other:?} for {bytes:?}"),
            }
        }
    }

    /// A frame's bytes with a 64-bit length (any size, payload unmasked by a zero mask).
    fn big_client_frame(len: usize) -> Vec<u8> {
        let mut f = vec![0x81, 0x80 | 127];
        f.extend_from_slice(&(len as u64).to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0]);
        f.resize(f.len() + len, b'x');
        f
    }

    #[tokio::test]
    async fn after_an_oversized_frame_the_peers_close_answer_is_still_read() {
        // The pipe is far smaller than the frame: the server must read all of it, in pieces,
        // for the client's later close to arrive at all.
        let (mut client, server) = duplex(4096);
        let mut ws = WebSocket::new(server, 1024);
        let writer = tokio::spawn(async move {
            client.write_all(&big_client_frame(300_000)).await.unwrap();
            client
                .write_all(&client_frame(true, OP_TEXT, b"ignored"))
                .await
                .unwrap();
            client
                .write_all(&client_frame(true, OP_CLOSE, &1000u16.to_be_bytes()))
                .await
                .unwrap();
            client // kept open: the drain must end on the close, not on the end of stream
        });
        assert!(matches!(ws.read().await, Err(FrameError::TooBig)));
        let drained =
            tokio::time::timeout(std::time::Duration::from_secs(10), ws.drain_until_closed()).await;
        assert!(drained.is_ok(), "the drain did not end on the close");
        assert!(
            ws.rbuf.capacity() <= READ_CHUNK,
            "skipped bytes are not kept"
        );
        drop(ws);
        // Had the drain ended early, the writer would still be blocked and now fail.
        let _client = writer
            .await
            .expect("the client wrote everything, close included");
    }

    #[tokio::test]
    async fn after_a_protocol_error_everything_is_read_until_the_peer_hangs_up() {
        let (mut client, server) = duplex(1024);
        let mut ws = WebSocket::new(server, 1024);
        let writer = tokio::spawn(async move {
            let mut bytes = vec![0x81, 0x01, b'a']; // unmasked: unparseable from here on
            bytes.resize(64 * 1024, 0xEE);
            client.write_all(&bytes).await.unwrap();
            // Dropped: the end of stream ends the drain.
        });
        assert!(matches!(
            ws.read().await,
            Err(FrameError::Protocol(1002, _))
        ));
        let drained =
            tokio::time::timeout(std::time::Duration::from_secs(10), ws.drain_until_closed()).await;
        assert!(
            drained.is_ok(),
            "the drain did not end at the end of stream"
        );
        drop(ws);
        // Had the drain ended early, the writer would still be blocked and now fail.
        writer.await.expect("every byte the client sent was read");
    }

    #[tokio::test]
    async fn writes_shared_payloads_in_order() {
        let (mut client, server) = duplex(1 << 20);
        let mut ws = WebSocket::new(server, 1024);
        let big = Bytes::from(vec![b'x'; 70_000]);
        ws.queue_text(Bytes::from_static(b"hi"));
        ws.queue_text(big.clone());
        ws.queue_close(4401, "token expired");
        ws.queue_text(Bytes::from_static(b"after close is dropped"));
        ws.flush().await.unwrap();
        drop(ws);
        let mut all = Vec::new();
        client.read_to_end(&mut all).await.unwrap();
        assert_eq!(&all[..4], &[0x81, 2, b'h', b'i']);
        assert_eq!(&all[4..14], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        let rest = &all[14 + 70_000..];
        assert_eq!(rest[0], 0x88);
        assert_eq!(&rest[2..4], &4401u16.to_be_bytes());
        assert_eq!(&rest[4..], b"token expired");
    }

    /// Flushes everything queued while the client reads; everything the client got.
    async fn flush_and_read_all(
        mut ws: WebSocket<tokio::io::DuplexStream>,
        mut client: tokio::io::DuplexStream,
    ) -> Vec<u8> {
        let reading = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        });
        ws.flush().await.unwrap();
        drop(ws);
        reading.await.unwrap()
    }

    #[tokio::test]
    async fn mixed_frames_keep_their_bytes_through_short_writes() {
        // A 7-byte pipe: every write is short, so each resumes inside a header or a payload,
        // and more than one vectored write's worth of frames is queued.
        let (client, server) = duplex(7);
        let mut ws = WebSocket::new(server, 1024);
        let big = Bytes::from((0..3000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        let mut want = Vec::new();
        for (i, msg) in [
            Bytes::from_static(b"first"),
            big.clone(),
            Bytes::from_static(b"between"),
            Bytes::from(vec![b'm'; 200]),
            big.clone(),
        ]
        .into_iter()
        .enumerate()
        {
            want.extend_from_slice(&[
                0x81,
                if msg.len() < 126 {
                    msg.len() as u8
                } else {
                    126
                },
            ]);
            if msg.len() >= 126 {
                want.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            }
            want.extend_from_slice(&msg);
            ws.queue_text(msg);
            if i == 2 {
                ws.queue_ping();
                want.extend_from_slice(&[0x89, 0]);
            }
        }
        for i in 0..40u8 {
            ws.queue_text(Bytes::from(vec![i; 10]));
            want.extend_from_slice(&[0x81, 10]);
            want.extend_from_slice(&[i; 10]);
        }
        assert!(
            flush_and_read_all(ws, client).await == want,
            "the byte stream differs"
        );
    }

    #[tokio::test]
    async fn discarding_keeps_the_frame_in_progress_whole() {
        // A pipe that takes 8 bytes, then blocks: the first frame is half written.
        let (client, server) = duplex(8);
        let mut ws = WebSocket::new(server, 1024);
        ws.queue_text(Bytes::from_static(b"0123456789"));
        ws.queue_text(Bytes::from_static(b"never sent"));
        let blocked = tokio::time::timeout(std::time::Duration::from_millis(50), ws.flush()).await;
        assert!(blocked.is_err(), "the write must block on the full pipe");
        ws.discard_unsent();
        ws.queue_close(4008, "slow");
        let all = flush_and_read_all(ws, client).await;
        assert_eq!(&all[..12], b"\x81\x0a0123456789");
        assert_eq!(
            all[12], 0x88,
            "the close follows the frame in progress: {all:?}"
        );
        assert_eq!(&all[14..16], &4008u16.to_be_bytes());
        assert_eq!(all.len(), 20);
    }
}
