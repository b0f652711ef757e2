//! The admin HTTP listener: plain HTTP/1.1 on its own TCP port (loopback by default), separate
//! from the QUIC front end. `GET`/`HEAD` of `/metrics`, `/livez`, `/readyz`; 405 for other
//! methods on those paths, 404 elsewhere. Bounded: a cap on concurrent connections (excess ones
//! are closed at once), a header read timeout (which also closes idle keep-alive connections), a
//! cap on a connection's lifetime.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::health::Readiness;

/// A suggested admin port (the caller's config decides; the address should stay on loopback).
pub const DEFAULT_ADMIN_PORT: u16 = 9464;

/// Binds the admin listener. Bind here, before anything slow starts, so a port in use fails fast;
/// the error names the address. A non-loopback address works but is logged as a warning: the
/// admin endpoints are unauthenticated.
pub async fn bind_admin(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        io::Error::new(e.kind(), format!("admin listener: cannot bind {addr}: {e}"))
    })?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "admin listener is not on loopback; /metrics and /readyz are unauthenticated");
    }
    Ok(listener)
}

/// Serves the admin endpoints on `listener` with [`AdminLimits::default`] until `shutdown`
/// resolves, then stops accepting, lets open requests finish (at most
/// [`AdminLimits::shutdown_grace`]) and returns. Keep it running through a drain, so `/readyz` can
/// say `draining`; resolve `shutdown` last.
pub async fn serve_admin(
    listener: TcpListener,
    handle: PrometheusHandle,
    ready: Arc<dyn Readiness>,
    shutdown: impl Future<Output = ()>,
) {
    Admin::new(handle, ready).serve(listener, shutdown).await;
}

/// Limits of the admin listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminLimits {
    /// Connections served at once; a connection beyond this is closed as soon as it is accepted.
    pub max_connections: usize,
    /// A client must send a request's headers within this time, counted from when the server
    /// starts waiting for them (so it also closes keep-alive connections idle this long).
    pub header_read_timeout: Duration,
    /// A connection is closed after this long, whatever it is doing.
    pub connection_timeout: Duration,
    /// After `shutdown` resolves, open connections get this long to finish.
    pub shutdown_grace: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        AdminLimits {
            max_connections: 32,
            header_read_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(1),
        }
    }
}

/// The admin server with non-default settings; [`serve_admin`] is `Admin::new(..).serve(..)`.
pub struct Admin {
    state: State,
    limits: AdminLimits,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("limits", &self.limits)
            .field("on_scrape", &self.state.on_scrape.is_some())
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// An admin server rendering `handle` at `/metrics` and asking `ready` at `/readyz`.
    pub fn new(handle: PrometheusHandle, ready: Arc<dyn Readiness>) -> Self {
        Admin {
            state: State {
                handle,
                ready,
                on_scrape: None,
            },
            limits: AdminLimits::default(),
        }
    }

