//! Who may do what on the control API: the bearer token, public reads, and the checks that
//! keep a web page in the operator's browser from using the API behind their back.
//!
//! - With a token (`[control] token_file`): every state-changing request, and every read
//!   unless `public_reads`, must carry `Authorization: Bearer <token>`; else `401`.
//! - Without one (loopback only, checked at startup): the `Host` header must name loopback,
//!   so a DNS-rebinding page cannot reach the API under its own name.
//! - Always: a `POST` a browser marks cross-site (`Sec-Fetch-Site`, or an `Origin` that is
//!   not this host) is refused `403`; the API grants no CORS, so a foreign page's script can
//!   neither read answers nor send the JSON requests the API takes.
//! - The page's static files and `GET /health` need nothing: they hold no data.

use std::net::SocketAddr;

use hyper::header::HeaderMap;
use hyper::Method;

use crate::contract::ApiError;

/// The access policy of one server.
#[derive(Debug, Clone)]
pub struct Access {
    token: Option<String>,
    public_reads: bool,
    listen: SocketAddr,
}

impl Access {
    /// The policy of a server on `listen`, with `token` if one is configured.
    pub fn new(token: Option<String>, public_reads: bool, listen: SocketAddr) -> Self {
        Self {
            token,
            public_reads,
            listen,
        }
    }

    /// Whether a request with `headers` on a route that `changes` state (or only reads) may
    /// go ahead.
    pub fn check(&self, headers: &HeaderMap, changes: bool) -> Result<(), ApiError> {
        let header = |name: &str| {
            (headers.get(name)).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        if self.token.is_none() {
            let host = header("Host").unwrap_or_default();
            if !self.loopback_host(&host) {
                return Err(ApiError::new(
                    403,
                    format!("Host {host:?} is not this loopback API"),
                ));
            }
        }
        if changes {
            if let Some(site) = header("Sec-Fetch-Site") {
                if site != "same-origin" && site != "none" {
                    return Err(ApiError::new(
                        403,
                        format!("cross-site request refused ({site})"),
                    ));
                }
            } else if let (Some(origin), Some(host)) = (header("Origin"), header("Host")) {
                let origin_host = origin.split("://").nth(1).unwrap_or("");
                if origin_host != host {
                    return Err(ApiError::new(403, format!("request from {origin} refused")));
                }
            }
        }
        match &self.token {
            Some(token) if changes || !self.public_reads => {
                let given = header("Authorization").unwrap_or_default();
                let given = given.strip_prefix("Bearer ").unwrap_or("");
                if constant_time_eq(given.as_bytes(), token.as_bytes()) {
                    Ok(())
                } else {
                    Err(ApiError::new(
                        401,
                        "a bearer token is required (Authorization: Bearer ...)",
                    ))
                }
            }
            _ => Ok(()),
        }
    }

    /// `host` (a Host header) names a loopback address or `localhost` (any port).
    fn loopback_host(&self, host: &str) -> bool {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        let name = name.trim_start_matches('[').trim_end_matches(']');
        name.eq_ignore_ascii_case("localhost")
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
            || name == self.listen.ip().to_string()
    }
}

/// Compares without stopping at the first difference (the time taken does not tell an
/// attacker how much of a guess was right).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Whether `method` may change state (everything but GET and HEAD).
pub fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_with_and_without_ports() {
        let a = Access::new(None, false, "127.0.0.1:8450".parse().unwrap());
        for ok in [
            "127.0.0.1:8450",
            "localhost",
            "LOCALHOST:1",
            "[::1]:8450",
            "127.0.0.2",
        ] {
            assert!(a.loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example:8450",
            "",
            "10.0.0.1:8450",
            "127.0.0.1.evil.example",
        ] {
            assert!(!a.loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
