"""The live notification socket (ZeroMQ PUB) and its query endpoint, with pyzmq."""

import json
import signal
import subprocess
import threading
import time

import h5py
import hdf5plugin
import numpy as np
import pytest
import zmq

from conftest import free_port, write_config



@pytest.fixture
def endpoints(tmp_path):
    """IPC endpoints in the test's own directory: no port another test could take."""
    return f"ipc://{tmp_path}/pub", f"ipc://{tmp_path}/query"


@pytest.fixture
def tcp_endpoints():
    return f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"


def live_config(tmp_path, endpoints, name="live", extra="", **kw):
    pub, query = endpoints
    return write_config(tmp_path / f"{name}.toml", tmp_path / "data",
                        live=f'publish = "{pub}"\nquery = "{query}"\n{extra}', **kw)


def subscriber(ctx, endpoint, topics=(b"",)):
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVTIMEO, 20000)
    for t in topics:
        sub.setsockopt(zmq.SUBSCRIBE, t)
    sub.connect(endpoint)
    return sub


def collect(sub, until_run_end=True):
    """Messages until the run's end message, as (topic, header, payload)."""
    out = []
    while True:
        parts = sub.recv_multipart()
        topic, header = parts[0].decode(), json.loads(parts[1])
        out.append((topic, header, parts[2] if len(parts) > 2 else None))
        if until_run_end and topic == "run" and header["event"] == "end":
            return out


def start(daemons, cfg, ready=True, **kw):
    """`detingestd run` on `cfg`; with `wait_for_subscribers`, not `ready` until they came."""
    kw.setdefault("log", "warn")
    return daemons(cfg.stem, config=cfg, command="run", ready=ready, **kw)


# Also with batches of about four frames (20 ms at 200 frames/s), which the publisher holds
# back and sends together: the order on the socket must not change.
@pytest.mark.parametrize("batch_us", [0, 20000])
def test_subscriber_gets_every_frame_in_order_and_throttled_previews(daemons, tmp_path,
                                                                    tcp_endpoints, batch_us):
    # This one over TCP on loopback, as viewers connect; the viewer is there first, on the
    # port the configuration names (it waits for the daemon, which waits for it).
    endpoints = tcp_endpoints
    cfg = live_config(tmp_path, endpoints,
                      synthetic="frames = 60\nshape = [32, 64]\nbank_frames = 60\nrate_hz = 200.0",
                      extra="preview_every = 7\npreview_max_hz = 0\nwait_for_subscribers = 1\n"
                            f"batch_interval_us = {batch_us}")
    ctx = zmq.Context()
    sub = subscriber(ctx, endpoints[0])
    d = start(daemons, cfg, ready=False)
    msgs = collect(sub)
    assert d.proc.wait(timeout=60) == 0
    topics = [m[0] for m in msgs]
    assert topics[0] == "run" and msgs[0][1]["event"] == "start"
    assert msgs[-1][1]["event"] == "end"
    end = msgs[-1][1]
    assert end["frames"] == 60 and end["finished"] is True and end["next_stream"] == "asapo_no_next"
    assert end["finish_marker"] == {"_id": 61, "name": "asapo_finish_stream",
                                    "meta": {"next_stream": "asapo_no_next"}}
    frames = [m[1] for m in msgs if m[0] == "frame"]
    assert [f["index"] for f in frames] == list(range(1, 61))
    f = frames[9]
    assert f["stream"] == "bt/det/s1" and f["frame_number"] == 10 and f["complete"] is True
    assert f["dataset"] == "/entry/data/data" and f["chunk"] == [9, 0, 0]
    assert f["bytes_raw"] == 32 * 64 * 2 and 0 < f["bytes_compressed"]
    assert f["file"].endswith("bt/det/s1_master.h5") and f["written_ns"] >= f["timestamp_ns"] > 0
    assert f["published_ns"] >= f["written_ns"]
    if batch_us:  # frames 5 ms apart wait for batches 20 ms apart
        assert max(f["published_ns"] - f["written_ns"] for f in frames) > 5_000_000
    assert f["data_file"].endswith("bt/det/s1_data_000001.h5") and f["data_chunk"] == [9, 0, 0]
    # Previews: one in 7 (indices 1, 8, 15, ...), bitshuffle-LZ4 chunks that decode to the frame.
    previews = [m for m in msgs if m[0] == "preview"]
    assert [p[1]["index"] for p in previews] == list(range(1, 61, 7))
    last_frame = 0  # each preview right after its own frame's message
    for m in msgs:
        if m[0] == "frame":
            last_frame = m[1]["index"]
        elif m[0] == "preview":
            assert m[1]["index"] == last_frame
    with h5py.File(f["file"], "r") as h:
        data = h["/entry/data/data"][()]
    for _, header, payload in previews:
        assert header["compression"] == "bslz4" and header["dtype"] == "uint16"
        assert header["shape"] == [32, 64] and header["dsize"] == len(payload)
        pixels = decode_bslz4_chunk(payload, np.uint16, (32, 64))
        assert np.array_equal(pixels, data[header["index"] - 1])


