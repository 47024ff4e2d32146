//! The Redis thread's connection: connecting with a timeout, checking the server is ready for
//! Blissdata (RedisJSON present, the database initialised by its owner: BLISS's
//! `memory_tracker --init-db`; this sink is a guest and never initialises it, it waits), and
//! outages: one warning when the server goes away, refuses or is not initialised, one line
//! once commands go through again, reconnection attempts backing off in between.

use std::time::{Duration, Instant};

use super::config::redact;
use super::scan::{PROTOCOL_KEY, PROTOCOL_VERSION};

/// Blissdata's server-side sealing function, for other writers sharing the server (this
/// sink seals its own streams with a plain XADD). Our own Lua, same behaviour: append the seal
/// entry whose `id` field is the stream's length.
const SEAL_LIBRARY: &str = r#"#!lua name=mylib
local function seal_stream(keys, args)
  local seal = '18446744073709551615-18446744073709551615'
  local last = redis.call('XREVRANGE', keys[1], '+', '-', 'COUNT', 1)[1]
  local first = -1
  local n = 1
  if last ~= nil then
    if last[1] == seal then
      error(keys[1] .. " is already sealed.")
    end
    first = tonumber(string.match(last[1], "^(%d+)"))
    for i = 1, #last[2], 2 do
      if last[2][i] == 'len' then n = tonumber(last[2][i + 1]) end
    end
  end
  redis.call('XADD', keys[1], seal, 'id', first + n)
  return first + n
end
redis.register_function('seal_stream', seal_stream)
"#;

/// A server to connect to, and the state of the link.
pub struct Link {
    client: redis::Client,
    url: String,
    timeout: Duration,
    max_backoff: Duration,
    con: Option<redis::Connection>,
    backoff: Duration,
    next_attempt: Instant,
    outage: Option<Outage>,
    /// Connections made so far: keys seen on an earlier one may be gone.
    generation: u64,
}

/// The server is away: since when, and why (logged once).
struct Outage {
    since: Instant,
    dropped_before: u64,
}

impl Link {
    /// A link to `url` (not yet connected).
    pub fn new(url: &str, timeout: Duration, max_backoff: Duration) -> redis::RedisResult<Self> {
        Ok(Self {
            client: redis::Client::open(url)?,
            url: redact(url),
            timeout,
            max_backoff,
            con: None,
            backoff: Duration::from_millis(100),
            next_attempt: Instant::now(),
            outage: None,
            generation: 0,
        })
    }

    /// Connects and prepares the server now; the error says why not.
    pub fn connect(&mut self) -> Result<(), LinkError> {
        let mut con = self.client.get_connection_with_timeout(self.timeout)?;
        con.set_read_timeout(Some(self.timeout))
            .and_then(|()| con.set_write_timeout(Some(self.timeout)))?;
        prepare(&mut con)?;
        self.con = Some(con);
        self.generation += 1;
        self.backoff = Duration::from_millis(100);
        Ok(())
    }

    /// The connection, if there is one; reconnects when an attempt is due. `dropped` is the
    /// count of indices not published so far, for the line that ends an outage. True when
    /// this call reconnected.
    pub fn get(&mut self, dropped: u64) -> (Option<&mut redis::Connection>, bool) {
        let mut reconnected = false;
        if self.con.is_none() && Instant::now() >= self.next_attempt {
            match self.connect() {
                Ok(()) => reconnected = true,
                Err(e) => self.failed(&e, dropped),
            }
        }
        (self.con.as_mut(), reconnected)
    }

    /// Lets the next [`Self::get`] try to connect at once, whatever the back-off (a scan is
    /// about to start: worth one attempt now).
    pub fn try_now(&mut self) {
        if self.con.is_none() {
            self.next_attempt = Instant::now();
        }
    }

    /// Commands went through: an outage, if one was on, is over (not at reconnection: a
    /// server that accepts connections but refuses writes, out of memory, is still out).
    pub fn succeeded(&mut self, dropped: u64) {
        if let Some(o) = self.outage.take() {
            tracing::info!(
                url = %self.url,
                after_s = format_args!("{:.1}", o.since.elapsed().as_secs_f64()),
                indices_not_published = dropped - o.dropped_before,
                "redis: publishing again"
            );
        }
    }

    /// A command failed with `e`: drop the connection, and start an outage if none is on.
    pub fn failed(&mut self, e: &dyn std::fmt::Display, dropped: u64) {
        self.con = None;
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(self.max_backoff);
        if self.outage.is_none() {
            tracing::warn!(url = %self.url, error = %e,
                "redis: server unusable; dropping (and counting) what the sink would publish until it is back");
            self.outage = Some(Outage {
                since: Instant::now(),
                dropped_before: dropped,
            });
        }
    }

    /// Which connection this is (one more at each connection made).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// True while connected.
    pub fn is_up(&self) -> bool {
        self.con.is_some()
    }

    /// Connection attempts wait until then.
    pub fn next_attempt(&self) -> Instant {
        self.next_attempt
    }
}

/// Why the server cannot hold scans now.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The server refused a command, or could not be reached.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// No JSON documents: not Redis Stack, nor Redis 8.
    #[error("the server has no RedisJSON ({0}): Blissdata needs Redis Stack or Redis >= 8")]
    NoJson(redis::RedisError),
    /// The database has no Blissdata protocol key: waited for, not refused.
    #[error(
        "the database is not initialised for Blissdata (no _PROTOCOL_VERSION_ key): waiting \
         for its owner to set it up (BLISS's `memory_tracker --init-db`, or \
         `DataStore(url, init_db=True)`); scans are not published meanwhile, files are written \
         as always"
    )]
    NotInitialised,
    /// Another version of the protocol.
    #[error("the server holds Blissdata protocol {0}; this sink writes {PROTOCOL_VERSION}")]
    Protocol(u32),
}

impl LinkError {
    /// True when the database is waited for (its owner will set it up).
    pub fn waiting(&self) -> bool {
        matches!(self, Self::NotInitialised)
    }
}

/// Checks that the server can hold scans (RedisJSON) and that its database was initialised
/// for Blissdata by its owner (the protocol key; this sink never writes it: BLISS's setup
/// refuses a database holding any key, and would then never create its search index). The
/// sealing function other Blissdata writers call is loaded if missing (functions are no
/// keys). A server restarted without persistence loses all of it: this runs on every
/// (re)connection.
fn prepare(con: &mut redis::Connection) -> Result<(), LinkError> {
    let json: redis::RedisResult<redis::Value> =
        redis::cmd("JSON.GET").arg("_detingest_probe_").query(con);
    if let Err(e) = json {
        if e.to_string().contains("unknown command") {
            return Err(LinkError::NoJson(e));
        }
        return Err(e.into());
    }
    let version: Option<u32> = redis::cmd("GET").arg(PROTOCOL_KEY).query(con)?;
    match version {
        None => return Err(LinkError::NotInitialised),
        Some(v) if v != PROTOCOL_VERSION => return Err(LinkError::Protocol(v)),
        Some(_) => {}
    }
    let libraries: redis::Value = redis::cmd("FUNCTION")
        .arg("LIST")
        .arg("LIBRARYNAME")
        .arg("mylib")
        .query(con)?;
    let loaded = matches!(&libraries, redis::Value::Array(a) if !a.is_empty());
    if !loaded {
        let r: redis::RedisResult<String> = redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg(SEAL_LIBRARY)
            .query(con);
        // Another writer may have loaded it meanwhile.
        if let Err(e) = r {
            if !e.to_string().contains("already exists") {
                return Err(e.into());
            }
        }
    }
    Ok(())
}
