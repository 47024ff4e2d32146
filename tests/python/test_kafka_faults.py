"""The Kafka component under what a facility's brokers bring (docs/KAFKA.md): a topic that
does not exist (production brokers do not create topics on demand), a hand-off too large for
a message, a run of 20,000 files. Each fault is told apart, named with its topic and counted;
none is taken for a broker outage; every run's file list reaches the catalogue."""

import hashlib
import json
import subprocess
import time
from pathlib import Path

from streaming_data_types import DESERIALISERS
from streaming_data_types.utils import get_schema

from test_kafka import TOPICS, kafka_table, serve, wait_ready
from test_runs import Serve, config

# The producer may not ask the broker to create a topic (Tansu, like Kafka's default,
# creates topics a client asks for; production brokers are configured not to).
NO_AUTO_CREATE = '[kafka.properties]\n"allow.auto.create.topics" = "false"\n'


def wrdns(broker, topic="det_status", timeout=60, n=1):
    """The first `n` `wrdn` messages on `topic`."""
    c = broker.consumer(topic)
    got, deadline = [], time.time() + timeout
    while len(got) < n:
        assert time.time() < deadline, got
        m = c.poll(0.2)
        if m is None or m.error() or get_schema(m.value()) != "wrdn":
            continue
        got.append(DESERIALISERS["wrdn"](m.value()))
    c.close()
    return got


def counters_reach(s, name, n, timeout):
    """The Kafka sink's counters once `name` has reached `n` (delivery reports come late)."""
    deadline = time.time() + timeout
    while (k := s.answer("GET", "/run")[1]["sinks"]["kafka"])[name] < n:
        assert time.time() < deadline, k
        time.sleep(0.1)
    return k


def test_a_missing_frame_topic_is_one_clear_error_not_an_outage(detingestd, tmp_path,
                                                                   kafka_broker):
    kafka_broker.create_topics("det_commands", "det_status", "det_previews")
    # By default a missing topic refuses the start, naming its key.
    cfg = tmp_path / "refused.toml"
    cfg.write_text(config(tmp_path / "data", live='publish = ""\nquery = ""\n'
                          + kafka_table(kafka_broker, NO_AUTO_CREATE)))
    out = subprocess.run([detingestd, "serve", "--config", str(cfg)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0
    assert "kafka.frame_topic" in out.stderr and '"det_frames"' in out.stderr, out.stderr
    # With on_start_error = "continue": logged once, its records refused and counted.
    s = serve(detingestd, tmp_path, kafka_broker, frames=120, rate=200.0,
              extra='on_start_error = "continue"\nmessage_timeout_ms = 3000\n' + NO_AUTO_CREATE)
    try:
        wait_ready(s)
        code, body = s.start(stream="no_frame_topic")
        assert code == 201, body
        status = s.wait_run(timeout=60)
        assert status["frames_recorded"] == 120
        (w,) = wrdns(kafka_broker)
        assert w.job_id == "bt/det/no_frame_topic" and not w.error_encountered
        k = counters_reach(s, "topic_missing", 120, timeout=30)
        assert k["outages"] == 0 and k["handoffs"] == 1 and k["too_large"] == 0, k
        log = s.log.read_text()
        lines = [ln for ln in log.splitlines() if "det_frames" in ln and "no such topic" in ln]
        assert len(lines) == 1 and "kafka.frame_topic" in lines[0], lines
        assert "brokers unreachable" not in log
        assert "file set handed off (wrdn delivered)" in log
    finally:
        s.stop()
    # With create_topics = true the daemon creates it at start.
    s = serve(detingestd, tmp_path, kafka_broker, extra="create_topics = true\n" + NO_AUTO_CREATE)
    try:
        wait_ready(s)
        assert "created the missing topics" in s.log.read_text()
        from confluent_kafka.admin import AdminClient
        topics = AdminClient({"bootstrap.servers": kafka_broker.bootstrap}).list_topics(timeout=10).topics
        assert "det_frames" in topics and not topics["det_frames"].error
    finally:
        s.stop()


def test_a_wrdn_the_broker_refuses_is_warned_at_once(detingestd, tmp_path, kafka_broker):
    kafka_broker.create_topics(*TOPICS)
    # 100 kB of user metadata (the configuration's [run] user): the wrdn, which carries it
    # with the run's counts, exceeds the 64 KiB message limit.
    source = "[source.synthetic]\nshape = [4, 4]\nframes = 20\nrate_hz = 200.0\nbank_frames = 8\n"
    s = Serve(detingestd, tmp_path, source=source,
              run=f'frames = 20\nuser = {{ notes = "{"x" * 100_000}" }}',
              live='publish = ""\nquery = ""\n'
                   + kafka_table(kafka_broker, "message_max_bytes = 65536\n"))
    try:
        wait_ready(s)
        code, body = s.start(stream="huge_meta")
        assert code == 201, body
        s.wait_run(timeout=60)
        k = counters_reach(s, "handoffs_undelivered", 1, timeout=20)
        assert k["handoffs"] == 0 and k["too_large"] == 1 and k["outages"] == 0, k
        log = s.log.read_text()
        assert "file set NOT handed off" in log and "huge_meta" in log
        assert "brokers unreachable" not in log
    finally:
        s.stop()


def test_a_run_of_twenty_thousand_files_is_handed_off_with_every_checksum(
        detingestd, tmp_path, kafka_broker):
    kafka_broker.create_topics(*TOPICS)
    n = 20_000
    source = f"[source.synthetic]\nshape = [4, 4]\nframes = {n}\nrate_hz = 0.0\nbank_frames = 8\n"
    # As ESS's ingestor checksums (BLAKE2b), the folder on a named file server.
    site = 'checksum = "blake2b"\nsource_folder_host = "fs-01.example.org"\n'
    s = Serve(detingestd, tmp_path, source=source, run="frames_per_file = 1",
              live='publish = ""\nquery = ""\n' + kafka_table(kafka_broker, site))
    try:
        wait_ready(s)
        t0 = time.time()
        code, body = s.start(stream="many", frames=n)
        assert code == 201, body
        status = s.wait_run(timeout=600)
        assert status["frames_recorded"] == n, status
        (w,) = wrdns(kafka_broker, timeout=300)
        took = time.time() - t0
    finally:
        s.stop()
    meta = json.loads(w.metadata)
    assert meta["numberOfFiles"] == n + 1 and meta["files_inline"] is False, meta.keys()
    assert meta["files"] is None
    folder = Path(meta["sourceFolder"])
    man = meta["files_manifest"]
    raw = (folder / man["path"]).read_bytes()
    assert meta["chkAlg"] == "blake2b" and meta["sourceFolderHost"] == "fs-01.example.org"
    assert hashlib.blake2b(raw).hexdigest() == man["chk"] and len(raw) == man["size"]
    listed = json.loads(raw)
    files = listed["dataFileList"]
    assert len(files) == n + 1 == listed["numberOfFiles"]
    assert files[0]["path"] == "many_master.h5" and files[-1]["path"] == f"many_data_{n:06d}.h5"
    on_disk = sorted(p.name for p in folder.glob("many_*.h5"))
    assert sorted(f["path"] for f in files) == on_disk
    assert sum(f["size"] for f in files) == listed["size"] == meta["size"]
    for f in files:  # every checksum is the file's
        data = (folder / f["path"]).read_bytes()
        assert len(data) == f["size"] and hashlib.blake2b(data).hexdigest() == f["chk"], f
    print(f"{n} files: run and hand-off {took:.0f} s; wrdn metadata {len(w.metadata)} bytes, "
          f"manifest {len(raw)} bytes")
