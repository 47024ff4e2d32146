//! Several daemons take one detector together (`[cluster]`): each receives some modules and
//! writes them as its part (`<stream>_<name>_*.h5`); a run started on any one of them is
//! checked and started on all (`peers.rs`, through their control API), and the daemon it was
//! started on merges the parts into the whole detector's master and stream (`merge.rs`). A
//! silent daemon's files are touched only once it is proven gone (`liveness.rs`).

mod config;
mod follow;
mod liveness;
pub mod merge;
mod merge_records;
mod offline;
pub mod peers;

pub use config::ClusterConfig;
pub use liveness::ProcessId;
pub use offline::finish_merge;
