//! `[cluster]`: this daemon's part in a detector that several daemons take together: its
//! name in the file names, and the other daemons' control APIs a run start fans out to.

use serde::Deserialize;

use crate::check::{check_range, ConfigError};

/// `[cluster]`: several daemons, each receiving some modules of one detector.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This daemon's name: its files are `<stream>_<name>_master.h5`, `<stream>_<name>_data_NNNNNN.h5`
    /// ("" = a daemon alone, the files `<stream>_master.h5`, ...).
    pub name: String,
    /// The other daemons' control APIs, `http://host:port`: a run started here starts there
    /// too, and this daemon writes the whole detector's master `<stream>_master.h5`.
    pub peers: Vec<String>,
    /// How long a peer may take to answer a request, in milliseconds.
    pub timeout_ms: u64,
    /// A peer whose API has not answered for this long during a run is taken for dead: its
    /// modules are missing from the index after the last it recorded.
    pub dead_after_ms: u64,
    /// How often the whole detector's records are merged and announced, in milliseconds.
    pub merge_interval_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            peers: Vec::new(),
            timeout_ms: 5000,
            dead_after_ms: 3000,
            merge_interval_ms: 200,
        }
    }
}

impl ClusterConfig {
    /// True when this daemon takes part of a detector.
    pub fn member(&self) -> bool {
        !self.name.is_empty()
    }

    /// Checks names and ranges, naming `cluster.<key>`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name_ok = self.name.len() <= 32
            && (self.name.bytes()).all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !name_ok {
            return Err(ConfigError::new(
                "cluster.name",
                format!(
                    "{:?}: up to 32 of [A-Za-z0-9.-] (it becomes part of file names)",
                    self.name
                ),
            ));
        }
        if !self.peers.is_empty() && !self.member() {
            return Err(ConfigError::new(
                "cluster.peers",
                "a daemon with peers needs a cluster.name (its part of the files)",
            ));
        }
        for (i, peer) in self.peers.iter().enumerate() {
            let host = peer.strip_prefix("http://").unwrap_or_default();
            let host = host.strip_suffix('/').unwrap_or(host);
            if host.is_empty() || host.contains('/') || !host.contains(':') {
                return Err(ConfigError::new(
                    format!("cluster.peers[{i}]"),
                    format!("{peer:?}: a control API as http://host:port"),
                ));
            }
        }
        check_range("cluster.timeout_ms", self.timeout_ms, 100..=60_000)?;
        check_range("cluster.dead_after_ms", self.dead_after_ms, 100..=600_000)?;
        check_range(
            "cluster.merge_interval_ms",
            self.merge_interval_ms,
            10..=10_000,
        )?;
        Ok(())
    }

    /// The stream this daemon writes for the detector's stream `stream`.
    pub fn part_stream(&self, stream: &str) -> String {
        if self.member() {
            format!("{stream}_{}", self.name)
        } else {
            stream.to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(), ConfigError> {
        let c: ClusterConfig = toml::from_str(text).map_err(|e| ConfigError::new("cluster", e))?;
        c.validate()
    }

    #[test]
    fn names_and_peers_are_checked_by_key() {
        assert!(parse("").is_ok());
        assert!(parse("name = \"recv-1\"\npeers = [\"http://10.0.0.2:8450\"]").is_ok());
        let e = parse("name = \"../x\"").unwrap_err();
        assert!(e.to_string().contains("cluster.name"), "{e}");
        let e = parse("name = \"a_b\"").unwrap_err();
        assert!(e.to_string().contains("cluster.name"), "{e}");
        let e = parse("peers = [\"http://h:1\"]").unwrap_err();
        assert!(e.to_string().contains("cluster.peers"), "{e}");
        let e = parse("name = \"a\"\npeers = [\"h:1\"]").unwrap_err();
        assert!(e.to_string().contains("cluster.peers[0]"), "{e}");
        let e = parse("name = \"a\"\ntimeout_ms = 0").unwrap_err();
        assert!(e.to_string().contains("cluster.timeout_ms"), "{e}");
    }

    #[test]
    fn a_member_writes_its_part_under_its_name() {
        let c = ClusterConfig {
            name: "d2".into(),
            ..Default::default()
        };
        assert_eq!(c.part_stream("scan_1"), "scan_1_d2");
        assert_eq!(ClusterConfig::default().part_stream("scan_1"), "scan_1");
    }
}
