"""A cluster's daemons under the faults a facility brings (docs/SCALING.md): a daemon that is
frozen (SIGSTOP: a hung process, a debugger, a paused VM) is not dead. Its files are never
touched by another process; the whole detector goes on without its modules while it is
silent, merges it on when it answers again, and calls it unknown if it never does."""

import signal
import time

import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle filter for h5py)
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from test_cluster import (PARTS, cluster, generated, refused, start, tile,  # noqa: F401
                          wait_recorded)

ALL = 0b111111
D3 = sum(1 << (r * 3 + c) for r, c in PARTS[2])


def part_state(d1, name):
    parts = d1.get("/run")["detector"]["parts"]
    return next(p["state"] for p in parts if p["daemon"] == name)


def metric_state(d1, name):
    families = {f.name: f for f in text_string_to_metric_families(d1.get("/metrics"))}
    samples = families["detingest_detector_part_state"].samples
    return next(s.labels["state"] for s in samples
                if s.labels["daemon"] == name and s.value == 1)


def wait_state(d1, name, state, timeout):
    deadline = time.time() + timeout
    while part_state(d1, name) != state:
        assert time.time() < deadline, (state, d1.get("/run")["detector"])
        time.sleep(0.1)


def own_files_read_back(folder, stream, name, want):
    """Every file of `name`'s part opens without SWMR, and every index its own master says
    it wrote holds the generator's pixels for its modules; the indices it wrote."""
    part = f"{stream}_{name}"
    with h5py.File(folder / f"{part}_master.h5", "r") as f:
        assert f["/entry/detingest/finished"][()] == 1
        mask = f["/entry/instrument/detector/detectorSpecific/module_mask"][()]
        data = f["/entry/data/data"][()]  # the part's VDS over its data files
    mods = [r * 3 + c for r, c in PARTS[["d1", "d2", "d3"].index(name)]]
    for i in np.nonzero(mask)[0]:
        for m in mods:  # a module its assembler gave up on (e.g. frozen mid-frame) is not written
            if mask[i] & (1 << m):
                assert np.array_equal(tile(data[i], m), tile(want[i], m)), (name, i, m)
    for p in sorted(folder.glob(f"{part}_data_*.h5")):
        with h5py.File(p, "r") as f:  # no SWMR: its writer closed it, nobody else touched it
            f["/entry/data/data"][()]
    return mask


def test_a_frozen_daemon_is_unreachable_not_dead_and_merged_on_when_it_resumes(
        cluster, detingestd, tmp_path):
    d1, d2, d3 = cluster(frames=1500, rate=100.0)  # 15 s: the others run on past the freeze
    start(d1, "freeze", 1500)
    folder = tmp_path / "shared" / "bt" / "jf"
    wait_recorded(folder / "freeze_d3_master.h5", 100)
    d3.proc.send_signal(signal.SIGSTOP)
    stopped = time.time()
    try:
        wait_state(d1, "d3", "unreachable", timeout=6)
        noticed = time.time() - stopped
        assert metric_state(d1, "d3") == "unreachable"
        # The whole detector goes on without d3's modules meanwhile.
        merged = d1.get("/run")["detector"]["merged"]
        time.sleep(max(0.0, stopped + 8 - time.time()))
        assert d1.get("/run")["detector"]["merged"] > merged
    finally:
        d3.proc.send_signal(signal.SIGCONT)
    wait_state(d1, "d3", "running", timeout=10)
    end = d1.wait_run("bt/jf/freeze_d1", timeout=120)
    assert end["state"] == "finished", end
    assert [e["state"] for e in end["detector"]["ends"]] == ["finished"] * 3
    for d, name in [(d2, "d2"), (d3, "d3")]:
        s = d.wait_run(f"bt/jf/freeze_{name}", timeout=60)
        assert s["state"] == "finished" and s["error"] is None, s
    want = generated(detingestd, tmp_path, 1500)
    masks = {n: own_files_read_back(folder, "freeze", n, want) for n in ("d1", "d2", "d3")}
    with h5py.File(folder / "freeze_master.h5", "r") as f:
        spec = f["/entry/instrument/detector/detectorSpecific"]
        mask = spec["module_mask"][()]
        n = len(mask)
        # Every index holds exactly the modules their daemons wrote: those merged while d3
        # was silent got its modules added when it answered again.
        assert (mask == masks["d1"][:n] | masks["d2"][:n] | masks["d3"][:n]).all()
        assert n == 1500 and (mask & D3 == D3).sum() >= 1490, "d3's frames are in it"
        assert f["/entry/detingest/daemons/d3/state"][()].decode() == "finished"
        data = f["/entry/data/data"]
        for i in range(0, n, 7):
            for m in range(6):
                if mask[i] >> m & 1:
                    assert np.array_equal(tile(data[i], m), tile(want[i], m)), (i, m)
    print(f"unreachable noticed after {noticed:.1f} s (dead_after 1.5 s)")


