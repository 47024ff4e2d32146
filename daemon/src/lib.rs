//! detingestd, the detector ingest daemon, as a library: configuration, sources, the
//! pipeline and its notifications. The `detingestd` binary and `detingest-bench` drive it.
//!
//! ```no_run
//! use detingest_daemon::{config::Config, notify::RateLogger, pipeline};
//! let config = Config::load("detingest.toml".as_ref())?;
//! let sinks: Vec<Box<dyn detingest_daemon::notify::NotificationSink>> =
//!     vec![Box::new(RateLogger::new(std::time::Duration::from_secs(5)))];
//! let summary = pipeline::start(&config, sinks)?.wait();
//! assert!(summary.ok());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod config;
pub mod control;
pub mod live;
pub mod notify;
pub mod pipeline;
pub mod runs;
pub mod source;
pub mod threads;
