"""The Redis sink as a guest in BLISS's database (docs/REDIS.md): the daemon never initialises
Blissdata's database, it waits for BLISS to (here blissdata's own `memory_tracker --init-db`,
which then runs on beside the daemon, trimming), and after a Redis restart it waits again.
BLISS's scan search then finds every scan the daemon published, and no stream key is left
without its scan."""

import subprocess
import sys
import time
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (the images are read from the files)
import pytest

from test_runs import Serve

URL_ARGS = ("--maxmemory", "256mb")  # the memory tracker needs a memory limit to work to


def tracker(server, tmp_path, init, *extra):
    """blissdata's memory tracker on `server` (`--init-db`: set the database up first)."""
    exe = Path(sys.executable).parent / "memory_tracker"
    args = [str(exe), "--redis-url", server.url, "--monitoring-period", "1", *extra]
    log = open(tmp_path / f"tracker-{time.monotonic_ns()}.log", "w")
    p = subprocess.Popen(args + (["--init-db"] if init else []), stdout=log,
                         stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while server.client().get("_PROTOCOL_VERSION_") is None:
        assert p.poll() is None and time.time() < deadline, (tmp_path / log.name).read_text()
        time.sleep(0.1)
    return p


def orphans(server):
    """Stream keys that no scan document names."""
    c = server.client()
    docs = "".join(c.execute_command("JSON.GET", k).decode() for k in c.scan_iter("esrf:scan:*")
                   if c.type(k) == b"ReJSON-RL")
    streams = {k.decode() for k in c.scan_iter("esrf:stream:*")}
    return {k for k in streams if k.split(":")[-1] not in docs}


@pytest.fixture
def guest(detingestd, tmp_path, redis_server):
    server = redis_server(*URL_ARGS, init=False)  # BLISS has not set it up yet
    serve = Serve(detingestd, tmp_path,
                  live=f'publish = ""\nquery = ""\n[sink.redis]\nurl = "{server.url}"\n'
                       "timeout_ms = 200\nmax_backoff_ms = 300",
                  source='[source.synthetic]\nshape = [32, 48]\nrate_hz = 100.0\n')
    trackers = []
    try:
        yield server, serve, trackers
    finally:
        serve.stop()
        for t in trackers:
            t.terminate()
            t.wait(10)


def test_the_daemon_waits_for_bliss_to_set_up_the_database_then_search_finds_its_scans(
        guest, tmp_path):
    from blissdata.redis_engine.store import DataStore
    server, serve, trackers = guest
    # Started first (on_start_error = "fail" by default): it waits instead of refusing, and
    # writes nothing into the database BLISS has yet to set up.
    assert serve.start(stream="early", frames=30)[0] == 201
    status = serve.wait_run()
    with h5py.File(status["master"], "r") as f:
        assert f["/entry/data/data"].shape[0] == 30, "files written as always"
    assert server.client().dbsize() == 0, server.client().keys()
    counters = serve.answer("GET", "/run")[1]["sinks"]["redis"]
    assert counters["scans_unpublished"] == 1 and counters["scans"] == 0, counters
    log = serve.log.read_text()
    assert log.count("not initialised for Blissdata") == 1, log
    # BLISS sets it up (refused if the database held a single key) and tracks its memory.
    trackers.append(tracker(server, tmp_path, init=True))
    for name in ("scan_a", "scan_b"):
        assert serve.start(stream=name, frames=30)[0] == 201
        serve.wait_run()
    store = DataStore(server.url)
    _, keys = store.search_existing_scans()
    names = sorted(store.load_scan(k).name for k in keys)
    assert names == ["scan_a", "scan_b"], names
    _, found = store.search_existing_scans(name="scan_b")
    assert len(found) == 1 and store.load_scan(found[0]).state == 4
    assert store.load_scan(store.get_last_scan()[1]).name == "scan_b"
    assert "publishing again" in serve.log.read_text()
    assert not orphans(server)
    # blissdata.h5api maps the scan from its info.h5maps, as it does BLISS's own files.
    from blissdata.h5api.redis_hdf5 import File
    scan = store.load_scan(found[0])
    with File(scan.path, data_store=store) as f:
        entry = f[f"/{scan.number}.1"]
        assert entry.attrs["NX_class"] == "NXentry"
        m = f[f"/{scan.number}.1/measurement"]
        assert sorted(m.keys()) == ["frame_number", "image", "lost", "packets_lost", "timestamp"]
        assert list(m["frame_number"][()]) == list(range(1, 31))
        with h5py.File(serve.master("scan_b"), "r") as h:
            assert (m["image"][0] == h["/entry/data/data"][0]).all()


def test_after_a_redis_restart_mid_run_the_daemon_waits_again_and_leaves_no_orphan_keys(
        guest, tmp_path):
    from blissdata.redis_engine.store import DataStore
    server, serve, trackers = guest
    trackers.append(tracker(server, tmp_path, init=True))
    assert serve.start(stream="cut", frames=600)[0] == 201  # 6 s: BLISS is back before its end
    time.sleep(1.0)
    server.kill()  # a restart without persistence: every key is gone
    for t in trackers:
        t.terminate()
        t.wait(10)
    trackers.clear()
    time.sleep(0.5)
    server.start(init=False)
    time.sleep(1.0)  # the daemon reconnects to an empty database: it waits, writes nothing
    assert server.client().dbsize() == 0, sorted(server.client().keys())[:10]
    trackers.append(tracker(server, tmp_path, init=True))  # BLISS sets it up again
    status = serve.wait_run(timeout=60)
    with h5py.File(status["master"], "r") as f:
        assert f["/entry/data/data"].shape[0] == 600
    assert not orphans(server), orphans(server)
    counters = serve.answer("GET", "/run")[1]["sinks"]["redis"]
    assert counters["scans_lost"] == 1 and counters["indices_dropped"] > 0, counters
    assert counters["connected"], counters
    assert serve.start(stream="after", frames=30)[0] == 201
    serve.wait_run()
    store = DataStore(server.url)
    _, keys = store.search_existing_scans()
    assert [store.load_scan(k).name for k in keys] == ["after"]
    assert not orphans(server), orphans(server)


def test_the_memory_tracker_trims_and_expires_the_daemons_scans(guest, tmp_path):
    """BLISS's memory tracker cleans our scans as it cleans its own: it trims the streams of a
    running scan (1 % of 16 MB: always cleaning, history older than 1 s) and deletes a closed
    scan after --closed-scan-deletion, every key of it, while the daemon writes on."""
    server, serve, trackers = guest
    server.client().config_set("maxmemory", "16mb")
    trackers.append(tracker(server, tmp_path, True, "--cleaning-threshold", "1",
                            "--protected-history", "1", "--closed-scan-deletion", "3"))
    assert serve.start(stream="tracked", frames=400)[0] == 201  # 4 s at 100 Hz
    c = server.client()
    deadline = time.time() + 20
    key = None
    while key is None and time.time() < deadline:
        key = next((k for k in c.scan_iter("esrf:scan:*") if c.type(k) == b"ReJSON-RL"), None)
        time.sleep(0.05)
    assert key is not None
    status = serve.wait_run(timeout=60)
    with h5py.File(status["master"], "r") as f:
        assert f["/entry/data/data"].shape[0] == 400
    counters = serve.answer("GET", "/run")[1]["sinks"]["redis"]
    assert counters["scans"] == 1 and counters["indices_dropped"] == 0, counters
    deadline = time.time() + 20
    while (c.exists(key) or list(c.scan_iter("esrf:stream:*"))) and time.time() < deadline:
        time.sleep(0.2)
    assert not c.exists(key), "the closed scan expired"
    assert not list(c.scan_iter("esrf:stream:*")), "with every stream of it"
    log = next(tmp_path.glob("tracker-*.log")).read_text()
    assert "Trimmed off the oldest" in log, log[-2000:]
    assert "is terminated, expiration set" in log, log[-2000:]
