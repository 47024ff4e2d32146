//! `[[source]]`: what every source has (name, stream, policy, grid, codec, core), exactly one
//! kind table, and the checks over the list of sources (names, shared streams, grids).
//!
//! The kinds are listed once, in [`SourceConfig::kind`]; everything else asks the kind
//! through [`SourceKind`].

use std::collections::{HashMap, HashSet};

use detingest_shm::{Name, PixelType, StreamId};
use detingest_writer::{Codec, MAX_MODULES};
use serde::Deserialize;

use super::kafka_events::KafkaEventsConfig;
use super::shm::config::ShmConfig;
use super::stream2::config::Stream2Config;
use super::synthetic::config::SyntheticConfig;
use super::udp::config::UdpConfig;
use super::{PreparedSource, SourceError};
use crate::check::{check_core, check_frame, ConfigError};

/// What a source does when the next stage is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Wait: for sources that can (shared-memory producers, the synthetic detector).
    #[default]
    Block,
    /// Drop the frame and count it: for sources that cannot wait (UDP).
    Drop,
}

/// One `[[source]]`: what every source has, plus exactly one kind table
/// (`[source.synthetic]`, `[source.shm]`, `[source.udp]` or `[source.stream2]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Source name, used for its thread (`src-<name>`).
    pub name: Name,
    /// The stream it feeds.
    pub stream: StreamId,
    /// Behaviour when the pipeline is full.
    #[serde(default)]
    pub policy: Policy,
    /// Core to pin the source thread to.
    #[serde(default)]
    pub core: Option<usize>,
    /// `[rows, columns]` of tiles: what one source receives (a module, or a UDP port's part of
    /// a module). A frame's tiles form one dataset, tile `m` at row `m / columns`, column
    /// `m % columns`. The source's `shape` is one tile's.
    #[serde(default = "default_grid")]
    pub grid: [u32; 2],
    /// This stream's codec, overriding `writer.codec`.
    #[serde(default)]
    pub codec: Option<Codec>,
    /// The built-in synthetic detector.
    pub synthetic: Option<SyntheticConfig>,
    /// A shared-memory ring that a producer process writes frames into.
    pub shm: Option<ShmConfig>,
    /// A UDP port a detector module streams packets to.
    pub udp: Option<UdpConfig>,
    /// A DECTRIS Stream V2 detector (EIGER2, PILATUS4, Jungfraujoch).
    pub stream2: Option<Stream2Config>,
    /// Neutron events (ev44) and logs (f144) from Kafka topics.
    pub kafka_events: Option<KafkaEventsConfig>,
}

fn default_grid() -> [u32; 2] {
    [1, 1]
}

/// What every kind of source says about itself: implemented by each kind's table.
pub trait SourceKind: Sync {
    /// The kind table's name (`synthetic`, `shm`, `udp`).
    fn table(&self) -> &'static str;
    /// Checks the table (source `i`), naming `source[i].<table>.*` keys.
    fn validate(&self, i: usize) -> Result<(), ConfigError>;
    /// Checks what depends on the source's `grid` (source `i`); most kinds have nothing.
    fn check_grid(&self, _i: usize, _grid: [u32; 2]) -> Result<(), ConfigError> {
        Ok(())
    }
    /// Pixel type and `[ny, nx]` of one module frame.
    fn frame_format(&self) -> (PixelType, [u32; 2]);
    /// Frames the source will produce, if it knows (0: open-ended).
    fn expected_frames(&self) -> u64 {
        0
    }
    /// True for a source that makes every module of its stream itself.
    fn feeds_stream_alone(&self) -> bool {
        false
    }
    /// The sources `src` becomes in a run: itself, or one per stream it feeds (a Stream V2
    /// detector's threshold channels, one stream each).
    fn expand(&self, src: &SourceConfig) -> Vec<SourceConfig> {
        vec![src.clone()]
    }
    /// True for a source that receives whole images (its grid must be `[1, 1]`).
    fn whole_images(&self) -> bool {
        false
    }
    /// The detector's pixel mask (u32 per pixel of the image), when the source received one.
    fn pixel_mask(&self) -> Option<std::sync::Arc<[u32]>> {
        None
    }
    /// Tables the detector sent for the run (flatfield, count-rate lookup table).
    fn tables(&self) -> Vec<detingest_writer::Table> {
        Vec::new()
    }
    /// `[row, column]` of the tile this source receives, when configured (else the source
    /// makes every tile, or learns its place from the data).
    fn grid_place(&self) -> Option<[u32; 2]> {
        None
    }
    /// The modules of a `grid` this source delivers, as a mask (module `m` = row * columns +
    /// column): its place's, when it has one, else every module. A synthetic source may make
    /// only some (a daemon taking part of a detector).
    fn module_mask(&self, grid: [u32; 2]) -> u64 {
        match self.grid_place() {
            Some([r, c]) => 1 << (r * grid[1] + c),
            None => detingest_writer::all_modules(grid[0] * grid[1]),
        }
    }
    /// Makes what must exist before the pipeline's threads start (a ring, a bound socket, a
    /// frame bank) for source `i` of `modules` modules.
    fn prepare(
        &self,
        src: &SourceConfig,
        i: usize,
        modules: u32,
    ) -> Result<Box<dyn PreparedSource>, SourceError>;
}

