//! The ring through its public API: frames in order, out-of-order release, every error
//! code, and the crash cases with real separate processes (this test binary re-executes
//! itself as the other side; see `child`).

#![cfg(not(loom))]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use detingest_shm::ring::{
    pixel_code, Descriptor, Producer, RingConsumer, RingError, RingEvent, RingSlot, RingSpec,
};
use detingest_shm::PixelType;

const SHAPE: [u32; 2] = [16, 32]; // 16 rows of 32 u16 pixels: 1024 bytes
const BYTES: u64 = 1024;

fn spec(slots: u32) -> RingSpec {
    RingSpec {
        slots,
        slot_bytes: BYTES,
        mode: 0o600,
        gid: None,
        frame: Some((PixelType::U16, SHAPE)),
        module: 0,
    }
}

fn desc(frame_number: u64) -> Descriptor {
    Descriptor {
        frame_number,
        timestamp_ns: 1_000 + frame_number,
        byte_length: BYTES,
        pixel_type: pixel_code(PixelType::U16),
        width: SHAPE[1],
        height: SHAPE[0],
        ..Descriptor::default()
    }
}

fn push(p: &mut Producer, frame_number: u64) -> Result<(), RingError> {
    let slot = p.acquire(BYTES, Duration::from_millis(500))?;
    slot.fill(frame_number as u8);
    p.commit(&desc(frame_number))
}

fn next_frame(c: &mut RingConsumer) -> (RingSlot, Descriptor) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)).unwrap() {
            RingEvent::Frame(s, d) => return (s, d),
            RingEvent::ProducerAttached { .. } | RingEvent::Idle => {}
            RingEvent::ProducerLeft { .. } => panic!("producer left before the frame came"),
        }
    }
    panic!("no frame within 10 s");
}

fn next_left(c: &mut RingConsumer) -> (bool, u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)).unwrap() {
            RingEvent::ProducerLeft { clean, torn } => return (clean, torn),
            RingEvent::Frame(_, d) => panic!("unexpected frame {d:?}"),
            _ => {}
        }
    }
    panic!("producer never left");
}

fn ring_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("rings").join("mod0")
}

#[test]
fn frames_arrive_in_order_through_a_small_ring() {
    let dir = tempfile::tempdir().unwrap();
    let path = ring_path(&dir);
    let mut c = RingConsumer::create(&path, &spec(4)).unwrap();
    let producer_path = path.clone();
    let producer = std::thread::spawn(move || {
        let mut p = Producer::attach(&producer_path).unwrap();
        for n in 1..=50 {
            push(&mut p, n).unwrap();
        }
    });
    for n in 1..=50u64 {
        let (s, d) = next_frame(&mut c);
        assert_eq!(d.sequence, s.sequence());
        assert_eq!(d.frame_number, n);
        assert_eq!(d.timestamp_ns, 1_000 + n);
        assert!(s.bytes().iter().all(|&b| b == n as u8), "frame {n} bytes");
        assert_eq!(s.bytes().len(), BYTES as usize);
    }
    producer.join().unwrap();
    assert_eq!(next_left(&mut c), (true, 0));
}

#[test]
fn the_ring_gets_its_mode_and_group_and_replaces_nothing_live() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let path = ring_path(&dir);
    let gid = std::fs::metadata(dir.path()).unwrap().gid(); // a group we belong to
    let c = RingConsumer::create(
        &path,
        &RingSpec {
            mode: 0o660,
            gid: Some(gid),
            ..spec(2)
        },
    )
    .unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, gid));
    assert!(!c.replaced_stale());
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
    assert_eq!(
        leftovers.len(),
        1,
        "no temporary file is left beside the ring"
    );
}

/// A two-slot ring with frames 1 and 2 committed: full until the daemon releases one.
fn full_two_slot_ring() -> (tempfile::TempDir, RingConsumer, Producer) {
    let dir = tempfile::tempdir().unwrap();
    let path = ring_path(&dir);
    let c = RingConsumer::create(&path, &spec(2)).unwrap();
    let mut p = Producer::attach(&path).unwrap();
    push(&mut p, 1).unwrap();
    push(&mut p, 2).unwrap();
    (dir, c, p)
}

