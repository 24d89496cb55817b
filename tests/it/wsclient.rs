//! A small WebSocket test client for the daemon's WebSocket APIs: connect with the token in
//! the query, in a header or not at all (optionally with an `Origin` and a small receive
//! buffer), read JSON messages with deadlines, and observe how a socket ends. Every message
//! read is checked against the common envelope `{uuid, type, body, timestamp}` and against
//! its message in `assets/api/asyncapi.yaml`.
//!
//! Also a raw client that completes the handshake by hand and then never answers anything.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::harness::Daemon;

/// How long opening a connection (TCP and handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The close code a close frame without a status reads as.
pub const NO_STATUS: u16 = 1005;

/// A WebSocket request being prepared.
#[derive(Debug)]
pub struct Connect {
    addr: SocketAddr,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    recv_buffer: Option<u32>,
}

impl Connect {
    /// A request for `path` (e.g. `/ws/machines/global`) on this daemon, without a token.
    pub fn new(d: &Daemon, path: &str) -> Self {
        Self {
            addr: d.addr(),
            path: path.to_owned(),
            query: Vec::new(),
            headers: Vec::new(),
            recv_buffer: None,
        }
    }

    /// Adds a query parameter (repeatable).
    pub fn query(mut self, key: &str, value: &str) -> Self {
        self.query.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The token as `?access_token=`.
    pub fn access_token(self, token: &str) -> Self {
        self.query("access_token", token)
    }

    /// The token as `?token=`.
    pub fn token_param(self, token: &str) -> Self {
        self.query("token", token)
    }

    /// Adds a request header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The token as `Authorization: Bearer`.
    pub fn bearer(self, token: &str) -> Self {
        self.header("Authorization", &format!("Bearer {token}"))
    }

    pub fn origin(self, origin: &str) -> Self {
        self.header("Origin", origin)
    }

    /// Sets the client socket's receive buffer (before connecting), so that a client that
    /// stops reading makes the server's writes block sooner.
    pub fn recv_buffer(mut self, bytes: u32) -> Self {
        self.recv_buffer = Some(bytes);
        self
    }

    /// The `ws://` URL of this request.
    pub fn url(&self) -> String {
        let mut url = format!("ws://{}{}", self.addr, self.path);
        if !self.query.is_empty() {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &self.query {
                q.append_pair(k, v);
            }
            url.push('?');
            url.push_str(&q.finish());
        }
        url
    }

    /// Opens the connection; the handshake's failure (an HTTP error response included) is
    /// returned, not asserted.
    pub async fn try_connect(self) -> Result<WsClient, tungstenite::Error> {
        let mut req = self.url().into_client_request()?;
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("header name");
            let value = HeaderValue::from_str(value).expect("header value");
            req.headers_mut().append(name, value);
        }
        let socket = TcpSocket::new_v4().expect("TCP socket");
        if let Some(bytes) = self.recv_buffer {
            socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        }
        let work = async {
            let tcp = socket.connect(self.addr).await?;
            tcp.set_nodelay(true)?;
            let local_port = tcp.local_addr()?.port();
            let (ws, _response) = tokio_tungstenite::client_async(req, tcp).await?;
            Ok::<_, tungstenite::Error>(WsClient::new(ws, local_port, self.path.clone()))
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, work).await {
            Ok(r) => r,
            Err(_) => panic!("WebSocket connect to {} timed out", self.path),
        }
    }

    /// Opens the connection; fails the test if the handshake does not succeed.
    pub async fn open(self) -> WsClient {
        let url = self.url();
        match self.try_connect().await {
            Ok(c) => c,
            Err(tungstenite::Error::Http(resp)) => panic!(
                "WebSocket upgrade to {url} refused with HTTP {}: {}",
                resp.status(),
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
            ),
            Err(e) => panic!("WebSocket connect to {url} failed: {e}"),
        }
    }

    /// Expects the upgrade to be refused with an HTTP error response; returns its status.
    pub async fn refused_status(self) -> u16 {
        let url = self.url();
        match self.try_connect().await {
            Ok(_) => panic!("WebSocket upgrade to {url} was accepted; expected an HTTP error"),
            Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!("WebSocket connect to {url} failed without an HTTP response: {e}"),
        }
    }
}

