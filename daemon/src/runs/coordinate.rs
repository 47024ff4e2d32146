//! A run several daemons take (`[cluster]`): the check every daemon answers before any
//! starts (`POST /run/check`), the start on the daemon the operator asked (it checks itself
//! and every peer, starts the peers, then itself), and the merge plan of the whole detector
//! it then writes.

use std::sync::Arc;
use std::time::Duration;

use detingest_shm::{Name, StreamId};
use detingest_writer::Part;

use super::{run_config, ApiError, RunManager};
use crate::cluster::merge::{MergePlan, MergeReport, Merger};
use crate::cluster::peers::{self, Peer};
use crate::config::Config;
use crate::contract::{DetectorEnd, DetectorStatus, PartEnd, PartStatus, RunCheck, RunRequest};
use crate::pipeline::{self, run_layout};
use crate::stream::StreamInfo;

/// A coordinated start's peers and the parts they answered with.
pub(super) struct PeerParts {
    parts: Vec<(Part, Option<Peer>)>,
}

impl RunManager {
    /// True when `request` is an operator's start on a daemon with peers: this daemon then
    /// starts the others and writes the whole detector's master.
    pub(super) fn coordinates(&self, request: &RunRequest) -> bool {
        let c = &self.base.cluster;
        c.member() && !c.peers.is_empty() && request.coordinator.is_none()
    }

    /// What this daemon would write for `request`, or why it cannot start it (bad request,
    /// files that exist); starts nothing.
    pub(super) fn check_request(&self, request: &RunRequest) -> Result<RunCheck, ApiError> {
        let config = run_config(&self.base, request)?;
        let src = &config.sources[0];
        let master = pipeline::stream_file_path(&config, src);
        if let Some(f) = pipeline::existing_file(&config, src) {
            return Err(ApiError::new(
                409,
                format!("{} exists; detingest never overwrites", f.display()),
            ));
        }
        let modules = (config.sources.iter())
            .filter(|s| s.stream == src.stream)
            .fold(0u64, |m, s| m | s.module_mask());
        Ok(RunCheck {
            daemon: self.base.cluster.name.clone(),
            stream: src.stream.stream.to_string(),
            modules,
            master,
            process: crate::cluster::ProcessId::this(),
        })
    }

    /// The peers of this daemon's `[cluster]`.
    pub(super) fn peers(&self) -> Vec<Peer> {
        peers::peers(&self.base.cluster, self.peer_token.as_deref())
    }

    /// Checks `request` here and on every peer, then starts it on every peer; one refusal
    /// refuses everywhere (peers started already are stopped again).
    pub(super) fn start_peers(&self, request: &RunRequest) -> Result<PeerParts, ApiError> {
        if request.rename_if_exists {
            return Err(ApiError::new(
                400,
                "rename_if_exists: not for a run several daemons take (each would pick its own name)",
            ));
        }
        let mine = self.check_request(request)?;
        let folder = |a: &RunCheck| a.master.parent().map(std::path::Path::to_path_buf);
        // The whole detector's master goes beside this daemon's part.
        let whole =
            detingest_writer::master_path(&folder(&mine).unwrap_or_default(), &request.stream);
        if whole.exists() {
            return Err(ApiError::new(
                409,
                format!("{} exists; detingest never overwrites", whole.display()),
            ));
        }
        let mut list = self.peers();
        let part = peers::part_request(request, &self.base.cluster.name);
        let answers = peers::check_all(&list, &part)?;
        let mut parts = vec![(part_of(&mine)?, None)];
        for (a, peer) in answers.iter().zip(&mut list) {
            peer.identify(a);
            let part = part_of(a)?;
            if parts.iter().any(|(p, _)| p.daemon == part.daemon) {
                return Err(ApiError::new(
                    409,
                    format!(
                        "the daemon at {} is named {:?} like another: each daemon of a \
                         detector needs its own cluster.name",
                        peer.url(),
                        part.daemon
                    ),
                ));
            }
            parts.push((part, None));
            // The merger reads every part where it writes its own: one shared directory.
            if folder(a) != folder(&mine) {
                return Err(ApiError::new(
                    409,
                    format!(
                        "the daemon at {} writes into {:?}, this one into {:?}: the daemons \
                         of a detector share one data directory (data_dir)",
                        peer.url(),
                        folder(a).unwrap_or_default(),
                        folder(&mine).unwrap_or_default()
                    ),
                ));
            }
        }
        let urls: Vec<&str> = std::iter::once("this daemon")
            .chain(list.iter().map(|p| p.url()))
            .collect();
        if let Some(clash) = clash(&parts, &urls, self.base.sources.first().map(|s| s.grid)) {
            return Err(ApiError::new(409, clash));
        }
        peers::start_all(&list, &part)?;
        for ((_, slot), peer) in parts.iter_mut().skip(1).zip(list) {
            *slot = Some(peer);
        }
        Ok(PeerParts { parts })
    }

