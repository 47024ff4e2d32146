//! A run's file set read back with libhdf5: tiles land where the geometry says, missing tiles
//! read as the fill value, data files roll over with the right `image_nr_low/high`, and the
//! master's links and VDS resolve from another working directory; `read_frame` gives an index
//! back as the VDS reads it.

use detingest_shm::PixelType;
use detingest_writer::{
    data_file_name, master_path, Chunking, Codec, DetectorInfo, FileOptions, IndexRecord, RunEnd,
    RunFiles, RunLayout, WriteError,
};

const MODULE: [u32; 2] = [4, 6];

fn layout(chunking: Chunking) -> RunLayout {
    RunLayout {
        pixel: PixelType::U16,
        module_shape: MODULE,
        grid: [2, 2],
        chunking,
        codec: Codec::None,
    }
}

/// Pixel value of module `m` of index `i` at `(y, x)`.
fn px(i: u64, m: u32, y: u32, x: u32) -> u16 {
    (i * 1000 + u64::from(m) * 100 + u64::from(y * MODULE[1] + x)) as u16
}

fn module_bytes(i: u64, m: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for y in 0..MODULE[0] {
        for x in 0..MODULE[1] {
            v.extend_from_slice(&px(i, m, y, x).to_le_bytes());
        }
    }
    v
}

/// Present modules of index `i` (1-based): index 3 lost entirely, index 5 lacks module 2.
fn present(i: u64) -> u64 {
    match i {
        3 => 0,
        5 => 0b1011,
        _ => 0b1111,
    }
}

fn write_run(dir: &std::path::Path, chunking: Chunking, n: u64) -> u64 {
    let l = layout(chunking);
    let opts = FileOptions {
        frames_per_file: 3,
        master_data: detingest_writer::MasterData::Both,
        frames: 0,
        swmr: true,
        statistics: None,
    };
    let mut run = RunFiles::create(dir, "scan", l, &DetectorInfo::default(), "{}", opts).unwrap();
    for i in 1..=n {
        let mask = present(i);
        match chunking {
            Chunking::Module => {
                for m in (0..4).filter(|m| mask & (1 << m) != 0) {
                    run.write_chunk(i, m, &module_bytes(i, m)).unwrap();
                }
            }
            Chunking::Frame if mask != 0 => {
                let [ny, nx] = l.image_shape();
                let mut img = vec![0u16; (ny * nx) as usize];
                for m in (0..4).filter(|m| mask & (1 << m) != 0) {
                    let [oy, ox] = l.tile_origin(m);
                    for y in 0..MODULE[0] {
                        for x in 0..MODULE[1] {
                            img[((oy + y) * nx + ox + x) as usize] = px(i, m, y, x);
                        }
                    }
                }
                let bytes: Vec<u8> = img.iter().flat_map(|p| p.to_le_bytes()).collect();
                run.write_chunk(i, 0, &bytes).unwrap();
            }
            Chunking::Frame => {}
        }
        let missing = [[0u8; 64]; 4];
        run.record(
            i,
            &IndexRecord {
                frame_number: 100 + i,
                sequence: 0,
                timestamp_ns: i,
                detector_timestamp: 0,
                bunch_id: 0,
                modules: mask,
                dropped: 0,
                missing_packets: &missing,
                stats: None,
            },
        )
        .unwrap();
    }
    run.finish(&RunEnd::default()).unwrap()
}