#[test]
fn tail_advances_over_the_longest_released_prefix() {
    let (_dir, mut c, mut p) = full_two_slot_ring();
    let (a, b) = (next_frame(&mut c).0, next_frame(&mut c).0);
    assert!(matches!(
        p.acquire(BYTES, Duration::ZERO),
        Err(RingError::Timeout)
    ));
    drop(b); // frame 2 first: slot 1 may not be reused before frame 1 is released
    assert!(matches!(
        p.acquire(BYTES, Duration::from_millis(30)),
        Err(RingError::Timeout)
    ));
    assert_eq!(c.in_flight(), 2);
    drop(a);
    assert_eq!(c.in_flight(), 0);
    push(&mut p, 3).unwrap();
    push(&mut p, 4).unwrap();
    assert_eq!(next_frame(&mut c).1.frame_number, 3);
}

#[test]
fn a_blocked_producer_wakes_when_the_daemon_releases() {
    let (_dir, mut c, mut p) = full_two_slot_ring();
    let held = next_frame(&mut c).0;
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        drop(held);
    });
    let t = Instant::now();
    push(&mut p, 3).unwrap(); // waits on the futex until frame 1 is released
    assert!(t.elapsed() >= Duration::from_millis(40));
    releaser.join().unwrap();
}

#[test]
fn bad_calls_get_their_own_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = ring_path(&dir);
    let _c = RingConsumer::create(&path, &spec(2)).unwrap();
    let mut p = Producer::attach(&path).unwrap();
    assert_eq!(p.slot_bytes(), 4096, "slots are rounded up to a page");
    assert!(matches!(
        p.acquire(4097, Duration::ZERO),
        Err(RingError::TooLarge {
            len: 4097,
            slot: 4096
        })
    ));
    assert!(matches!(p.commit(&desc(1)), Err(RingError::State(_))));
    p.acquire(BYTES, Duration::ZERO).unwrap();
    assert!(matches!(
        p.acquire(BYTES, Duration::ZERO),
        Err(RingError::State(_))
    ));
    // (description, what is wrong, refused as too large rather than as a bad description)
    let bad_descriptors = [
        (
            Descriptor {
                width: 16,
                byte_length: 512,
                ..desc(1)
            },
            "wrong shape",
            false,
        ),
        (
            Descriptor {
                byte_length: 1000,
                ..desc(1)
            },
            "inconsistent length",
            false,
        ),
        (
            Descriptor {
                byte_length: 8192,
                ..desc(1)
            },
            "longer than the slot",
            true,
        ),
        (
            Descriptor {
                module: 3,
                ..desc(1)
            },
            "other module",
            false,
        ),
        (
            Descriptor {
                pixel_type: 9,
                ..desc(1)
            },
            "unknown pixel type",
            false,
        ),
    ];
    for (d, what, too_large) in bad_descriptors {
        let e = p.commit(&d).expect_err(what);
        let kind_ok = match e {
            RingError::TooLarge { .. } => too_large,
            RingError::BadDescriptor(_) => !too_large,
            _ => false,
        };
        assert!(kind_ok, "{what}: {e}");
    }
    p.abort();
    assert!(matches!(
        Producer::attach(&path),
        Err(RingError::Busy(pid)) if pid == std::process::id()
    ));
    assert!(matches!(
        Producer::attach(&dir.path().join("nothing")),
        Err(RingError::NoRing(_))
    ));
    assert!(matches!(
        RingConsumer::create(&path, &spec(2)),
        Err(RingError::InUse(_))
    ));
    assert!(matches!(
        RingConsumer::create(&dir.path().join("x"), &spec(3)),
        Err(RingError::Corrupt(_))
    ));
}

#[test]
fn foreign_files_are_refused_by_magic_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = ring_path(&dir);
    let c = RingConsumer::create(&path, &spec(2)).unwrap();
    let good = std::fs::read(&path).unwrap();
    let other = dir.path().join("other");
    let mut bytes = good.clone();
    bytes[..8].copy_from_slice(b"NOTARING");
    std::fs::write(&other, &bytes).unwrap();
    assert!(matches!(
        Producer::attach(&other),
        Err(RingError::BadMagic(_))
    ));
    let mut bytes = good.clone();
    bytes[8] = 99;
    std::fs::write(&other, &bytes).unwrap();
    assert!(matches!(
        Producer::attach(&other),
        Err(RingError::BadVersion {
            found: 99,
            expected: 1
        })
    ));
    std::fs::write(&other, &good[..2000]).unwrap();
    assert!(matches!(
        Producer::attach(&other),
        Err(RingError::Corrupt(_))
    ));
    std::fs::write(&other, b"short").unwrap();
    assert!(matches!(
        Producer::attach(&other),
        Err(RingError::Corrupt(_))
    ));
    drop(c);
}

