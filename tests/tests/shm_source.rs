//! The shared-memory source fed by a "foreign" producer that follows `shm/LAYOUT.md` byte by
//! byte, without the library: the documented offsets are enough to deliver frames, and a
//! frame the stream cannot take is counted malformed and kept out of the file.

use std::fs::OpenOptions;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use detingest_daemon::config::Config;
use detingest_daemon::pipeline;
use detingest_daemon::sink::{Notification, NotificationSink, RunSinks, SinkNeeds};
use detingest_tests::{read, Collector, SPECIFIC};

/// The producer side of LAYOUT.md, written from the document.
struct ForeignProducer {
    map: memmap2::MmapRaw,
    slots: u64,
    slot_bytes: u64,
    slots_offset: u64,
    head: u64,
}

impl ForeignProducer {
    fn attach(path: &std::path::Path) -> Self {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let map = memmap2::MmapRaw::map_raw(&file).unwrap();
        let bytes = |off: usize, n: usize| {
            // SAFETY: the header's immutable identity, inside the mapping.
            unsafe { std::slice::from_raw_parts(map.as_ptr().add(off), n) }.to_vec()
        };
        assert_eq!(bytes(0, 8), b"DETRING\0");
        assert_eq!(bytes(8, 4), 1u32.to_le_bytes());
        let u64_at = |off| u64::from_le_bytes(bytes(off, 8).try_into().unwrap());
        let slots = u64::from(u32::from_le_bytes(bytes(16, 4).try_into().unwrap()));
        let (slot_bytes, slots_offset) = (u64_at(24), u64_at(32));
        Self {
            slots,
            slot_bytes,
            slots_offset,
            head: 0,
            map,
        }
    }

    fn head(&self) -> &AtomicU64 {
        // SAFETY: offset 128 is the 8-byte aligned `head` counter, shared atomically.
        unsafe { AtomicU64::from_ptr(self.map.as_mut_ptr().add(128).cast()) }
    }

    /// Commits one u16 frame of `h` x `w` pixels all equal to `value`.
    fn commit(&mut self, frame_number: u64, module: u32, [h, w]: [u32; 2], value: u16) {
        let slot = (self.head % self.slots) as usize;
        let len = u64::from(h) * u64::from(w) * 2;
        assert!(len <= self.slot_bytes);
        let mut desc = Vec::with_capacity(64);
        for v in [frame_number, 7, len, self.head] {
            desc.extend_from_slice(&v.to_le_bytes());
        }
        for v in [2u32, w, h, module, 0, 0, 0, 0] {
            desc.extend_from_slice(&v.to_le_bytes());
        }
        let pixels: Vec<u8> = (0..len / 2).flat_map(|_| value.to_le_bytes()).collect();
        // SAFETY: slot and descriptor `slot` lie in the mapping; the daemon reads them
        // only after the Release store of head below (the ring is never full here).
        unsafe {
            let base = self.map.as_mut_ptr();
            let at = base.add(self.slots_offset as usize + slot * self.slot_bytes as usize);
            std::ptr::copy_nonoverlapping(pixels.as_ptr(), at, pixels.len());
            std::ptr::copy_nonoverlapping(desc.as_ptr(), base.add(1024 + 64 * slot), 64);
        }
        self.head += 1;
        // No bell: the daemon's 20 ms wait slices find the frame anyway.
        self.head().store(self.head, Ordering::Release);
    }
}

