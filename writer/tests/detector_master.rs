//! The whole detector's master over two parts read back with libhdf5: each part's records
//! read as an SWMR reader would, the merged records, the tile VDS giving every module from
//! the part that wrote it (a part that stopped early: its tiles the fill value after), the
//! daemons' ends; a master left unfinished is resumed and finished from the files alone.

use detingest_shm::PixelType;
use detingest_writer::{
    master_path, read_part, Chunking, Codec, DetectorInfo, DetectorMaster, FileOptions,
    IndexRecord, MasterData, Part, PartEnd, PartOutcome, RunEnd, RunFiles, RunLayout,
};

const MODULE: [u32; 2] = [4, 6];

fn layout() -> RunLayout {
    RunLayout {
        pixel: PixelType::U16,
        module_shape: MODULE,
        grid: [1, 2],
        chunking: Chunking::Module,
        codec: Codec::None,
    }
}

fn options() -> FileOptions {
    FileOptions {
        frames_per_file: 2,
        master_data: MasterData::Vds,
        frames: 0,
        swmr: true,
        statistics: None,
    }
}

fn record(modules: u64) -> IndexRecord<'static> {
    IndexRecord {
        frame_number: 0,
        sequence: 0,
        timestamp_ns: 1,
        detector_timestamp: 0,
        bunch_id: 0,
        modules,
        dropped: 0,
        missing_packets: &[],
        stats: None,
    }
}

/// Part `stream` writes module `m` (value `10 * index + m` everywhere) for `n` indices.
fn write_part(dir: &std::path::Path, stream: &str, m: u32, n: u64) {
    let mut run = RunFiles::create(
        dir,
        stream,
        layout(),
        &DetectorInfo::default(),
        "{}",
        options(),
    )
    .unwrap();
    let tile = (MODULE[0] * MODULE[1]) as usize;
    for i in 1..=n {
        let value = (10 * i + u64::from(m)) as u16;
        let bytes: Vec<u8> = (0..tile).flat_map(|_| value.to_le_bytes()).collect();
        run.write_chunk(i, m, &bytes).unwrap();
        run.record(
            i,
            &IndexRecord {
                frame_number: i,
                ..record(1 << m)
            },
        )
        .unwrap();
    }
    run.finish(&RunEnd::default()).unwrap();
}

fn end(recorded: u64, outcome: PartOutcome) -> PartEnd {
    PartEnd { recorded, outcome }
}

fn parts() -> Vec<Part> {
    ["a", "b"]
        .iter()
        .enumerate()
        .map(|(m, d)| Part {
            daemon: d.to_string(),
            stream: format!("s_{d}"),
            modules: 1 << m,
        })
        .collect()
}

/// The whole master `s` of parts `s_a` and `s_b` in `dir`.
fn create(dir: &std::path::Path) -> DetectorMaster {
    let info = DetectorInfo::default();
    DetectorMaster::create(dir, "s", layout(), &info, "{}", options(), parts()).unwrap()
}

/// Merges indices `from..=to` of the two parts' masters into `master`.
fn merge(dir: &std::path::Path, master: &mut DetectorMaster, from: u64, to: u64) {
    let a = read_part(&master_path(dir, "s_a"), 0).unwrap();
    let b = read_part(&master_path(dir, "s_b"), 0).unwrap();
    assert!(a.finished && b.finished);
    for i in from..=to {
        let k = (i - 1) as usize;
        let mask = |s: &detingest_writer::PartState| s.records.modules.get(k).copied().unwrap_or(0);
        master.record(&IndexRecord {
            frame_number: i,
            ..record(mask(&a) | mask(&b))
        });
    }
}

fn read_back(dir: &std::path::Path) -> (ndarray::Array3<u16>, Vec<u64>, String) {
    let f = hdf5::File::open(master_path(dir, "s")).unwrap();
    let data = f
        .dataset("/entry/data/data")
        .unwrap()
        .read_dyn::<u16>()
        .unwrap();
    let data = data.into_dimensionality::<ndarray::Ix3>().unwrap();
    let mask = f
        .dataset("/entry/instrument/detector/detectorSpecific/module_mask")
        .unwrap()
        .read_raw::<u64>()
        .unwrap();
    let state: hdf5::types::VarLenUnicode = f
        .dataset("/entry/detingest/daemons/b/state")
        .unwrap()
        .read_scalar()
        .unwrap();
    (data, mask, state.as_str().to_owned())
}