def decode_bslz4_chunk(chunk, dtype, shape):
    import bitshuffle
    import struct
    total, block = struct.unpack(">QI", chunk[:12])
    n = total // np.dtype(dtype).itemsize
    out = bitshuffle.decompress_lz4(np.frombuffer(chunk[12:], dtype=np.uint8), (n,),
                                    np.dtype(dtype), block // np.dtype(dtype).itemsize)
    return out.reshape(shape)


def test_a_stalled_subscriber_does_not_hold_up_ingest(daemons, tmp_path, endpoints,
                                                      expected_frames):
    cfg = live_config(tmp_path, endpoints,
                      synthetic="frames = 1000\nshape = [64, 128]\nbank_frames = 1000",
                      # 2000 messages for the stalled subscriber, far past its 200 + 10 queue
                      extra="preview_every = 1\npreview_max_hz = 0\nhigh_water_mark = 200\n"
                            # three subscriptions: the stalled one's, and the reader's two topics
                            "wait_for_subscribers = 3",
                      # No timed flush: its `readable` notice would add to the count below.
                      writer="flush_interval_ms = 0")
    ctx = zmq.Context()
    stalled = subscriber(ctx, endpoints[0])
    stalled.setsockopt(zmq.RCVHWM, 10)
    reader = subscriber(ctx, endpoints[0], topics=(b"run", b"frame"))
    got = []
    t = threading.Thread(target=lambda: got.extend(collect(reader)))
    summary_path = tmp_path / "s.json"
    d = start(daemons, cfg, ready=False, args=["--summary-json", summary_path])
    t.start()
    assert d.proc.wait(timeout=120) == 0, "ingest finished although one subscriber never read"
    t.join(timeout=30)
    summary = json.loads(summary_path.read_text())
    assert summary["streams"][0]["frames"] == 1000 and summary["stats"]["written"] == 1000
    # Every frame asked for a preview: each was published or, with all preview buffers busy,
    # skipped and counted.
    assert summary["live"]["previews"] + summary["stats"]["previews_skipped"] == 1000
    assert summary["live"]["previews"] > 0
    # The daemon's own queue counters account for every notification.
    stats = summary["stats"]
    assert stats["notified"] + stats["notify_dropped"] == 1002
    want = expected_frames(cfg, "u2", (64, 128))
    with h5py.File(summary["streams"][0]["file"], "r") as f:
        assert np.array_equal(f["/entry/data/data"][()], want)
    # The reading subscriber still saw the run and frames while the other stalled.
    assert [m[1]["event"] for m in got if m[0] == "run"] == ["start", "end"]
    assert len([m for m in got if m[0] == "frame"]) > 0
    stalled.close(0)


def query(ctx, endpoint, text):
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.RCVTIMEO, 10000)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(endpoint)
    req.send_string(text)
    reply = json.loads(req.recv())
    req.close()
    return reply


