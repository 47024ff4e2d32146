//! Finishing an unfinished run from its files: a finished run is refused, a master its writer
//! died while making (nothing recorded) is set aside, and a run whose data file is held open
//! by another process is left alone.

use detingest_shm::PixelType;
use detingest_writer::{
    finish_unfinished, master_path, Chunking, Codec, DetectorInfo, FileOptions, RunEnd, RunFiles,
    RunLayout,
};

fn layout() -> RunLayout {
    RunLayout {
        pixel: PixelType::U16,
        module_shape: [4, 6],
        grid: [1, 1],
        chunking: Chunking::Module,
        codec: Codec::None,
    }
}

#[test]
fn a_finished_run_is_refused_and_left_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunFiles::create(
        dir.path(),
        "done",
        layout(),
        &DetectorInfo::default(),
        "{}",
        FileOptions::default(),
    )
    .unwrap();
    run.finish(&RunEnd::default()).unwrap();
    let master = master_path(dir.path(), "done");
    let before = std::fs::read(&master).unwrap();
    let e = finish_unfinished(&master, "crashed: test").unwrap_err();
    assert!(e.to_string().contains("finished already"), "{e}");
    assert_eq!(std::fs::read(&master).unwrap(), before, "not touched");
    assert!(!dir.path().join(".done_master.h5.finishing").exists());
}

#[test]
fn a_master_killed_while_made_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let master = master_path(dir.path(), "early");
    // What a writer killed right after creating the file leaves: a superblock and no more.
    let mut bytes = b"\x89HDF\r\n\x1a\n\x03\x08\x08\x01".to_vec();
    bytes.resize(48, 0);
    std::fs::write(&master, bytes).unwrap();
    let e = finish_unfinished(&master, "crashed: test").unwrap_err();
    assert!(e.to_string().contains("set aside"), "{e}");
    assert!(!master.exists());
    assert!(dir.path().join("early_master.h5.unreadable").exists());
}

#[test]
fn a_run_whose_file_another_process_holds_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let master = master_path(dir.path(), "held");
    std::fs::write(&master, b"not hdf5 yet").unwrap();
    let mut holder = std::process::Command::new("sleep")
        .arg("30")
        .stdin(std::fs::File::open(&master).unwrap())
        .spawn()
        .unwrap();
    let e = finish_unfinished(&master, "crashed: test").unwrap_err();
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(
        e.to_string()
            .contains(&format!("process {} holds", holder.id())),
        "{e}"
    );
    assert_eq!(std::fs::read(&master).unwrap(), b"not hdf5 yet");
}

#[test]
fn files_this_process_holds_count_as_held() {
    // A serve looking for crashed runs while its own run writes must leave that run alone.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mine_master.h5");
    let file = std::fs::File::create(&path).unwrap();
    let held = detingest_writer::holders(std::slice::from_ref(&path));
    assert_eq!(held, [(std::process::id(), path.clone())]);
    drop(file);
    assert!(detingest_writer::holders(&[path]).is_empty());
}
