//! Late-join answers from Redis: the query endpoint's `range` for a stream its in-memory
//! history does not hold (a run from before the daemon restarted, or pushed out of the
//! history) is read from the stream's scan: `<prefix>:detingest:scan:<stream>` names the
//! newest scan of that stream, its numeric streams give each index's frame number, lost flag,
//! packets lost and arrival time. Indices trimmed from Redis are `expired` (read them from the
//! file), past a sealed end `never`, past the last entry of an open scan `not_yet`.

use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};

use super::config::RedisConfig;
use super::scan::{NUMERIC, SEAL_ID};
use crate::sink::LateHistory;

/// Reads past runs' entries from the Redis server the sink publishes to.
pub struct RedisHistory {
    client: redis::Client,
    prefix: String,
    timeout: Duration,
    con: Mutex<Option<redis::Connection>>,
}

/// One numeric stream's values for indices `from..=to` (0-based), and how long it is.
struct Column {
    values: Vec<Option<f64>>,
    /// Indices published so far (the end of the last entry), and whether sealed.
    length: u64,
    sealed: bool,
}

impl RedisHistory {
    /// A reader for `cfg`'s server (connects on first use).
    pub fn new(cfg: &RedisConfig) -> redis::RedisResult<Self> {
        Ok(Self {
            client: redis::Client::open(cfg.url.as_str())?,
            prefix: cfg.prefix.clone(),
            timeout: Duration::from_millis(cfg.timeout_ms),
            con: Mutex::new(None),
        })
    }

    fn with_connection<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        let mut guard = self.con.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            let con = self
                .client
                .get_connection_with_timeout(self.timeout)
                .and_then(|c| {
                    c.set_read_timeout(Some(self.timeout))?;
                    c.set_write_timeout(Some(self.timeout))?;
                    Ok(c)
                })?;
            *guard = Some(con);
        }
        let Some(con) = guard.as_mut() else {
            return Err((redis::ErrorKind::Io, "no connection").into());
        };
        let r = f(con);
        if r.is_err() {
            *guard = None;
        }
        r
    }

    fn answer(&self, stream: &str, from: u64, to: u64) -> redis::RedisResult<Option<Value>> {
        let pointer = format!("{}:detingest:scan:{stream}", self.prefix);
        let Some(scan_key) =
            self.with_connection(|c| redis::cmd("GET").arg(&pointer).query::<Option<String>>(c))?
        else {
            return Ok(None);
        };
        let doc: Option<String> =
            self.with_connection(|c| redis::cmd("JSON.GET").arg(&scan_key).query(c))?;
        let Some(doc) = doc.and_then(|d| serde_json::from_str::<Value>(&d).ok()) else {
            return Ok(None);
        };
        let source = doc["info"]["detingest"]["source"].as_str().unwrap_or("");
        let mut columns = Vec::new();
        for (name, dtype) in NUMERIC {
            let pk = doc["data_streams"][format!("{source}:{name}")]["pk"]
                .as_str()
                .unwrap_or("");
            let key = format!("{}:stream:{pk}", self.prefix);
            columns.push(self.column(&key, dtype, from - 1, to - 1)?);
        }
        let file = doc["info"]["detingest"]["master_file"].clone();
        let dataset = doc["info"]["detingest"]["dataset"].clone();
        let (length, sealed) = (columns[0].length, columns[0].sealed);
        let mut items = Vec::new();
        let mut gap: Option<(&str, u64, u64)> = None;
        let flush = |gap: &mut Option<(&str, u64, u64)>, items: &mut Vec<Value>| {
            if let Some((status, a, b)) = gap.take() {
                let mut v = json!({"status": status, "from": a, "to": b});
                if status == "expired" {
                    v["file"] = file.clone();
                    v["dataset"] = dataset.clone();
                }
                items.push(v);
            }
        };
        for index in from..=to {
            let k = (index - from) as usize;
            let got: Option<Vec<f64>> = columns.iter().map(|c| c.values[k]).collect();
            let status = match got {
                Some(v) => {
                    flush(&mut gap, &mut items);
                    items.push(json!({
                        "status": "ok", "stream": stream, "index": index,
                        "frame_number": v[0] as u64, "lost": v[1] != 0.0,
                        "packets_lost": v[2] as u64, "timestamp_ns": (v[3] * 1e9) as u64,
                        "file": file, "dataset": dataset, "from_redis": scan_key,
                    }));
                    continue;
                }
                None if index <= length => "expired",
                None if sealed => "never",
                None => "not_yet",
            };
            match gap.as_mut() {
                Some((s, _, b)) if *s == status => *b = index,
                _ => {
                    flush(&mut gap, &mut items);
                    gap = Some((status, index, index));
                }
            }
        }
        flush(&mut gap, &mut items);
        Ok(Some(
            json!({"ok": true, "stream": stream, "items": items, "from_redis": scan_key}),
        ))
    }

    /// Values of `key` (a numeric stream of `dtype`) for 0-based indices `lo..=hi`.
    fn column(&self, key: &str, dtype: &str, lo: u64, hi: u64) -> redis::RedisResult<Column> {
        type Entries = Vec<(String, Vec<(String, Vec<u8>)>)>;
        let (before, within, last): (Entries, Entries, Entries) = self.with_connection(|c| {
            redis::pipe()
                .cmd("XREVRANGE")
                .arg(key)
                .arg(format!("{lo}-1"))
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .cmd("XRANGE")
                .arg(key)
                .arg(format!("({lo}-1"))
                .arg(format!("{hi}-1"))
                .cmd("XREVRANGE")
                .arg(key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query(c)
        })?;
        let mut values = vec![None; (hi - lo + 1) as usize];
        for (id, fields) in before.iter().chain(&within) {
            let (first, _) = entry_span(id, fields);
            let Some(payload) = field(fields, "payload") else {
                continue;
            };
            for (j, v) in decode(dtype, payload).into_iter().enumerate() {
                let i = first + j as u64;
                if (lo..=hi).contains(&i) {
                    values[(i - lo) as usize] = Some(v);
                }
            }
        }
        let (length, sealed) = match last.first() {
            Some((id, fields)) if id == SEAL_ID => (number(fields, "id").unwrap_or(0), true),
            Some((id, fields)) => {
                let (first, len) = entry_span(id, fields);
                (first + len, false)
            }
            None => (0, false),
        };
        Ok(Column {
            values,
            length,
            sealed,
        })
    }
}