#[test]
fn a_producer_written_from_layout_md_delivers_and_bad_frames_are_counted_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "data_dir = {:?}\n[live]\npublish = \"\"\nquery = \"\"\n\
         [[source]]\nname = \"mod0\"\ncodec = \"none\"\n\
         stream = {{ beamtime = \"bt\", source = \"det\", stream = \"s1\" }}\n\
         [source.shm]\ndir = {:?}\nshape = [32, 64]\npixel = \"u16\"\nslots = 4\n",
        dir.path().join("data").display().to_string(),
        dir.path().join("rings").display().to_string(),
    );
    let config = Config::parse(&text).unwrap();
    let (tx, rx) = mpsc::channel();
    let sinks: Vec<Box<dyn NotificationSink>> = vec![Box::new(Collector(tx))];
    let running = pipeline::start(
        &config,
        RunSinks {
            sinks,
            needs: SinkNeeds::of(&config.sink.zmq),
        },
    )
    .unwrap();

    let mut p = ForeignProducer::attach(&dir.path().join("rings/mod0"));
    p.commit(1, 0, [32, 64], 100);
    p.commit(2, 5, [32, 64], 200); // module 5: this ring carries module 0
    p.commit(3, 0, [16, 64], 300); // half the configured shape
    p.commit(4, 0, [32, 64], 400);
    let deadline = Instant::now() + Duration::from_secs(20);
    let src = &running.sources()[0];
    while src.sent.load(Ordering::Relaxed) < 2 || src.malformed.load(Ordering::Relaxed) < 2 {
        assert!(Instant::now() < deadline, "frames never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
    running.stop();
    let summary = running.wait();
    assert_eq!(
        (summary.sources[0].sent, summary.sources[0].malformed),
        (2, 2)
    );
    let frames: Vec<(u64, bool)> = rx
        .try_iter()
        .filter_map(|n| match n {
            Notification::Frame(f) => Some((f.record.frame_number, f.record.lost())),
            _ => None,
        })
        .collect();
    assert_eq!(frames, [(1, false), (2, true), (3, true), (4, false)]);
    let file = hdf5::File::open(&summary.streams[0].stream.file).unwrap();
    let data = file.dataset("/entry/data/data").unwrap();
    assert_eq!(data.shape(), [4, 32, 64]);
    let pixels: Vec<u16> = data.read_raw().unwrap(); // codec none: no filter plugin needed
    let frame = 32 * 64;
    assert!(pixels[..frame].iter().all(|&v| v == 100));
    assert!(pixels[3 * frame..].iter().all(|&v| v == 400));
}

#[test]
fn one_ring_carries_every_module_of_a_grid_and_frames_become_datasets() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "data_dir = {:?}\n[live]\npublish = \"\"\nquery = \"\"\n\
         [run]\nchunking = \"frame\"\n\
         [[source]]\nname = \"det\"\ncodec = \"none\"\ngrid = [2, 1]\n\
         stream = {{ beamtime = \"bt\", source = \"det\", stream = \"s1\" }}\n\
         [source.shm]\ndir = {:?}\nshape = [8, 16]\npixel = \"u16\"\nslots = 8\n",
        dir.path().join("data").display().to_string(),
        dir.path().join("rings").display().to_string(),
    );
    let config = Config::parse(&text).unwrap();
    let running = pipeline::start(&config, RunSinks::none()).unwrap();
    let mut p = ForeignProducer::attach(&dir.path().join("rings/det"));
    p.commit(1, 0, [8, 16], 10);
    p.commit(1, 1, [8, 16], 11);
    p.commit(2, 0, [8, 16], 20); // module 1 of frame 2 never comes
    p.commit(2, 2, [8, 16], 22); // outside the 2 x 1 grid: malformed
    p.commit(3, 1, [8, 16], 31);
    p.commit(3, 0, [8, 16], 30);
    let deadline = Instant::now() + Duration::from_secs(20);
    let src = &running.sources()[0];
    while src.sent.load(Ordering::Relaxed) < 5 {
        assert!(Instant::now() < deadline, "frames never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
    running.stop();
    let summary = running.wait();
    assert_eq!(summary.sources[0].malformed, 1);
    assert_eq!(summary.stats.incomplete, 1);
    let file = hdf5::File::open(&summary.streams[0].stream.file).unwrap();
    let data = file.dataset("/entry/data/data").unwrap();
    assert_eq!(data.shape(), [3, 16, 16]);
    let pixels: Vec<u16> = data.read_raw().unwrap();
    let tile = 8 * 16;
    let tiles: Vec<u16> = pixels.chunks(tile).map(|t| t[0]).collect();
    assert_eq!(
        tiles,
        [10, 11, 20, 0, 30, 31],
        "module 0 on top, the missing tile is fill"
    );
    assert!(pixels.chunks(tile).all(|t| t.iter().all(|&v| v == t[0])));
    let mask: Vec<u64> = read(&file, &format!("{SPECIFIC}/module_mask"));
    assert_eq!(mask, [0b11, 0b01, 0b11]);
}
