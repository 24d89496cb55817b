//! The one listener: accept loop, TLS (rustls) when configured, HTTP/1.1 and HTTP/2 with
//! upgrades (for WebSockets, over TLS too), the client address for every request, and
//! graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
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

/// Serves the daemon on `listener` until `shutdown` resolves, then stops accepting, closes
/// every WebSocket with 1001 and gives connections in flight up to `grace` to finish.
/// With `tls`, every connection is a TLS one (HTTPS and WSS); the rest is the same path.
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
        let _ = stream.set_nodelay(true);
        let svc = Svc {
            warp: warp::service(filter.clone()),
            state: state.clone(),
            peer,
        };
        let watcher = graceful.watcher();
        match &acceptor {
            None => {
                tokio::spawn(serve_connection(stream, svc, watcher));
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
                    serve_connection(tls, svc, watcher).await;
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

/// Serves HTTP (with upgrades) on one accepted connection, plain or TLS, under the
/// graceful-shutdown watcher.
async fn serve_connection<I, S>(io: I, svc: Svc<S>, watcher: Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let peer = svc.peer;
    let conn = Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(svc))
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}

/// Routes WebSocket upgrades to `ws/` and everything else to the warp filter, with the
/// client address attached to every request.
#[derive(Clone)]
struct Svc<S> {
    warp: S,
    state: AppState,
    peer: SocketAddr,
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
