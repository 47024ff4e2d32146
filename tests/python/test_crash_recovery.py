"""Runs a crash leaves behind, finished from their files: `detingestd serve` killed with
SIGKILL at random moments of open-ended runs (one data file, and a rollover every 33 ms so
kills land on rollovers; some before the first flush), then a serve that starts finishes them
all: every master and data file opens with a plain h5py.File, `/entry/data/data` holds every
index the last flush before the kill recorded, with the generator's pixels, and the master
says why it ended. `detingestd finish` does the same by hand and refuses a live run's files.
A disk that fills during an open-ended run leaves a finished master with its VDS.
"""

import os
import random
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest

from test_runs import GRID, SPECIFIC, Serve, config, mount_small_fs

MODULE = (32, 48)           # test_runs' module shape (its config's grid is 2 x 2)
SOURCE = ("[source.synthetic]\nshape = [32, 48]\nframes = {frames}\nbank_frames = 8\n"
          "seed = 3\nrate_hz = 300.0\n")
KILLS = 20


def images(detingestd, tmp_path, frames):
    """The generator's images of frame numbers 1..frames."""
    cfg = tmp_path / "dump.toml"
    cfg.write_text(config(tmp_path / "unused", source=SOURCE.format(frames=frames)))
    raw = tmp_path / "dump.raw"
    subprocess.run([detingestd, "synth-dump", "--config", str(cfg), "--out", str(raw)],
                   check=True)
    m = np.fromfile(raw, dtype="<u2").reshape(frames, GRID[0], GRID[1], *MODULE)
    return m.transpose(0, 1, 3, 2, 4).reshape(frames, GRID[0] * MODULE[0], GRID[1] * MODULE[1])


def flushed(master):
    """Indices the master's last flush recorded, read as an SWMR reader would (0 if none)."""
    try:
        with h5py.File(master, "r", swmr=True) as h:
            return int(h[SPECIFIC + "/nimages"][()])
    except (OSError, KeyError):
        return 0


def serve(detingestd, tmp_path):
    return Serve(detingestd, tmp_path, source=SOURCE.format(frames=0),
                 writer="flush_interval_ms = 50")


def check_finished(master, want, at_least):
    with h5py.File(master, "r") as h:   # plainly: no SWMR, no h5clear
        ours = h["/entry/detingest"]
        assert ours["finished"][()] == 1
        assert ours["end_reason"][()] == b"crashed"
        n = int(h[SPECIFIC + "/nimages"][()])
        assert n >= at_least, (master, n, at_least)
        frame_numbers = h[SPECIFIC + "/frame_number"][:]
        assert list(frame_numbers) == list(range(1, n + 1))
        # NXmx's times survive the crash: the start's, and the end at the last frame taken.
        start, end = (h[f"/entry/{k}"].asstr()[()] for k in ("start_time", "end_time"))
        assert start <= end, (start, end)
        stamps = h[SPECIFIC + "/timestamp"][:]
        if n and stamps.any():
            us = int(stamps[stamps != 0][-1]) // 1000  # humantime truncates to the microsecond
            last = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=us)
            assert end == last.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), (end, last)
        if n:
            data = h["/entry/data/data"][:]
            assert data.shape == (n, *want.shape[1:])
            assert (data == want[:n]).all(), master
    for f in master.parent.glob(master.name.replace("_master.h5", "_data_*.h5")):
        with h5py.File(f, "r") as d:   # what it holds of the recorded indices (none: low - 1)
            a = d["/entry/data/data"].attrs
            assert a["image_nr_high"] == max(min(n, a["image_nr_high"]), a["image_nr_low"] - 1)
    return n


def test_runs_killed_at_random_moments_are_finished_by_the_next_serve(detingestd, tmp_path):
    rng = random.Random(int(os.environ.get("CRASH_SEED", "7")))
    want = images(detingestd, tmp_path, 600)
    before = {}
    for k in range(KILLS):
        s = serve(detingestd, tmp_path)
        stream = f"crash_{k:02d}"
        code, st = s.start(stream=stream, frames=0, frames_per_file=10 if k % 2 else 1000)
        assert code == 201, st
        # Kills before the first flush (50 ms), across rollovers, and later.
        time.sleep(rng.choice([0.01, 0.03]) if k % 5 == 0 else rng.uniform(0.05, 0.8))
        before[stream] = flushed(s.master(stream))
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait()
        with pytest.raises(OSError):
            h5py.File(s.master(stream), "r").close()   # as a crash leaves it
    time.sleep(3.2)   # the last one is quiet now: no writer can be alive
    s = serve(detingestd, tmp_path)
    deadline = time.time() + 60
    while "crashed runs looked for" not in s.log.read_text():
        assert time.time() < deadline, s.log.read_text()[-3000:]
        time.sleep(0.1)
    s.stop()
    total = 0
    for stream, at_least in before.items():
        master = s.master(stream)
        aside = master.with_name(master.name + ".unreadable")
        if aside.exists() or not master.exists():
            # Killed before or while making its master: nothing reached the disk.
            assert at_least == 0 and not master.exists()
            assert not list(master.parent.glob(f"{stream}_data_*"))
            continue
        total += check_finished(master, want, at_least)
    assert total > 0
    assert not list(s.data.rglob(".*.reserve")), "the space held for the ends is given back"


def test_finish_by_hand_refuses_a_live_run_and_finishes_a_dead_one(detingestd, tmp_path):
    want = images(detingestd, tmp_path, 300)
    s = serve(detingestd, tmp_path)
    assert s.start(stream="live", frames=0, frames_per_file=20)[0] == 201
    time.sleep(0.5)
    master = s.master("live")
    r = subprocess.run([detingestd, "finish", str(s.data)], capture_output=True, text=True)
    assert r.returncode == 1 and f"process {s.proc.pid} holds" in r.stdout, r.stdout
    n = flushed(master)
    s.proc.send_signal(signal.SIGKILL)
    s.proc.wait()
    time.sleep(3.2)
    r = subprocess.run([detingestd, "finish", str(s.data)], capture_output=True, text=True)
    assert r.returncode == 0 and "1 run(s) finished" in r.stdout, r.stdout
    check_finished(master, want, n)
    r = subprocess.run([detingestd, "finish", str(master)], capture_output=True, text=True)
    assert r.returncode == 0 and "0 run(s) finished" in r.stdout, "nothing left to finish"


def test_an_open_ended_run_that_fills_the_disk_leaves_a_finished_master_with_its_vds(
        detingestd, tmp_path):
    data = tmp_path / "small"
    if not mount_small_fs(data, size="6m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        s = Serve(detingestd, tmp_path, data_dir=data, writer='codec = "none"\n',
                  run="frames_per_file = 4",
                  source=SOURCE.format(frames=0).replace("rate_hz = 300.0", "rate_hz = 0.0"))
        code, st = s.start(stream="full", frames=0)
        assert code == 201, st
        st = s.wait_run()
        assert (st["state"], st["end_reason"]) == ("failed", "error"), st
        assert "No space left on device" in st["error"]
        n = st["frames_recorded"]
        with h5py.File(s.master("full"), "r") as h:
            assert h["/entry/detingest/finished"][()] == 1
            assert "No space left" in h["/entry/detingest/error"][()].decode()
            assert h["/entry/data/data"].shape[0] == h[SPECIFIC + "/nimages"][()] > 0
            assert h["/entry/data/data"][0].any()
        assert n > 0
        s.stop()
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)