#[test]
fn both_chunkings_read_back_the_same_images_through_links_and_vds() {
    for chunking in [Chunking::Module, Chunking::Frame] {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(write_run(tmp.path(), chunking, 7), 7);
        for (k, (low, high)) in [(1, 3), (4, 6), (7, 7)].into_iter().enumerate() {
            let f =
                hdf5::File::open(tmp.path().join(data_file_name("scan", k as u64 + 1))).unwrap();
            let d = f.dataset("/entry/data/data").unwrap();
            assert_eq!(
                d.attr("image_nr_low")
                    .unwrap()
                    .read_scalar::<i64>()
                    .unwrap(),
                low
            );
            assert_eq!(
                d.attr("image_nr_high")
                    .unwrap()
                    .read_scalar::<i64>()
                    .unwrap(),
                high
            );
        }
        assert!(!tmp.path().join(data_file_name("scan", 4)).exists());
        // Resolve links and the VDS from elsewhere: names are relative to the master.
        let master = hdf5::File::open(master_path(tmp.path(), "scan")).unwrap();
        let vds = master.dataset("/entry/data/data").unwrap();
        assert_eq!(vds.shape(), [7, 8, 12]);
        let all = vds.read_raw::<u16>().unwrap();
        let linked = master.dataset("/entry/data/data_000002").unwrap();
        let second = linked.read_raw::<u16>().unwrap();
        assert_eq!(&all[3 * 96..6 * 96], &second[..]);
        let l = layout(chunking);
        for i in 1..=7u64 {
            for m in 0..4 {
                let [oy, ox] = l.tile_origin(m);
                let at = |y: u32, x: u32| {
                    all[((i - 1) * 96 + u64::from((oy + y) * 12 + ox + x)) as usize]
                };
                let want = |y, x| {
                    if present(i) & (1 << m) != 0 {
                        px(i, m, y, x)
                    } else {
                        0
                    }
                };
                assert_eq!(at(3, 5), want(3, 5), "{chunking:?} index {i} module {m}");
                assert_eq!(at(0, 0), want(0, 0), "{chunking:?} index {i} module {m}");
            }
        }
        let spec = master
            .group("/entry/instrument/detector/detectorSpecific")
            .unwrap();
        let mask = spec
            .dataset("module_mask")
            .unwrap()
            .read_raw::<u64>()
            .unwrap();
        assert_eq!(mask, (1..=7).map(present).collect::<Vec<_>>());
        let lost = spec
            .dataset("frame_lost")
            .unwrap()
            .read_raw::<u8>()
            .unwrap();
        assert_eq!(lost, [0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(
            spec.dataset("nimages")
                .unwrap()
                .read_scalar::<u64>()
                .unwrap(),
            7
        );
        let finished = master.dataset("/entry/detingest/finished").unwrap();
        assert_eq!(finished.read_scalar::<u8>().unwrap(), 1);
    }
}

#[test]
fn existing_files_are_never_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(tmp.path(), Chunking::Module, 2);
    let again = RunFiles::create(
        tmp.path(),
        "scan",
        layout(Chunking::Module),
        &DetectorInfo::default(),
        "{}",
        FileOptions::default(),
    );
    assert!(matches!(again, Err(WriteError::Exists(_))));
}

#[test]
fn read_frame_gives_an_index_back_as_the_vds_reads_it() {
    for chunking in [Chunking::Module, Chunking::Frame] {
        let tmp = tempfile::tempdir().unwrap();
        write_run(tmp.path(), chunking, 7);
        let master = hdf5::File::open(master_path(tmp.path(), "scan")).unwrap();
        let vds: Vec<u16> = master
            .dataset("/entry/data/data")
            .unwrap()
            .read_raw::<u16>()
            .unwrap();
        let image = 8 * 12;
        let mut out = Vec::new();
        // Index 5 (data file 2, position 1) lacks module 2; index 7 is file 3's only one.
        for (index, file, position) in [(5u64, 2u64, 1u64), (7, 3, 0), (1, 1, 0)] {
            let path = tmp.path().join(data_file_name("scan", file));
            detingest_writer::read_frame(&path, position, Codec::None, 2, &mut out).unwrap();
            let want: Vec<u8> = vds[(index as usize - 1) * image..index as usize * image]
                .iter()
                .flat_map(|p| p.to_le_bytes())
                .collect();
            assert_eq!(out, want, "{chunking:?} index {index}");
        }
        let path = tmp.path().join(data_file_name("scan", 3));
        let beyond = detingest_writer::read_frame(&path, 1, Codec::None, 2, &mut out);
        assert!(beyond.is_err(), "file 3 holds one index");
    }
}

#[test]
fn late_modules_are_marked_in_flushed_and_buffered_records() {
    let dir = tempfile::tempdir().unwrap();
    let opts = FileOptions {
        frames_per_file: 3,
        master_data: detingest_writer::MasterData::Vds,
        frames: 0,
        swmr: true,
        statistics: None,
    };
    let l = layout(Chunking::Module);
    let mut run =
        RunFiles::create(dir.path(), "late", l, &DetectorInfo::default(), "{}", opts).unwrap();
    let missing = [[0u8; 64]; 4];
    let record = |i: u64| IndexRecord {
        frame_number: i,
        sequence: 0,
        timestamp_ns: i,
        detector_timestamp: 0,
        bunch_id: 0,
        modules: 0b0011,
        dropped: 0,
        missing_packets: &missing,
        stats: None,
    };
    for i in 1..=3 {
        run.write_chunk(i, 0, &module_bytes(i, 0)).unwrap();
        run.record(i, &record(i)).unwrap();
    }
    run.flush().unwrap();
    for i in 4..=5 {
        run.record(i, &record(i)).unwrap();
    }
    run.mark_late(2, 0b0100).unwrap(); // flushed: written back into the file
    run.mark_late(2, 0b1000).unwrap(); // or-ed with what is there
    run.mark_late(5, 0b0100).unwrap(); // still buffered
    assert!(matches!(
        run.mark_late(6, 1),
        Err(WriteError::OutOfOrder { .. })
    ));
    run.finish(&RunEnd::default()).unwrap();
    let f = hdf5::File::open(master_path(dir.path(), "late")).unwrap();
    let late: Vec<u64> = f
        .dataset("/entry/instrument/detector/detectorSpecific/late_mask")
        .unwrap()
        .read_raw()
        .unwrap();
    assert_eq!(late, [0, 0b1100, 0, 0, 0b0100]);
}