impl SourceConfig {
    /// The source's kind: the one place the kinds are listed. Validation guarantees exactly
    /// one kind table is present.
    pub fn kind(&self) -> Option<&dyn SourceKind> {
        let kinds: [Option<&dyn SourceKind>; 5] = [
            self.synthetic.as_ref().map(|k| k as _),
            self.shm.as_ref().map(|k| k as _),
            self.udp.as_ref().map(|k| k as _),
            self.stream2.as_ref().map(|k| k as _),
            self.kafka_events.as_ref().map(|k| k as _),
        ];
        let mut present = kinds.into_iter().flatten();
        match (present.next(), present.next()) {
            (Some(k), None) => Some(k),
            _ => None,
        }
    }

    /// Pixel type and `[ny, nx]` of the source's module frames.
    pub fn frame_format(&self) -> (PixelType, [u32; 2]) {
        self.kind()
            .map_or((PixelType::U8, [0, 0]), |k| k.frame_format())
    }

    /// The codec of this source's stream: its own, or `default` (the writer's).
    pub fn codec(&self, default: Codec) -> Codec {
        self.codec.unwrap_or(default)
    }

    /// Number of detector modules.
    pub fn modules(&self) -> u32 {
        self.grid[0] * self.grid[1]
    }

    /// The modules of its grid this source delivers, as a mask.
    pub fn module_mask(&self) -> u64 {
        self.kind().map_or(0, |k| k.module_mask(self.grid))
    }

    /// Frames the source will produce, if it knows (0: open-ended).
    pub fn expected_frames(&self) -> u64 {
        self.kind().map_or(0, |k| k.expected_frames())
    }
}

/// Checks the list of sources: at least one, unique names, a kind each, grids in range,
/// streams shared only by the modules of one grid, cores that exist (`cores` of them).
pub fn validate_sources(sources: &[SourceConfig], cores: usize) -> Result<(), ConfigError> {
    if sources.is_empty() {
        return Err(ConfigError::new("source", "no [[source]] configured"));
    }
    let mut streams: HashMap<&StreamId, usize> = HashMap::new();
    let mut names = HashSet::new();
    for (i, src) in sources.iter().enumerate() {
        if !names.insert(src.name.clone()) {
            return Err(ConfigError::new(
                format!("source[{i}].name"),
                format!("source name {:?} is used twice", src.name.as_str()),
            ));
        }
        if let Some(&j) = streams.get(&src.stream) {
            check_shared_stream(sources, i, j)?;
        } else {
            streams.insert(&src.stream, i);
        }
        check_core(&format!("source[{i}].core"), src.core, cores)?;
        let modules = src.grid[0].saturating_mul(src.grid[1]);
        if modules == 0 || modules > MAX_MODULES {
            return Err(ConfigError::new(
                format!("source[{i}].grid"),
                format!(
                    "{:?} makes {modules} modules; need 1..={MAX_MODULES}",
                    src.grid
                ),
            ));
        }
        let Some(kind) = src.kind() else {
            return Err(ConfigError::new(
                format!("source[{i}]"),
                "needs exactly one source kind: a [source.synthetic], [source.shm], [source.udp] or [source.stream2] table",
            ));
        };
        if let Some(place) = kind.grid_place() {
            if place[0] >= src.grid[0] || place[1] >= src.grid[1] {
                return Err(ConfigError::new(
                    format!("source[{i}].{}.place", kind.table()),
                    format!(
                        "{place:?} is outside the grid {:?} [rows, columns]",
                        src.grid
                    ),
                ));
            }
        }
        kind.validate(i)?;
        kind.check_grid(i, src.grid)?;
        if kind.whole_images() && src.grid != [1, 1] {
            return Err(ConfigError::new(
                format!("source[{i}].grid"),
                format!(
                    "a [source.{}] receives whole images: the grid is [1, 1]",
                    kind.table()
                ),
            ));
        }
        let (pixel, shape) = kind.frame_format();
        let image = [
            shape[0].saturating_mul(src.grid[0]),
            shape[1].saturating_mul(src.grid[1]),
        ];
        check_frame(&format!("source[{i}].grid"), pixel, image)?;
    }
    Ok(())
}

/// Source `i` feeds the stream source `j` feeds: allowed for the modules of one detector,
/// each received by its own source (one UDP port or ring per module), when they agree on the
/// grid, the module format and the codec.
fn check_shared_stream(sources: &[SourceConfig], i: usize, j: usize) -> Result<(), ConfigError> {
    let (a, b) = (&sources[i], &sources[j]);
    let key = format!("source[{i}].stream");
    let refuse = |why: String| Err(ConfigError::new(key.clone(), why));
    if a.modules() < 2 {
        return refuse(format!(
            "stream {} is fed by two sources; several sources may feed one stream only as \
             the modules of a grid (set grid on both)",
            a.stream
        ));
    }
    let alone = |s: &SourceConfig| s.kind().is_some_and(|k| k.feeds_stream_alone());
    if alone(a) || alone(b) {
        return refuse(
            "a synthetic source makes every module itself; it feeds its stream alone".into(),
        );
    }
    if a.grid != b.grid || a.frame_format() != b.frame_format() || a.codec != b.codec {
        return refuse(format!(
            "source[{j}] feeds the same stream with another grid, module shape, pixel type or codec"
        ));
    }
    let (x, y) = (
        a.kind().and_then(|k| k.grid_place()),
        b.kind().and_then(|k| k.grid_place()),
    );
    if let (Some(x), Some(y), Some(kind)) = (x, y, a.kind()) {
        if x == y {
            return Err(ConfigError::new(
                format!("source[{i}].{}.place", kind.table()),
                format!("tile {x:?} of this stream is received by source[{j}] already"),
            ));
        }
    }
    Ok(())
}
