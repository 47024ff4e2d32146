//! `[sink.redis]`: the Redis sink's table (server URL with credentials, key prefix, trimming,
//! the queue in front of its thread, what to do when the server refuses us at start), its
//! defaults and its validation.

use serde::Deserialize;

use crate::check::{check_range, ConfigError};
use crate::sink::{PreviewSetting, RedisSink, Sink, SinkContext, SinkNeeds, SinkTable, TableAt};

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
}

impl SinkTable for RedisConfig {
    /// Previews when pixels go to Redis: every frame is a candidate, at most `image_max_hz`
    /// (0: no images).
    fn preview(&self) -> Option<PreviewSetting> {
        Some(PreviewSetting {
            every: u64::from(self.image_max_hz > 0.0),
            max_hz: self.image_max_hz,
            buffers: 2,
            keys: [None, Some("image_max_hz"), None],
        })
    }

    fn needs(&self) -> SinkNeeds {
        SinkNeeds {
            realtime_priority: self.realtime_priority,
            batch_interval: std::time::Duration::from_micros(self.batch_interval_us),
            ..SinkNeeds::default()
        }
    }

    fn build(
        &self,
        ctx: &SinkContext<'_>,
        at: &TableAt,
    ) -> Result<Option<Box<dyn Sink>>, ConfigError> {
        let Some(sink) = RedisSink::start(self, ctx.cores, at)? else {
            return Ok(None);
        };
        // The query endpoint answers from Redis what its history no longer holds.
        if let Some(h) = sink.history() {
            let _ = ctx.late.set(h);
        }
        Ok(Some(Box::new(sink)))
    }

    fn check(&self, at: &TableAt) -> Result<(), ConfigError> {
        if self.enabled() {
            let url = redis::parse_redis_url(&self.url);
            match url.as_ref().map(|u| u.scheme()) {
                Some("redis") => {}
                Some("rediss") => {
                    return Err(ConfigError::new(
                        at.key("url"),
                        "rediss:// (TLS) is not supported by this build; use redis://",
                    ))
                }
                _ => {
                    return Err(ConfigError::new(
                        at.key("url"),
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
                at.key("prefix"),
                "must be letters, digits, '_', '-' or '.'",
            ));
        }
        check_range(at.key("max_entries"), self.max_entries, 1..=u64::MAX)?;
        check_range(at.key("queue"), self.queue, 1..=1_000_000)?;
        check_range(at.key("realtime_priority"), self.realtime_priority, 0..=99)?;
        check_range(
            at.key("batch_interval_us"),
            self.batch_interval_us,
            0..=1_000_000,
        )?;
        check_range(at.key("timeout_ms"), self.timeout_ms, 1..=60_000)?;
        check_range(at.key("max_backoff_ms"), self.max_backoff_ms, 1..=600_000)?;
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

    fn check(c: &RedisConfig) -> Result<(), ConfigError> {
        let at = TableAt::sink("redis");
        c.preview().map_or(Ok(()), |p| p.check(&at))?;
        c.check(&at)
    }

    fn with_url(url: &str) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            ..RedisConfig::default()
        }
    }

    #[test]
    fn urls_are_checked_and_passwords_never_shown() {
        assert!(check(&with_url("")).is_ok(), "off by default");
        assert!(check(&with_url("redis://127.0.0.1:6379/0")).is_ok());
        assert!(check(&with_url("redis://:secret@127.0.0.1:6379")).is_ok());
        let e = check(&with_url("http://u:secret@host")).unwrap_err();
        assert_eq!(e.key, "sink.redis.url");
        assert!(!e.message.contains("secret"), "{}", e.message);
        let e = check(&with_url("rediss://host")).unwrap_err();
        assert!(e.message.contains("TLS"), "{}", e.message);
        assert_eq!(redact("redis://u:pw@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://:pw@h:1"), "redis://:***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut c = with_url("redis://h:1");
        c.prefix = "a:b".into();
        assert_eq!(check(&c).unwrap_err().key, "sink.redis.prefix");
        let mut c = with_url("redis://h:1");
        c.queue = 0;
        assert_eq!(check(&c).unwrap_err().key, "sink.redis.queue");
        let mut c = with_url("redis://h:1");
        c.image_max_hz = f64::NAN;
        assert_eq!(check(&c).unwrap_err().key, "sink.redis.image_max_hz");
    }

    #[test]
    fn pixels_need_previews_unless_the_rate_is_0() {
        let p = with_url("redis://h:1").preview().and_then(|p| p.request());
        assert_eq!(p.map(|p| (p.every, p.max_hz)), Some((1, 2.0)));
        let mut c = with_url("redis://h:1");
        c.image_max_hz = 0.0;
        assert_eq!(c.preview().and_then(|p| p.request()), None);
    }
}
