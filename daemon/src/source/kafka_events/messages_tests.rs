//! The event decoders on messages built as the schemas lay them out (ev44's and f144's as
//! ess-streaming-data-types 0.27 builds them, pu00 in ISIS's field order), on every kind of
//! inconsistency, and on arbitrary and mutated bytes (never a panic).

use flatbuffers::FlatBufferBuilder;
use proptest::prelude::*;

use super::*;
use crate::sink::kafka::schema::slot;

fn ev44(source: &str, id: i64, times: &[i64], index: &[i32], tof: &[i32], pix: &[i32]) -> Vec<u8> {
    let e = Ev44 {
        source_name: source,
        message_id: id,
        reference_time: times,
        reference_time_index: index,
        time_of_flight: tof,
        pixel_id: pix,
    };
    encode_ev44(&mut FlatBufferBuilder::new(), &e).to_vec()
}

fn pu00(source: &str, id: i64, time: i64, charge: f32) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let name = b.create_string(source);
    let start = b.start_table();
    b.push_slot_always(slot(0), name);
    b.push_slot(slot(1), id, 0);
    b.push_slot(slot(2), time, 0);
    b.push_slot(slot(3), 1u32, 0);
    b.push_slot(slot(4), 2u32, 0);
    b.push_slot(slot(5), charge, 0.0);
    let root = b.end_table(start);
    b.finish(root, Some("pu00"));
    b.finished_data().to_vec()
}

/// An f144 (or, with `f142`, an f142) of a Double (tag 10) or an Int (tag 5).
fn log(f142: bool, source: &str, time: i64, tag: u8, value: f64) -> Vec<u8> {
    log_alarm(f142, source, time, tag, value, None)
}

/// As [`log`], an f142 with an alarm `(status, severity)`.
fn log_alarm(
    f142: bool,
    source: &str,
    time: i64,
    tag: u8,
    value: f64,
    alarm: Option<(u16, u16)>,
) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let name = b.create_string(source);
    let v = b.start_table();
    if tag == 10 {
        b.push_slot(slot(0), value, 0.0);
    } else {
        b.push_slot(slot(0), value as i32, 0);
    }
    let v = b.end_table(v);
    let start = b.start_table();
    let (name_at, time_at, type_at, value_at) = if f142 { (0, 3, 1, 2) } else { (0, 1, 2, 3) };
    b.push_slot_always(slot(name_at), name);
    b.push_slot(slot(time_at), time, 0);
    b.push_slot(slot(type_at), tag, 0);
    b.push_slot_always(slot(value_at), v);
    if let Some((status, severity)) = alarm {
        b.push_slot_always(slot(4), status);
        b.push_slot_always(slot(5), severity);
    }
    let root = b.end_table(start);
    b.finish(root, Some(if f142 { "f142" } else { "f144" }));
    b.finished_data().to_vec()
}

#[test]
fn an_ev44_of_two_pulses_splits_its_events_by_reference_time_index() {
    let m = ev44("bank0", 7, &[100, 200], &[0, 2], &[5, 6, 7], &[1, 2, 3]);
    let EventMessage::Events(e) = decode(&m).unwrap() else {
        panic!("not events");
    };
    assert_eq!(
        (e.source_name, e.message_id, e.pulses(), e.events()),
        ("bank0", 7, 2, 3)
    );
    assert_eq!(e.pulse(0), (100, 0..8));
    assert_eq!(e.pulse(1), (200, 8..12));
    assert_eq!(&e.time_of_flight[8..12], &7i32.to_le_bytes());
}

#[test]
fn a_monitor_without_pixel_ids_and_an_empty_pulse_are_taken() {
    let m = ev44("monitor_1", 0, &[100, 200], &[0, 0], &[5], &[]);
    let EventMessage::Events(e) = decode(&m).unwrap() else {
        panic!("not events");
    };
    assert!(e.pixel_id.is_empty());
    assert_eq!(e.pulse(0), (100, 0..0));
    assert_eq!(e.pulse(1), (200, 0..4));
}

