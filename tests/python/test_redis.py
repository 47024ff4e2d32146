"""The Redis sink against the real `blissdata` client on the Redis Stack server (RedisJSON and
RediSearch, the database set up by blissdata itself as BLISS does it): a reader started
before the run follows the image and numeric streams live through a cursor
and gets every frame's pixels (equal to h5py's read of the files) and every lost flag; a late
reader reads everything; trimmed indices give Blissdata's "no more there" and the image
stream's file fallback; redis-cli reads the streams without Blissdata; the query endpoint
answers from Redis after a daemon restart. Faults: Redis killed and restarted mid-run, out of
memory mid-run (one logged episode, the scan marked incomplete), a wrong password."""

import ast
import re
import subprocess
import threading
import time

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest

from conftest import write_config

SHAPE, K = (32, 48), 25


def config(tmp_path, url, frames, rate_hz, redis="", name="cfg", synthetic="", per_file=K):
    return write_config(
        tmp_path / f"{name}.toml", tmp_path / "data", stream=name,
        synthetic=f"frames = {frames}\nshape = [{SHAPE[0]}, {SHAPE[1]}]\nrate_hz = {rate_hz}\n"
                  f"bank_frames = 16\n{synthetic}",
        writer="swmr = true\nflush_interval_ms = 50",
        live=f'publish = ""\nquery = ""\n[sink.redis]\nurl = "{url}"\n{redis}\n'
             f"[run]\nframes_per_file = {per_file}\nframes = {frames}")


def run(detingestd, cfg, tmp_path, check=True):
    summary = tmp_path / (cfg.stem + ".json")
    p = subprocess.run([detingestd, "--log", "warn", "run", "--config", str(cfg),
                        "--summary-json", str(summary)], capture_output=True, text=True,
                       timeout=300)
    if check:
        assert p.returncode == 0, p.stderr
    return p, summary


def file_frames(master):
    with h5py.File(master, "r") as f:
        return f["/entry/data/data"][()]


class LiveReader(threading.Thread):
    """A Blissdata reader that waits for the next scan and follows all of its streams with
    one CursorGroup until they are sealed, recording what it got and when."""

    def __init__(self, url):
        super().__init__(daemon=True)
        from blissdata.redis_engine.store import DataStore
        self.store = DataStore(url)
        self.since = self.store.get_last_scan_timetag()
        self.got, self.views_while_running, self.error = {}, 0, None

    def run(self):
        from blissdata.exceptions import EndOfStream
        from blissdata.redis_engine.scan import ScanState
        from blissdata.streams import CursorGroup
        try:
            _, key = self.store.get_next_scan(since=self.since, timeout=60)
            self.scan = scan = self.store.load_scan(key)
            while scan.state < ScanState.PREPARED:
                scan.update(timeout=10)
            group = CursorGroup(scan.streams)
            while True:
                try:
                    views = group.read(timeout=10)
                except EndOfStream:
                    break
                sealed = scan.streams["det:image"].is_sealed()
                for stream, view in views.items():
                    data = view.get_data()
                    assert len(data) == len(view)
                    values = self.got.setdefault(stream.name, {})
                    for i, v in enumerate(data):
                        values[view.index + i] = np.asarray(v)
                    if not sealed:
                        self.views_while_running += 1
        except Exception as e:  # reported by the test
            self.error = e


def test_a_reader_follows_the_run_live_and_a_late_reader_reads_it_all(
        detingestd, tmp_path, redis_server):
    from blissdata.redis_engine.store import DataStore
    server = redis_server()
    n = 120
    # Frame 40 never sent on its module: a lost index.
    # One data file: Blissdata reads images trimmed from Redis from it during the run.
    cfg = config(tmp_path, server.url, n, 60.0, redis="image_max_hz = 10",
                 synthetic="withhold = [[40, 0]]", per_file=n)
    server.client().set("_PROTOCOL_VERSION_", 1)  # as an initialised Blissdata database
    reader = LiveReader(server.url)
    reader.start()
    _, summary_path = run(detingestd, cfg, tmp_path)
    reader.join(timeout=60)
    assert reader.error is None, repr(reader.error)
    master = tmp_path / "data" / "bt" / "det" / "cfg_master.h5"
    want = file_frames(master)
    assert want.shape == (n, *SHAPE)

    got = reader.got
    assert sorted(got["det:image"]) == list(range(n)), "every index, 0-based"
    for i in range(n):
        assert np.array_equal(got["det:image"][i], want[i]), f"image {i}"
    lost = [i for i in range(n) if got["det:lost"][i]]
    assert lost == [39], "index 40 (Blissdata 39) is the lost one"
    frame_numbers = [int(got["det:frame_number"][i]) for i in range(n)]
    assert frame_numbers == list(range(1, n + 1))
    assert reader.views_while_running > 5, "the reader saw data before the end"

    # The late reader: the same through indexing and slices.
    store = DataStore(server.url)
    scan = store.load_scan(reader.scan.key)
    assert scan.state == 4 and scan.info["publishing"]["complete"]
    assert scan.info["detingest"]["stream"] == "bt/det/cfg"
    image = scan.streams["det:image"]
    assert len(image) == n and image.plugin == "hdf5_fallback"
    assert np.array_equal(image[:], want)
    for i in range(n):
        assert np.array_equal(image[i], want[i]), f"image {i}"
    assert list(scan.streams["det:lost"][:].nonzero()[0]) == [39]
    ts = np.delete(scan.streams["det:timestamp"][:], 39)  # a lost index has no arrival time
    assert np.all(np.diff(ts) >= 0) and abs(ts[0] - time.time()) < 600
    summary = __import__("json").loads(summary_path.read_text())
    redis = summary["sinks"]["redis"]
    assert redis["indices"] == n and redis["indices_dropped"] == 0 and redis["scans"] == 1


