//! The one listener: accept loop, TLS (rustls) when configured, HTTP/1.1 and HTTP/2 with
//! upgrades (for WebSockets, over TLS too), the client address for every request, the
//! connection caps with eviction (`conns`), the request deadline, and graceful shutdown.

mod conns;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use hyper::body::Incoming;
use tower_service::Service;
use warp::http::{HeaderValue, Request, Version, header};
use warp::reply::Response;

use crate::metrics::Shed;
use crate::state::AppState;

/// The peer address of the connection a request came on (a request extension).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// The listen backlog: connections the kernel completes and queues before we accept them
/// (it caps this at `net.core.somaxconn`, 4096 by default). The usual 128 overflows under a
/// flood of reconnecting clients, and then a new client's SYN is dropped and only retried a
/// second later; with a deep queue it waits its turn behind the flood instead, which the
/// accept loop (and eviction) clears at thousands of connections a second.
const LISTEN_BACKLOG: u32 = 4096;

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().map_err(|source| BindError { addr, source })
}

/// How long a client may take to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Counts things held per client address (connections, sockets) against a total and a
/// per-address cap (0: none).
pub struct Caps {
    total: usize,
    per_ip: usize,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

impl Caps {
    pub fn new(total: usize, per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            total,
            per_ip,
            held: Mutex::new(Held::default()),
        })
    }

    /// One more for `ip`, unless that exceeds a cap.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let of_ip = held.by_ip.get(&ip).copied().unwrap_or(0);
        if (self.total != 0 && held.total >= self.total)
            || (self.per_ip != 0 && of_ip >= self.per_ip)
        {
            return None;
        }
        held.total += 1;
        held.by_ip.insert(ip, of_ip + 1);
        Some(Slot {
            caps: self.clone(),
            ip,
        })
    }
}

/// One counted thing; released when dropped.
pub struct Slot {
    caps: Arc<Caps>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.caps.held.lock().unwrap_or_else(|p| p.into_inner());
        held.total = held.total.saturating_sub(1);
        if let Some(n) = held.by_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.by_ip.remove(&self.ip);
            }
        }
    }
}

