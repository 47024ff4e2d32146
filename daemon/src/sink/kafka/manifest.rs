//! The file set of a stream and its manifest: every file (the master, then the data files in
//! order; for a detector several daemons wrote, then each daemon's master and data files)
//! measured and checksummed (SHA-256, BLAKE2b or MD5: `kafka.checksum`), and the list
//! written beside them as
//! `<stream>_files.json`: SciCat's OrigDatablock `dataFileList` as it is, whatever the run's
//! size (the `wrdn` carries the list too while it fits in a message, and names the manifest
//! always).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::digest::DynDigest;
use sha2::{Digest, Sha256};

use crate::stream::StreamInfo;

/// The checksum of every file (`[kafka] checksum`): SciCat's `chkAlg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Checksum {
    /// SHA-256 (the default).
    #[default]
    Sha256,
    /// BLAKE2b-512, as ESS's ingestor computes it (Python's `hashlib.blake2b()`).
    Blake2b,
    /// MD5, as HEPS records it.
    Md5,
}

impl Checksum {
    /// A running checksum of this kind.
    fn hasher(self) -> Box<dyn DynDigest> {
        match self {
            Self::Sha256 => Box::new(Sha256::new()),
            Self::Blake2b => Box::new(blake2::Blake2b512::new()),
            Self::Md5 => Box::new(md5::Md5::new()),
        }
    }

    /// Its `chkAlg` name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Blake2b => "blake2b",
            Self::Md5 => "md5",
        }
    }
}

/// One file of the set, as SciCat's OrigDatablock lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileEntry {
    /// Its name, relative to the folder.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Last modified, RFC 3339.
    pub time: String,
    /// Its checksum ([`Checksum`]), hex.
    pub chk: String,
}

/// The files of `info`'s set in `folder` (the master, then the data files in order; for a
/// detector several daemons wrote, then each daemon's master and data files), each measured;
/// files that could not be read are reported, not listed.
pub fn measure(
    folder: &Path,
    info: &StreamInfo,
    checksum: Checksum,
) -> (Vec<FileEntry>, Vec<String>) {
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
        match entry(&p, checksum) {
            Ok(f) => files.push(f),
            Err(e) => problems.push(format!("{}: {e}", p.display())),
        }
    }
    (files, problems)
}

/// Size, time and checksum of one file.
fn entry(path: &Path, checksum: Checksum) -> std::io::Result<FileEntry> {
    let mut f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    let mut hash = checksum.hasher();
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

/// The manifest's name for stream `stream`.
pub fn manifest_name(stream: &str) -> String {
    format!("{stream}_files.json")
}

/// Writes `files` as the manifest of `stream` in `folder` (a temporary name, then renamed:
/// a reader never sees half of it); the manifest's own entry (size, checksum).
pub fn write_manifest(
    folder: &Path,
    host: &str,
    stream: &str,
    files: &[FileEntry],
    checksum: Checksum,
) -> std::io::Result<FileEntry> {
    /// The manifest as written (serialized straight from the list: no copy of it).
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Manifest<'a> {
        source_folder: String,
        source_folder_host: &'a str,
        chk_alg: &'static str,
        number_of_files: usize,
        size: u64,
        data_file_list: &'a [FileEntry],
    }
    let name = manifest_name(stream);
    let doc = Manifest {
        source_folder: folder.display().to_string(),
        source_folder_host: host,
        chk_alg: checksum.name(),
        number_of_files: files.len(),
        size: files.iter().map(|f| f.size).sum(),
        data_file_list: files,
    };
    let tmp = folder.join(format!(".{name}.tmp"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    serde_json::to_writer(&mut f, &doc)?;
    f.flush()?;
    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    let path = folder.join(&name);
    std::fs::rename(&tmp, &path)?;
    entry(&path, checksum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::fixture;
    use serde_json::Value;
    use std::sync::Arc;

    #[test]
    fn a_manifest_of_twenty_thousand_files_lists_every_one() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<FileEntry> = (1..=20_000)
            .map(|i| FileEntry {
                path: format!("s_data_{i:06}.h5"),
                size: i,
                time: "2026-12-07T10:00:00.000Z".into(),
                chk: format!("{i:064x}"),
            })
            .collect();
        let own = write_manifest(dir.path(), "host-1", "s", &files, Checksum::Md5).unwrap();
        assert_eq!(own.path, "s_files.json");
        let text = std::fs::read_to_string(dir.path().join("s_files.json")).unwrap();
        assert_eq!(own.size, text.len() as u64);
        let doc: Value = serde_json::from_str(&text).unwrap();
        let list = doc["dataFileList"].as_array().unwrap();
        assert_eq!(
            (list.len(), doc["numberOfFiles"].as_u64()),
            (20_000, Some(20_000))
        );
        assert_eq!(list[19_999]["path"], "s_data_020000.h5");
        assert_eq!(doc["size"].as_u64(), Some(20_000 * 20_001 / 2));
        assert_eq!(
            (doc["sourceFolderHost"].as_str(), doc["chkAlg"].as_str()),
            (Some("host-1"), Some("md5"))
        );
        assert!(!dir.path().join(".s_files.json.tmp").exists());
    }

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
        let (files, problems) = measure(dir.path(), &s, Checksum::Sha256);
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
        let (files, problems) = measure(dir.path(), &s, Checksum::Sha256);
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
        // The other algorithms, as Python's hashlib computes them.
        let (md5, _) = measure(dir.path(), &s, Checksum::Md5);
        assert_eq!(
            md5[1].chk, "0cc175b9c0f1b6a831c399e269772661",
            "md5 of \"a\""
        );
        let (b2, _) = measure(dir.path(), &s, Checksum::Blake2b);
        assert_eq!(
            b2[1].chk,
            "333fcb4ee1aa7c115355ec66ceac917c8bfd815bf7587d325aec1864edd24e34\
             d5abe2c6b1b5ee3face62fed78dbef802f2a85cb91d455a8f5249d330853cb3c",
            "blake2b of \"a\""
        );
        std::fs::remove_file(dir.path().join("s1_master.h5")).unwrap();
        let (files, problems) = measure(dir.path(), &s, Checksum::Sha256);
        assert_eq!(
            (files.len(), problems.len()),
            (2, 1),
            "a missing master is reported"
        );
    }
}