def test_a_daemon_frozen_past_the_runs_end_is_unknown_and_its_files_left_alone(
        cluster, detingestd, tmp_path):
    d1, d2, d3 = cluster(frames=400, rate=100.0)
    start(d1, "stuck", 400)
    folder = tmp_path / "shared" / "bt" / "jf"
    wait_recorded(folder / "stuck_d3_master.h5", 60)
    d3.proc.send_signal(signal.SIGSTOP)
    try:
        end = d1.wait_run("bt/jf/stuck_d1", timeout=60)  # d1, d2 end; d3 never answers
        assert end["state"] == "finished", end
        states = {e["daemon"]: e["state"] for e in end["detector"]["ends"]}
        assert states == {"d1": "finished", "d2": "finished", "d3": "unknown"}, end
        assert metric_state(d1, "d3") == "unknown"
        recorded = next(e["recorded"] for e in end["detector"]["ends"] if e["daemon"] == "d3")
        with h5py.File(folder / "stuck_master.h5", "r") as f:
            g = f["/entry/detingest/daemons/d3"]
            assert g["state"][()].decode() == "unknown"
            assert g["missing_from"][()] == recorded + 1
            mask = f["/entry/instrument/detector/detectorSpecific/module_mask"][()]
            assert (mask[:recorded] == ALL).all() and (mask[recorded:] == ALL & ~D3).all()
        # Its files were left as its (frozen) writer holds them: still marked open.
        try:
            h5py.File(folder / "stuck_d3_master.h5", "r").close()
            assert False, "the write marks of a live writer's file were cleared"
        except OSError:
            pass
    finally:
        d3.proc.send_signal(signal.SIGCONT)
    s = d3.wait_run("bt/jf/stuck_d3", timeout=60)
    assert s["state"] == "finished" and s["frames_recorded"] == 400, s
    want = generated(detingestd, tmp_path, 400)
    for n in ("d1", "d2", "d3"):
        own_files_read_back(folder, "stuck", n, want)
    log = d1.log.read_text()
    assert "daemon unreachable" in log and "its process lives" in log
    assert "its part is unknown" in log


def test_refusals_name_the_daemons_and_modules_involved(cluster):
    run = {"beamtime": "bt", "source": "jf", "stream": "s", "frames": 20}
    d1, d2, d3 = cluster(frames=20, parts=[PARTS[0], [[0, 1], [1, 0]], PARTS[2]])
    code, message = refused(d1, "/run/start", run)
    assert code == 409, message
    assert 'module 1 (row 0, column 1) is claimed by "d1" (this daemon) and "d2"' in message
    assert "127.0.0.2" in message, message
    # A peer that does not answer: 409 (the cluster is not ready), naming it; nothing starts.
    d3.close()
    code, message = refused(d2, "/run/start", run)
    assert code == 409 and "127.0.0.3" in message and "cannot reach it" in message, message
    assert d1.get("/run")["state"] == "idle" and d2.get("/run")["state"] == "idle"
