"""Neutron events from Kafka (docs/EVENTS.md) through the Tansu broker: a producer written with
ess-streaming-data-types sends ev44 for two banks and a monitor, with pu00 pulse metadata
beside them (encoded here by hand after ISIS's schema: the PyPI package has no pu00) and
f144 sample-environment values; a pl72 starts the run, a 6s4t stops it. scippnexus loads every
bank and the monitor as binned event data equal, event for event, to what was sent, and the
log as an NXlog with its times; gaps in message ids are recorded lost; malformed messages are
refused and counted; the wrdn names the event file."""

import json
import time

import flatbuffers
import numpy as np
import pytest
from streaming_data_types import serialise_6s4t, serialise_ev44, serialise_f144, serialise_pl72

from harness import Daemon, http  # noqa: I001
from test_kafka import Reader, kafka_table, now_ms, sha256

EVENT_TOPIC, LOG_TOPIC = "loki_events", "loki_sample_env"
TOPICS = ("det_commands", "det_status", "det_frames", "det_previews")
BANKS = {"bank0": 16, "bank1": 32}  # source_name -> pixels (ids from 1 and from 100)
FIRST_ID = {"bank0": 1, "bank1": 100}


def pu00(source, message_id, time_ns, vetos=0, period=0, charge=0.0):
    """A pu00 message: source_name, message_id, reference_time, vetos, period_number,
    proton_charge (ISIS's pulse metadata schema, in its field order)."""
    b = flatbuffers.Builder(128)
    name = b.CreateString(source)
    b.StartObject(6)
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    b.PrependInt64Slot(1, message_id, 0)
    b.PrependInt64Slot(2, time_ns, 0)
    b.PrependUint32Slot(3, vetos, 0)
    b.PrependUint32Slot(4, period, 0)
    b.PrependFloat32Slot(5, charge, 0.0)
    b.Finish(b.EndObject(), file_identifier=b"pu00")
    return bytes(b.Output())


def f142(source, value, time_ns, status, severity):
    """An f142 LogData of a Double, by hand after its schema (source_name, value_type, value,
    timestamp, status, severity): ess-streaming-data-types 0.27's serialise_f142 calls
    numpy's removed `np.unicode_` under NumPy 2."""
    b = flatbuffers.Builder(128)
    name = b.CreateString(source)
    b.StartObject(1)
    b.PrependFloat64Slot(0, value, 0.0)
    double = b.EndObject()
    b.StartObject(6)
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    b.PrependUint8Slot(1, 10, 0)  # Value.Double
    b.PrependUOffsetTRelativeSlot(2, double, 0)
    b.PrependUint64Slot(3, time_ns, 0)
    b.PrependUint16Slot(4, status, 22)
    b.PrependUint16Slot(5, severity, 4)
    b.Finish(b.EndObject(), file_identifier=b"f142")
    return bytes(b.Output())


def config_text(tmp_path, broker, port):
    banks = ", ".join(f'{{ source_name = "{n}", pixels = [{FIRST_ID[n]}, {p}] }}'
                      for n, p in BANKS.items())
    return (f'data_dir = "{tmp_path / "data"}"\n'
            f'[writer]\nflush_interval_ms = 200\n[live]\npublish = ""\nquery = ""\n'
            # The in-memory broker forgets producer ids when killed: no idempotence (test_kafka).
            + kafka_table(broker, 'message_timeout_ms = 1500\n[kafka.properties]\n'
                                  '"enable.idempotence" = "false"\n') +
            f'[control]\nlisten = "127.0.0.1:{port}"\n'
            '[[source]]\nname = "loki"\nstream = { beamtime = "bt", source = "loki", stream = "x" }\n'
            f'[source.kafka_events]\ntopics = ["{EVENT_TOPIC}"]\nlog_topics = ["{LOG_TOPIC}"]\n'
            f"banks = [{banks}]\n"
            'monitors = [{ source_name = "monitor_1" }]\n'
            'logs = [{ source_name = "temperature", units = "K" },\n'
            '        { source_name = "pressure", units = "mbar", alarms = true }]\n'
            'pulse_source = "isis_pulses"\n')


