//! Counters as typed values: each names itself, says what it is (a total that only grows, a
//! level, a yes/no) and carries its help text, so `GET /run` (as JSON), `/metrics` (one family
//! per counter) and the summary read the same values without looking any up by name.

use serde::ser::{Serialize, SerializeMap, Serializer};

/// What a counter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only grows (a Prometheus counter).
    Total,
    /// A level now (a gauge).
    Level,
    /// Yes or no (a gauge of 0 or 1; `true`/`false` in JSON).
    Flag,
}

/// One counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    /// Its key in `GET /run`.
    pub name: &'static str,
    /// The end of its metric's name (`name` unless renamed; ending in `_bytes`: bytes).
    pub metric: &'static str,
    /// What it counts (the metric's help).
    pub help: &'static str,
    /// What it is.
    pub kind: Kind,
    /// Its value (a flag: 0 or 1).
    pub value: u64,
}

/// A component's counters, and the text it reports beside them (an endpoint, the last error).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    values: Vec<Counter>,
    text: Vec<(&'static str, Option<String>)>,
}

impl Counters {
    /// No counters yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// With the total `name`.
    pub fn total(self, name: &'static str, help: &'static str, value: u64) -> Self {
        self.with(name, help, Kind::Total, value)
    }

    /// With the level `name`.
    pub fn level(self, name: &'static str, help: &'static str, value: u64) -> Self {
        self.with(name, help, Kind::Level, value)
    }

    /// With the flag `name`.
    pub fn flag(self, name: &'static str, help: &'static str, value: bool) -> Self {
        self.with(name, help, Kind::Flag, u64::from(value))
    }

    /// With the counter added last named `metric` in `/metrics`.
    pub fn metric(mut self, metric: &'static str) -> Self {
        if let Some(c) = self.values.last_mut() {
            c.metric = metric;
        }
        self
    }

    /// With the text `name` (`None`: `null` in JSON).
    pub fn text(mut self, name: &'static str, value: Option<String>) -> Self {
        self.text.push((name, value));
        self
    }

    fn with(mut self, name: &'static str, help: &'static str, kind: Kind, value: u64) -> Self {
        self.values.push(Counter {
            name,
            metric: name,
            help,
            kind,
            value,
        });
        self
    }

    /// Every counter, in the order they were added.
    pub fn values(&self) -> &[Counter] {
        &self.values
    }

    /// The value of counter `name`, for a reader that wants one (a heartbeat's rate).
    pub fn get(&self, name: &str) -> Option<u64> {
        self.values.iter().find(|c| c.name == name).map(|c| c.value)
    }

    /// Adds `other` (a later run's) into these: totals add up, levels, flags and text take
    /// `other`'s value; counters only `other` has join.
    pub fn add(&mut self, other: &Counters) {
        for c in &other.values {
            match self.values.iter_mut().find(|m| m.name == c.name) {
                Some(mine) if c.kind == Kind::Total => mine.value += c.value,
                Some(mine) => mine.value = c.value,
                None => self.values.push(c.clone()),
            }
        }
        for (name, value) in &other.text {
            match self.text.iter_mut().find(|(n, _)| n == name) {
                Some(mine) => mine.1.clone_from(value),
                None => self.text.push((name, value.clone())),
            }
        }
    }
}

/// A JSON object: each counter under its name (a flag as `true`/`false`), then the text.
impl Serialize for Counters {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.values.len() + self.text.len()))?;
        for c in &self.values {
            match c.kind {
                Kind::Flag => map.serialize_entry(c.name, &(c.value != 0))?,
                _ => map.serialize_entry(c.name, &c.value)?,
            }
        }
        for (name, value) in &self.text {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// The counters of several components (the sinks), each under its name: a JSON object of
/// them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ByName(pub Vec<(&'static str, Counters)>);

impl ByName {
    /// The counters of `name`.
    pub fn get(&self, name: &str) -> Option<&Counters> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, c)| c)
    }
}

impl Serialize for ByName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, counters) in &self.0 {
            map.serialize_entry(name, counters)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_serialise_by_name_and_add_up_by_kind() {
        let run = |n: u64, up: bool| {
            Counters::new()
                .total("sent", "Messages sent", n)
                .level("in_flight", "Messages queued", n)
                .flag("connected", "Server reachable", up)
                .text("url", Some(format!("redis://h:{n}")))
        };
        let mut t = run(3, false);
        t.add(&run(4, true));
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"sent": 7, "in_flight": 4, "connected": true, "url": "redis://h:4"})
        );
        assert_eq!(t.get("sent"), Some(7));
        assert_eq!(t.get("nothing"), None);
    }
}
