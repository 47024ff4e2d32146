//! The `detingestd` binary: bad input is refused with a message naming what is wrong.

use std::path::Path;
use std::process::{Command, Output};

fn detingestd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_detingestd"))
        .args(args)
        .output()
        .expect("detingestd runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

const GOOD: &str = r#"
[live]
publish = ""
query = ""

[[source]]
name = "sim"
stream = { beamtime = "bt", source = "det", stream = "s1" }
[source.synthetic]
frames = 2
shape = [8, 8]
bank_frames = 1
"#;

#[test]
fn check_config_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "good.toml", GOOD);
    let o = detingestd(&["check-config", &cfg]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ok"));
}

#[test]
fn check_config_refuses_a_token_file_serve_would_refuse() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = format!(
        "[control]\ntoken_file = {:?}\n{GOOD}",
        token.display().to_string()
    );
    let cfg = write(dir.path(), "token.toml", &text);
    let o = detingestd(&["check-config", &cfg]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("control.token_file") && e.contains("chmod 600"),
        "{e}"
    );
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(detingestd(&["check-config", &cfg]).status.success());
}

#[test]
fn a_name_that_could_escape_the_data_directory_is_refused_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "bad.toml",
        &GOOD.replace("\"s1\"", "\"../../etc\""),
    );
    let o = detingestd(&["check-config", &cfg]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("source[0].stream.stream"), "{e}");
    assert!(e.contains("../../etc"), "{e}");
}

#[test]
fn unknown_keys_and_bad_values_are_refused_by_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        (format!("{GOOD}\nrate = 5\n"), "source[0].synthetic.rate"),
        (
            format!("[pipeline]\ncompress_workers = 0\n{GOOD}"),
            "pipeline.compress_workers",
        ),
        (
            format!("[writer]\ncodec = \"zstd\"\n{GOOD}"),
            "writer.codec",
        ),
        (
            format!("[threads]\nwriter = 9999\n{GOOD}"),
            "threads.writer",
        ),
    ] {
        let cfg = write(dir.path(), "bad.toml", &text);
        let o = detingestd(&["check-config", &cfg]);
        assert_eq!(o.status.code(), Some(2), "{text}");
        assert!(stderr(&o).contains(key), "{key}: {}", stderr(&o));
    }
}

#[test]
fn bad_command_line_options_are_named() {
    let o = detingestd(&["demo", "--codec", "zip"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("--codec") && e.contains("zip"), "{e}");
    let o = detingestd(&["demo", "--frames", "many"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--frames"), "{}", stderr(&o));
}

#[test]
fn run_writes_once_then_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "good.toml", GOOD);
    let data = dir.path().join("data").display().to_string();
    let o = detingestd(&["--log", "warn", "run", "-c", &cfg, "--data-dir", &data]);
    assert!(o.status.success(), "{}", stderr(&o));
    let file = dir.path().join("data/bt/det/s1_master.h5");
    assert!(file.exists());
    let o = detingestd(&["--log", "warn", "run", "-c", &cfg, "--data-dir", &data]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("exists already"), "{}", stderr(&o));
}

#[test]
fn help_documents_every_command() {
    let o = detingestd(&["--help"]);
    let out = String::from_utf8_lossy(&o.stdout);
    for cmd in ["run", "serve", "check-config", "demo", "synth-dump"] {
        assert!(out.contains(cmd), "{cmd} missing from --help");
    }
}

#[test]
fn the_documented_example_configs_are_valid() {
    for example in [
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/detingest.example.toml"
        ),
        concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/shm.example.toml"),
        concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/udp.example.toml"),
    ] {
        let o = detingestd(&["check-config", example]);
        assert!(o.status.success(), "{example}: {}", stderr(&o));
    }
}

#[test]
fn a_busy_live_endpoint_is_refused_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let text = GOOD.replace(
        "publish = \"\"",
        &format!("publish = \"tcp://127.0.0.1:{port}\""),
    );
    let cfg = write(dir.path(), "busy.toml", &text);
    let data = dir.path().join("data").display().to_string();
    let o = detingestd(&["--log", "warn", "run", "-c", &cfg, "--data-dir", &data]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("live.publish") && e.contains(&port.to_string()),
        "{e}"
    );
    assert!(
        !dir.path().join("data/bt/det/s1.h5").exists(),
        "nothing written"
    );
}