def test_late_joiner_gets_history_and_three_distinct_answers(daemons, tmp_path, endpoints):
    pub, q = endpoints
    cfg = tmp_path / "two.toml"
    cfg.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        f'[live]\npublish = "{pub}"\nquery = "{q}"\nhistory = 10\n'
        '[[source]]\nname = "short"\nstream = { beamtime = "bt", source = "det", stream = "short" }\n'
        '[source.synthetic]\nframes = 5\nshape = [8, 8]\n'
        '[[source]]\nname = "long"\nstream = { beamtime = "bt", source = "det", stream = "long" }\n'
        '[source.synthetic]\nframes = 400\nshape = [8, 8]\nrate_hz = 50.0\n')
    ctx = zmq.Context()
    d = start(daemons, cfg)
    try:
        # Wait until the long stream has passed its history size.
        deadline = time.time() + 60
        while True:
            last = query(ctx, q, "last")
            assert last["ok"]
            if last["streams"].get("bt/det/long", {}).get("last", 0) >= 30:
                break
            assert time.time() < deadline, last
            time.sleep(0.1)
        assert last["streams"]["bt/det/short"] == {"last": 5, "finished": True,
                                                   "readable_up_to": 5}
        n = last["streams"]["bt/det/long"]["last"]
        r = query(ctx, q, f"range bt/det/long 1 {n + 1000}")
        assert r["ok"], r
        items = r["items"]
        assert items[0]["status"] == "expired" and items[0]["from"] == 1
        assert items[0]["file"].endswith("long_master.h5") and items[0]["dataset"] == "/entry/data/data"
        held = [i for i in items if i["status"] == "ok"]
        m = held[-1]["index"]  # the stream may have moved on since `last` (50 frames/s)
        assert m >= n
        assert len(held) == 10 and [h["index"] for h in held] == list(range(m - 9, m + 1))
        assert items[-1]["status"] == "not_yet"
        assert (items[-1]["from"], items[-1]["to"]) == (m + 1, n + 1000)
        r = query(ctx, q, "range bt/det/short 3 9")
        assert [i["status"] for i in r["items"]] == ["ok", "ok", "ok", "never"]
        assert [i["index"] for i in r["items"][:3]] == [3, 4, 5]
        never = r["items"][-1]
        assert (never["from"], never["to"]) == (6, 9)
        # Malformed requests get an error reply, and the endpoint keeps serving.
        for bad in ["", "lats", "range bt/det/long", "range bt/det/long 5 2", "range x/y/z 1 2",
                    "range bt/det/long 1 999999999"]:
            reply = query(ctx, q, bad)
            assert reply["ok"] is False and reply["error"], bad
        assert query(ctx, q, "last")["ok"]
    finally:
        d.stop(signal.SIGTERM)


def test_the_live_view_example_prints_frames(daemons, tmp_path, endpoints):
    import os
    import sys
    from pathlib import Path
    example = Path(__file__).resolve().parents[2] / "examples" / "live_view.py"
    assert len(example.read_text().splitlines()) <= 40
    cfg = live_config(tmp_path, endpoints, synthetic="frames = 20\nshape = [16, 16]\nrate_hz = 50.0",
                      extra="wait_for_subscribers = 1")
    env = dict(os.environ, MPLBACKEND="Agg")
    viewer = subprocess.Popen([sys.executable, str(example), endpoints[0]], env=env,
                              stdout=subprocess.PIPE, text=True)
    d = start(daemons, cfg, ready=False)
    assert d.proc.wait(timeout=60) == 0
    lines = []
    for line in viewer.stdout:
        lines.append(line)
        if line.startswith("run end"):
            break
    viewer.kill()
    frame_lines = [l for l in lines if " #" in l and "frame" in l]
    assert len(frame_lines) == 20, lines
    assert frame_lines[0].startswith("bt/det/s1 #1 frame 1 ")