/// What reading a socket gave.
#[derive(Debug)]
pub enum Event {
    /// A text message (already checked as an envelope).
    Json(Value),
    /// A close frame with this code ([`NO_STATUS`] when it had none).
    Closed(u16),
    /// The connection ended without a close frame (EOF, reset, protocol error).
    Dropped(String),
}

/// How a socket ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    Closed(u16),
    Dropped(String),
}

/// One open WebSocket connection.
pub struct WsClient {
    ws: WebSocketStream<TcpStream>,
    /// The type of every message read so far, in order.
    pub types: Vec<String>,
    /// Pings received so far (the library answers them while we read).
    pub pings: usize,
    /// The client's local TCP port (to find the connection from the server's side).
    pub local_port: u16,
    /// The endpoint's path, for checking messages against `assets/api/asyncapi.yaml`.
    path: String,
}

impl WsClient {
    fn new(ws: WebSocketStream<TcpStream>, local_port: u16, path: String) -> Self {
        Self {
            ws,
            types: Vec::new(),
            pings: 0,
            local_port,
            path,
        }
    }

    /// The next message, close or end within `within`; `None` on timeout.
    pub async fn next_event(&mut self, within: Duration) -> Option<Event> {
        self.next_event_until(Instant::now() + within).await
    }

    async fn next_event_until(&mut self, deadline: Instant) -> Option<Event> {
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) => return Some(Event::Dropped("stream ended".into())),
                Ok(Some(Err(e))) => return Some(Event::Dropped(e.to_string())),
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str())
                        .unwrap_or_else(|e| panic!("message is not JSON ({e}): {t}"));
                    assert_envelope(&v);
                    crate::apidocs::check_message(&self.path, &v);
                    self.types
                        .push(v["type"].as_str().unwrap_or_default().to_owned());
                    return Some(Event::Json(v));
                }
                Message::Binary(b) => panic!("unexpected binary message of {} bytes", b.len()),
                Message::Ping(_) => self.pings += 1,
                Message::Pong(_) | Message::Frame(_) => {}
                Message::Close(frame) => {
                    return Some(Event::Closed(
                        frame.map_or(NO_STATUS, |f| u16::from(f.code)),
                    ));
                }
            }
        }
    }

    /// The next JSON message; fails the test on timeout, close or end.
    pub async fn next_json(&mut self, within: Duration) -> Value {
        match self.next_event(within).await {
            Some(Event::Json(v)) => v,
            other => panic!(
                "expected a message within {within:?}, got {other:?}; types so far: {:?}",
                self.types
            ),
        }
    }

    /// The next message of type `ty`, skipping others; fails the test on timeout, close or end.
    pub async fn next_of_type(&mut self, ty: &str, within: Duration) -> Value {
        self.next_matching(within, &format!("a {ty} message"), |v| v["type"] == ty)
            .await
    }

    /// The next message for which `want` holds, skipping others; fails the test on timeout,
    /// close or end.
    pub async fn next_matching(
        &mut self,
        within: Duration,
        what: &str,
        want: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            match self.next_event_until(deadline).await {
                Some(Event::Json(v)) if want(&v) => return v,
                Some(Event::Json(_)) => {}
                other => panic!(
                    "waiting {within:?} for {what}: got {other:?}; types so far: {:?}",
                    self.types
                ),
            }
        }
    }

    /// Messages up to and including the first for which `want` holds; fails the test on
    /// timeout, close or end.
    pub async fn collect_until(
        &mut self,
        within: Duration,
        what: &str,
        want: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            match self.next_event_until(deadline).await {
                Some(Event::Json(v)) => {
                    let done = want(&v);
                    seen.push(v);
                    if done {
                        return seen;
                    }
                }
                other => panic!(
                    "waiting {within:?} for {what}: got {other:?}; types so far: {:?}",
                    self.types
                ),
            }
        }
    }

    /// How the socket ends within `within`, skipping messages; fails the test if it is
    /// still open then.
    pub async fn wait_end(&mut self, within: Duration) -> End {
        let deadline = Instant::now() + within;
        loop {
            match self.next_event_until(deadline).await {
                Some(Event::Json(_)) => {}
                Some(Event::Closed(code)) => return End::Closed(code),
                Some(Event::Dropped(why)) => return End::Dropped(why),
                None => panic!(
                    "socket still open after {within:?}; types so far: {:?}",
                    self.types
                ),
            }
        }
    }

    /// Expects a close frame with `code` within `within` (messages before it are skipped);
    /// returns the code.
    pub async fn expect_close(&mut self, code: u16, within: Duration) -> u16 {
        match self.wait_end(within).await {
            End::Closed(got) => {
                assert_eq!(
                    got, code,
                    "close code; types read before the close: {:?}",
                    self.types
                );
                got
            }
            End::Dropped(why) => panic!(
                "expected close {code}, the connection ended without a close frame ({why}); \
                 types so far: {:?}",
                self.types
            ),
        }
    }

    /// Reads for `duration`, failing the test if the socket closes or ends meanwhile;
    /// returns the messages read.
    pub async fn stays_open_for(&mut self, duration: Duration) -> Vec<Value> {
        let deadline = Instant::now() + duration;
        let mut seen = Vec::new();
        loop {
            match self.next_event_until(deadline).await {
                None => return seen,
                Some(Event::Json(v)) => seen.push(v),
                other => panic!(
                    "socket ended within {duration:?}: {other:?}; types so far: {:?}",
                    self.types
                ),
            }
        }
    }

    /// The four messages every machines socket starts with, in this order; returns their
    /// bodies.
    pub async fn initial(&mut self, within: Duration) -> Initial {
        let mut bodies = Vec::new();
        for ty in INITIAL_TYPES {
            let v = self.next_json(within).await;
            assert_eq!(
                v["type"], ty,
                "initial messages must be {INITIAL_TYPES:?} in order; got {v}"
            );
            bodies.push(v["body"].clone());
        }
        let mut it = bodies.into_iter();
        let mut next = || it.next().unwrap_or_default();
        Initial {
            statik: next(),
            dynamic: next(),
            disks: next(),
            connections: next(),
        }
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws
            .send(Message::text(text))
            .await
            .expect("send a text message");
    }
}