    /// Starts the merger of a coordinated run whose own pipeline `config` has started.
    pub(super) fn spawn_merger(
        &self,
        config: &Config,
        request: &RunRequest,
        peers: PeerParts,
        slot: usize,
    ) -> Result<(Merger, DetectorStatus), ApiError> {
        let src = &config.sources[0];
        let whole = whole_id(&src.stream, request)?;
        let layout = run_layout(config, src);
        let dir = pipeline::stream_dir(config, src);
        let master = detingest_writer::master_path(&dir, whole.stream.as_str());
        let stream = Arc::new(StreamInfo {
            slot: slot as u16,
            key: whole.to_string(),
            id: whole,
            file: master.clone(),
            dataset: detingest_writer::DATA_PATH,
            codec: layout.codec,
            pixel: layout.pixel,
            shape: layout.image_shape(),
            modules: layout.modules(),
            expected: layout.all_modules(),
            parts: peers.parts.iter().map(|(p, _)| p.stream.clone()).collect(),
            frames_per_file: 0,
            kind: crate::stream::StreamKind::Frames,
        });
        let parts = (peers.parts.iter())
            .map(|(p, _)| PartStatus {
                daemon: p.daemon.clone(),
                stream: p.stream.clone(),
                modules: p.modules,
                state: "running",
            })
            .collect();
        let status = DetectorStatus {
            master,
            parts,
            merged: None,
            end: None,
        };
        let c = &self.base.cluster;
        let detector = pipeline::detector_of(config, src, &stream.id);
        let plan = MergePlan {
            dir,
            stream,
            layout,
            detector,
            user_json: config.run.user.to_string(),
            files: config.run.file_options(config.writer.swmr),
            parts: peers.parts,
            interval: Duration::from_millis(c.merge_interval_ms),
            dead_after: Duration::from_millis(c.dead_after_ms),
            core: config.threads.notify,
        };
        let sinks = match self.sinks.lock().ok().as_deref() {
            Some(Some(set)) => set.for_run().sinks,
            _ => Vec::new(),
        };
        let merger = Merger::spawn(plan, sinks, config.pipeline.notify_queue)
            .map_err(|e| ApiError::new(500, e))?;
        Ok((merger, status))
    }
}

/// The whole detector's stream: the request's, under the source's beamtime and source.
fn whole_id(part: &StreamId, request: &RunRequest) -> Result<StreamId, ApiError> {
    Ok(StreamId {
        stream: Name::new(&request.stream)
            .map_err(|e| ApiError::bad_request(format!("stream: {e}")))?,
        ..part.clone()
    })
}

/// A daemon's part from its `POST /run/check` answer.
fn part_of(answer: &RunCheck) -> Result<Part, ApiError> {
    if answer.daemon.is_empty() {
        return Err(ApiError::conflict(format!(
            "a peer answered its check without its part (is it in a [cluster]?): {answer:?}"
        )));
    }
    Ok(Part {
        daemon: answer.daemon.clone(),
        stream: answer.stream.clone(),
        modules: answer.modules,
    })
}

/// The first module two daemons claim, named with both daemons (and their addresses) and the
/// module's place in the `grid`.
fn clash(parts: &[(Part, Option<Peer>)], urls: &[&str], grid: Option<[u32; 2]>) -> Option<String> {
    for (i, (a, _)) in parts.iter().enumerate() {
        for (j, (b, _)) in parts.iter().enumerate().skip(i + 1) {
            let both = a.modules & b.modules;
            if both == 0 {
                continue;
            }
            let m = both.trailing_zeros();
            let place = grid.map_or(String::new(), |[_, cols]| {
                format!(" (row {}, column {})", m / cols.max(1), m % cols.max(1))
            });
            return Some(format!(
                "module {m}{place} is claimed by {:?} ({}) and {:?} ({}), {} module(s) in all; \
                 each module belongs to one daemon",
                a.daemon,
                urls[i],
                b.daemon,
                urls[j],
                both.count_ones()
            ));
        }
    }
    None
}

/// The detector's part of a run's status at its end.
pub(super) fn merge_status(mut detector: DetectorStatus, report: &MergeReport) -> DetectorStatus {
    let ends = (report.parts.iter())
        .map(|(d, e)| PartEnd {
            daemon: d.clone(),
            recorded: e.recorded,
            state: e.outcome.name(),
            finished: e.outcome == detingest_writer::PartOutcome::Finished,
        })
        .collect();
    for (p, (_, e)) in detector.parts.iter_mut().zip(&report.parts) {
        p.state = e.outcome.name();
    }
    detector.merged = Some(report.frames);
    detector.end = Some(DetectorEnd {
        frames: report.frames,
        lost: report.lost,
        ends,
        error: report.error.clone(),
    });
    detector
}

/// Stops every peer's run, logging those that could not be stopped.
pub(super) fn stop_peers(list: &[Peer]) {
    for e in peers::stop_all(list) {
        tracing::warn!(status = e.status, error = %e.message, "a peer's run could not be stopped");
    }
}

/// Shows the whole master's progress in a coordinated run's status (`detector.merged`, and
/// each part's `state`: running, finished, unreachable, died, unknown).
pub(super) fn show_merged(
    status: &mut super::RunStatus,
    merger: Option<&(Merger, DetectorStatus)>,
) {
    if let (Some((m, _)), Some(d)) = (merger, status.detector.as_mut()) {
        d.merged = Some(m.merged());
        for (p, state) in d.parts.iter_mut().zip(m.part_states()) {
            p.state = state.name();
        }
    }
}

/// Each daemon's name and its part's state, from a status's `detector` (for `/metrics`).
pub(super) fn part_states(detector: Option<&DetectorStatus>) -> Vec<(String, String)> {
    (detector.into_iter().flat_map(|d| &d.parts))
        .map(|p| (p.daemon.clone(), p.state.to_owned()))
        .collect()
}
