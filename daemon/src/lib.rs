//! detingestd, the detector ingest daemon, as a library: configuration, sources, the
//! pipeline and the sinks that hear of every written frame. The `detingestd` binary and
//! `detingest-bench` drive it; `docs/ARCHITECTURE.md` follows a frame through the modules.
//!
//! ```no_run
//! use detingest_daemon::{config::Config, pipeline, sink::SinkSet};
//! let config = Config::load("detingest.toml".as_ref())?;
//! let sinks = SinkSet::start(&config.sink, config.sink_context(false))?;
//! let summary = pipeline::start(&config, sinks.for_run())?.wait();
//! assert!(summary.ok());
//! sinks.stop();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod check;
pub mod cluster;
pub mod config;
pub mod contract;
pub mod control;
pub mod dectris;
pub mod metrics;
pub mod pipeline;
pub mod quality;
pub mod rate_limit;
pub mod runs;
pub mod sink;
pub mod source;
pub mod stream;
pub mod threads;
