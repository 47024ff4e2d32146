//! DECTRIS Stream V2 (EIGER2, PILATUS4, Jungfraujoch) as a source: `[source.stream2]`.
//!
//! The detector pushes CBOR messages ([`message`]) to a ZeroMQ PULL socket. Between runs a
//! [`listener`] thread holds the socket; a `start` becomes a [`Series`](link::Series) (stream
//! name, image format, NXmx metadata: [`series`]) and opens a run through the daemon's run
//! control, which hands the socket to the run's source thread (`receive.rs`). Its images
//! become indices (image id + 1), its `end` ends the run, and the socket goes back to the
//! listener. An image already in the stream's codec (bitshuffle-LZ4 from an EIGER2, with the
//! default codec) is copied once from the message into a pool buffer and written as it
//! arrived; others are decoded here and encoded by the pipeline. Refusals are counted by kind
//! ([`counts`]) and logged once per kind.

pub mod config;
pub mod counts;
pub mod link;
pub mod listener;
pub mod message;
mod metadata;
mod receive;
pub mod series;

#[cfg(test)]
mod roundtrip_tests;

use std::sync::Arc;

use detingest_shm::{Name, PixelType};

use self::config::Stream2Config;
use crate::check::ConfigError;
use crate::source::{PreparedSource, SourceConfig, SourceError, SourceKind};

/// Images queued to a follower (a further channel) before the leader waits for it.
const FOLLOWER_QUEUE: usize = 16;

impl SourceKind for Stream2Config {
    fn table(&self) -> &'static str {
        "stream2"
    }
    fn validate(&self, i: usize) -> Result<(), ConfigError> {
        self.check(i)
    }
    /// The series' format once a start announced it; before that (the daemon's own
    /// configuration) a placeholder that passes validation.
    fn frame_format(&self) -> (PixelType, [u32; 2]) {
        self.link
            .series()
            .map_or((PixelType::U32, [1, 1]), |s| (s.pixel, s.shape))
    }
    /// One source per channel when the series has several: stream `<stream>_<channel>`,
    /// source `<name>` for the first (which receives) and `<name>-<channel>` for the others.
    fn expand(&self, src: &SourceConfig) -> Vec<SourceConfig> {
        let channels = self.link.series().map(|s| s.channels).unwrap_or_default();
        if channels.len() < 2 {
            return vec![src.clone()];
        }
        let named = |base: &Name, k: usize, sep: char| {
            Name::new(&format!("{base}{sep}{}", channels[k]))
                .or_else(|_| Name::new(&format!("{base}{sep}channel{}", k + 1)))
                .unwrap_or_else(|_| base.clone())
        };
        (0..channels.len())
            .map(|k| {
                let mut s = src.clone();
                s.stream.stream = named(&src.stream.stream, k, '_');
                if k > 0 {
                    s.name = named(&src.name, k, '-');
                }
                if let Some(c) = s.stream2.as_mut() {
                    c.channel = k;
                }
                s
            })
            .collect()
    }
    fn whole_images(&self) -> bool {
        true
    }
    /// This source's channel's mask (the first mask for a series without channel names).
    fn pixel_mask(&self) -> Option<Arc<[u32]>> {
        let series = self.link.series()?;
        let channel = series.channels.get(self.channel);
        let mut masks = series.pixel_masks.iter();
        let mask = match channel {
            Some(name) => masks.find(|(c, _)| c == name),
            None => masks.next().filter(|_| self.channel == 0),
        };
        mask.map(|(_, m)| Arc::clone(m))
    }
    /// This source's channel's flatfield and the series' count-rate lookup table.
    fn tables(&self) -> Vec<detingest_writer::Table> {
        let Some(series) = self.link.series() else {
            return Vec::new();
        };
        let channel = series.channels.get(self.channel);
        (series.tables.iter())
            .filter(|(c, _)| c.is_none() || c.as_ref() == channel)
            .map(|(_, t)| t.clone())
            .collect()
    }
    fn prepare(
        &self,
        src: &SourceConfig,
        i: usize,
        _modules: u32,
    ) -> Result<Box<dyn PreparedSource>, SourceError> {
        // The series is taken now, before any thread starts: once the leader ends, the
        // listener clears it, maybe before a follower's thread first runs.
        let Some(series) = self.link.series() else {
            return Err(SourceError::Config(ConfigError::new(
                format!("source[{i}].stream2"),
                "a Stream V2 source's runs are opened by its detector's start message: \
                 run it with `detingestd serve`",
            )));
        };
        let follow = (self.channel > 0).then(|| {
            let (tx, rx) = crossbeam::channel::bounded(FOLLOWER_QUEUE);
            self.link.add_follower(tx);
            rx
        });
        Ok(Box::new(receive::Prepared {
            cfg: self.clone(),
            name: src.name.clone(),
            series,
            follow,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::link::Series;
    use super::*;

    /// A follower's thread may first run after the leader ended the series and the listener
    /// cleared it from the link (seen as a missing second channel under load): what it
    /// needs of the series is taken when it is prepared.
    #[test]
    fn a_follower_keeps_its_series_after_the_listener_clears_the_link() {
        let src: SourceConfig = toml::from_str(
            "name = \"e\"\nstream = { beamtime = \"b\", source = \"e\", stream = \"s\" }\n\
             [stream2]\nendpoint = \"tcp://127.0.0.1:1\"\n",
        )
        .unwrap();
        let cfg = src.stream2.clone().unwrap();
        let series = Series {
            id: 7,
            unique_id: "u".into(),
            shape: [100, 200],
            pixel: PixelType::U32,
            channels: vec!["threshold_1".into(), "threshold_2".into()],
            images: 3,
            pixel_masks: Vec::new(),
            tables: Vec::new(),
            request: crate::contract::RunRequest::new("bt", "det", "s"),
        };
        let socket = zmq::Context::new().socket(zmq::PULL).unwrap();
        cfg.link.hand_over(socket, series, None);
        let follower = Stream2Config {
            channel: 1,
            ..cfg.clone()
        };
        let prepared = follower.prepare(&src, 0, 1).unwrap();
        assert!(
            cfg.link.take_back(false).is_some(),
            "the listener takes all back"
        );
        assert!(cfg.link.series().is_none());
        let (_, bytes) = prepared.buffers(4);
        assert!(
            bytes >= 100 * 200 * 4,
            "sized for the prepared series: {bytes}"
        );
    }
}