/// Serves the daemon on `listener` until `shutdown` resolves, then stops accepting, closes
/// every WebSocket with 1001 and gives connections in flight up to `grace` to finish.
/// With `tls`, every connection is a TLS one (HTTPS and WSS); the rest is the same path.
/// At most `http.max_connections` HTTP connections are open at once, at most
/// `http.max_connections_per_ip` from one address (a connection upgraded to a WebSocket
/// leaves the count: sockets have their own admission in `ws/`). One over the per-address
/// cap is closed at once; one over the total evicts a connection not producing a response,
/// the least recently active of the address holding the most places (`conns`; the newcomer
/// is closed at once if every one is producing a response). A connection must send its
/// first request head within `http.header_timeout` (and each later one on a kept-alive
/// connection too), else it is closed; a request must arrive whole within
/// `http.request_timeout` (longer as its body arrives, see [`Exchange`]), else it is
/// answered 408.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let filter = crate::api::filter(state.clone());
    let graceful = GracefulShutdown::new();
    let http = &state.config.http;
    let conns = conns::Conns::new(http.max_connections, http.max_connections_per_ip);
    let header_timeout = Duration::from_secs(http.header_timeout.max(1));
    let idle_timeout = Duration::from_secs(http.idle_timeout.max(1));
    let deadline = Deadline {
        timeout: Duration::from_secs(http.request_timeout.max(1)),
        min_rate: http.min_body_rate.max(1),
    };
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let conn = match conns.admit(peer.ip()) {
            Ok(admitted) => {
                if let Some(victim) = admitted.evicted {
                    state.metrics.connection_shed(Shed::Evicted);
                    tracing::debug!(%peer, %victim, "every connection place taken; evicted one");
                }
                admitted.conn
            }
            Err(refused) => {
                state.metrics.connection_shed(match refused {
                    conns::Refused::PerAddress => Shed::PerIp,
                    conns::Refused::Full => Shed::Full,
                });
                tracing::debug!(%peer, ?refused, "connection refused: too many open");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let svc = Svc {
            warp: warp::service(filter.clone()),
            state: state.clone(),
            peer,
            requested: Arc::new(tokio::sync::Notify::new()),
            conn: Arc::new(ConnState {
                activity: conn.activity(),
                ready: Mutex::new(Instant::now()),
            }),
            deadline,
        };
        let limits = Limits {
            header_timeout,
            idle_timeout,
            conn,
        };
        let watcher = graceful.watcher();
        match &acceptor {
            None => {
                tokio::spawn(serve_connection(stream, svc, watcher, limits));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let mut stopping = state.ws.shutdown.subscribe();
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                    let tls = tokio::select! {
                        done = handshake => match done {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, %peer, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        },
                        // A handshake still in progress at shutdown is abandoned.
                        _ = stopping.wait_for(|stop| *stop) => return,
                        () = limits.conn.evicted() => {
                            tracing::debug!(%peer, "evicted during the TLS handshake");
                            return;
                        }
                    };
                    // The requests' clock starts once the connection can carry them.
                    svc.conn.ready();
                    serve_connection(tls, svc, watcher, limits).await;
                });
            }
        }
        // Let the new connection read its request before accepting more: under a flood of
        // connections, a burst of admissions could otherwise evict a newcomer before it was
        // ever polled, however promptly it sent its request.
        tokio::task::yield_now().await;
    }
    drop(listener);
    let deadline = tokio::time::Instant::now() + grace;
    let _ = state.ws.shutdown.send(true);
    state.ws.tasks.close();
    let drained = async {
        graceful.shutdown().await;
        state.ws.tasks.wait().await;
    };
    if tokio::time::timeout_at(deadline, drained).await.is_err() {
        tracing::warn!(
            "connections still open after {} s; closing them",
            grace.as_secs()
        );
    }
}

/// What one connection is held to: its place under the connection caps (released when
/// it ends or becomes a WebSocket, or taken away by an eviction) and the time its request
/// heads may take.
struct Limits {
    header_timeout: Duration,
    idle_timeout: Duration,
    conn: conns::Conn,
}

