//! The event file: pulses split over messages join one entry, event_index points at each
//! pulse's first event, a monitor has no event_id, logs and gaps are kept, and a column that
//! fills several chunks reads back whole (read with Codec::None: no filter plugin here).

use std::time::SystemTime;

use detingest_writer::{Codec, EventFile, EventFileSpec, EventRunEnd, EventSourceSpec, LogSpec};

fn le(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn events_pulses_logs_and_gaps_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.nxs");
    let spec = EventFileSpec {
        sources: vec![
            EventSourceSpec {
                source_name: "bank0".into(),
                path: "instrument/bank0".into(),
                monitor: false,
                pixels: Some((1, 4)),
            },
            EventSourceSpec {
                source_name: "mon".into(),
                path: "monitor_1".into(),
                monitor: true,
                pixels: None,
            },
        ],
        logs: vec![LogSpec {
            source_name: "temp".into(),
            path: "selog/temperature".into(),
            units: Some("K".into()),
            alarms: true,
        }],
        pulse_log: true,
        title: "t".into(),
        experiment_identifier: "e".into(),
        instrument_name: "LOKI".into(),
    };
    let mut f = EventFile::create(&path, &spec, Codec::None, true, SystemTime::now()).unwrap();
    assert!(f
        .append_events(0, 1000, &le(&[5, 6]), &le(&[1, 2]))
        .unwrap());
    assert!(
        !f.append_events(0, 1000, &le(&[7]), &le(&[3])).unwrap(),
        "same pulse"
    );
    assert!(f.append_events(0, 2000, &le(&[8]), &le(&[4])).unwrap());
    // 300,000 events in one pulse: more than one chunk of the event columns.
    let many: Vec<i32> = (0..300_000).collect();
    f.append_events(0, 3000, &le(&many), &le(&many)).unwrap();
    f.append_events(1, 1000, &le(&[9, 10]), &[]).unwrap();
    // A bank's events sent without pixel ids: the bank's first pixel (1).
    f.append_events(0, 4000, &le(&[11, 12]), &[]).unwrap();
    f.record_gap(0, 17, 2).unwrap();
    f.append_log(0, 1500, 4.5).unwrap();
    f.append_alarm(0, 1500, 4, 0).unwrap(); // HIGH, MINOR
    f.append_pulse_meta(1000, 0.25, 1, 0).unwrap();
    f.flush().unwrap();
    assert_eq!(f.bank_len(0), (300_006, 4));
    let end = EventRunEnd {
        ended: Some(SystemTime::now()),
        error: None,
        counters: vec![("events".into(), 300_006)],
    };
    f.close(&end).unwrap();

    let h = hdf5::File::open(&path).unwrap();
    let ev = h.group("entry/instrument/bank0/events").unwrap();
    assert_eq!(
        ev.dataset("event_time_zero")
            .unwrap()
            .read_raw::<i64>()
            .unwrap(),
        [1000, 2000, 3000, 4000]
    );
    assert_eq!(
        ev.dataset("event_index")
            .unwrap()
            .read_raw::<i64>()
            .unwrap(),
        [0, 3, 4, 300_004]
    );
    let tof = ev
        .dataset("event_time_offset")
        .unwrap()
        .read_raw::<i32>()
        .unwrap();
    assert_eq!(&tof[..4], &[5, 6, 7, 8]);
    assert_eq!(&tof[4..300_004], &many[..]);
    let ids = ev.dataset("event_id").unwrap().read_raw::<i32>().unwrap();
    assert_eq!(&ids[..4], &[1, 2, 3, 4]);
    assert_eq!(&ids[300_004..], &[1, 1]);
    let det = h.dataset("entry/instrument/bank0/detector_number").unwrap();
    assert_eq!(det.read_raw::<i32>().unwrap(), [1, 2, 3, 4]);
    let mon = h.group("entry/monitor_1/events").unwrap();
    assert!(
        mon.dataset("event_id").is_err(),
        "a monitor has no pixel ids"
    );
    assert_eq!(
        mon.dataset("event_time_offset")
            .unwrap()
            .read_raw::<i32>()
            .unwrap(),
        [9, 10]
    );
    let log = h.group("entry/selog/temperature").unwrap();
    assert_eq!(
        log.dataset("value").unwrap().read_raw::<f64>().unwrap(),
        [4.5]
    );
    assert_eq!(
        log.dataset("time").unwrap().read_raw::<i64>().unwrap(),
        [1500]
    );
    let gaps = h.dataset("entry/detingest/bank0_lost_messages").unwrap();
    assert_eq!(gaps.read_raw::<i64>().unwrap(), [17, 2]);
    let charge = h.dataset("entry/framelog/proton_charge/value").unwrap();
    assert_eq!(charge.read_raw::<f64>().unwrap(), [0.25]);
    let events = h.dataset("entry/detingest/events").unwrap();
    assert_eq!(events.read_scalar::<u64>().unwrap(), 300_006);
    assert!(h.dataset("entry/end_time").is_ok());
}

