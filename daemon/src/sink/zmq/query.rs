//! The query endpoint (ZeroMQ REP) for late joiners:
//!
//! - `last` -> the latest index of every stream and whether it has finished;
//! - `range <beamtime/source/stream> <from> <to>` -> the frames held in the history, and for
//!   the rest `expired` (with where to read them), `not_yet` or `never`. A stream the history
//!   does not hold is looked up in Redis when the Redis sink is on (its scans outlive the
//!   daemon): see `sink::redis::late`.
//!
//! Replies are JSON with `"ok": true`, or `"ok": false` and an `"error"` for a malformed or
//! unanswerable request; the endpoint keeps serving either way. Polls with a timeout so it
//! notices when to stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::history::{History, Span};
use crate::sink::messages::FrameMessage;
use crate::sink::{LateHistory, LateSlot};

/// Most indices one `range` request may ask for.
pub const MAX_RANGE: u64 = 100_000;

/// Serves requests on the bound REP `socket` until `stop` is set.
pub fn serve(
    socket: zmq::Socket,
    history: Arc<Mutex<History>>,
    late: LateSlot,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        match socket.poll(zmq::POLLIN, 100) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "query socket failed; no more queries");
                return;
            }
        }
        let Ok(request) = socket.recv_bytes(0) else {
            continue;
        };
        let reply = answer(
            &history,
            late.get().map(|l| l.as_ref() as &dyn LateHistory),
            &request,
        );
        if let Err(e) = socket.send(reply.to_string().as_bytes(), 0) {
            tracing::warn!(error = %e, "could not send a query reply");
        }
    }
}

/// The reply to one request. The history is locked only to copy out what the reply needs;
/// the JSON is built after, so a large `range` never holds up the publisher.
/// A stream the history does not know is looked up in `late` (Redis), if given.
pub fn answer(history: &Mutex<History>, late: Option<&dyn LateHistory>, request: &[u8]) -> Value {
    let lock = || history.lock().unwrap_or_else(|e| e.into_inner());
    match parse(request) {
        Ok(Request::Last) => {
            let streams: Vec<(String, u64, bool, u64)> = lock()
                .streams()
                .map(|(key, s)| (key.clone(), s.last, s.finished.is_some(), s.readable))
                .collect();
            let streams: serde_json::Map<String, Value> = streams
                .into_iter()
                .map(|(key, last, finished, readable)| {
                    let v = json!({"last": last, "finished": finished, "readable_up_to": readable});
                    (key, v)
                })
                .collect();
            json!({"ok": true, "streams": streams})
        }
        Ok(Request::Range { stream, from, to }) => {
            let (found, readable) = {
                let history = lock();
                let readable = history.stream(stream).map_or(0, |s| s.readable);
                (history.range(stream, from, to), readable)
            };
            let Some((info, spans)) = found else {
                return late
                    .and_then(|l| l.range(stream, from, to))
                    .unwrap_or_else(|| error(&format!("unknown stream {stream:?}")));
            };
            let file = info.file.to_string_lossy();
            let mut items = Vec::new();
            for span in spans {
                match span {
                    Span::Frames(frames) => items.extend(frames.iter().map(|r| {
                        let mut v = serde_json::to_value(FrameMessage::new(&info, &file, r))
                            .unwrap_or(Value::Null);
                        v["status"] = json!("ok");
                        v["readable_up_to"] = json!(readable); // the watermark now
                        v
                    })),
                    Span::Expired { from, to } => items.push(json!({
                        "status": "expired", "from": from, "to": to,
                        "file": file, "dataset": info.dataset,
                    })),
                    Span::NotYet { from, to } => {
                        items.push(json!({"status": "not_yet", "from": from, "to": to}))
                    }
                    Span::Never { from, to } => {
                        items.push(json!({"status": "never", "from": from, "to": to}))
                    }
                }
            }
            json!({"ok": true, "stream": stream, "items": items})
        }
        Err(e) => error(&e),
    }
}

fn error(message: &str) -> Value {
    json!({"ok": false, "error": message})
}

enum Request<'a> {
    Last,
    Range { stream: &'a str, from: u64, to: u64 },
}

fn parse(request: &[u8]) -> Result<Request<'_>, String> {
    let text = std::str::from_utf8(request).map_err(|_| "request is not UTF-8".to_string())?;
    let words: Vec<&str> = text.split_whitespace().collect();
    let usage = "expected `last` or `range <beamtime/source/stream> <from> <to>`";
    match words.as_slice() {
        ["last"] => Ok(Request::Last),
        ["range", stream, from, to] => {
            let index = |w: &str| {
                w.parse::<u64>()
                    .map_err(|_| format!("{w:?} is not an index; {usage}"))
            };
            let (from, to) = (index(from)?, index(to)?);
            if from == 0 || from > to {
                return Err(format!("range {from}..{to} is empty or starts below 1"));
            }
            if to - from >= MAX_RANGE {
                return Err(format!("at most {MAX_RANGE} indices per request"));
            }
            Ok(Request::Range { stream, from, to })
        }
        _ => Err(format!("cannot parse {text:?}; {usage}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_requests_get_an_error_reply() {
        let h = Mutex::new(History::new(4));
        for bad in [
            &b"lats"[..],
            b"range",
            b"range a/b/c 1",
            b"range a/b/c x 3",
            b"range a/b/c 5 2",
            b"range a/b/c 0 2",
            b"range a/b/c 1 999999999",
            b"\xff\xfe",
            b"",
        ] {
            let v = answer(&h, None, bad);
            assert_eq!(v["ok"], false, "{:?}", String::from_utf8_lossy(bad));
            assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));
        }
        assert_eq!(
            answer(&h, None, b"range a/b/c 1 2")["ok"],
            false,
            "unknown stream"
        );
        assert_eq!(answer(&h, None, b"last")["ok"], true);
    }
}
