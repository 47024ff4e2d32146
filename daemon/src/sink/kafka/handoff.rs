//! The file hand-off: when a stream's files are closed, every file of its set (the master
//! and each data file) is measured and checksummed (SHA-256) on a thread of its own, and a
//! `wrdn` names the master with what a catalogue ingestor (SciCat's OrigDatablock) needs.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flatbuffers::FlatBufferBuilder;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::client::{KafkaStats, Producer};
use super::publisher::send;
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
}

/// Starts the `kafka-handoff` thread for `h`.
pub fn spawn(h: HandOff) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("kafka-handoff".into())
        .spawn(move || h.run())
}

/// One file of the set, as SciCat's OrigDatablock lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Its name, relative to the folder.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Last modified, RFC 3339.
    pub time: String,
    /// SHA-256, hex.
    pub chk: String,
}

impl HandOff {
    fn run(self) {
        let info = &self.end.stream;
        let folder = info.file.parent().unwrap_or(Path::new(".")).to_path_buf();
        let (files, problems) = measure(&folder, info);
        let error = self.end.error.clone().or_else(|| problems.first().cloned());
        let metadata = self.metadata(&folder, &files, &problems);
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
        let file_name = info.file.display().to_string();
        let mut b = FlatBufferBuilder::with_capacity(4096);
        let payload = reports::finished(
            &mut b,
            &Finished {
                service_id: &self.service_id,
                job_id: &self.job.id,
                error_encountered: error.is_some(),
                file_name: &file_name,
                metadata: &metadata.to_string(),
                message: &message,
            },
        );
        if send(
            &self.producer,
            &self.stats,
            &self.job.topic,
            &self.service_id,
            payload,
        ) {
            self.stats.handoffs.fetch_add(1, Ordering::Relaxed);
            tracing::info!(stream = %info.key, job = %self.job.id, files = files.len(), "kafka: file set handed off (wrdn)");
        }
    }

    /// The `wrdn` metadata: the run's counts and times, the folder, and every file.
    fn metadata(&self, folder: &Path, files: &[FileEntry], problems: &[String]) -> Value {
        let info = &self.end.stream;
        let list: Vec<Value> = files
            .iter()
            .map(|f| json!({"path": f.path, "size": f.size, "time": f.time, "chk": f.chk}))
            .collect();
        json!({
            "job_id": self.job.id,
            "stream": info.key,
            "beamtime": info.id.beamtime.as_str(),
            "source": info.id.source.as_str(),
            "stream_name": info.id.stream.as_str(),
            "sourceFolder": folder.display().to_string(),
            "chkAlg": "sha256",
            "files": list,
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

/// The files of `info`'s set in `folder` (the master, then the data files in order; for a
/// detector several daemons wrote, then each daemon's master and data files), each measured;
/// files that could not be read are reported, not listed.
pub fn measure(folder: &Path, info: &StreamInfo) -> (Vec<FileEntry>, Vec<String>) {
    let mut paths: Vec<PathBuf> = vec![info.file.clone()];
    paths.extend(detingest_writer::data_files(
        folder,
        info.id.stream.as_str(),
    ));
    for part in &info.parts {
        paths.push(detingest_writer::master_path(folder, part));
        paths.extend(detingest_writer::data_files(folder, part));
    }
    let (mut files, mut problems) = (Vec::new(), Vec::new());
    for p in paths {
        match entry(&p) {
            Ok(f) => files.push(f),
            Err(e) => problems.push(format!("{}: {e}", p.display())),
        }
    }
    (files, problems)
}

/// Size, time and checksum of one file.
fn entry(path: &Path) -> std::io::Result<FileEntry> {
    let mut f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    Ok(FileEntry {
        path: path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        size: meta.len(),
        time: humantime::format_rfc3339_millis(modified).to_string(),
        chk: hash.finalize().iter().map(|b| format!("{b:02x}")).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::fixture;

    #[test]
    fn a_detector_of_several_daemons_hands_off_every_part_after_its_master() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Arc::try_unwrap(fixture::stream(6)).unwrap();
        s.file = dir.path().join("s1_master.h5");
        s.parts = vec!["s1_a".into(), "s1_b".into()];
        for name in [
            "s1_master.h5",
            "s1_b_master.h5",
            "s1_b_data_000001.h5",
            "s1_a_data_000001.h5",
            "s1_a_master.h5",
            "s1_c_master.h5",
        ] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        let (files, problems) = measure(dir.path(), &s);
        assert!(problems.is_empty());
        let names: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            names,
            [
                "s1_master.h5",
                "s1_a_master.h5",
                "s1_a_data_000001.h5",
                "s1_b_master.h5",
                "s1_b_data_000001.h5"
            ]
        );
    }

    #[test]
    fn the_set_is_the_master_then_its_data_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Arc::try_unwrap(fixture::stream(1)).unwrap();
        s.file = dir.path().join("s1_master.h5");
        for (name, body) in [
            ("s1_master.h5", "m"),
            ("s1_data_000002.h5", "bb"),
            ("s1_data_000001.h5", "a"),
            ("s1_data_x.h5", "not ours"),
            ("s10_data_000001.h5", "another stream"),
        ] {
            std::fs::write(dir.path().join(name), body).unwrap();
        }
        let (files, problems) = measure(dir.path(), &s);
        assert!(problems.is_empty());
        let names: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            names,
            ["s1_master.h5", "s1_data_000001.h5", "s1_data_000002.h5"]
        );
        assert_eq!(files[2].size, 2);
        assert_eq!(
            files[1].chk, "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb",
            "sha256 of \"a\""
        );
        std::fs::remove_file(dir.path().join("s1_master.h5")).unwrap();
        let (files, problems) = measure(dir.path(), &s);
        assert_eq!(
            (files.len(), problems.len()),
            (2, 1),
            "a missing master is reported"
        );
    }
}