/// Serves HTTP (with upgrades) on one accepted connection, plain or TLS, under the
/// graceful-shutdown watcher. A connection whose first request has not arrived within the
/// header timeout is closed (hyper's own header timeout covers the later ones on HTTP/1.1;
/// the protocol sniffing before the first one has none), and so is one that then goes
/// `idle_timeout` without a new request (HTTP/2, which hyper would keep open for ever; an
/// upgrade to a WebSocket ends the HTTP connection, so sockets are not affected). An evicted
/// connection is closed at once.
async fn serve_connection<I, S>(io: I, svc: Svc<S>, watcher: Watcher, limits: Limits)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<RequestBody>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let peer = svc.peer;
    let requested = svc.requested.clone();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(svc))
        .into_owned();
    let mut conn = std::pin::pin!(watcher.watch(conn));
    // The first request must come within the header timeout, each later one within the idle
    // timeout. A request that arrives while nobody waits leaves a permit: none is missed.
    let mut wait = (limits.header_timeout, "header");
    let ended = loop {
        tokio::select! {
            ended = &mut conn => break ended,
            next = tokio::time::timeout(wait.0, requested.notified()) => {
                if next.is_err() {
                    tracing::debug!(%peer, "no request within the {} timeout; closing", wait.1);
                    return;
                }
                wait = (limits.idle_timeout, "idle");
            }
            () = limits.conn.evicted() => {
                tracing::debug!(%peer, "evicted for a newer connection; closing");
                return;
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
    drop(limits);
}

/// How long a request may take to arrive: `http.request_timeout` from its start, one second
/// more for every `http.min_body_rate` bytes of its body received (so a body that keeps
/// coming at least that fast is never cut off, and one that stalls is).
#[derive(Clone, Copy)]
struct Deadline {
    timeout: Duration,
    min_rate: u64,
}

/// What the requests of one connection share.
struct ConnState {
    activity: conns::Activity,
    /// When the connection last became ready for a request head (HTTP/1.1: the
    /// connection's start, then the end of each response).
    ready: Mutex<Instant>,
}

impl ConnState {
    fn ready(&self) {
        *self.ready.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn ready_since(&self) -> Instant {
        *self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One request and its response: how much of its body has arrived, whether all of it has,
/// and the connection's place among those producing a response, held from the request's
/// last byte (or its answer, if that comes first) until the response has been written.
struct Exchange {
    conn: Arc<ConnState>,
    /// When the request started: on HTTP/1.1 when the connection became ready for its head,
    /// on HTTP/2 when its head arrived.
    start: Instant,
    deadline: Deadline,
    state: Mutex<ExchangeState>,
}

#[derive(Default)]
struct ExchangeState {
    received: u64,
    complete: bool,
    /// The response has been written (or abandoned): nothing is in production any more.
    finished: bool,
    busy: Option<conns::Busy>,
}

impl Exchange {
    fn lock(&self) -> std::sync::MutexGuard<'_, ExchangeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn received(&self, n: usize) {
        let mut st = self.lock();
        st.received = st.received.saturating_add(n as u64);
    }

    /// The whole request has arrived: from now on the connection is producing a response.
    fn complete(&self) {
        let mut st = self.lock();
        st.complete = true;
        self.produce(&mut st);
    }

    /// The response is ready (possibly before the whole body was read: 404, 413…).
    fn responding(&self) {
        self.produce(&mut self.lock());
    }

    fn produce(&self, st: &mut ExchangeState) {
        if st.busy.is_none() && !st.finished {
            st.busy = self.conn.activity.busy();
        }
    }

    /// The response has been written (or abandoned).
    fn finished(&self) {
        let busy = {
            let mut st = self.lock();
            st.finished = true;
            st.busy.take()
        };
        drop(busy);
        self.conn.ready();
    }

    /// When the request must have arrived whole, given what has arrived so far; `None` once
    /// it has.
    fn deadline(&self) -> Option<Instant> {
        let st = self.lock();
        if st.complete {
            return None;
        }
        let grace =
            Duration::from_millis(st.received.saturating_mul(1000) / self.deadline.min_rate);
        let allowed = self.deadline.timeout.saturating_add(grace);
        // Beyond what an `Instant` holds, a year is as good.
        let year = Duration::from_secs(365 * 24 * 3600);
        Some(
            self.start
                .checked_add(allowed)
                .unwrap_or_else(|| Instant::now() + year),
        )
    }

    /// Runs `answer` (the service's future) unless the request has not arrived whole by its
    /// deadline: then it is dropped and the answer is 408, closing an HTTP/1.1 connection.
    /// A request that has arrived whole is never cut off, however long its answer takes.
    async fn within_deadline(
        &self,
        answer: impl Future<Output = Result<Response, Infallible>>,
        version: Version,
        peer: SocketAddr,
    ) -> Response {
        let mut answer = std::pin::pin!(answer);
        loop {
            let Some(deadline) = self.deadline() else {
                let Ok(r) = answer.await;
                return r;
            };
            tokio::select! {
                biased;
                done = &mut answer => {
                    let Ok(r) = done;
                    return r;
                }
                () = tokio::time::sleep_until(deadline) => {
                    // The body may have grown or ended meanwhile: only a passed deadline
                    // of what has arrived by now counts.
                    if self.deadline().is_some_and(|d| d <= Instant::now()) {
                        tracing::debug!(%peer, "request not received within its deadline; 408");
                        return request_timed_out(version);
                    }
                }
            }
        }
    }
}

/// The 408 answer; an HTTP/1.x connection is closed after it (an HTTP/2 one keeps its other
/// streams).
fn request_timed_out(version: Version) -> Response {
    let mut r = crate::api::error_response(&crate::error::Error::RequestTimeout);
    if version < Version::HTTP_2 {
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// A request body that tells its [`Exchange`] what arrives.
struct RequestBody {
    inner: Incoming,
    exchange: Arc<Exchange>,
}

impl RequestBody {
    fn new(inner: Incoming, exchange: Arc<Exchange>) -> Self {
        if inner.is_end_stream() {
            exchange.complete();
        }
        Self { inner, exchange }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.exchange.received(data.len());
                }
                if self.inner.is_end_stream() {
                    self.exchange.complete();
                }
            }
            Poll::Ready(None) => self.exchange.complete(),
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body type of a response (warp's, which it does not name).
trait BodyOf {
    type Body;
}

impl<B> BodyOf for warp::http::Response<B> {
    type Body = B;
}

type WarpBody = <Response as BodyOf>::Body;

/// A response body that tells its [`Exchange`] when it has been written (dropped).
struct ResponseBody {
    inner: WarpBody,
    exchange: Arc<Exchange>,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = warp::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.exchange.finished();
    }
}

/// Routes WebSocket upgrades to `ws/` and everything else to the warp filter, with the
/// client address attached to every request, each request held to its deadline, and the
/// connection's activity reported to the caps.
#[derive(Clone)]
struct Svc<S> {
    warp: S,
    state: AppState,
    peer: SocketAddr,
    /// Notified at every request (the first one ends the connection's header deadline).
    requested: Arc<tokio::sync::Notify>,
    conn: Arc<ConnState>,
    deadline: Deadline,
}

impl<S> Service<Request<Incoming>> for Svc<S>
where
    S: Service<Request<RequestBody>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = warp::http::Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.warp.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(ClientAddr(self.peer));
        self.requested.notify_one();
        self.conn.activity.touch();
        let version = req.version();
        let start = if version < Version::HTTP_2 {
            self.conn.ready_since()
        } else {
            Instant::now()
        };
        let exchange = Arc::new(Exchange {
            conn: self.conn.clone(),
            start,
            deadline: self.deadline,
            state: Mutex::new(ExchangeState::default()),
        });
        let peer = self.peer;
        let answer: Pin<Box<dyn Future<Output = Response> + Send>> = if crate::ws::claims(&req) {
            // An upgrade's answer needs nothing but the head, which is here.
            exchange.complete();
            let state = self.state.clone();
            Box::pin(crate::ws::upgrade(state, req, peer))
        } else {
            let req = req.map(|body| RequestBody::new(body, exchange.clone()));
            let answer = self.warp.call(req);
            let exchange = exchange.clone();
            Box::pin(async move { exchange.within_deadline(answer, version, peer).await })
        };
        Box::pin(async move {
            let response = answer.await;
            exchange.responding();
            Ok(response.map(|inner| ResponseBody { inner, exchange }))
        })
    }
}

/// Installs the SIGTERM and SIGINT handlers now (so a signal that arrives right after
/// start-up is not lost) and returns a future that resolves on the first of them.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_per_address_and_in_all_and_release_on_drop() {
        let caps = Caps::new(3, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let a1 = caps.take(a);
        let a2 = caps.take(a);
        assert!(a1.is_some() && a2.is_some());
        assert!(caps.take(a).is_none(), "third from one address");
        let b1 = caps.take(b);
        assert!(b1.is_some());
        assert!(caps.take(b).is_none(), "fourth in all");
        drop(a1);
        assert!(caps.take(b).is_some(), "a released place is free again");
        drop((a2, b1));
        let unlimited = Caps::new(0, 0);
        let held: Vec<_> = (0..1000).filter_map(|_| unlimited.take(a)).collect();
        assert_eq!(held.len(), 1000);
    }
}
