//! Bitshuffle-LZ4 chunks cross between detingest and the C bitshuffle library in both
//! directions: chunks the C library wrote (PyPI `bitshuffle`, and hdf5plugin's HDF5 filter)
//! decode with our decoder, and chunks we wrote decode with the C library.
//!
//! Needs the Python environment `make test` prepares (`.venv` with h5py, hdf5plugin and
//! bitshuffle), or `DETINGEST_PYTHON` pointing at one.

use std::path::{Path, PathBuf};
use std::process::Command;

use detingest_writer::Codec;

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("DETINGEST_PYTHON") {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with bitshuffle: run `make test`, or set DETINGEST_PYTHON"
    );
    venv
}

fn helper(verb: &str, dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/bitshuffle_interop.py");
    let out = Command::new(python())
        .arg(script)
        .arg(verb)
        .arg(dir)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "bitshuffle_interop.py {verb} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cases(dir: &Path, list: &str) -> Vec<(String, usize)> {
    let text = std::fs::read_to_string(dir.join(list)).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    cases
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap().to_owned();
            (name, c["es"].as_u64().unwrap() as usize)
        })
        .collect()
}

#[test]
fn chunks_written_by_the_c_library_decode_with_ours() {
    let dir = tempfile::tempdir().unwrap();
    helper("write", dir.path());
    let cases = cases(dir.path(), "cases.json");
    assert!(cases.len() >= 40, "{} cases", cases.len());
    for (name, es) in cases {
        let chunk = std::fs::read(dir.path().join(format!("{name}.chunk"))).unwrap();
        let raw = std::fs::read(dir.path().join(format!("{name}.raw"))).unwrap();
        let codec = Codec::BitshuffleLz4;
        assert_eq!(codec.decoded_len(&chunk).unwrap(), raw.len(), "{name}");
        let mut out = vec![0u8; raw.len()];
        let n = codec
            .decompress_into(&chunk, es, &mut out)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(n, raw.len());
        assert!(out == raw, "{name}: decoded pixels differ");
    }
}

#[test]
fn chunks_written_by_us_decode_with_the_c_library() {
    let dir = tempfile::tempdir().unwrap();
    let mut list = Vec::new();
    let mut x = 88172645463325252u64;
    for es in [1usize, 2, 4, 8] {
        for n in [
            0usize, 7, 8, 9, 100, 1016, 1024, 2048, 4096, 8192, 8200, 30_001,
        ] {
            // Small counts, all zero, all at the type's largest, random bytes, a
            // real-looking frame (sparse counts, a few bright spots, scattered masked pixels)
            // and counts of a few per pixel (whose blocks are encoded by runs alone).
            for kind in ["small", "zero", "max", "random", "real", "dense"] {
                let raw: Vec<u8> = (0..n * es)
                    .map(|i| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let low = i % es == 0;
                        match kind {
                            "small" if low => (x % 5) as u8,
                            "dense" if low => (x % 11) as u8,
                            "dense" => 0,
                            "zero" | "small" => 0,
                            "max" => 0xFF,
                            "random" => x as u8,
                            _ if x % 997 == 0 => 0xFF,
                            _ if (i / es) % 1500 < 9 => (x >> 8) as u8,
                            _ if low => (x % 3 == 0) as u8,
                            _ => 0,
                        }
                    })
                    .collect();
                let codec = Codec::BitshuffleLz4;
                let mut chunk = vec![0u8; codec.max_compressed_len(raw.len(), es)];
                let len = codec.compress_into(&raw, es, &mut chunk).unwrap();
                let name = format!("ours_{kind}_es{es}_n{n}");
                std::fs::write(dir.path().join(format!("{name}.chunk")), &chunk[..len]).unwrap();
                std::fs::write(dir.path().join(format!("{name}.raw")), &raw).unwrap();
                list.push(serde_json::json!({"name": name, "es": es}));
            }
        }
    }
    std::fs::write(
        dir.path().join("ours.json"),
        serde_json::to_string(&list).unwrap(),
    )
    .unwrap();
    helper("check", dir.path());
}