#[test]
fn pulses_and_logs_decode() {
    let m = pu00("isis", 3, 1000, 0.5);
    let EventMessage::Pulse(p) = decode(&m).unwrap() else {
        panic!("not a pulse");
    };
    assert_eq!(
        (p.message_id, p.reference_time, p.vetos, p.period_number),
        (3, 1000, 1, 2)
    );
    assert_eq!(p.proton_charge, 0.5);
    for f142 in [false, true] {
        let m = log(f142, "T", 55, 10, 291.5);
        let EventMessage::Log(l) = decode(&m).unwrap() else {
            panic!("not a log");
        };
        assert_eq!(
            (l.source_name, l.timestamp, l.value),
            ("T", 55, Some(291.5))
        );
        let m = log(f142, "T", 56, 5, -3.0);
        let EventMessage::Log(l) = decode(&m).unwrap() else {
            panic!("not a log");
        };
        assert_eq!(l.value, Some(-3.0));
    }
}

#[test]
fn an_f142_alarm_is_read_unless_it_says_no_change() {
    let m = log_alarm(true, "T", 5, 10, 1.0, Some((4, 0)));
    let EventMessage::Log(l) = decode(&m).unwrap() else {
        panic!("not a log");
    };
    assert_eq!(l.alarm, Some((4, 0)));
    let m = log_alarm(true, "T", 5, 10, 1.0, Some((22, 4)));
    let EventMessage::Log(l) = decode(&m).unwrap() else {
        panic!("not a log");
    };
    assert_eq!(l.alarm, None, "NO_CHANGE");
    let m = log(false, "T", 5, 10, 1.0);
    let EventMessage::Log(l) = decode(&m).unwrap() else {
        panic!("not a log");
    };
    assert_eq!(l.alarm, None, "f144 has no alarm");
}

#[test]
fn inconsistent_messages_are_refused_with_a_reason() {
    let refused = |m: Vec<u8>| decode(&m).unwrap_err().to_string();
    assert!(refused(ev44("b", 0, &[1, 2], &[0], &[5], &[1])).contains("differ in length"));
    assert!(refused(ev44("b", 0, &[1], &[0], &[5, 6], &[1])).contains("pixel_id"));
    assert!(refused(ev44("b", 0, &[1, 2], &[0, 5], &[5], &[1])).contains("out of order"));
    assert!(refused(ev44("b", 0, &[1], &[1], &[5], &[1])).contains("out of order"));
    assert!(refused(ev44("b", 0, &[], &[], &[5], &[1])).contains("without a reference_time"));
    assert!(refused(ev44("", 0, &[1], &[0], &[5], &[1])).contains("source_name"));
    assert!(refused(b"abcd".to_vec()).contains("too short"));
    let mut other = pu00("x", 0, 0, 0.0);
    other[4..8].copy_from_slice(b"zz99");
    assert!(matches!(decode(&other), Err(DecodeError::UnknownSchema(_))));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
        let mut tagged = bytes.clone();
        if tagged.len() >= 8 {
            tagged[4..8].copy_from_slice(b"ev44");
            if let Ok(EventMessage::Events(e)) = decode(&tagged) {
                for k in 0..e.pulses() {
                    let (_, r) = e.pulse(k);
                    prop_assert!(r.end <= e.time_of_flight.len());
                }
            }
        }
    }

    #[test]
    fn mutated_messages_never_panic(at in 0usize..4096, byte in any::<u8>(), which in 0usize..4) {
        let mut m = match which {
            0 => ev44("bank0", 7, &[100, 200], &[0, 2], &[5, 6, 7], &[1, 2, 3]),
            1 => pu00("isis", 3, 1000, 0.5),
            2 => log(false, "T", 55, 10, 291.5),
            _ => log(true, "T", 55, 5, 291.0),
        };
        let at = at % m.len();
        m[at] = byte;
        if let Ok(EventMessage::Events(e)) = decode(&m) {
            for k in 0..e.pulses() {
                let (_, r) = e.pulse(k);
                prop_assert!(r.end <= e.time_of_flight.len() && r.start <= r.end);
            }
        }
    }
}
