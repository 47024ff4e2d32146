//! The HTTP JSON control API of `detingestd serve` (tiny_http, one thread, loopback by
//! default):
//!
//! - `POST /run/start` with a JSON body (see [`crate::runs::run_config`]): starts a run;
//!   `201` with its status, `400` naming the offending key, `409` if a run is in progress or
//!   its files exist.
//! - `POST /run/stop`: stops the current run and answers once its files are closed.
//! - `GET /run`: status and counters of the current run, or of the last one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response, Server};

use crate::runs::{ApiError, RunManager};

/// Largest request body accepted.
const MAX_BODY: u64 = 1 << 20;

/// Serves the API on `server` until `shutdown` is set.
pub fn serve(server: &Server, runs: &RunManager, shutdown: &AtomicBool) {
    while !shutdown.load(Ordering::Relaxed) {
        match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(request)) => handle(request, runs),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "control API receive failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Starts the API on its own thread; it ends when `shutdown` is set.
pub fn spawn(
    addr: std::net::SocketAddr,
    runs: Arc<RunManager>,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let server = Server::http(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for the control API: {e}"))?;
    tracing::info!(%addr, "control API listening");
    Ok(std::thread::Builder::new()
        .name("control".into())
        .spawn(move || serve(&server, &runs, &shutdown))?)
}

fn handle(mut request: Request, runs: &RunManager) {
    let route = (request.method().clone(), request.url().to_string());
    let result = match (&route.0, route.1.as_str()) {
        (Method::Get, "/run") => Ok((200, to_value(&runs.status()))),
        (Method::Post, "/run/start") => {
            body(&mut request).and_then(|b| runs.start(&b).map(|s| (201, to_value(&s))))
        }
        (Method::Post, "/run/stop") => runs.stop().map(|s| (200, to_value(&s))),
        (_, "/run" | "/run/start" | "/run/stop") => Err(ApiError {
            status: 405,
            message: format!("{} not allowed here", route.0),
        }),
        _ => Err(ApiError {
            status: 404,
            message: "no such endpoint; try GET /run, POST /run/start, POST /run/stop".into(),
        }),
    };
    let (status, value) = result.unwrap_or_else(|e| (e.status, json!({"error": e.message})));
    let header = Header::from_bytes("Content-Type", "application/json").ok();
    let mut response = Response::from_string(value.to_string()).with_status_code(status);
    if let Some(h) = header {
        response = response.with_header(h);
    }
    if let Err(e) = request.respond(response) {
        tracing::warn!(error = %e, "control API reply failed");
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or_else(|e| json!({"error": e.to_string()}))
}

/// The request's JSON body.
fn body(request: &mut Request) -> Result<Value, ApiError> {
    use std::io::Read;
    let mut text = String::new();
    request
        .as_reader()
        .take(MAX_BODY)
        .read_to_string(&mut text)
        .map_err(|e| ApiError {
            status: 400,
            message: format!("cannot read the body: {e}"),
        })?;
    serde_json::from_str(&text).map_err(|e| ApiError {
        status: 400,
        message: format!("the body is not JSON: {e}"),
    })
}
