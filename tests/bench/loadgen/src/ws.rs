//! Opening client WebSockets with a small read buffer, and naming how a socket ended.

use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The read buffer of every connection this process opens (`stream --read-buffer`).
static READ_BUFFER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(4096);

/// Sets the read buffer of the connections opened from now on.
pub fn set_read_buffer(bytes: usize) {
    READ_BUFFER.store(bytes.max(256), std::sync::atomic::Ordering::Relaxed);
}

/// tungstenite reserves (and zero-fills) its read buffer per connection: 128 KiB by default,
/// which would cost this client ~128 MB and a third of its CPU for 1,000 sockets; 4 KiB unless
/// set otherwise (a larger one reads a backlog in fewer system calls).
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER.load(std::sync::atomic::Ordering::Relaxed))
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
}

/// `url` with `access_token=T` added to its query when a token is given.
pub fn with_token(url: &str, token: Option<&str>) -> String {
    match token {
        Some(t) if !t.is_empty() => {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}access_token={t}")
        }
        _ => url.to_owned(),
    }
}

fn retryable(e: &WsError) -> bool {
    match e {
        // 503: the server caps sockets between upgrade and authentication; try again.
        WsError::Http(r) => r.status().as_u16() == 503,
        WsError::Io(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::TimedOut
        ),
        _ => false,
    }
}

/// Opens one client socket (TCP_NODELAY on), retrying briefly when the server is busy.
pub async fn connect(url: &str) -> Result<Ws, String> {
    let mut attempt = 0;
    loop {
        match tokio_tungstenite::connect_async_with_config(url, Some(config()), true).await {
            Ok((ws, _)) => return Ok(ws),
            Err(e) if attempt < 50 && retryable(&e) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 * attempt.min(10))).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// A client that will stop reading: the same handshake over a socket whose receive buffer
/// is small (64 KiB), so that the server meets the back-pressure within seconds rather than
/// after the kernel has absorbed several megabytes.
pub async fn connect_slow(url: &str) -> Result<Ws, String> {
    let hostport = url
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .ok_or_else(|| format!("not a ws:// URL: {url}"))?;
    let addr = tokio::net::lookup_host(hostport)
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| format!("cannot resolve {hostport}"))?;
    let mut attempt = 0;
    loop {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| e.to_string())?;
        socket
            .set_recv_buffer_size(64 * 1024)
            .map_err(|e| e.to_string())?;
        let tcp = socket.connect(addr).await.map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        match tokio_tungstenite::client_async_with_config(
            url,
            MaybeTlsStream::Plain(tcp),
            Some(config()),
        )
        .await
        {
            Ok((ws, _)) => return Ok(ws),
            Err(e) if attempt < 50 && retryable(&e) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 * attempt.min(10))).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// How a socket ended, as a short label: `close 4008`, `eof (no close frame)`, `reset`, ….
pub fn end_of(item: Option<Result<Message, WsError>>) -> Option<String> {
    match item {
        Some(Ok(Message::Close(frame))) => Some(match frame {
            Some(f) => format!("close {}", u16::from(f.code)),
            None => "close (no code)".into(),
        }),
        Some(Ok(_)) => None,
        None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
            Some("eof (no close frame)".into())
        }
        Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => {
            Some("eof (no close frame)".into())
        }
        Some(Err(WsError::Io(e))) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            Some("reset".into())
        }
        Some(Err(e)) => Some(format!("error: {e}")),
    }
}