def test_trimmed_indices_say_so_and_images_fall_back_to_the_file(
        detingestd, tmp_path, redis_server):
    from blissdata.exceptions import IndexNoMoreThereError, IndexWontBeThereError
    from blissdata.redis_engine.store import DataStore
    # Small stream nodes, so that MAXLEN ~ trims at this scale.
    server = redis_server("--stream-node-max-entries", "4")
    n = 60
    cfg = config(tmp_path, server.url, n, 200.0, redis="max_entries = 8")
    run(detingestd, cfg, tmp_path)
    want = file_frames(tmp_path / "data" / "bt" / "det" / "cfg_master.h5")
    store = DataStore(server.url)
    _, key = store.get_last_scan()
    scan = store.load_scan(key)
    numbers = scan.streams["det:frame_number"]
    assert len(numbers) == n
    with pytest.raises(IndexNoMoreThereError):
        numbers[0]
    assert int(numbers[n - 1]) == n, "the newest entries stay"
    with pytest.raises(IndexWontBeThereError):
        numbers[n]
    image = scan.streams["det:image"]
    assert image.info["file_path"].endswith("cfg_master.h5"), "several data files: the VDS"
    for i in range(n):  # Redis holds the newest; every other index is read from the file
        assert np.array_equal(image[i], want[i]), f"image {i}"

    # Without Blissdata: redis-cli reads the stream; the payloads are little-endian u64.
    out = subprocess.run(["redis-cli", "-p", str(server.port), "--no-raw", "XRANGE",
                          numbers.key, "-", "+"], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    quoted = (re.search(r'("(?:[^"\\]|\\.)*")\s*$', line) for line in out)
    fields = [ast.literal_eval("b" + m.group(1)) for m in quoted if m]
    values = []
    for name, value in zip(fields, fields[1:]):
        if name == b"payload":
            values.extend(np.frombuffer(value, "<u8").tolist())
    assert values and values[-1] == n and values == list(range(n - len(values) + 1, n + 1))


def test_redis_killed_mid_run_or_down_at_a_start_costs_entries_not_frames(
        detingestd, tmp_path, redis_server):
    from test_runs import Serve
    from blissdata.redis_engine.store import DataStore
    server = redis_server()
    serve = Serve(detingestd, tmp_path,
                  live=f'publish = ""\nquery = ""\n[sink.redis]\nurl = "{server.url}"\n'
                       "timeout_ms = 200\nmax_backoff_ms = 300",
                  source='[source.synthetic]\nshape = [32, 48]\nrate_hz = 50.0\n')
    try:
        assert serve.start(stream="one", frames=150)[0] == 201
        time.sleep(1.0)
        server.kill()
        time.sleep(1.0)
        server.start()
        status = serve.wait_run()
        run1 = status["streams"][0] if "streams" in status else status
        counters = serve.answer("GET", "/run")[1]["sinks"]["redis"]
        assert counters["indices_dropped"] > 0 and counters["errors"] >= 1, counters
        assert counters["reconnects"] >= 1, counters
        with h5py.File(serve.master("one"), "r") as f:
            assert f["/entry/data/data"].shape[0] == 150, "the files have every frame"
        assert server.client().get("_PROTOCOL_VERSION_") == b"1", "prepared again"

        # A run started while the server is down writes its files; its scan is not published.
        server.kill()
        assert serve.start(stream="down", frames=50)[0] == 201
        serve.wait_run()
        with h5py.File(serve.master("down"), "r") as f:
            assert f["/entry/data/data"].shape[0] == 50
        counters = serve.answer("GET", "/run")[1]["sinks"]["redis"]
        assert counters["scans_unpublished"] == 1 and not counters["connected"], counters
        server.start()

        assert serve.start(stream="two", frames=150)[0] == 201
        serve.wait_run()
        store = DataStore(server.url)
        _, key = store.get_last_scan()
        scan = store.load_scan(key)
        assert scan.name == "two" and scan.state == 4
        assert scan.info["publishing"]["complete"], scan.info["publishing"]
        assert len(scan.streams["det:frame_number"][:]) == 150
        assert run1 is not None
    finally:
        serve.stop()


def test_a_wrong_password_names_the_key_or_runs_without_redis(
        detingestd, tmp_path, redis_server):
    server = redis_server("--requirepass", "right")
    url = f"redis://:wrong@127.0.0.1:{server.port}"
    cfg = config(tmp_path, url, 10, 100.0, name="fail")
    p, _ = run(detingestd, cfg, tmp_path, check=False)
    assert p.returncode != 0
    assert "sink.redis.url" in p.stderr and "wrong" not in p.stderr, p.stderr
    assert not (tmp_path / "data" / "bt" / "det" / "fail_master.h5").exists()

    cfg = config(tmp_path, url, 10, 100.0, name="cont", redis='on_start_error = "continue"')
    p, summary = run(detingestd, cfg, tmp_path)
    redis = __import__("json").loads(summary.read_text())["sinks"]["redis"]
    assert redis["scans_unpublished"] == 1 and redis["indices_dropped"] == 10, redis
    assert file_frames(tmp_path / "data" / "bt" / "det" / "cont_master.h5").shape[0] == 10


def test_late_joiners_query_a_run_from_before_a_restart(detingestd, daemons, tmp_path,
                                                         redis_server):
    import json
    import zmq
    from conftest import stop_run
    server = redis_server("--stream-node-max-entries", "4")
    live = 'publish = ""\nquery = "tcp://127.0.0.1:*"'

    def cfg(name, frames, rate, redis=""):
        path = config(tmp_path, server.url, frames, rate, name=name, redis=redis)
        path.write_text(path.read_text().replace('publish = ""\nquery = ""', live, 1))
        return path

    run(detingestd, cfg("before", 30, 300.0, "max_entries = 10"), tmp_path)
    # A new daemon (the first one is gone with its history) on another stream.
    summary = tmp_path / "after.summary.json"
    daemon = daemons("after", config=cfg("after", 400, 20.0), command="run",
                     args=["--summary-json", summary])
    try:
        req = zmq.Context.instance().socket(zmq.REQ)
        req.setsockopt(zmq.RCVTIMEO, 10000)
        req.connect(daemon.endpoint("zmq", "query_endpoint"))
        deadline = time.time() + 20
        while True:
            req.send(b"range bt/det/before 1 35")
            reply = json.loads(req.recv())
            if reply.get("ok") or time.time() > deadline:
                break
            time.sleep(0.2)
        assert reply["ok"], reply
        assert reply["from_redis"].startswith("esrf:scan:")
        items = reply["items"]
        ok = [i for i in items if i["status"] == "ok"]
        assert ok and [i["frame_number"] for i in ok] == [i["index"] for i in ok]
        assert ok[-1]["index"] == 30 and not any(i["lost"] for i in ok)
        assert items[0]["status"] == "expired" and items[0]["from"] == 1, "trimmed: read the file"
        assert items[0]["file"].endswith("before_master.h5")
        assert items[-1] == {"status": "never", "from": 31, "to": 35}
        req.send(b"range bt/det/nothing 1 2")
        assert json.loads(req.recv())["ok"] is False
    finally:
        stop_run(daemon, summary, settle=0)


def test_a_server_out_of_memory_is_one_logged_episode_and_the_scan_says_incomplete(
        daemons, tmp_path, redis_server):
    import json
    from blissdata.redis_engine.store import DataStore
    server = redis_server()
    n = 150
    cfg = config(tmp_path, server.url, n, 50.0, redis="timeout_ms = 200\nmax_backoff_ms = 200")
    summary = tmp_path / "summary.json"
    daemon = daemons("oom", config=cfg, command="run", args=["--summary-json", summary])
    time.sleep(1.0)
    server.client().config_set("maxmemory", 1)  # every write refused: OOM
    time.sleep(1.0)
    server.client().config_set("maxmemory", 0)
    assert daemon.proc.wait(timeout=60) == 0, daemon.log_text()
    text = daemon.log_text()
    assert text.count("server unusable") == 1, text
    assert "OOM" in text and "publishing again" in text, text
    redis = json.loads(summary.read_text())["sinks"]["redis"]
    assert redis["indices_dropped"] > 0 and redis["scans_incomplete"] == 1, redis
    assert file_frames(tmp_path / "data" / "bt" / "det" / "cfg_master.h5").shape[0] == n
    store = DataStore(server.url)
    _, key = store.get_last_scan()
    scan = store.load_scan(key)
    assert scan.state == 4
    publishing = scan.info["publishing"]
    assert not publishing["complete"]
    assert publishing["indices_not_published"] == redis["indices_dropped"], publishing
    assert len(scan.streams["det:frame_number"]) == n, "sealed at the stream's length"
