//! The one listener: accept loop, TLS (rustls) when configured, HTTP/1.1 and HTTP/2 with
//! upgrades (for WebSockets, over TLS too), the client address for every request, and
//! graceful shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use hyper::body::Incoming;
use tower_service::Service;
use warp::http::Request;
use warp::reply::Response;

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

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
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
/// leaves the count: sockets have their own admission in `ws/`); one over a cap is closed at
/// once. A connection must send its first request head within `http.header_timeout` (and
/// each later one on a kept-alive connection too), else it is closed.
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
    let caps = Caps::new(http.max_connections, http.max_connections_per_ip);
    let header_timeout = Duration::from_secs(http.header_timeout.max(1));
    let idle_timeout = Duration::from_secs(http.idle_timeout.max(1));
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
        let Some(slot) = caps.take(peer.ip()) else {
            tracing::debug!(%peer, "connection refused: too many open");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let svc = Svc {
            warp: warp::service(filter.clone()),
            state: state.clone(),
            peer,
            requested: Arc::new(tokio::sync::Notify::new()),
        };
        let limits = Limits {
            header_timeout,
            idle_timeout,
            _slot: slot,
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
                    };
                    serve_connection(tls, svc, watcher, limits).await;
                });
            }
        }
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
/// it ends or becomes a WebSocket) and the time its request heads may take.
struct Limits {
    header_timeout: Duration,
    idle_timeout: Duration,
    _slot: Slot,
}

/// Serves HTTP (with upgrades) on one accepted connection, plain or TLS, under the
/// graceful-shutdown watcher. A connection whose first request has not arrived within the
/// header timeout is closed (hyper's own header timeout covers the later ones on HTTP/1.1;
/// the protocol sniffing before the first one has none), and so is one that then goes
/// `idle_timeout` without a new request (HTTP/2, which hyper would keep open for ever; an
/// upgrade to a WebSocket ends the HTTP connection, so sockets are not affected).
async fn serve_connection<I, S>(io: I, svc: Svc<S>, watcher: Watcher, limits: Limits)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response, Error = Infallible> + Clone + Send + 'static,
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
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
    drop(limits);
}

/// Routes WebSocket upgrades to `ws/` and everything else to the warp filter, with the
/// client address attached to every request.
#[derive(Clone)]
struct Svc<S> {
    warp: S,
    state: AppState,
    peer: SocketAddr,
    /// Notified at every request (the first one ends the connection's header deadline).
    requested: Arc<tokio::sync::Notify>,
}

impl<S> Service<Request<Incoming>> for Svc<S>
where
    S: Service<Request<Incoming>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        self.warp.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(ClientAddr(self.peer));
        self.requested.notify_one();
        if crate::ws::claims(&req) {
            let (state, peer) = (self.state.clone(), self.peer);
            Box::pin(async move { Ok(crate::ws::upgrade(state, req, peer).await) })
        } else {
            Box::pin(self.warp.call(req))
        }
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
