//! The HTTP control API and live page of `detingestd serve` (tiny_http, a few `control`
//! threads; loopback by default, beyond it only with a bearer token: [`access`]):
//!
//! - `GET /`: the live page (`page.rs`); `GET /events`: its updates (`events.rs`);
//!   `GET /preview`: the latest preview's pixels (binary, shape and type in headers).
//! - `POST /run/start` with a JSON body (see `runs::run_config`): starts a run;
//!   `201` with its status, `400` naming the offending key, `409` if a run is in progress or
//!   its files exist. `POST /run/stop`: stops it and answers once its files are closed.
//!   `GET /run`: status and counters of the current run, or of the last one.
//! - `GET /metrics`: Prometheus text ([`crate::metrics`]); `GET /health`: liveness.

pub mod access;
mod config;
mod events;
mod page;

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response, Server};

pub use config::ControlConfig;

use crate::metrics::{self, Reading};
use crate::sink::web::LiveView;
use crate::sink::RunControl;
use access::Access;
use events::Clients;

/// Control threads: a stop that waits for a run's files to close leaves others to answer.
const THREADS: usize = 3;

/// Largest preview sent to the page, in bytes of pixels (binned to fit).
const PREVIEW_BYTES: usize = 2 << 20;

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
    clients: Arc<Clients>,
    shutdown: Arc<AtomicBool>,
}

/// Starts the API on its threads; they end when `shutdown` is set. Errors name the key.
pub fn spawn(
    config: &ControlConfig,
    daemon: Arc<dyn Daemon>,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<Vec<std::thread::JoinHandle<()>>> {
    config.validate()?;
    let token = config.token()?;
    let addr = config.listen;
    let server = Arc::new(
        Server::http(addr)
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for the control API: {e}"))?,
    );
    tracing::info!(%addr, token = token.is_some(), public_reads = config.public_reads, "control API listening; live page at http://{addr}/");
    let api = Arc::new(Api {
        daemon,
        access: Access::new(token, config.public_reads, addr),
        max_body: config.max_body_bytes,
        clients: Clients::new(config.max_event_clients),
        shutdown,
    });
    (0..THREADS)
        .map(|k| {
            let (server, api) = (Arc::clone(&server), Arc::clone(&api));
            Ok(std::thread::Builder::new()
                .name(format!("control-{k}"))
                .spawn(move || serve(&server, &api))?)
        })
        .collect()
}

fn serve(server: &Server, api: &Api) {
    while !api.shutdown.load(Ordering::Relaxed) {
        match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(request)) => handle(request, api),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "control API receive failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

type Answer = Result<(u16, Value), (u16, String)>;

fn handle(mut request: Request, api: &Api) {
    let method = request.method().clone();
    let url = request.url().to_owned();
    let path = url.split('?').next().unwrap_or("");
    if method == Method::Get {
        if let Some((kind, body)) = page::asset(path) {
            let r = Response::from_string(body)
                .with_header(header("Content-Type", kind))
                .with_header(header(
                    "Content-Security-Policy",
                    page::CONTENT_SECURITY_POLICY,
                ))
                .with_header(header("X-Frame-Options", "DENY"));
            return reply(request, r);
        }
        if path == "/health" {
            return answer(request, Ok((200, json!({"status": "ok"}))));
        }
    }
    if let Err(refusal) = api.access.check(&request, access::changes_state(&method)) {
        return answer(request, Err(refusal));
    }
    let result: Answer = match (&method, path) {
        (Method::Get, "/metrics") => {
            let text = metrics::render(api.daemon.reading());
            let r = Response::from_string(text)
                .with_header(header("Content-Type", metrics::CONTENT_TYPE));
            return reply(request, r);
        }
        (Method::Get, "/events") => {
            let daemon = Arc::clone(&api.daemon);
            return events::serve(request, daemon, &api.clients, &api.shutdown);
        }
        (Method::Get, "/preview") => return preview(request, api),
        (Method::Get, "/run") => Ok((200, api.daemon.run_status())),
        (Method::Post, "/run/start") => body(&mut request, api.max_body)
            .and_then(|b| api.daemon.start_run(&b).map(|s| (201, s))),
        (Method::Post, "/run/check") => body(&mut request, api.max_body)
            .and_then(|b| api.daemon.check_run(&b).map(|s| (200, s))),
        (Method::Post, "/run/stop") => api.daemon.stop_run().map(|s| (200, s)),
        (_, "/run" | "/run/start" | "/run/check" | "/run/stop" | "/metrics" | "/events" | "/preview") => {
            Err((405, format!("{method} not allowed here")))
        }
        _ => Err((
            404,
            "no such endpoint; try GET /, /run, /metrics, /health, POST /run/start, /run/check, /run/stop"
                .into(),
        )),
    };
    answer(request, result);
}

/// The latest preview: little-endian pixels, with `X-Shape: ny,nx`, `X-Dtype`, `X-Binning`,
/// `X-Index`, `X-Frame-Number`, `X-Stream`; `204` when there is none yet.
fn preview(request: Request, api: &Api) {
    let Some(image) = api.daemon.live_view().and_then(|v| v.image(PREVIEW_BYTES)) else {
        return reply(request, Response::from_string("").with_status_code(204));
    };
    let r = Response::from_data(image.pixels)
        .with_header(header("Content-Type", "application/octet-stream"))
        .with_header(header(
            "X-Shape",
            &format!("{},{}", image.shape[0], image.shape[1]),
        ))
        .with_header(header("X-Dtype", image.dtype))
        .with_header(header("X-Binning", &image.binning.to_string()))
        .with_header(header("X-Index", &image.index.to_string()))
        .with_header(header("X-Frame-Number", &image.frame_number.to_string()))
        .with_header(header("X-Stream", &image.stream));
    reply(request, r)
}

fn answer(request: Request, result: Answer) {
    let (status, value) = result.unwrap_or_else(|(s, m)| (s, json!({"error": m})));
    let mut r = Response::from_string(value.to_string())
        .with_status_code(status)
        .with_header(header("Content-Type", "application/json"));
    if status == 401 {
        r = r.with_header(header("WWW-Authenticate", "Bearer"));
    }
    reply(request, r);
}

fn reply<R: Read>(request: Request, response: Response<R>) {
    let response = response
        .with_header(header("Cache-Control", "no-store"))
        .with_header(header("X-Content-Type-Options", "nosniff"));
    if let Err(e) = request.respond(response) {
        tracing::debug!(error = %e, "control API reply failed");
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .unwrap_or_else(|()| Header::from_bytes("X-Invalid", "1").expect("a valid header"))
}

/// The request's JSON body, at most `max` bytes (`413` beyond).
fn body(request: &mut Request, max: u64) -> Result<Value, (u16, String)> {
    let too_large = || {
        (
            413,
            format!("the body exceeds {max} bytes ([control] max_body_bytes)"),
        )
    };
    if request.body_length().is_some_and(|n| n as u64 > max) {
        return Err(too_large());
    }
    let mut text = String::new();
    request
        .as_reader()
        .take(max + 1)
        .read_to_string(&mut text)
        .map_err(|e| (400, format!("cannot read the body: {e}")))?;
    if text.len() as u64 > max {
        return Err(too_large());
    }
    serde_json::from_str(&text).map_err(|e| (400, format!("the body is not JSON: {e}")))
}
