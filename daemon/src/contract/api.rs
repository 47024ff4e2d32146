//! A run request and a refusal, as every front end speaks them: the HTTP API's bodies, Kafka's
//! `pl72`, a Stream V2 detector's `start`, and one daemon starting its peers.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A refusal: the HTTP status it is answered with and what went wrong (naming the offending
/// key for a bad request).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({status})")]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    /// What went wrong.
    pub message: String,
}

impl ApiError {
    /// A refusal with `status`.
    pub fn new(status: u16, message: impl ToString) -> Self {
        Self {
            status,
            message: message.to_string(),
        }
    }

    /// 400: the request is wrong.
    pub fn bad_request(message: impl ToString) -> Self {
        Self::new(400, message)
    }

    /// 409: not now (a run in progress, files that exist).
    pub fn conflict(message: impl ToString) -> Self {
        Self::new(409, message)
    }

    /// 503: the daemon cannot take it (shutting down, a peer away).
    pub fn unavailable(message: impl ToString) -> Self {
        Self::new(503, message)
    }

    /// 500: something failed here.
    pub fn internal(message: impl ToString) -> Self {
        Self::new(500, message)
    }
}

/// What a run is to be: the stream it writes, and the settings it changes.
///
/// In JSON (`POST /run/start`, `/run/check`): `beamtime`, `source`, `stream` (required
/// strings); `rename_if_exists`; `detector` (NXmx fields over `[detector]`); `coordinator`
/// (set by a daemon starting its peers); any other field is a `[run]` setting.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRequest {
    /// The beamtime.
    pub beamtime: String,
    /// A configured `[[source]]` name (or the data source of a configured stream).
    pub source: String,
    /// The stream.
    pub stream: String,
    /// Written as `<stream>_2`, `_3`, ... when the stream's files exist, instead of refused.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub rename_if_exists: bool,
    /// The daemon that sent this request to start its part (several daemons, one detector).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<String>,
    /// NXmx fields over `[detector]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detector: Option<Map<String, Value>>,
    /// `[run]` fields over the configuration's, by name (checked when the run is built).
    #[serde(flatten)]
    pub settings: Map<String, Value>,
}

impl RunRequest {
    /// A request for `beamtime/source/stream` with no other settings.
    pub fn new(beamtime: &str, source: &str, stream: &str) -> Self {
        Self {
            beamtime: beamtime.to_owned(),
            source: source.to_owned(),
            stream: stream.to_owned(),
            rename_if_exists: false,
            coordinator: None,
            detector: None,
            settings: Map::new(),
        }
    }

    /// Reads a request body; a refusal names the offending key.
    pub fn from_json(body: &Value) -> Result<Self, ApiError> {
        let Value::Object(fields) = body else {
            return Err(ApiError::bad_request(
                "config key `.`: the request must be a JSON object",
            ));
        };
        let bad =
            |key: &str, what: &str| ApiError::bad_request(format!("config key `{key}`: {what}"));
        let text = |key: &str| -> Result<String, ApiError> {
            (fields.get(key).and_then(Value::as_str).map(str::to_owned))
                .ok_or_else(|| bad(key, "required (a string)"))
        };
        let mut r = Self::new(&text("beamtime")?, &text("source")?, &text("stream")?);
        for (key, value) in fields {
            match (key.as_str(), value) {
                ("beamtime" | "source" | "stream", _) => {}
                ("rename_if_exists", Value::Bool(b)) => r.rename_if_exists = *b,
                ("rename_if_exists", _) => return Err(bad(key, "must be true or false")),
                ("coordinator", Value::String(c)) => r.coordinator = Some(c.clone()),
                ("coordinator", _) => return Err(bad(key, "must be a string")),
                ("detector", Value::Object(d)) => r.detector = Some(d.clone()),
                ("detector", _) => return Err(bad(key, "must be a JSON object")),
                _ => {
                    r.settings.insert(key.clone(), value.clone());
                }
            }
        }
        Ok(r)
    }

    /// The request as JSON (what a peer is sent).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The `[run]` setting `key`, if the request sets it.
    pub fn setting(&self, key: &str) -> Option<&Value> {
        self.settings.get(key)
    }
}

/// A daemon's answer to `POST /run/check`: the part of the detector it would write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCheck {
    /// Its `[cluster] name`.
    pub daemon: String,
    /// The stream it would write.
    pub stream: String,
    /// The modules it takes, one bit each.
    pub modules: u64,
    /// Its master file.
    pub master: PathBuf,
    /// Which process answered (to prove it gone if it falls silent).
    #[serde(default)]
    pub process: Option<ProcessId>,
}

/// Which process a daemon is: enough to tell, on its host, whether it still runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`): one per host and boot.
    pub boot: String,
    /// The PID namespace (`/proc/self/ns/pid`): pids mean the same only within one.
    pub pid_ns: String,
    /// The process id.
    pub pid: u32,
    /// Its start time in clock ticks after boot (`/proc/<pid>/stat` field 22): a pid used
    /// again by a new process has another.
    pub started: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_request_reads_back_as_it_was_sent_and_refusals_name_the_key() {
        let body = json!({"beamtime": "bt", "source": "det", "stream": "s1", "frames": 10,
                          "detector": {"sample_name": "x"}, "coordinator": "d1"});
        let r = RunRequest::from_json(&body).unwrap();
        assert_eq!(r.setting("frames"), Some(&json!(10)));
        assert_eq!(r.coordinator.as_deref(), Some("d1"));
        assert_eq!(r.to_json(), body);
        let e = RunRequest::from_json(&json!({"beamtime": "bt", "source": "det"})).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("`stream`"), "{}", e.message);
        let e = RunRequest::from_json(&json!({"beamtime": "b", "source": "s", "stream": "s",
                                               "detector": 3}))
        .unwrap_err();
        assert!(e.message.contains("`detector`"), "{}", e.message);
    }
}
