//! The file hand-off: when a stream's files are closed, every file of its set is measured and
//! checksummed and listed in the run's manifest on a thread of its own ([`super::manifest`]),
//! and a `wrdn` names the master with what a catalogue ingestor (SciCat's OrigDatablock)
//! needs: the list itself while it fits (half of `kafka.message_max_bytes`), the manifest
//! always. It is logged when the broker took it, and warned at once when it did not.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use flatbuffers::FlatBufferBuilder;
use serde_json::{json, Value};

use super::client::{KafkaStats, Producer};
use super::manifest::{manifest_name, measure, write_manifest, Checksum, FileEntry};
use super::publisher::send_marked;
use super::schema::reports::{self, Finished};
use crate::sink::StreamEndNotice;
use crate::stream::StreamInfo;

/// The job a run belongs to: its id and where its messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The `pl72`'s job id, or the stream's key for a run started over HTTP.
    pub id: String,
    /// The job's control topic, or the status topic.
    pub topic: String,
}

impl Job {
    /// The job of a run whose user metadata is `user` (a run started from Kafka has its
    /// `pl72` under `user.kafka`).
    pub fn of_run(user: &Value, stream: &StreamInfo, status_topic: &str) -> Self {
        let kafka = &user["kafka"];
        let text = |k: &str| {
            kafka[k]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        Self {
            id: text("job_id").unwrap_or_else(|| stream.key.clone()),
            topic: text("control_topic").unwrap_or_else(|| status_topic.to_owned()),
        }
    }
}

/// How every hand-off of this daemon measures and names its files.
#[derive(Debug, Clone)]
pub struct HandoffSettings {
    /// The checksum of every file.
    pub checksum: Checksum,
    /// The host whose file system holds the folder (`sourceFolderHost`).
    pub host: String,
}

/// Everything a hand-off needs.
pub struct HandOff {
    /// Sends the `wrdn`.
    pub producer: Arc<Producer>,
    /// Counts it.
    pub stats: Arc<KafkaStats>,
    /// Our service id.
    pub service_id: String,
    /// The run's job.
    pub job: Job,
    /// The run's user metadata.
    pub user: Value,
    /// When the stream began, ns since the Unix epoch.
    pub started_ns: u64,
    /// How it ended.
    pub end: StreamEndNotice,
    /// Largest metadata JSON that lists the files inline, in bytes.
    pub inline_limit: usize,
    /// Checksum and host.
    pub settings: HandoffSettings,
}

/// Starts the `kafka-handoff` thread for `h`.
pub fn spawn(h: HandOff) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("kafka-handoff".into())
        .spawn(move || h.run())
}

impl HandOff {
    fn run(self) {
        let info = &self.end.stream;
        let folder = info.file.parent().unwrap_or(Path::new(".")).to_path_buf();
        let (files, mut problems) = measure(&folder, info, self.settings.checksum);
        let stream = info.id.stream.as_str();
        let manifest = write_manifest(
            &folder,
            &self.settings.host,
            stream,
            &files,
            self.settings.checksum,
        )
        .map_err(|e| problems.push(format!("{}: {e}", manifest_name(stream))))
        .ok();
        let error = self.end.error.clone().or_else(|| problems.first().cloned());
        let mut metadata = self.metadata(&folder, &files, &problems, manifest.as_ref());
        let message = match &error {
            Some(e) => format!("{}: {e}", info.key),
            None => format!(
                "{}: {} frames ({} lost) in {} files",
                info.key,
                self.end.frames,
                self.end.lost,
                files.len()
            ),
        };
        // The list inline while the message stays well inside the limit; the manifest
        // holds it whatever the size. (Serialized again only when it did not fit.)
        let mut text = metadata.to_string();
        if text.len() > self.inline_limit {
            metadata["files"] = Value::Null;
            metadata["files_inline"] = json!(false);
            text = metadata.to_string();
        }
        let file_name = info.file.display().to_string();
        let mut b = FlatBufferBuilder::with_capacity(4096);
        let payload = reports::finished(
            &mut b,
            &Finished {
                service_id: &self.service_id,
                job_id: &self.job.id,
                error_encountered: error.is_some(),
                file_name: &file_name,
                metadata: &text,
                message: &message,
            },
        );
        let what = format!(
            "{} (job {}, {} files, {} bytes, topic {})",
            info.key,
            self.job.id,
            files.len(),
            payload.len(),
            self.job.topic
        );
        let id = self.stats.handoff_queued(what);
        let key = (self.job.topic.as_str(), self.service_id.as_str());
        if !send_marked(&self.producer, &self.stats, key, payload, id) {
            let why = self
                .stats
                .last_error()
                .unwrap_or_else(|| "queue full".into());
            self.stats.handoff_reported(id, Some(&why));
        }
    }

    /// The `wrdn` metadata: the run's counts and times, the folder, every file and the
    /// manifest that lists them.
    fn metadata(
        &self,
        folder: &Path,
        files: &[FileEntry],
        problems: &[String],
        manifest: Option<&FileEntry>,
    ) -> Value {
        let info = &self.end.stream;
        json!({
            "job_id": self.job.id,
            "stream": info.key,
            "beamtime": info.id.beamtime.as_str(),
            "source": info.id.source.as_str(),
            "stream_name": info.id.stream.as_str(),
            "sourceFolder": folder.display().to_string(),
            "sourceFolderHost": self.settings.host,
            "chkAlg": self.settings.checksum.name(),
            "files": files,
            "files_inline": true,
            "files_manifest": manifest,
            "numberOfFiles": files.len(),
            "size": files.iter().map(|f| f.size).sum::<u64>(),
            "frames": self.end.frames,
            "frames_lost": self.end.lost,
            "startTime": rfc3339(self.started_ns),
            "endTime": rfc3339(self.end.ended_ns),
            "error": self.end.error,
            "file_errors": problems,
            "scientificMetadata": self.user,
        })
    }
}

/// `ns` since the Unix epoch as RFC 3339 (UTC, ms).
fn rfc3339(ns: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}