/// An entry's field of that name.
fn field<'f>(fields: &'f [(String, Vec<u8>)], name: &str) -> Option<&'f [u8]> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| &v[..])
}

/// An entry's field of that name as a number.
fn number(fields: &[(String, Vec<u8>)], name: &str) -> Option<u64> {
    std::str::from_utf8(field(fields, name)?).ok()?.parse().ok()
}

/// The Blissdata indices a data entry holds: its first (the id's first part) and how many
/// (`len`, 1 when absent). The seal entry's first is `u64::MAX`.
pub fn entry_span(id: &str, fields: &[(String, Vec<u8>)]) -> (u64, u64) {
    let first = id
        .split('-')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (first, number(fields, "len").unwrap_or(1))
}

/// The values of a payload of [`NUMERIC`]'s `dtype`, as f64 (exact for the values we write).
fn decode(dtype: &str, payload: &[u8]) -> Vec<f64> {
    match dtype {
        "<u8" => payload
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as f64)
            .collect(),
        "<u4" => payload
            .chunks_exact(4)
            .map(|b| f64::from(u32::from_le_bytes(b.try_into().unwrap_or_default())))
            .collect(),
        "<f8" => payload
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap_or_default()))
            .collect(),
        _ => payload.iter().map(|&b| f64::from(b)).collect(),
    }
}

impl LateHistory for RedisHistory {
    fn range(&self, stream: &str, from: u64, to: u64) -> Option<Value> {
        match self.answer(stream, from, to) {
            Ok(v) => v,
            Err(e) => Some(json!({"ok": false, "error": format!("redis: {e}")})),
        }
    }
}