    /// Replaces the limits.
    pub fn limits(mut self, limits: AdminLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Runs `hook` before each `/metrics` render: the place to refresh sampled gauges (queue
    /// depth, inflight, health) so they are current when scraped and cost nothing otherwise. Runs
    /// on the async runtime; must be quick and must not block.
    pub fn on_scrape(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.state.on_scrape = Some(Arc::new(hook));
        self
    }

    /// Serves until `shutdown` resolves; see [`serve_admin`].
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let Admin { state, limits } = self;
        let state = Arc::new(state);
        let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(64 * 1024)
            .keep_alive(true);
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                            tracing::debug!(%peer, "admin connection refused: at max_connections");
                            drop(stream);
                            continue;
                        };
                        let conn = serve_connection(
                            &http,
                            stream,
                            Arc::clone(&state),
                            stop_rx.clone(),
                            limits.connection_timeout,
                        );
                        conns.spawn(async move {
                            conn.await;
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        // E.g. out of file descriptors: do not spin; the QUIC side matters more.
                        tracing::warn!("admin listener: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        drop(listener);
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(limits.shutdown_grace, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::debug!(
                open = conns.len(),
                "admin listener: closing connections still open after the grace period"
            );
            conns.abort_all();
        }
    }
}

/// What every request handler shares.
struct State {
    handle: PrometheusHandle,
    ready: Arc<dyn Readiness>,
    on_scrape: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// The admin endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Livez,
    Readyz,
}

/// Maps a request line to an endpoint, or to the error status: 404 for an unknown path, 405 for
/// a method other than GET or HEAD on a known one. The query string is not part of `path`.
fn route(method: &Method, path: &str) -> Result<Route, StatusCode> {
    let route = match path {
        "/metrics" => Route::Metrics,
        "/livez" => Route::Livez,
        "/readyz" => Route::Readyz,
        _ => return Err(StatusCode::NOT_FOUND),
    };
    if method == Method::GET || method == Method::HEAD {
        Ok(route)
    } else {
        Err(StatusCode::METHOD_NOT_ALLOWED)
    }
}

const TEXT: &str = "text/plain; charset=utf-8";
/// The Prometheus text exposition format.
const EXPOSITION: &str = "text/plain; version=0.0.4; charset=utf-8";

impl State {
    /// The response to `method path`. For HEAD, hyper sends the headers of the GET response and
    /// drops the body.
    fn respond(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        match route(method, path) {
            Ok(Route::Livez) => text(StatusCode::OK, "ok\n".to_owned()),
            Ok(Route::Readyz) => {
                let (code, body) = self.ready.readiness().render();
                let code = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                text(code, body)
            }
            Ok(Route::Metrics) => {
                if let Some(hook) = &self.on_scrape {
                    hook();
                }
                let mut resp = text(StatusCode::OK, self.handle.render());
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(EXPOSITION));
                resp
            }
            Err(code) => {
                let mut resp = text(code, format!("{code}\n"));
                if code == StatusCode::METHOD_NOT_ALLOWED {
                    resp.headers_mut()
                        .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
                }
                resp
            }
        }
    }
}

fn text(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = code;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(TEXT));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Drives one HTTP/1 connection until it ends, `limit` passes, or shutdown is signalled (then
/// the request in progress finishes and the connection closes).
fn serve_connection(
    http: &http1::Builder,
    stream: TcpStream,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
    limit: Duration,
) -> impl Future<Output = ()> + Send + 'static {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req: Request<Incoming>| {
        let resp = state.respond(req.method(), req.uri().path());
        async move { Ok::<_, Infallible>(resp) }
    });
    let conn = http.serve_connection(TokioIo::new(stream), service);
    async move {
        tokio::pin!(conn);
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        let mut stopping = *stop.borrow();
        if stopping {
            conn.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!("admin connection: {e}");
                    }
                    return;
                }
                changed = stop.changed(), if !stopping => {
                    stopping = true;
                    if changed.is_ok() {
                        conn.as_mut().graceful_shutdown();
                    }
                }
                () = &mut deadline => {
                    tracing::debug!("admin connection: closed at its lifetime limit");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::telemetry::{PartitionHealth, ReadyReport};
    use http_body_util::BodyExt;

    fn state(report: ReadyReport) -> State {
        let recorder = crate::telemetry::prometheus_builder()
            .map(|b| b.build_recorder())
            .unwrap();
        State {
            handle: recorder.handle(),
            ready: Arc::new(move || report.clone()),
            on_scrape: None,
        }
    }

    async fn body(resp: Response<Full<Bytes>>) -> String {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn routing() {
        assert_eq!(route(&Method::GET, "/metrics"), Ok(Route::Metrics));
        assert_eq!(route(&Method::HEAD, "/metrics"), Ok(Route::Metrics));
        assert_eq!(route(&Method::GET, "/livez"), Ok(Route::Livez));
        assert_eq!(route(&Method::GET, "/readyz"), Ok(Route::Readyz));
        assert_eq!(route(&Method::GET, "/"), Err(StatusCode::NOT_FOUND));
        assert_eq!(route(&Method::GET, "/metrics/"), Err(StatusCode::NOT_FOUND));
        assert_eq!(route(&Method::POST, "/nope"), Err(StatusCode::NOT_FOUND));
        for m in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
            assert_eq!(
                route(&m, "/readyz"),
                Err(StatusCode::METHOD_NOT_ALLOWED),
                "{m}"
            );
        }
    }

    #[tokio::test]
    async fn responses() {
        let st = state(ReadyReport {
            keys_loaded: true,
            partitions: vec![PartitionHealth::unhealthy("p0", "token not present")],
            draining: false,
            blocked: None,
            warnings: Vec::new(),
        });

        let r = st.respond(&Method::GET, "/livez");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body(r).await, "ok\n");

        let r = st.respond(&Method::GET, "/readyz");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body(r).await,
            "not ready: no healthy partition\np0: unhealthy: token not present\n"
        );

        let r = st.respond(&Method::POST, "/metrics");
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[ALLOW], "GET, HEAD");

        let r = st.respond(&Method::GET, "/x");
        assert_eq!(r.status(), StatusCode::NOT_FOUND);

        let r = st.respond(&Method::GET, "/metrics");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[CONTENT_TYPE], EXPOSITION);
    }

    #[tokio::test]
    async fn scrape_hook_runs_before_render() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let calls = Arc::new(AtomicUsize::new(0));
        let mut st = state(ReadyReport::default());
        let c = Arc::clone(&calls);
        st.on_scrape = Some(Arc::new(move || {
            c.fetch_add(1, Ordering::Relaxed);
        }));
        let _ = st.respond(&Method::GET, "/livez");
        assert_eq!(calls.load(Ordering::Relaxed), 0);
        let _ = st.respond(&Method::GET, "/metrics");
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }
}