#[test]
fn a_crashed_event_file_is_finished_to_whole_pulses() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.nxs");
    let spec = EventFileSpec {
        sources: vec![EventSourceSpec {
            source_name: "bank0".into(),
            path: "instrument/bank0".into(),
            monitor: false,
            pixels: Some((1, 4)),
        }],
        logs: vec![LogSpec {
            source_name: "temp".into(),
            path: "selog/temperature".into(),
            units: None,
            alarms: false,
        }],
        pulse_log: false,
        title: "t".into(),
        experiment_identifier: "e".into(),
        instrument_name: "LOKI".into(),
    };
    // Uncompressed: cutting a compressed column goes through HDF5's filter (the plugin is
    // not here; the Python test finishes a compressed file, whose columns agree).
    let mut f = EventFile::create(&path, &spec, Codec::None, false, SystemTime::now()).unwrap();
    for (k, t) in [1000i64, 2000, 3000].iter().enumerate() {
        let n = 2 + k as i32;
        let tof: Vec<i32> = (0..n).collect();
        f.append_events(0, *t, &le(&tof), &le(&tof)).unwrap();
    }
    f.append_log(0, 2500, 4.5).unwrap();
    f.flush().unwrap();
    drop(f); // a crash: no end written
             // As a crash between two columns' flushes leaves them: 4 of the 9 events' times there
             // (pulses start at events 0, 2 and 5).
    {
        let h = hdf5::File::open_rw(&path).unwrap();
        let ev = h.group("entry/instrument/bank0/events").unwrap();
        ev.dataset("event_time_offset").unwrap().resize(4).unwrap();
    }
    assert!(detingest_writer::may_be_unfinished_events(&path));
    let r = detingest_writer::finish_unfinished_events(&path, "crashed: test")
        .unwrap()
        .expect("ours and unfinished");
    assert_eq!(
        (r.pulses, r.events),
        (1, 2),
        "pulse 2 lost events 4 and 5, pulse 3 all: the first pulse is what is whole"
    );
    let h = hdf5::File::open(&path).unwrap();
    let ev = h.group("entry/instrument/bank0/events").unwrap();
    let len = |n: &str| ev.dataset(n).unwrap().shape()[0];
    assert_eq!((len("event_time_zero"), len("event_index")), (1, 1));
    assert_eq!((len("event_time_offset"), len("event_id")), (2, 2));
    let log = h.group("entry/selog/temperature").unwrap();
    assert_eq!(log.dataset("time").unwrap().shape()[0], 1);
    assert!(h.dataset("entry/end_time").is_ok());
    drop((log, ev, h)); // a process holding the file keeps it from being finished
    assert!(!detingest_writer::may_be_unfinished_events(&path));
    assert!(
        detingest_writer::finish_unfinished_events(&path, "again")
            .unwrap()
            .is_none(),
        "finished: left as it is"
    );
}