#[test]
fn a_daemon_that_shut_down_answers_daemon_gone() {
    let dir = tempfile::tempdir().unwrap();
    let path = ring_path(&dir);
    let c = RingConsumer::create(&path, &spec(2)).unwrap();
    let mut p = Producer::attach(&path).unwrap();
    push(&mut p, 1).unwrap();
    drop(c);
    assert!(!path.exists(), "a clean shutdown removes the ring's name");
    assert!(matches!(
        p.acquire(BYTES, Duration::from_secs(1)),
        Err(RingError::DaemonGone)
    ));
}

// ---- separate processes ----

/// What a re-executed test binary does, by `RING_CHILD` (`<role>:<path>`); as a plain test
/// (no variable) it does nothing.
#[test]
fn child() {
    let Ok(task) = std::env::var("RING_CHILD") else {
        return;
    };
    let (role, path) = task.split_once(':').unwrap();
    let path = Path::new(path);
    match role {
        // Serve a ring until killed.
        "daemon" => {
            let _c = RingConsumer::create(path, &spec(2)).unwrap();
            std::fs::write(path.with_extension("ready"), b"").unwrap();
            std::thread::sleep(Duration::from_secs(60));
        }
        // Commit frames 1..=3, acquire and half-fill frame 4, then wait to be killed.
        "producer" => {
            let mut p = Producer::attach(path).unwrap();
            for n in 1..=3 {
                push(&mut p, n).unwrap();
            }
            p.acquire(BYTES, Duration::from_secs(5)).unwrap()[..10].fill(0xee);
            std::fs::write(path.with_extension("ready"), b"").unwrap();
            std::thread::sleep(Duration::from_secs(60));
        }
        other => panic!("unknown child role {other}"),
    }
}

fn spawn_child(role: &str, path: &Path) -> Child {
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env("RING_CHILD", format!("{role}:{}", path.display()))
        .spawn()
        .unwrap();
    let ready = path.with_extension("ready");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "{role} child never got ready");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::remove_file(ready).unwrap();
    child
}

fn kill9(mut child: Child) {
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
}

#[test]
fn a_killed_producer_costs_exactly_its_uncommitted_frame() {
    let dir = tempfile::tempdir().unwrap();
    let path = ring_path(&dir);
    let mut c = RingConsumer::create(&path, &spec(8)).unwrap();
    let child = spawn_child("producer", &path);
    let frames: Vec<_> = (0..3).map(|_| next_frame(&mut c)).collect();
    let numbers: Vec<u64> = frames.iter().map(|(_, d)| d.frame_number).collect();
    assert_eq!(numbers, [1, 2, 3]);
    assert!(frames
        .iter()
        .all(|(s, d)| s.bytes().iter().all(|&b| b == d.frame_number as u8)));
    kill9(child);
    assert_eq!(
        next_left(&mut c),
        (false, 1),
        "killed mid-frame: one torn frame"
    );
    assert_eq!(c.torn(), 1);
    let mut p = Producer::attach(&path).expect("a new producer attaches after the crash");
    push(&mut p, 5).unwrap();
    let (s, d) = next_frame(&mut c);
    assert_eq!(d.frame_number, 5);
    assert!(
        s.bytes().iter().all(|&b| b == 5),
        "the torn slot's half-write is gone"
    );
    assert_eq!(c.torn(), 1);
}

#[test]
fn a_new_producer_counts_a_torn_frame_the_daemon_had_not_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let path = ring_path(&dir);
    let c = RingConsumer::create(&path, &spec(8)).unwrap();
    kill9(spawn_child("producer", &path));
    let _p = Producer::attach(&path).unwrap();
    assert_eq!(c.torn(), 1);
}

#[test]
fn a_killed_daemon_answers_daemon_gone_and_its_ring_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = ring_path(&dir);
    let daemon = spawn_child("daemon", &path);
    let mut p = Producer::attach(&path).unwrap();
    push(&mut p, 1).unwrap();
    kill9(daemon);
    assert!(path.exists(), "a killed daemon leaves its ring behind");
    let t = Instant::now();
    assert!(matches!(
        p.acquire(BYTES, Duration::from_secs(5)),
        Err(RingError::DaemonGone)
    ));
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    let c = RingConsumer::create(&path, &spec(2)).unwrap();
    assert!(c.replaced_stale());
    assert!(
        matches!(p.acquire(BYTES, Duration::ZERO), Err(RingError::DaemonGone)),
        "the old producer's mapping is the dead ring, not the new one"
    );
    drop(p);
    let mut p = Producer::attach(&path).unwrap();
    push(&mut p, 1).unwrap();
}