def test_bluesky_documents_validate_against_event_model(daemons, tmp_path, endpoints):
    from event_model import DocumentNames, schema_validators
    # Flushed after every index: each index becomes readable, and announced, on its own.
    cfg = live_config(tmp_path, endpoints, synthetic="frames = 12\nshape = [16, 24]",
                      extra="bluesky = true\nwait_for_subscribers = 1",
                      writer="flush_every_frames = 1")
    ctx = zmq.Context()
    sub = subscriber(ctx, endpoints[0], topics=(b"bluesky",))
    d = start(daemons, cfg, ready=False)
    docs = []
    while not docs or docs[-1][0] != "stop":
        topic, name, doc = sub.recv_multipart()
        assert topic == b"bluesky"
        docs.append((name.decode(), json.loads(doc)))
    assert d.proc.wait(timeout=60) == 0
    for name, doc in docs:
        schema_validators[DocumentNames[name]].validate(doc)
    names = [n for n, _ in docs]
    assert names == ["start", "descriptor", "stream_resource"] + ["stream_datum"] * 12 + ["stop"]
    start_doc, descriptor, resource = (d for _, d in docs[:3])
    assert descriptor["run_start"] == start_doc["uid"] == resource["run_start"]
    assert descriptor["data_keys"]["image"]["shape"] == [16, 24]
    assert resource["mimetype"] == "application/x-hdf5"
    assert resource["uri"].startswith("file://localhost/")
    assert resource["uri"].endswith("s1_data_000001.h5"), "the data file: it exists during the run"
    assert resource["parameters"] == {"dataset": "/entry/data/data", "chunk_shape": [1, 16, 24],
                                      "join_method": "stack", "swmr": True}
    datums = [d for n, d in docs if n == "stream_datum"]
    assert [d["indices"] for d in datums] == [{"start": i, "stop": i + 1} for i in range(12)]
    assert all(d["stream_resource"] == resource["uid"] for d in datums)
    assert all(d["descriptor"] == descriptor["uid"] for d in datums)
    assert docs[-1][1]["num_events"] == {"primary": 12}
    # The file the documents point at holds what they say.
    with h5py.File(resource["uri"][len("file://localhost"):], "r") as f:
        assert f["/entry/data/data"].shape == (12, 16, 24)


def test_realtime_priority_puts_the_notification_path_under_sched_fifo(daemons, tmp_path,
                                                                       endpoints):
    import os
    cfg = live_config(tmp_path, endpoints, synthetic="frames = 0\nshape = [16, 16]\nrate_hz = 50.0",
                      extra="realtime_priority = 7")
    cfg.write_text(cfg.read_text() + "\n[threads]\nnotify = 1\n")
    d = start(daemons, cfg, log="info")
    try:
        pid = d.proc.pid
        tasks = {int(t): open(f"/proc/{pid}/task/{t}/comm").read().strip()
                 for t in os.listdir(f"/proc/{pid}/task")}
        notify = next(t for t, n in tasks.items() if n == "notify")
        deadline = time.time() + 20  # the thread sets its policy as it starts
        while os.sched_getscheduler(notify) != os.SCHED_FIFO and time.time() < deadline:
            time.sleep(0.02)
        policy = {name: os.sched_getscheduler(tid) for tid, name in tasks.items()}
        fifo = [name for tid, name in tasks.items() if os.sched_getscheduler(tid) == os.SCHED_FIFO]
        assert policy["notify"] == os.SCHED_FIFO
        assert os.sched_getparam(next(t for t, n in tasks.items() if n == "notify")).sched_priority == 7
        # Besides notify, only libzmq's threads (which the daemon names): never a worker.
        assert set(fifo) - {"notify"} == {"live-zmq"} and len(fifo) >= 2, fifo
        assert policy["compress-0"] == os.SCHED_OTHER and policy["writer"] == os.SCHED_OTHER
        # `threads.notify` pins the notification thread and, beside it, ZeroMQ's.
        zmq_threads = [t for t, n in tasks.items() if n == "live-zmq"]
        assert zmq_threads and all(os.sched_getaffinity(t) == {1} for t in zmq_threads)
        assert os.sched_getaffinity(next(t for t, n in tasks.items() if n == "notify")) == {1}
        assert os.sched_getaffinity(next(t for t, n in tasks.items() if n == "writer")) == {0, 1}
    finally:
        d.stop(signal.SIGTERM)
    err = d.log_text()
    assert "keeps normal scheduling" not in err, err