def start_serve(detingestd, tmp_path, kafka_broker, name="serve"):
    """`serve` on the instrument, once it takes commands: its process, a `status()` of its
    `GET /run` (`status.url`) and its log."""
    d = Daemon(detingestd, tmp_path, name, config_text(tmp_path, kafka_broker, 0))

    def status():
        return http("GET", status.url, timeout=10).json()
    status.url = d.url + "/run"
    deadline = time.time() + 30
    while not status()["sinks"]["kafka"]["commands_ready"]:
        assert time.time() < deadline, d.log_text()
        time.sleep(0.1)
    return d.proc, status, d.log


@pytest.fixture
def events_daemon(request, detingestd, tmp_path, kafka_broker):
    """`serve` on the instrument; its event topic created first unless the test says
    `{"event_topic": False}` (indirect parameter)."""
    later = getattr(request, "param", {}).get("event_topic", True) is False
    kafka_broker.create_topics(*TOPICS, LOG_TOPIC, *([] if later else [EVENT_TOPIC]))
    proc, status, log = start_serve(detingestd, tmp_path, kafka_broker)
    try:
        yield proc, status, log
    finally:
        assert proc.poll() is None, "the daemon died: " + log.read_text()[-2000:]
        proc.terminate()
        proc.wait(30)


class Sent:
    """What the producer sent, per source: pulses' times and their events."""

    def __init__(self):
        self.pulses = {}   # source -> list of (time_ns, tof array, id array or None)

    def add(self, source, time_ns, tof, ids):
        self.pulses.setdefault(source, []).append((time_ns, tof, ids))


