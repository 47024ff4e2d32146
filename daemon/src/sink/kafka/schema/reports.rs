//! What we say on Kafka: `answ` (the answer to a command), `x5f2` (the status heartbeat),
//! `wrdn` (a file set was closed: the catalogue hand-off) and `json` (one JSON document, our
//! per-frame record). Each encoder resets the builder it is given and returns the message.

use flatbuffers::FlatBufferBuilder;

use super::{encode_table, slot};

/// What an `answ` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i8)]
pub enum Action {
    /// A `pl72`.
    StartJob = 0,
    /// A `6s4t`.
    SetStopTime = 1,
}

/// `answ`: the answer to one command.
#[derive(Debug, Clone, Default)]
pub struct Answer<'a> {
    /// Our service id.
    pub service_id: &'a str,
    /// The job it concerns.
    pub job_id: &'a str,
    /// The command's id (a `pl72`'s job id, a `6s4t`'s command id).
    pub command_id: &'a str,
    /// Accepted (`true`) or refused.
    pub accepted: bool,
    /// HTTP-like: 201 started, 200 stop set, 400 bad command, 404 unknown job, 409 busy.
    pub status_code: i32,
    /// The stop time now in force (ms since the Unix epoch; 0: none).
    pub stop_time: u64,
    /// Why, in words.
    pub message: &'a str,
}

/// Encodes an `answ` to `action`.
pub fn answer<'b>(
    b: &'b mut FlatBufferBuilder<'static>,
    action: Action,
    a: &Answer<'_>,
) -> &'b [u8] {
    let strings = [
        (0, a.service_id),
        (1, a.job_id),
        (6, a.message),
        (7, a.command_id),
    ];
    encode_table(b, "answ", &strings, |b| {
        b.push_slot_always(slot(5), a.stop_time);
        b.push_slot_always(slot(4), a.status_code);
        b.push_slot_always(slot(2), action as i8);
        b.push_slot_always(slot(3), if a.accepted { 0i8 } else { 1i8 });
    })
}

/// `x5f2`: who we are and what we do, every `update_interval` ms.
#[derive(Debug, Clone, Default)]
pub struct Status<'a> {
    /// `detingestd`.
    pub software_name: &'a str,
    /// Our version.
    pub software_version: &'a str,
    /// Our service id.
    pub service_id: &'a str,
    /// This host.
    pub host_name: &'a str,
    /// Our process id.
    pub process_id: u32,
    /// The heartbeat's period, ms.
    pub update_interval: u32,
    /// The state (JSON; see docs/KAFKA.md).
    pub status_json: &'a str,
}

/// Encodes an `x5f2`.
pub fn status<'b>(b: &'b mut FlatBufferBuilder<'static>, s: &Status<'_>) -> &'b [u8] {
    let strings = [
        (0, s.software_name),
        (1, s.software_version),
        (2, s.service_id),
        (3, s.host_name),
        (6, s.status_json),
    ];
    encode_table(b, "x5f2", &strings, |b| {
        b.push_slot_always(slot(4), s.process_id);
        b.push_slot_always(slot(5), s.update_interval);
    })
}

/// `wrdn`: a job's file set is closed.
#[derive(Debug, Clone, Default)]
pub struct Finished<'a> {
    /// Our service id.
    pub service_id: &'a str,
    /// The job.
    pub job_id: &'a str,
    /// The run failed or a file could not be checked.
    pub error_encountered: bool,
    /// The master file (absolute path).
    pub file_name: &'a str,
    /// The hand-off (JSON; see docs/KAFKA.md): counts, and every file with size and checksum.
    pub metadata: &'a str,
    /// In words.
    pub message: &'a str,
}

/// Encodes a `wrdn`.
pub fn finished<'b>(b: &'b mut FlatBufferBuilder<'static>, f: &Finished<'_>) -> &'b [u8] {
    let strings = [
        (0, f.service_id),
        (1, f.job_id),
        (3, f.file_name),
        (4, f.metadata),
        (5, f.message),
    ];
    encode_table(b, "wrdn", &strings, |b| {
        b.push_slot_always(slot(2), f.error_encountered)
    })
}

/// Encodes a `json` message holding `text`.
pub fn json<'b>(b: &'b mut FlatBufferBuilder<'static>, text: &str) -> &'b [u8] {
    encode_table(b, "json", &[(0, text)], |_| {})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::kafka::schema::{verified_root, Kind};

    #[test]
    fn an_answer_carries_every_field_where_the_schema_puts_it() {
        let mut b = FlatBufferBuilder::new();
        let a = Answer {
            service_id: "svc",
            job_id: "job",
            command_id: "cmd",
            accepted: false,
            status_code: 409,
            stop_time: 77,
            message: "a run is in progress",
        };
        let buf = answer(&mut b, Action::SetStopTime, &a).to_vec();
        assert_eq!(&buf[4..8], b"answ");
        let t = verified_root(
            &buf,
            "answ",
            &[
                ("service_id", slot(0), Kind::Str),
                ("stop_time", slot(5), Kind::U64),
                ("message", slot(6), Kind::Str),
                ("command_id", slot(7), Kind::Str),
                ("action", slot(2), Kind::I8),
                ("outcome", slot(3), Kind::I8),
                ("status_code", slot(4), Kind::I32),
            ],
        )
        .unwrap();
        assert_eq!(t.string(slot(0)), "svc");
        assert_eq!(t.u64(slot(5), 0), 77);
        assert_eq!(t.string(slot(6)), "a run is in progress");
        assert_eq!(t.string(slot(7)), "cmd");
        let (action, outcome, code) = (t.i8(slot(2), -1), t.i8(slot(3), -1), t.i32(slot(4), -1));
        assert_eq!((action, outcome, code), (1, 1, 409));
    }
}
