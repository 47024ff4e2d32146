//! The run control we obey: `pl72` (RunStart) and `6s4t` (RunStop), decoded from verified
//! buffers into borrowed views, and encoded (for our tests and the benchmark, which play
//! the experiment control program's part).

use flatbuffers::FlatBufferBuilder;

use super::{encode_table, schema_id, slot, verified_root, DecodeError, Kind};

/// `pl72`: start a job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunStart<'a> {
    /// When to start, ms since the Unix epoch (0: now).
    pub start_time: u64,
    /// When to stop, ms since the Unix epoch (0: open-ended, until a `6s4t`).
    pub stop_time: u64,
    /// The run's name.
    pub run_name: &'a str,
    /// The instrument's name.
    pub instrument_name: &'a str,
    /// The NeXus structure (JSON) an ESS file-writer would write; kept, not interpreted.
    pub nexus_structure: &'a str,
    /// The job's id (a UUID at ESS): answers, status and the file-written message carry it.
    pub job_id: &'a str,
    /// The service meant to take the job (`""`: any).
    pub service_id: &'a str,
    /// The file to write.
    pub filename: &'a str,
    /// Metadata (JSON).
    pub metadata: &'a str,
    /// Where the job's answers go (`""`: the status topic).
    pub control_topic: &'a str,
}

/// `6s4t`: stop a job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunStop<'a> {
    /// When to stop, ms since the Unix epoch (0: now).
    pub stop_time: u64,
    /// The run's name.
    pub run_name: &'a str,
    /// The job to stop.
    pub job_id: &'a str,
    /// The service meant to stop it (`""`: any).
    pub service_id: &'a str,
    /// This command's id, echoed in the answer.
    pub command_id: &'a str,
}

/// A command read off the command topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `pl72`.
    Start(RunStart<'a>),
    /// `6s4t`.
    Stop(RunStop<'a>),
}

impl Command<'_> {
    /// The service it is meant for (`""`: any).
    pub fn service_id(&self) -> &str {
        match self {
            Self::Start(s) => s.service_id,
            Self::Stop(s) => s.service_id,
        }
    }
}

/// Decodes one command; anything but a well-formed `pl72` or `6s4t` is refused with why.
pub fn decode(buf: &[u8]) -> Result<Command<'_>, DecodeError> {
    match schema_id(buf)? {
        b"pl72" => {
            let t = verified_root(
                buf,
                "pl72",
                &[
                    ("start_time", slot(0), Kind::U64),
                    ("stop_time", slot(1), Kind::U64),
                    ("run_name", slot(2), Kind::Str),
                    ("instrument_name", slot(3), Kind::Str),
                    ("nexus_structure", slot(4), Kind::Str),
                    ("job_id", slot(5), Kind::Str),
                    ("broker", slot(6), Kind::Str),
                    ("service_id", slot(7), Kind::Str),
                    ("filename", slot(8), Kind::Str),
                    ("n_periods", slot(9), Kind::U32),
                    ("detector_spectrum_map", slot(10), Kind::Table),
                    ("metadata", slot(11), Kind::Str),
                    ("control_topic", slot(12), Kind::Str),
                ],
            )?;
            let _periods = t.u32(slot(9), 1);
            Ok(Command::Start(RunStart {
                start_time: t.u64(slot(0), 0),
                stop_time: t.u64(slot(1), 0),
                run_name: t.string(slot(2)),
                instrument_name: t.string(slot(3)),
                nexus_structure: t.string(slot(4)),
                job_id: t.string(slot(5)),
                service_id: t.string(slot(7)),
                filename: t.string(slot(8)),
                metadata: t.string(slot(11)),
                control_topic: t.string(slot(12)),
            }))
        }
        b"6s4t" => {
            let t = verified_root(
                buf,
                "6s4t",
                &[
                    ("stop_time", slot(0), Kind::U64),
                    ("run_name", slot(1), Kind::Str),
                    ("job_id", slot(2), Kind::Str),
                    ("service_id", slot(3), Kind::Str),
                    ("command_id", slot(4), Kind::Str),
                ],
            )?;
            Ok(Command::Stop(RunStop {
                stop_time: t.u64(slot(0), 0),
                run_name: t.string(slot(1)),
                job_id: t.string(slot(2)),
                service_id: t.string(slot(3)),
                command_id: t.string(slot(4)),
            }))
        }
        other => Err(DecodeError::UnknownSchema(
            String::from_utf8_lossy(other).into_owned(),
        )),
    }
}

/// Encodes `s` as a `pl72` into `b` (reset first); returns the message.
pub fn encode_start<'b>(b: &'b mut FlatBufferBuilder<'static>, s: &RunStart<'_>) -> &'b [u8] {
    let strings = [
        (2, s.run_name),
        (3, s.instrument_name),
        (4, s.nexus_structure),
        (5, s.job_id),
        (6, ""),
        (7, s.service_id),
        (8, s.filename),
        (11, s.metadata),
        (12, s.control_topic),
    ];
    encode_table(b, "pl72", &strings, |b| {
        b.push_slot(slot(0), s.start_time, 0);
        b.push_slot(slot(1), s.stop_time, 0);
        b.push_slot(slot(9), 1u32, 1);
    })
}

/// Encodes `s` as a `6s4t` into `b` (reset first); returns the message.
pub fn encode_stop<'b>(b: &'b mut FlatBufferBuilder<'static>, s: &RunStop<'_>) -> &'b [u8] {
    let strings = [
        (1, s.run_name),
        (2, s.job_id),
        (3, s.service_id),
        (4, s.command_id),
    ];
    encode_table(b, "6s4t", &strings, |b| {
        b.push_slot(slot(0), s.stop_time, 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_and_a_stop_survive_encoding() {
        let mut b = FlatBufferBuilder::new();
        let start = RunStart {
            start_time: 1_700_000_000_000,
            stop_time: 1_700_000_060_000,
            run_name: "run 7",
            instrument_name: "bifrost",
            nexus_structure: "{}",
            job_id: "5f1c",
            service_id: "detingestd-a",
            filename: "scan_7.nxs",
            metadata: r#"{"beamtime": "p1"}"#,
            control_topic: "",
        };
        let buf = encode_start(&mut b, &start).to_vec();
        assert_eq!(decode(&buf).unwrap(), Command::Start(start));
        let stop = RunStop {
            stop_time: 0,
            run_name: "run 7",
            job_id: "5f1c",
            service_id: "",
            command_id: "c-1",
        };
        let buf = encode_stop(&mut b, &stop).to_vec();
        assert_eq!(decode(&buf).unwrap(), Command::Stop(stop));
    }

    #[test]
    fn garbage_and_foreign_schemas_are_refused_with_a_reason() {
        assert_eq!(decode(b"abc"), Err(DecodeError::TooShort(3)));
        assert!(matches!(
            decode(b"\x08\0\0\0f144\0\0\0\0"),
            Err(DecodeError::UnknownSchema(s)) if s == "f144"
        ));
        let mut b = FlatBufferBuilder::new();
        let good = encode_start(&mut b, &RunStart::default()).to_vec();
        // Every truncation and every single corrupted byte: refused or decoded, never a panic.
        for n in 0..good.len() {
            let _ = decode(&good[..n]);
            for bit in [0x01, 0x80] {
                let mut bad = good.clone();
                bad[n] ^= bit;
                let _ = decode(&bad);
            }
        }
        let mut wild = good.clone();
        wild[0] = 0xf0; // root offset far outside the buffer
        assert!(matches!(
            decode(&wild),
            Err(DecodeError::Malformed { schema: "pl72", .. })
        ));
    }
}
