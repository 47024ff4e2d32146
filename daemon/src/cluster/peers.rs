//! The other daemons of a detector, reached through their control API (the same
//! `POST /run/check`, `/run/start`, `/run/stop` and `GET /run` an operator uses): a run
//! start is checked on every daemon before any starts, then started on each; one refusal
//! refuses the start everywhere, with that daemon's reason.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::liveness::ProcessId;
use super::ClusterConfig;
use crate::contract::{ApiError, RunCheck, RunHeadline, RunRequest};

/// A peer's answer that was not a success: HTTP status and its message. A peer that cannot
/// be reached, or refuses this daemon's token, is a `409` (the detector's daemons are not in
/// a state to start): the operator's own request and token were fine.
pub type PeerError = ApiError;

/// One peer daemon's control API.
pub struct Peer {
    url: String,
    agent: ureq::Agent,
    token: Option<String>,
    /// Which process answered its check (to prove it gone if it falls silent).
    process: Option<ProcessId>,
}

impl Peer {
    /// The peer at `url` (`http://host:port`), called with `token` when set.
    pub fn new(url: &str, token: Option<String>, timeout: Duration) -> Self {
        Self {
            url: url.trim_end_matches('/').to_owned(),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(timeout)
                .timeout(timeout)
                .build(),
            token,
            process: None,
        }
    }

    /// Remembers which process answered its check.
    pub fn identify(&mut self, answer: &RunCheck) {
        self.process.clone_from(&answer.process);
    }

    /// The process that answered its check, if it said.
    pub fn process(&self) -> Option<&ProcessId> {
        self.process.as_ref()
    }

    /// Its base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `POST <path>` with a JSON body; the answer, or its status and `error`.
    pub fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, PeerError> {
        let mut req = self.agent.post(&format!("{}{path}", self.url));
        req = req.set("Content-Type", "application/json");
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        answer(req.send_string(&body.to_string()))
    }

    /// `GET /run`, answered within `within`: its run's state and stream.
    pub fn status(&self, within: Duration) -> Result<RunHeadline, PeerError> {
        let mut req = (self.agent.get(&format!("{}/run", self.url))).timeout(within);
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        answer(req.call())
    }
}

fn answer<T: DeserializeOwned>(r: Result<ureq::Response, ureq::Error>) -> Result<T, PeerError> {
    let refuse = |message: String| ApiError::conflict(message);
    match r {
        Ok(resp) => {
            let text = resp
                .into_string()
                .map_err(|e| refuse(format!("cannot read its answer: {e}")))?;
            serde_json::from_str(&text).map_err(|e| {
                refuse(format!(
                    "its answer is not what a detingestd of this version sends ({e}; is it in a \
                     [cluster]?): {text}"
                ))
            })
        }
        Err(ureq::Error::Status(status, resp)) => {
            let text = resp.into_string().unwrap_or_default();
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or(text);
            match status {
                401 | 403 => Err(refuse(format!(
                    "it refused this daemon's token ({status}: {message}): the daemons of a \
                     detector share one [control] token_file"
                ))),
                _ => Err(ApiError::new(status, message)),
            }
        }
        Err(ureq::Error::Transport(t)) => Err(refuse(format!("cannot reach it: {t}"))),
    }
}

/// The peers of `[cluster]`, called with this daemon's own control token (the daemons of a
/// detector share one).
pub fn peers(config: &ClusterConfig, token: Option<&str>) -> Vec<Peer> {
    let timeout = Duration::from_millis(config.timeout_ms);
    (config.peers.iter())
        .map(|url| Peer::new(url, token.map(str::to_owned), timeout))
        .collect()
}

/// The request a coordinator sends its peers: the operator's, marked with the coordinator so
/// a peer starts only its part.
pub fn part_request(request: &RunRequest, coordinator: &str) -> Value {
    let mut r = request.clone();
    r.coordinator = Some(coordinator.to_owned());
    r.to_json()
}

/// Checks `request` on every peer; the answers (each daemon's part), or the first refusal,
/// named after the daemon that refused.
pub fn check_all(peers: &[Peer], request: &Value) -> Result<Vec<RunCheck>, PeerError> {
    peers
        .iter()
        .map(|p| {
            p.post("/run/check", request).map_err(|e| {
                ApiError::new(
                    e.status,
                    format!("the daemon at {}: {}", p.url(), e.message),
                )
            })
        })
        .collect()
}

/// Starts `request` on every peer; on a refusal, stops those already started and returns it.
pub fn start_all(peers: &[Peer], request: &Value) -> Result<Vec<Value>, PeerError> {
    let mut started = Vec::new();
    for p in peers {
        match p.post("/run/start", request) {
            Ok(v) => started.push(v),
            Err(e) => {
                for q in &peers[..started.len()] {
                    if let Err(e) = q.post::<Value>("/run/stop", &json!({})) {
                        tracing::warn!(peer = q.url(), error = %e.message, "cannot stop a started peer");
                    }
                }
                let message = format!("the daemon at {}: {}", p.url(), e.message);
                return Err(ApiError::new(e.status, message));
            }
        }
    }
    Ok(started)
}

/// Asks every peer to stop its run (a peer with none is fine); returns the failures.
pub fn stop_all(peers: &[Peer]) -> Vec<PeerError> {
    (peers.iter())
        .filter_map(|p| match p.post::<Value>("/run/stop", &json!({})) {
            Ok(_) => None,
            Err(e) if e.status == 409 => None,
            Err(e) => Some(ApiError::new(
                e.status,
                format!("{}: {}", p.url(), e.message),
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_token_is_the_clusters_conflict_not_the_operators_401() {
        let status = |code: u16, body: &str| {
            let r = ureq::Response::new(code, "x", body).unwrap();
            let e = answer::<Value>(Err(ureq::Error::Status(code, r))).unwrap_err();
            (e.status, e.message)
        };
        let (code, message) = status(401, r#"{"error":"a bearer token is required"}"#);
        assert_eq!(code, 409);
        assert!(
            message.contains("share one [control] token_file"),
            "{message}"
        );
        let (code, message) = status(400, r#"{"error":"frames: bad"}"#);
        assert_eq!((code, message.as_str()), (400, "frames: bad"));
    }
}
