//! How a `pl72` becomes a run request (the same JSON `POST /run/start` takes): the stream is
//! named after the job's file (or run name), the beamtime comes from the metadata (or
//! `kafka.beamtime`), the source is `kafka.source`, the metadata becomes the run's user
//! metadata with the job under `kafka`, and `metadata.detingest` may set run fields.

use serde_json::{json, Map, Value};

use super::schema::commands::RunStart;
use crate::contract::{ApiError, RunRequest};

/// Extensions a `pl72` filename may carry; the stream is named without them.
const EXTENSIONS: [&str; 5] = [".nxs", ".h5", ".hdf5", ".nx5", ".hdf"];

/// The run request of `s`, for source `source` and default beamtime `beamtime`;
/// `now_ms` decides whether its stop time has passed.
pub fn run_request(
    s: &RunStart<'_>,
    source: &str,
    beamtime: &str,
    now_ms: u64,
) -> Result<RunRequest, ApiError> {
    let bad = |m: String| ApiError::bad_request(m);
    if s.job_id.is_empty() {
        return Err(bad("job_id is empty: every job needs an id".into()));
    }
    if s.stop_time != 0 && s.stop_time <= now_ms {
        return Err(bad(format!(
            "stop_time {} has passed (now {now_ms})",
            s.stop_time
        )));
    }
    let metadata: Value = if s.metadata.trim().is_empty() {
        Value::Object(Map::new())
    } else {
        serde_json::from_str(s.metadata).map_err(|e| bad(format!("metadata is not JSON: {e}")))?
    };
    let mut user = match metadata {
        Value::Object(m) => m,
        other => Map::from_iter([("metadata".to_owned(), other)]),
    };
    let overlay = match user.remove("detingest") {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(bad(
                "metadata.detingest must be a JSON object of run fields".into(),
            ))
        }
    };
    let beamtime = match user.get("beamtime") {
        None => beamtime.to_owned(),
        Some(Value::String(b)) => b.clone(),
        Some(_) => return Err(bad("bad name: metadata.beamtime must be a string".into())),
    };
    let stream = stream_name(s)?;
    user.insert(
        "kafka".into(),
        json!({
            "job_id": s.job_id,
            "run_name": s.run_name,
            "instrument_name": s.instrument_name,
            "service_id": s.service_id,
            "filename": s.filename,
            "start_time": s.start_time,
            "stop_time": s.stop_time,
            "control_topic": s.control_topic,
        }),
    );
    let mut request = overlay;
    for key in ["beamtime", "source", "stream", "user"] {
        if request.contains_key(key) {
            return Err(bad(format!(
                "metadata.detingest.{key} is set by the job itself"
            )));
        }
    }
    // The job's instrument names the NXmx instrument unless the overlay does.
    if !s.instrument_name.is_empty() {
        match request.entry("detector").or_insert_with(|| json!({})) {
            Value::Object(det) => {
                (det.entry("instrument_name")).or_insert_with(|| s.instrument_name.into());
            }
            _ => {
                return Err(bad(
                    "metadata.detingest.detector must be a JSON object".into()
                ))
            }
        }
    }
    request.insert("beamtime".into(), beamtime.into());
    request.insert("source".into(), source.into());
    request.insert("stream".into(), stream.into());
    request.insert("user".into(), Value::Object(user));
    RunRequest::from_json(&Value::Object(request))
}

/// The stream's name: the job's file name without its extension, else its run name.
fn stream_name(s: &RunStart<'_>) -> Result<String, ApiError> {
    if s.filename.contains('/') || s.filename.contains('\\') {
        return Err(ApiError::new(400,
            format!(
                "bad name: filename {:?} has directories; files go under data_dir/<beamtime>/<source>/",
                s.filename
            ),
        ));
    }
    let name = if s.filename.is_empty() {
        s.run_name
    } else {
        EXTENSIONS
            .iter()
            .find_map(|e| s.filename.strip_suffix(e))
            .unwrap_or(s.filename)
    };
    if name.is_empty() {
        return Err(ApiError::new(
            400,
            "bad name: neither filename nor run_name is set",
        ));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start<'a>(filename: &'a str, metadata: &'a str) -> RunStart<'a> {
        RunStart {
            job_id: "job-1",
            run_name: "run 1",
            filename,
            metadata,
            ..RunStart::default()
        }
    }

    #[test]
    fn the_jobs_instrument_names_the_nxmx_instrument_unless_the_overlay_does() {
        let job = |metadata| RunStart {
            instrument_name: "DREAM",
            ..start("run.nxs", metadata)
        };
        let r = run_request(&job(""), "det", "bt", 0).unwrap().to_json();
        assert_eq!(r["detector"]["instrument_name"], "DREAM");
        let given = r#"{"detingest": {"detector": {"instrument_name": "X", "sample_name": "Si"}}}"#;
        let r = run_request(&job(given), "det", "bt", 0).unwrap().to_json();
        assert_eq!(r["detector"]["instrument_name"], "X");
        assert_eq!(r["detector"]["sample_name"], "Si");
        let bad = r#"{"detingest": {"detector": 3}}"#;
        assert!(run_request(&job(bad), "det", "bt", 0).is_err());
        let none = run_request(&start("run.nxs", ""), "det", "bt", 0)
            .unwrap()
            .to_json();
        assert!(none.get("detector").is_none());
    }

    #[test]
    fn a_start_maps_to_a_run_request() {
        let r = run_request(
            &start(
                "scan_0042.nxs",
                r#"{"beamtime": "p7", "sample": "Si", "detingest": {"frames": 9}}"#,
            ),
            "det",
            "kafka",
            0,
        )
        .unwrap()
        .to_json();
        assert_eq!(r["beamtime"], "p7");
        assert_eq!(r["source"], "det");
        assert_eq!(r["stream"], "scan_0042");
        assert_eq!(r["frames"], 9);
        assert_eq!(r["user"]["sample"], "Si");
        assert_eq!(r["user"]["kafka"]["job_id"], "job-1");
        assert!(r["user"].get("detingest").is_none());
        let r = run_request(&start("", "[1, 2]"), "det", "kafka", 0)
            .unwrap()
            .to_json();
        assert_eq!(
            (r["beamtime"].as_str(), r["stream"].as_str()),
            (Some("kafka"), Some("run 1"))
        );
        assert_eq!(r["user"]["metadata"], json!([1, 2]));
    }

    #[test]
    fn bad_starts_are_refused_with_the_reason() {
        let cases = [
            (
                RunStart {
                    job_id: "",
                    ..start("a.nxs", "")
                },
                "job_id",
            ),
            (start("../a.nxs", ""), "directories"),
            (start("a.nxs", "{not json"), "not JSON"),
            (start("a.nxs", r#"{"detingest": 3}"#), "detingest"),
            (
                start("a.nxs", r#"{"detingest": {"stream": "x"}}"#),
                "set by the job",
            ),
            (
                RunStart {
                    stop_time: 5,
                    ..start("a.nxs", "")
                },
                "has passed",
            ),
            (
                RunStart {
                    run_name: "",
                    ..start("", "")
                },
                "neither",
            ),
        ];
        for (s, why) in cases {
            let ApiError {
                status: code,
                message,
            } = run_request(&s, "det", "kafka", 10).unwrap_err();
            assert_eq!(code, 400);
            assert!(message.contains(why), "{message}");
        }
    }
}
