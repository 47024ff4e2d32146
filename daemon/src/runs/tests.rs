//! Run requests and the run manager's life cycle.

use serde_json::json;

use super::*;

/// The request `body` reads as.
fn req(body: Value) -> RunRequest {
    RunRequest::from_json(&body).unwrap()
}

fn base() -> Config {
    Config::parse(
        "[[source]]\nname = \"det\"\nstream = { beamtime = \"b\", source = \"det\", stream = \"x\" }\n\
         grid = [2, 2]\n[source.synthetic]\nshape = [8, 16]\n",
    )
    .unwrap()
}

#[test]
fn a_request_overlays_the_run_and_detector_settings() {
    let c = run_config(
        &base(),
        &req(
            json!({"beamtime": "bt1", "source": "det", "stream": "run_7", "frames": 12,
                "chunking": "frame", "frames_per_file": 5, "user": {"sample": "lysozyme"},
                "detector": {"detector_distance": 0.12, "beam_center_x": 40.5}}),
        ),
    )
    .unwrap();
    assert_eq!(c.sources[0].stream.to_string(), "bt1/det/run_7");
    assert_eq!(c.sources[0].synthetic.as_ref().unwrap().frames, 12);
    assert_eq!(c.run.chunking, detingest_writer::Chunking::Frame);
    assert_eq!(c.run.frames_per_file, 5);
    assert_eq!(c.run.user["sample"], "lysozyme");
    assert_eq!(c.detector.detector_distance, Some(0.12));
    assert_eq!(c.detector.x_pixel_size, base().detector.x_pixel_size);
}

#[test]
fn bad_requests_name_the_offending_key() {
    let cases = [
        (json!({"source": "det", "stream": "s"}), "beamtime"),
        (
            json!({"beamtime": "b", "source": "det", "stream": "../up"}),
            "stream",
        ),
        (
            json!({"beamtime": "b", "source": "nope", "stream": "s"}),
            "source",
        ),
        (
            json!({"beamtime": "b", "source": "det", "stream": "s", "chunking": "tile"}),
            "chunking",
        ),
        (
            json!({"beamtime": "b", "source": "det", "stream": "s", "frame": 3}),
            "frame",
        ),
        (
            json!({"beamtime": "b", "source": "det", "stream": "s", "frames_per_file": 0}),
            "frames_per_file",
        ),
        (
            json!({"beamtime": "b", "source": "det", "stream": "s", "detector": {"distance": 1}}),
            "detector.distance",
        ),
        (
            json!({"beamtime": "b", "source": "det", "stream": "s", "detector": {"count_time": "long"}}),
            "detector.count_time",
        ),
        (
            json!({"beamtime": "b", "source": "det", "stream": "s", "vds": 1}),
            "vds",
        ),
        (json!([1, 2]), "."),
    ];
    for (body, key) in cases {
        // What the request's own shape refuses, and what the run's configuration refuses.
        match RunRequest::from_json(&body) {
            Err(e) => assert!(e.message.contains(&format!("`{key}`")), "{body}: {e}"),
            Ok(request) => {
                let e = run_config(&base(), &request).unwrap_err();
                assert_eq!(e.key, key, "{body}: {e}");
            }
        }
    }
}

/// A manager over a 2x2 synthetic detector writing into `dir`, with no sockets.
fn manager(dir: &std::path::Path) -> RunManager {
    let mut c = base();
    c.data_dir = dir.to_owned();
    c.sink.zmq.publish.clear();
    c.sink.zmq.query.clear();
    RunManager::new(c).unwrap()
}

fn wait_until_ended(m: &RunManager) -> RunStatus {
    for _ in 0..1000 {
        let s = m.status();
        if s.end_reason.is_some() {
            return s;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the run never ended: {:?}", m.status().state);
}

#[test]
fn a_run_goes_from_start_to_its_count_and_refuses_what_it_must() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path());
    assert_eq!(m.status().state, RunState::Idle);
    assert_eq!(m.stop().unwrap_err().status, 409, "nothing to stop");
    let request = req(json!({"beamtime": "b", "source": "det", "stream": "r1", "frames": 6}));
    let started = m.start(&request).unwrap();
    assert_eq!(started.state, RunState::Running);
    let ended = wait_until_ended(&m);
    assert_eq!(
        ended.end_reason,
        Some(EndReason::Count),
        "{:?}",
        ended.error
    );
    assert_eq!(
        (ended.state, ended.frames_recorded, ended.frames_lost),
        (RunState::Finished, 6, 0)
    );
    assert!(ended.master.as_ref().unwrap().exists());
    let sinks: Vec<&str> = ended.sinks.0.iter().map(|(name, _)| *name).collect();
    assert!(
        sinks.contains(&"log") && sinks.contains(&"zmq"),
        "{sinks:?}"
    );
    assert_eq!(
        ended.counters.notified, 9,
        "start, 6 frames, the watermark at the close, end"
    );
    let again = m.start(&request).unwrap_err();
    assert_eq!(again.status, 409, "its files exist: {}", again.message);
    m.shutdown();
}

#[test]
fn an_open_ended_run_ends_when_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path());
    let request = req(json!({"beamtime": "b", "source": "det", "stream": "r2", "frames": 0}));
    m.start(&request).unwrap();
    assert_eq!(
        m.start(&request).unwrap_err().status,
        409,
        "one run at a time"
    );
    let stopped = m.stop().unwrap();
    assert_eq!(stopped.end_reason, Some(EndReason::Stop));
    assert_eq!(stopped.state, RunState::Finished);
    m.shutdown();
}

/// Waits until the run has ended and its supervisor is done (a new run may start).
fn wait_until_startable(m: &RunManager) {
    wait_until_ended(m);
    for _ in 0..1000 {
        let done = (m.current.lock().unwrap().as_ref()).is_none_or(|c| c.supervisor.is_finished());
        if done {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the run's supervisor never finished");
}

#[test]
fn a_request_may_ask_for_a_free_name_when_its_stream_exists() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path());
    let request = req(json!({"beamtime": "b", "source": "det", "stream": "r3", "frames": 2}));
    m.start(&request).unwrap();
    wait_until_startable(&m);
    let mut renaming = request.clone();
    renaming.rename_if_exists = true;
    let second = m.start(&renaming).unwrap();
    assert_eq!(second.stream.as_deref(), Some("b/det/r3_2"));
    wait_until_startable(&m);
    let third = m.start(&renaming).unwrap();
    assert_eq!(third.stream.as_deref(), Some("b/det/r3_3"));
    wait_until_startable(&m);
    assert_eq!(
        m.start(&request).unwrap_err().status,
        409,
        "not asked: refused"
    );
    m.shutdown();
}