def produce_run(broker, t0_ns, n_pulses, rng, skip_ids=(), ids=None, first=0, sent=None):
    """Sends n_pulses pulses: per pulse one pu00, for each bank an ev44 (every third one
    carrying two pulses split across two messages: a pulse continued), the monitor's ev44, and
    every fifth pulse a temperature. Returns what was sent."""
    p = broker.producer()
    sent = sent or Sent()
    ids = {n: 0 for n in [*BANKS, "monitor_1"]} if ids is None else ids
    period = 71_428_571  # 14 Hz
    temps = []
    for k in range(first, first + n_pulses):
        t = t0_ns + k * period
        p.produce(EVENT_TOPIC, pu00("isis_pulses", 1000 + k, t, vetos=k % 2, period=1,
                                    charge=0.5 + k))
        for name, npix in BANKS.items():
            n = int(rng.integers(0, 200))
            tof = rng.integers(0, 70_000_000, n, dtype=np.int32)
            pix = rng.integers(FIRST_ID[name], FIRST_ID[name] + npix, n, dtype=np.int32)
            sent.add(name, t, tof, pix)
            halves = [(tof, pix)] if k % 3 else [(tof[: n // 2], pix[: n // 2]),
                                                   (tof[n // 2:], pix[n // 2:])]
            for tof_h, pix_h in halves:
                mid = ids[name]
                ids[name] += 1
                if (name, mid) in skip_ids:
                    continue
                p.produce(EVENT_TOPIC, serialise_ev44(name, mid, [t], [0], tof_h, pix_h))
        n = int(rng.integers(1, 20))
        tof = rng.integers(0, 70_000_000, n, dtype=np.int32)
        sent.add("monitor_1", t, tof, None)
        p.produce(EVENT_TOPIC, serialise_ev44("monitor_1", ids["monitor_1"], [t], [0], tof, []))
        ids["monitor_1"] += 1
        if k % 5 == 0:
            temps.append((t, 290.0 + k))
            p.produce(LOG_TOPIC, serialise_f144("temperature", 290.0 + k, t))
        if k in (3, 4, 8):  # EPICS via the older f142: an alarm (HIGH, MINOR) at pulse 4 only
            alarm = (4, 0) if k == 4 else (0, 2)  # NO_ALARM, NO_ALARM
            p.produce(LOG_TOPIC, f142("pressure", 1000.0 + k, t, *alarm))
        p.poll(0)
    assert p.flush(20) == 0
    return sent, temps


def start_and_stop(broker, job, produce, heartbeat=False):
    reader = Reader(broker)
    p = broker.producer()
    p.produce("det_commands", serialise_pl72(job, f"{job}.nxs", start_time=now_ms()))
    assert p.flush(10) == 0
    reader.wait(lambda s, d: s == "answ" and d.job_id == job, what="answ")
    result = produce()
    if heartbeat:  # a heartbeat (every 300 ms) of the run with its events, before the stop
        reader.wait(lambda sc, d: sc == "x5f2" and
                    json.loads(d.status_json).get("events_written", 0) > 0, timeout=30,
                    what="x5f2 with events")
    p.produce("det_commands", serialise_6s4t(job, command_id="stop-" + job, stop_time=0))
    assert p.flush(10) == 0
    wrdn = reader.wait(lambda s, d: s == "wrdn" and d.job_id == job, timeout=60, what="wrdn")
    return result, wrdn[0], reader


def test_two_banks_a_monitor_and_logs_load_in_scippnexus_as_sent(events_daemon, kafka_broker,
                                                                 tmp_path):
    import h5py
    import hdf5plugin  # noqa: F401
    import scippnexus as snx
    proc, status, log = events_daemon
    rng = np.random.default_rng(7)
    t0 = time.time_ns()
    (sent, temps), wrdn, reader = start_and_stop(kafka_broker, "events-1",
                                                 lambda: produce_run(kafka_broker, t0, 60, rng),
                                                 heartbeat=True)
    # The x5f2 heartbeats of the run say how many events were written, and at what rate.
    beats = [json.loads(d.status_json) for d in reader.of("x5f2")]
    assert any(b.get("events_written", 0) > 0 and b["state"] == "writing" for b in beats), \
        [b for b in beats if b["state"] == "writing"]
    path = tmp_path / "data" / "kafka" / "loki" / "events-1.nxs"  # [kafka] beamtime's default
    assert wrdn.file_name == str(path) and not wrdn.error_encountered, wrdn
    files = json.loads(wrdn.metadata)["files"]
    assert [f["chk"] for f in files] == [sha256(path)], files

    with snx.File(path) as f:
        for name in BANKS:
            ev = f[f"entry/instrument/{name}/events"][()]
            want = sent.pulses[name]
            assert ev.sizes["event_time_zero"] == len(want), name
            times = ev.coords["event_time_zero"].values.astype("datetime64[ns]").astype(np.int64)
            assert list(times) == [t for t, _, _ in want]
            for k, (_, tof, pix) in enumerate(want):
                got = ev["event_time_zero", k].values
                assert np.array_equal(got.coords["event_time_offset"].values, tof), (name, k)
                assert np.array_equal(got.coords["event_id"].values, pix), (name, k)
            det = f[f"entry/instrument/{name}"][()]["events"]  # binned by detector_number
            assert det.sizes["detector_number"] == BANKS[name]
            assert det.bins.size().sum().value == sum(len(tof) for _, tof, _ in want)
        mon = f["entry/monitor_1/events"][()]
        want = sent.pulses["monitor_1"]
        assert [len(mon["event_time_zero", k].values) for k in range(len(want))] == \
            [len(tof) for _, tof, _ in want]
        temp = f["entry/selog/temperature"][()]
        assert list(temp.values) == [v for _, v in temps]
        assert temp.unit == "K"
        got_t = temp.coords["time"].values.astype("datetime64[ns]").astype(np.int64)
        assert list(got_t) == [t for t, _ in temps]
        # f142 values with their alarms: scippnexus loads the log as `value` and `alarm`.
        pressure = f["entry/selog/pressure"][()]
        assert list(pressure["value"].values) == [1003.0, 1004.0, 1008.0]
        alarm = pressure["alarm"]
        assert list(alarm.values) == [2, 0, 2], "severity per change: NO_ALARM, MINOR, NO_ALARM"
        assert list(alarm.coords["status"].values) == [0, 4, 0]
        charge = f["entry/framelog/proton_charge"][()]
        assert np.allclose(charge.values, [0.5 + k for k in range(60)])

    s = status()
    counts = s["sources"][0]["events"]
    total = sum(len(tof) for src in sent.pulses.values() for _, tof, _ in src)
    assert counts["events"] == total and counts["messages_lost"] == 0, counts
    assert s["frames_recorded"] == 60 and s["frames_lost"] == 0, s
    with h5py.File(path) as h:
        assert h["entry/detingest/events"][()] == total


def test_gaps_and_malformed_messages_are_recorded_and_counted(events_daemon, kafka_broker,
                                                             tmp_path):
    import h5py
    import hdf5plugin  # noqa: F401
    proc, status, log = events_daemon
    rng = np.random.default_rng(8)

    def produce():
        p = kafka_broker.producer()
        good = serialise_ev44("bank0", 0, [1], [0], [5], [1])
        for bad in (b"", b"abcd", good[:20], good[:-8], b"\x08\x00\x00\x00ev44" + bytes(40),
                    serialise_ev44("bank0", 0, [1, 2], [5, 0], [1], [1]),
                    serialise_ev44("nobody", 0, [1], [0], [5], [1])):
            p.produce(EVENT_TOPIC, bad)
        assert p.flush(10) == 0
        return produce_run(kafka_broker, time.time_ns(), 20, rng, skip_ids={("bank1", 4),
                                                                          ("bank1", 5)})
    (sent, _), wrdn, _ = start_and_stop(kafka_broker, "events-2", produce)
    counts = status()["sources"][0]["events"]
    assert counts["malformed"] == 6 and counts["unknown_source"] == 1, counts
    assert counts["messages_lost"] == 2, counts
    assert "event messages lost" in log.read_text()
    path = tmp_path / "data" / "kafka" / "loki" / "events-2.nxs"
    with h5py.File(path) as h:
        assert list(h["entry/detingest/bank1_lost_messages"][()]) == [4, 2]
    assert proc.poll() is None, "the daemon lives on"


def test_a_broker_killed_mid_run_loses_nothing_silently(events_daemon, kafka_broker):
    """The broker dies mid-run and comes back empty (in memory: what it held is gone, as a
    real broker's unreplicated log would be): the run goes on, every event it read before and
    after is in the file, the consumer's errors are counted and logged."""

    import h5py
    import hdf5plugin  # noqa: F401
    proc, status, log = events_daemon
    rng = np.random.default_rng(9)
    started = http("POST", status.url + "/start",
                   {"beamtime": "bt", "source": "loki", "stream": "outage"})
    assert started.status == 201, started.body
    ids = {n: 0 for n in [*BANKS, "monitor_1"]}
    t0 = time.time_ns()
    sent, _ = produce_run(kafka_broker, t0, 20, rng, ids=ids)
    deadline = time.time() + 20
    while ((status().get("sources") or [{}])[0].get("events") or {}).get("pulses", 0) < 20 * 3:
        assert time.time() < deadline, status()
        time.sleep(0.1)
    kafka_broker.kill()
    time.sleep(2.0)
    kafka_broker.start()
    kafka_broker.create_topics(*TOPICS, EVENT_TOPIC, LOG_TOPIC)
    produce_run(kafka_broker, t0, 20, rng, ids=ids, first=20, sent=sent)
    total = sum(len(tof) for src in sent.pulses.values() for _, tof, _ in src)
    deadline = time.time() + 30
    while status()["sources"][0]["events"]["events"] < total:
        assert time.time() < deadline, (status()["sources"][0]["events"], total)
        time.sleep(0.2)
    http("POST", status.url + "/stop", {})
    s = status()
    counts = s["sources"][0]["events"]
    assert counts["events"] == total and counts["messages_lost"] == 0, counts
    assert counts["consumer_errors"] > 0, counts
    text = log.read_text()
    assert "event consumer error" in text and "reading it again from its start" in text
    assert "event consumer made again" in text, text
    with h5py.File(s["master"]) as h:
        assert h["entry/detingest/events"][()] == total
        assert h["entry/instrument/bank0/events/event_time_zero"].shape[0] == 40


def test_the_live_page_shows_events_and_histograms_in_chromium(events_daemon, kafka_broker):
    """The page of an event run in Chromium: events/s and the histograms of times of flight
    and pixel ids drawn, no image panel, no console error (screenshot in target/artifacts)."""
    import threading

    from test_operations import ROOT, node_and_browser, run_page
    proc, status, log = events_daemon
    node, modules = node_and_browser()
    started = http("POST", status.url + "/start",
                   {"beamtime": "bt", "source": "loki", "stream": "page"})
    assert started.status == 201, started.body
    done = threading.Event()

    def keep_sending():
        rng, ids, k = np.random.default_rng(3), {n: 0 for n in [*BANKS, "monitor_1"]}, 0
        while not done.is_set():
            produce_run(kafka_broker, time.time_ns(), 5, rng, ids=ids, first=k)
            k += 5
            time.sleep(0.3)
    sender = threading.Thread(target=keep_sending, daemon=True)
    sender.start()
    artifacts = ROOT / "target" / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    try:
        url = status.url.rsplit("/run", 1)[0] + "/"
        p = run_page(node, modules, url, "events", artifacts / "live-page-events.png")
        out, err = p.communicate(timeout=90)
        assert p.returncode == 0, out + err
        seen = json.loads(out.strip().splitlines()[-1])
        assert "events" in seen["caption"], seen
    finally:
        done.set()
        sender.join(10)
        http("POST", status.url + "/stop", {})


def test_the_example_configuration_is_valid(detingestd):
    import subprocess

    from conftest import ROOT
    p = subprocess.run([detingestd, "check-config", str(ROOT / "docs" / "events.example.toml")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("events_daemon", [{"event_topic": False}], indirect=True)
def test_an_event_topic_made_after_the_daemon_started_is_read_once_it_exists(events_daemon,
                                                                            kafka_broker):
    """The instrument's topic does not exist yet: a start is refused naming it, nothing is
    written; once the topic exists the next start reads it."""

    import h5py
    import hdf5plugin  # noqa: F401
    proc, status, log = events_daemon

    def start(stream):
        a = http("POST", status.url + "/start",
                 {"beamtime": "bt", "source": "loki", "stream": stream})
        return a.status, a.json()
    code, body = start("early")
    assert code >= 400 and EVENT_TOPIC in body["error"] and "does not exist" in body["error"], body
    assert status()["state"] != "running"
    kafka_broker.create_topics(EVENT_TOPIC)
    code, body = start("later")
    assert code == 201, body
    sent, _ = produce_run(kafka_broker, time.time_ns(), 10, np.random.default_rng(4))
    total = sum(len(tof) for src in sent.pulses.values() for _, tof, _ in src)
    deadline = time.time() + 30
    while ((status().get("sources") or [{}])[0].get("events") or {}).get("events", 0) < total:
        assert time.time() < deadline, status()
        time.sleep(0.1)
    http("POST", status.url + "/stop", {})
    with h5py.File(status()["master"]) as h:
        assert h["entry/detingest/events"][()] == total


def test_an_event_run_the_daemon_crashed_in_is_finished_at_its_restart(detingestd, tmp_path,
                                                                      kafka_broker):
    """SIGKILL mid-run: the .nxs keeps HDF5's write marks (a plain reader refuses it). The next
    `serve` finishes it from what it holds: marks cleared, columns cut to whole pulses,
    `end_time` and the reason written; scippnexus loads it; the wrdn carries the error flag."""
    import signal

    import h5py
    import hdf5plugin  # noqa: F401
    import scippnexus as snx
    kafka_broker.create_topics(*TOPICS, LOG_TOPIC, EVENT_TOPIC)
    proc, status, log = start_serve(detingestd, tmp_path, kafka_broker)
    try:
        started = http("POST", status.url + "/start",
                       {"beamtime": "bt", "source": "loki", "stream": "crash"})
        assert started.status == 201, started.body
        produce_run(kafka_broker, time.time_ns(), 20, np.random.default_rng(4))
        deadline = time.time() + 20
        while ((status().get("sources") or [{}])[0].get("events") or {}).get("pulses", 0) < 60:
            assert time.time() < deadline, status()
            time.sleep(0.1)
        time.sleep(0.6)  # past a flush (every 200 ms)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    path = tmp_path / "data/bt/loki/crash.nxs"
    with pytest.raises(OSError):
        h5py.File(path, "r")  # the write marks: refused until the file is finished
    reader = Reader(kafka_broker)
    proc, status, log = start_serve(detingestd, tmp_path, kafka_broker, "serve2")
    try:
        wrdn = reader.wait(lambda s, d: s == "wrdn" and d.file_name.endswith("crash.nxs"),
                           timeout=60, what="wrdn of the crashed run")[0]
        assert wrdn.error_encountered and "crashed" in wrdn.message, wrdn
        assert "finished an event run a crash left unfinished" in log.read_text()
        with h5py.File(path, "r") as f:
            assert f["entry/end_time"][()]
            assert b"crashed" in f["entry/detingest/error"][()]
            ev = f["entry/instrument/bank0/events"]
            pulses = ev["event_time_zero"].shape[0]
            assert 0 < pulses <= 20 and ev["event_index"].shape[0] == pulses
            n = ev["event_time_offset"].shape[0]
            assert ev["event_id"].shape[0] == n and ev["event_index"][-1] <= n
        with snx.File(path) as f:
            assert f["entry/instrument/bank0/events"][()].sizes["event_time_zero"] == pulses
            det = f["entry/instrument/bank0"][()]["events"]  # binned by detector_number
            assert det.bins.size().sum().value == n
    finally:
        proc.terminate()
        proc.wait(30)