#[test]
fn the_vds_takes_each_module_from_the_part_that_wrote_it() {
    let dir = tempfile::tempdir().unwrap();
    write_part(dir.path(), "s_a", 0, 5);
    write_part(dir.path(), "s_b", 1, 3); // b stops after index 3
    let mut master = create(dir.path());
    merge(dir.path(), &mut master, 1, 5);
    let ends = [end(5, PartOutcome::Finished), end(3, PartOutcome::Died)];
    assert_eq!(master.finish(&ends, &RunEnd::default()).unwrap(), 5);
    let (data, mask, state) = read_back(dir.path());
    assert_eq!(data.shape(), &[5, 4, 12]);
    for i in 0..5usize {
        assert!(data
            .slice(ndarray::s![i, .., ..6])
            .iter()
            .all(|&v| v == 10 * (i as u16 + 1)));
        let b = data.slice(ndarray::s![i, .., 6..]);
        let want = if i < 3 { 10 * (i as u16 + 1) + 1 } else { 0 };
        assert!(b.iter().all(|&v| v == want), "index {} of b", i + 1);
    }
    assert_eq!(mask, [3, 3, 3, 1, 1]);
    assert_eq!(state, "died");
    let f = hdf5::File::open(master_path(dir.path(), "s")).unwrap();
    let from = f
        .dataset("/entry/detingest/daemons/b/missing_from")
        .unwrap();
    assert_eq!(from.read_scalar::<u64>().unwrap(), 4);
}

#[test]
fn an_unfinished_master_is_resumed_and_finished_from_the_files() {
    let dir = tempfile::tempdir().unwrap();
    write_part(dir.path(), "s_a", 0, 4);
    write_part(dir.path(), "s_b", 1, 4);
    {
        let mut master = create(dir.path());
        merge(dir.path(), &mut master, 1, 2);
        master.flush().unwrap();
    } // dropped unfinished, as a merger that died mid-run
    let mut master = DetectorMaster::resume(dir.path(), "s").unwrap();
    assert_eq!((master.frames(), master.parts().to_vec()), (2, parts()));
    merge(dir.path(), &mut master, 3, 4);
    let ends = [end(4, PartOutcome::Finished); 2];
    assert_eq!(master.finish(&ends, &RunEnd::default()).unwrap(), 4);
    let (data, mask, state) = read_back(dir.path());
    assert_eq!(
        (data.shape(), mask, state.as_str()),
        (&[4, 4, 12][..], vec![3; 4], "finished")
    );
    assert!(data.slice(ndarray::s![3, .., 6..]).iter().all(|&v| v == 41));
    let again = DetectorMaster::resume(dir.path(), "s").err().unwrap();
    assert!(again.to_string().contains("finished already"), "{again}");
}

#[test]
fn a_part_that_comes_back_adds_its_modules_to_indices_merged_without_it() {
    let dir = tempfile::tempdir().unwrap();
    write_part(dir.path(), "s_a", 0, 4);
    write_part(dir.path(), "s_b", 1, 4);
    let mut master = create(dir.path());
    // b could not be reached: indices 1-3 were merged with a's module only, 1-2 flushed.
    for _ in 1..=2 {
        master.record(&record(1));
    }
    master.flush().unwrap();
    master.record(&record(1));
    master.record(&record(3));
    let missing = [[0u8; 64], [0xff; 64]];
    for i in 1..=3 {
        let b = IndexRecord {
            missing_packets: &missing,
            ..record(2)
        };
        master.amend(i, &b).unwrap();
    }
    let ends = [end(4, PartOutcome::Finished), end(4, PartOutcome::Unknown)];
    master.finish(&ends, &RunEnd::default()).unwrap();
    let (data, mask, state) = read_back(dir.path());
    assert_eq!((mask, state.as_str()), (vec![3; 4], "unknown"));
    assert!(data.slice(ndarray::s![2, .., 6..]).iter().all(|&v| v == 31));
    let f = hdf5::File::open(master_path(dir.path(), "s")).unwrap();
    let spec = f
        .group("/entry/instrument/detector/detectorSpecific")
        .unwrap();
    let lost = spec
        .dataset("packets_lost")
        .unwrap()
        .read_raw::<u32>()
        .unwrap();
    assert_eq!(lost, [512, 512, 512, 0], "b's missing packets, once each");
    let frame_lost = spec
        .dataset("frame_lost")
        .unwrap()
        .read_raw::<u8>()
        .unwrap();
    assert_eq!(frame_lost, [0; 4]);
}
