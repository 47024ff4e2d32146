//! The HTTP control API and live page of `detingestd serve` (hyper on a small tokio runtime,
//! [`server`]; loopback by default, beyond it only with a bearer token: [`access`]):
//!
//! - `GET /`: the live page (`page.rs`); `GET /events`: its updates (`events.rs`);
//!   `GET /preview`: the latest preview's pixels (binary, shape and type in headers).
//! - `POST /run/start` with a JSON body (see `runs::run_config`): starts a run;
//!   `201` with its status, `400` naming the offending key, `409` if a run is in progress or
//!   its files exist. `POST /run/stop`: stops it and answers once its files are closed.
//!   `GET /run`: status and counters of the current run, or of the last one.
//! - `GET /metrics`: Prometheus text ([`crate::metrics`]); `GET /health`: liveness.
//!
//! Every call into the daemon runs on one of the runtime's blocking threads: a start that
//! waits for its peers or a stop that waits for files to close holds up no other request.

pub mod access;
mod config;
mod events;
mod page;
mod server;

use std::convert::Infallible;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

pub use config::ControlConfig;

use crate::contract::{ApiError, RunRequest};
use crate::metrics::{self, Reading};
use crate::sink::web::LiveView;
use crate::sink::RunControl;
use access::Access;
use events::Events;

/// Largest preview sent to the page, in bytes of pixels (binned to fit).
const PREVIEW_BYTES: usize = 2 << 20;

/// Threads that call into the daemon at once (more requests wait for one).
const BLOCKING_THREADS: usize = 8;

/// A response body: whole, or a stream of events.
pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// What the API operates: the run manager.
pub trait Daemon: RunControl {
    /// What `GET /metrics` reports.
    fn reading(&self) -> Reading;
    /// What the live page shows of the frames, if the page is fed.
    fn live_view(&self) -> Option<Arc<LiveView>>;
}

/// One server's shared state.
struct Api {
    daemon: Arc<dyn Daemon>,
    access: Access,
    max_body: u64,
    body_timeout: Duration,
    events: Arc<Events>,
}

/// The API's thread, and the address it listens on (the port the kernel gave, for
/// `listen = "127.0.0.1:0"`).
pub struct Serving {
    /// The `control` thread: it never ends by itself.
    pub thread: std::thread::JoinHandle<()>,
    /// The address bound.
    pub addr: std::net::SocketAddr,
}

/// Starts the API on its thread (`control`); it ends when `shutdown` is set. Errors name the
/// key.
pub fn spawn(
    config: &ControlConfig,
    daemon: Arc<dyn Daemon>,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<Serving> {
    config.validate()?;
    let token = config.token()?;
    let addr = config.listen;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("control-io")
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build()?;
    let listener = listen(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for the control API: {e}"))?;
    let addr = listener.local_addr()?;
    let limits = server::Limits {
        connections: server::limit(config.max_connections),
        header_timeout: Duration::from_millis(config.header_timeout_ms),
    };
    tracing::info!(%addr, token = token.is_some(), public_reads = config.public_reads, max_connections = limits.connections, "control API listening; live page at http://{addr}/");
    let api = Arc::new(Api {
        daemon: Arc::clone(&daemon),
        access: Access::new(token, config.public_reads, addr),
        max_body: config.max_body_bytes,
        body_timeout: Duration::from_millis(config.body_timeout_ms),
        events: Events::new(config.max_event_clients),
    });
    let thread = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            runtime.block_on(async {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return tracing::error!(error = %e, "control API cannot listen"),
                };
                tokio::spawn(Arc::clone(&api.events).produce(daemon));
                server::serve(listener, limits, api, &shutdown).await;
            });
            // A stop still waiting for its files is not waited for: the daemon is ending.
            runtime.shutdown_timeout(Duration::from_millis(500));
        })?;
    Ok(Serving { thread, addr })
}

type Answer = Result<(u16, Value), ApiError>;

/// Answers one request.
async fn handle(api: &Arc<Api>, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    if method == Method::GET {
        if let Some((kind, body)) = page::asset(&path) {
            let r = Response::builder()
                .header("Content-Type", kind)
                .header("Content-Security-Policy", page::CONTENT_SECURITY_POLICY)
                .header("X-Frame-Options", "DENY");
            return reply(r, Bytes::from_static(body.as_bytes()));
        }
        if path == "/health" {
            return json_answer(Ok((200, json!({"status": "ok"}))));
        }
    }
    if let Err(refusal) = api
        .access
        .check(request.headers(), access::changes_state(&method))
    {
        return json_answer(Err(refusal));
    }
    let daemon = Arc::clone(&api.daemon);
    let result: Answer = match (&method, path.as_str()) {
        (&Method::GET, "/metrics") => {
            return match blocking(move || Ok(metrics::render(daemon.reading()))).await {
                Ok(text) => reply(
                    Response::builder().header("Content-Type", metrics::CONTENT_TYPE),
                    Bytes::from(text),
                ),
                Err(e) => json_answer(Err(e)),
            };
        }
        (&Method::GET, "/events") => return no_store(api.events.serve()),
        (&Method::GET, "/preview") => return preview(daemon).await,
        (&Method::GET, "/run") => blocking(move || answer(200, &daemon.run_status())).await,
        (&Method::POST, "/run/start") => match body(request, api).await {
            Ok(b) => blocking(move || answer(201, &daemon.start_run(&b)?)).await,
            Err(e) => Err(e),
        },
        (&Method::POST, "/run/check") => match body(request, api).await {
            Ok(b) => blocking(move || answer(200, &daemon.check_run(&b)?)).await,
            Err(e) => Err(e),
        },
        (&Method::POST, "/run/stop") => blocking(move || answer(200, &daemon.stop_run()?)).await,
        (_, "/run" | "/run/start" | "/run/check" | "/run/stop" | "/metrics" | "/events" | "/preview") => {
            Err(ApiError::new(405, format!("{method} not allowed here")))
        }
        _ => Err(ApiError::new(404,
            "no such endpoint; try GET /, /run, /metrics, /health, POST /run/start, /run/check, /run/stop",
        )),
    };
    json_answer(result)
}

