//! The contracts the daemon's parts share, as types: a run request and a refusal
//! ([`api`]), a run's status with the pipeline's and each source's counters ([`status`]), and
//! counters as typed values ([`counters`]). The HTTP API, Kafka's run control, the Stream V2
//! listener and the peers of a cluster speak these; `/metrics`, `GET /run` and the summary
//! read them. A leaf: it uses no other module of the daemon.

pub mod api;
pub mod counters;
pub mod status;

pub use api::{ApiError, ProcessId, RunCheck, RunRequest};
pub use counters::{ByName, Counter, Counters, Kind};
pub use status::{
    DetectorEnd, DetectorStatus, EndReason, Gauges, KindCounts, PartEnd, PartStatus, RunHeadline,
    RunState, RunStatus, SourceSummary, StatsSnapshot,
};
