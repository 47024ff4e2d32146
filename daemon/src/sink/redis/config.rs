//! `[sink.redis]`: the Redis sink's table (server URL with credentials, key prefix, trimming,
//! the queue in front of its thread, what to do when the server refuses us at start), its
//! defaults and its validation.

use serde::Deserialize;

use crate::check::{check_range, ConfigError};
use crate::sink::{PreviewRequest, SinkNeeds};

/// `[sink.redis]`: publish every stream as a Blissdata scan on a Redis server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[user][:password@]host:port[/db]` (`""`: no Redis sink). `rediss://` for TLS
    /// is refused: this build has no TLS.
    pub url: String,
    /// Prefix of the scan and stream keys (`<prefix>:scan:<pk>`, `<prefix>:stream:<pk>`).
    /// Blissdata's readers look under `esrf`, the prefix of its default identity model.
    pub prefix: String,
    /// Entries kept per numeric stream (`XADD ... MAXLEN ~ n`; one entry holds the indices of
    /// one batch, so at least this many indices stay). Older ones are trimmed: readers get
    /// Blissdata's "no more there" answer.
    pub max_entries: u64,
    /// Put a frame's pixels in Redis at most this often per stream (decoded from the preview
    /// chunk; 0: never, every image is read from the file).
    pub image_max_hz: f64,
    /// Batches waiting for the Redis thread; when full, batches are dropped and counted.
    pub queue: usize,
    /// When the server cannot be used at start (unreachable, wrong password, no RedisJSON):
    /// `"fail"` refuses to start, naming `sink.redis.url`; `"continue"` starts without Redis
    /// and keeps trying to connect, dropping and counting meanwhile.
    pub on_start_error: OnStartError,
    /// A connection attempt gives up after this long, a command waits at most this long.
    pub timeout_ms: u64,
    /// Reconnection attempts back off up to this long apart.
    pub max_backoff_ms: u64,
    /// Run the `redis` thread and the notification thread under SCHED_FIFO at this priority
    /// (1..=99), so an index reaches Redis as soon as it is written even while compression
    /// keeps every core busy (0: normal scheduling). Needs root or CAP_SYS_NICE; refused, it
    /// is logged and the threads run normally.
    pub realtime_priority: i32,
    /// Hand the Redis thread what was written at most once per this many microseconds (the
    /// notification thread's batching; the larger of this and `live.batch_interval_us`
    /// applies): fewer, larger entries and round trips, at most this much later (0: every
    /// batch at once).
    pub batch_interval_us: u64,
}

/// What a Redis server that cannot be used at start does to the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStartError {
    /// Refuse to start.
    Fail,
    /// Start without it, and keep trying.
    Continue,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            prefix: "esrf".into(),
            max_entries: 100_000,
            image_max_hz: 2.0,
            queue: 1024,
            on_start_error: OnStartError::Fail,
            timeout_ms: 1000,
            max_backoff_ms: 5000,
            realtime_priority: 0,
            batch_interval_us: 1000,
        }
    }
}

impl RedisConfig {
    /// True when a server is configured.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// Previews when pixels go to Redis: every frame is a candidate, at most `image_max_hz`.
    pub fn needs(&self) -> SinkNeeds {
        SinkNeeds {
            previews: (self.enabled() && self.image_max_hz > 0.0)
                .then_some(PreviewRequest {
                    every: 1,
                    max_hz: self.image_max_hz,
                    buffers: 2,
                })
                .into_iter()
                .collect(),
            realtime_priority: self.realtime_priority,
            batch_interval: std::time::Duration::from_micros(self.batch_interval_us),
        }
    }

    /// Checks what the types alone cannot; errors name the `sink.redis.*` key.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.enabled() {
            let url = redis::parse_redis_url(&self.url);
            match url.as_ref().map(|u| u.scheme()) {
                Some("redis") => {}
                Some("rediss") => {
                    return Err(ConfigError::new(
                        "sink.redis.url",
                        "rediss:// (TLS) is not supported by this build; use redis://",
                    ))
                }
                _ => {
                    return Err(ConfigError::new(
                        "sink.redis.url",
                        format!(
                            "{:?} is not a Redis URL (redis://[user][:password@]host:port[/db])",
                            redact(&self.url)
                        ),
                    ))
                }
            }
        }
        let ok_prefix = !self.prefix.is_empty()
            && self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        if !ok_prefix {
            return Err(ConfigError::new(
                "sink.redis.prefix",
                "must be letters, digits, '_', '-' or '.'",
            ));
        }
        check_range("sink.redis.max_entries", self.max_entries, 1..=u64::MAX)?;
        check_range("sink.redis.queue", self.queue, 1..=1_000_000)?;
        check_range(
            "sink.redis.realtime_priority",
            self.realtime_priority,
            0..=99,
        )?;
        check_range(
            "sink.redis.batch_interval_us",
            self.batch_interval_us,
            0..=1_000_000,
        )?;
        check_range("sink.redis.timeout_ms", self.timeout_ms, 1..=60_000)?;
        check_range(
            "sink.redis.max_backoff_ms",
            self.max_backoff_ms,
            1..=600_000,
        )?;
        if !(self.image_max_hz.is_finite() && self.image_max_hz >= 0.0) {
            return Err(ConfigError::new(
                "sink.redis.image_max_hz",
                "must be a number >= 0",
            ));
        }
        Ok(())
    }
}

/// `url` with its password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
            } else {
                url.to_owned()
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_url(url: &str) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            ..RedisConfig::default()
        }
    }

    #[test]
    fn urls_are_checked_and_passwords_never_shown() {
        assert!(with_url("").check().is_ok(), "off by default");
        assert!(with_url("redis://127.0.0.1:6379/0").check().is_ok());
        assert!(with_url("redis://:secret@127.0.0.1:6379").check().is_ok());
        let e = with_url("http://u:secret@host").check().unwrap_err();
        assert_eq!(e.key, "sink.redis.url");
        assert!(!e.message.contains("secret"), "{}", e.message);
        let e = with_url("rediss://host").check().unwrap_err();
        assert!(e.message.contains("TLS"), "{}", e.message);
        assert_eq!(redact("redis://u:pw@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://:pw@h:1"), "redis://:***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut c = with_url("redis://h:1");
        c.prefix = "a:b".into();
        assert_eq!(c.check().unwrap_err().key, "sink.redis.prefix");
        let mut c = with_url("redis://h:1");
        c.queue = 0;
        assert_eq!(c.check().unwrap_err().key, "sink.redis.queue");
        let mut c = with_url("redis://h:1");
        c.image_max_hz = f64::NAN;
        assert_eq!(c.check().unwrap_err().key, "sink.redis.image_max_hz");
    }

    #[test]
    fn pixels_need_previews_only_when_enabled() {
        assert!(RedisConfig::default().needs().previews.is_empty());
        let p = with_url("redis://h:1").needs().previews[0];
        assert_eq!((p.every, p.max_hz), (1, 2.0));
        let mut c = with_url("redis://h:1");
        c.image_max_hz = 0.0;
        assert!(c.needs().previews.is_empty());
    }
}