/// The types a machines socket starts with, in order.
pub const INITIAL_TYPES: [&str; 4] = [
    "DATA_STATIC",
    "DATA_DYNAMIC",
    "DATA_DYNAMIC_DISKS",
    "DATA_DYNAMIC_CONNECTIONS",
];

/// The bodies of the initial messages.
#[derive(Debug)]
pub struct Initial {
    pub statik: Value,
    pub dynamic: Value,
    pub disks: Value,
    pub connections: Value,
}

impl Initial {
    /// Each body with its message type, in the order they arrived.
    pub fn by_type(&self) -> [(&'static str, &Value); 4] {
        [
            (INITIAL_TYPES[0], &self.statik),
            (INITIAL_TYPES[1], &self.dynamic),
            (INITIAL_TYPES[2], &self.disks),
            (INITIAL_TYPES[3], &self.connections),
        ]
    }
}

/// Asserts `v` is `{uuid, type, body, timestamp}`: a UUID, a non-empty type, any body, and
/// an ISO 8601 UTC timestamp ending in `Z`.
pub fn assert_envelope(v: &Value) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("message is not an object: {v}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["body", "timestamp", "type", "uuid"],
        "envelope fields: {v}"
    );
    let uuid = v["uuid"]
        .as_str()
        .unwrap_or_else(|| panic!("envelope uuid is not a string: {v}"));
    uuid::Uuid::parse_str(uuid)
        .unwrap_or_else(|e| panic!("envelope uuid {uuid:?} is not a UUID ({e}): {v}"));
    assert!(
        v["type"].as_str().is_some_and(|t| !t.is_empty()),
        "envelope type: {v}"
    );
    let ts = v["timestamp"]
        .as_str()
        .unwrap_or_else(|| panic!("envelope timestamp is not a string: {v}"));
    assert!(
        is_iso8601_utc(ts),
        "timestamp {ts:?} is not ISO 8601 UTC with Z: {v}"
    );
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` with plausible field values.
pub fn is_iso8601_utc(s: &str) -> bool {
    let Some(rest) = s.strip_suffix('Z') else {
        return false;
    };
    let (main, fraction) = match rest.split_once('.') {
        Some((m, f)) => (m, Some(f)),
        None => (rest, None),
    };
    if fraction.is_some_and(|f| f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    let b = main.as_bytes();
    if b.len() != 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return false;
    }
    if b[16] != b':' {
        return false;
    }
    let num = |from: usize, to: usize| -> Option<u32> {
        let part = main.get(from..to)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    matches!(
        (num(0, 4), num(5, 7), num(8, 10), num(11, 13), num(14, 16), num(17, 19)),
        (Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(sec))
            if y >= 2000 && (1..=12).contains(&mo) && (1..=31).contains(&d)
                && h < 24 && mi < 60 && sec <= 60
    )
}

// ----- a raw client that never answers -----

/// A TCP connection that completed a WebSocket handshake by hand and then only reads.
pub struct RawClient {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// Opcodes of the frames received so far, in order.
    pub opcodes: Vec<u8>,
    /// The code of the close frame received, if any.
    pub close_code: Option<u16>,
    /// Text messages received (whole, unfragmented frames).
    pub texts: Vec<String>,
}

pub const OP_PING: u8 = 0x9;

impl RawClient {
    /// Connects and upgrades `path_and_query`; fails the test unless the answer is 101.
    pub async fn handshake(d: &Daemon, path_and_query: &str) -> Self {
        let mut tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(d.addr()))
            .await
            .expect("raw connect timed out")
            .expect("raw connect");
        let request = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            d.addr()
        );
        tcp.write_all(request.as_bytes())
            .await
            .expect("send handshake");
        let mut buf = Vec::new();
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, tcp.read(&mut chunk))
                .await
                .expect("handshake answer timed out")
                .expect("read handshake answer");
            assert!(n > 0, "connection closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "raw handshake not accepted: {head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "wrong Sec-WebSocket-Accept: {head}"
        );
        buf.drain(..end);
        let mut c = Self {
            tcp,
            buf,
            opcodes: Vec::new(),
            close_code: None,
            texts: Vec::new(),
        };
        c.parse_frames();
        c
    }

    /// Reads (never writing anything) until the server ends the connection; returns `false`
    /// if it is still open after `within`.
    pub async fn read_until_dropped(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk)).await {
                Err(_) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(n)) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    self.parse_frames();
                }
            }
        }
    }

    /// One masked client frame (`fin`, `opcode`, `payload`) in wire form; `len_override`
    /// announces another length than the payload's (to send a lying header).
    pub fn frame(fin: bool, opcode: u8, payload: &[u8], len_override: Option<u64>) -> Vec<u8> {
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        let len = len_override.unwrap_or(payload.len() as u64);
        if len < 126 {
            f.push(0x80 | len as u8);
        } else if len <= u64::from(u16::MAX) {
            f.push(0x80 | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&len.to_be_bytes());
        }
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        f
    }

    /// Writes raw bytes; `false` if the server has already closed the connection.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> bool {
        self.tcp.write_all(bytes).await.is_ok()
    }

    /// Reads until a text message satisfying `want` has arrived; `false` on timeout or end.
    pub async fn read_text_until(&mut self, within: Duration, want: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.texts.iter().any(|t| want(t)) {
                return true;
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk)).await {
                Err(_) | Ok(Ok(0) | Err(_)) => return false,
                Ok(Ok(n)) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    self.parse_frames();
                }
            }
        }
    }

    /// Moves every complete (unmasked, server-sent) frame out of the buffer.
    fn parse_frames(&mut self) {
        loop {
            let b = &self.buf;
            if b.len() < 2 {
                return;
            }
            let opcode = b[0] & 0x0f;
            let (len, header) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
                127 if b.len() >= 10 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&b[2..10]);
                    (
                        usize::try_from(u64::from_be_bytes(n)).expect("frame length"),
                        10,
                    )
                }
                126 | 127 => return,
                n => (usize::from(n), 2),
            };
            if b.len() < header + len {
                return;
            }
            self.opcodes.push(opcode);
            let payload = &b[header..header + len];
            if opcode == 0x8 && payload.len() >= 2 {
                self.close_code = Some(u16::from_be_bytes([payload[0], payload[1]]));
            }
            if opcode == 0x1 {
                self.texts
                    .push(String::from_utf8_lossy(payload).into_owned());
            }
            self.buf.drain(..header + len);
        }
    }
}