/// Runs `call` on a blocking thread (it may wait on the daemon's locks or files).
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(call).await {
        Ok(r) => r,
        Err(e) => Err(ApiError::new(
            500,
            format!("the request failed inside the daemon: {e}"),
        )),
    }
}

/// The latest preview: little-endian pixels, with `X-Shape: ny,nx`, `X-Dtype`, `X-Binning`,
/// `X-Index`, `X-Frame-Number`, `X-Stream`; `204` when there is none yet.
async fn preview(daemon: Arc<dyn Daemon>) -> Response<Body> {
    let image = blocking(move || Ok(daemon.live_view().and_then(|v| v.image(PREVIEW_BYTES))));
    let Ok(Some(image)) = image.await else {
        return reply(Response::builder().status(204), Bytes::new());
    };
    let r = Response::builder()
        .header("Content-Type", "application/octet-stream")
        .header("X-Shape", format!("{},{}", image.shape[0], image.shape[1]))
        .header("X-Dtype", image.dtype)
        .header("X-Binning", image.binning.to_string())
        .header("X-Index", image.index.to_string())
        .header("X-Frame-Number", image.frame_number.to_string())
        .header("X-Stream", image.stream);
    reply(r, Bytes::from(image.pixels))
}

/// A JSON answer: the value, or `{"error": ...}` with the status.
pub(crate) fn json_answer(result: Answer) -> Response<Body> {
    let (status, value) = result.unwrap_or_else(|e| (e.status, json!({"error": e.message})));
    let mut r = Response::builder()
        .status(status)
        .header("Content-Type", "application/json");
    if status == 401 {
        r = r.header("WWW-Authenticate", "Bearer");
    }
    reply(r, Bytes::from(value.to_string()))
}

/// The response `builder` makes with `body`, not cached and not sniffed.
fn reply(builder: hyper::http::response::Builder, body: Bytes) -> Response<Body> {
    match builder.body(Full::new(body).boxed()) {
        Ok(r) => no_store(r),
        Err(e) => {
            tracing::warn!(error = %e, "control API cannot build an answer");
            let mut r = Response::new(Full::new(Bytes::new()).boxed());
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        }
    }
}

fn no_store(mut r: Response<Body>) -> Response<Body> {
    let h = r.headers_mut();
    h.insert("Cache-Control", "no-store".parse().expect("a header"));
    h.insert(
        "X-Content-Type-Options",
        "nosniff".parse().expect("a header"),
    );
    r
}

/// The request's JSON body: at most `max_body_bytes` (`413` beyond), within `body_timeout`
/// (`408` after).
async fn body(request: Request<Incoming>, api: &Api) -> Result<RunRequest, ApiError> {
    let max = api.max_body;
    let too_large = || {
        ApiError::new(
            413,
            format!("the body exceeds {max} bytes ([control] max_body_bytes)"),
        )
    };
    let declared = (request.headers().get("Content-Length"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let limited = Limited::new(request.into_body(), max as usize);
    let bytes = match tokio::time::timeout(api.body_timeout, limited.collect()).await {
        Err(_) => {
            return Err(ApiError::new(
                408,
                format!(
                    "the body did not arrive within {} ms ([control] body_timeout_ms)",
                    api.body_timeout.as_millis()
                ),
            ))
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Ok(Err(e)) => return Err(ApiError::new(400, format!("cannot read the body: {e}"))),
        Ok(Ok(b)) => b.to_bytes(),
    };
    let json: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    RunRequest::from_json(&json)
}

/// `value` as an answer with `status`.
fn answer<T: serde::Serialize>(status: u16, value: &T) -> Answer {
    let json = serde_json::to_value(value).map_err(ApiError::internal)?;
    Ok((status, json))
}

/// Connections the kernel queues for the accept loop. A burst of clients (thousands of idle
/// ones, a page reloading everywhere) beyond the queue has its handshakes dropped and retried
/// a second later: the queue is made as long as the kernel allows (it caps it at
/// `net.core.somaxconn`, 4096 by default) rather than std's 128.
const BACKLOG: i32 = 4096;

/// A non-blocking listener on `addr` with [`BACKLOG`].
fn listen(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}
