"""Reading a run while it is written: the files are SWMR, and every `frame` message says up to
which index they are readable (`readable_up_to`). A reader process polls the data files with
`swmr=True` during the run and never finds a frame at or below the watermark missing or torn;
Tiled, fed through bluesky's TiledWriter, serves the rows announced so far while the run goes
on."""

import json
import subprocess
import sys
import time

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import zmq

from conftest import data_file, write_config
from test_tiled import DocumentFeed

FRAMES, K, SHAPE = 90, 20, (32, 48)

READER = r"""
import sys, time, json, h5py, hdf5plugin, numpy as np
master, k, frames = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
want = np.fromfile(sys.argv[4], dtype="<u2").reshape(frames, -1)
checked, files, deadline = 0, {}, time.time() + 60
for line in sys.stdin:                      # one watermark per line, from the test
    w = int(line)
    while checked < w:
        i = checked + 1                     # 1-based index
        n = (i - 1) // k + 1
        if n not in files:
            files[n] = h5py.File(master.replace("_master.h5", f"_data_{n:06d}.h5"), "r", swmr=True)
        d = files[n]["/entry/data/data"]
        d.refresh()
        row = i - 1 - (n - 1) * k
        assert d.shape[0] > row, f"index {i} at or below the watermark {w} is missing"
        got = d[row].reshape(-1)
        assert np.array_equal(got, want[i - 1]), f"index {i} is torn"
        checked = i
    print(checked, flush=True)
"""



def config(tmp_path, endpoint, flush, rate_hz=40.0):
    cfg = write_config(
        tmp_path / "swmr.toml", tmp_path / "data",
        synthetic=f"frames = {FRAMES}\nshape = [{SHAPE[0]}, {SHAPE[1]}]\nbank_frames = {FRAMES}\n"
                  f"rate_hz = {rate_hz}",
        writer=flush,
        live=f'publish = "{endpoint}"\nquery = ""\nbluesky = true\nwait_for_subscribers = 1')
    cfg.write_text(cfg.read_text() + f"[run]\nframes_per_file = {K}\n")
    return cfg


def test_an_swmr_reader_never_sees_a_frame_below_the_watermark_missing(
        daemons, tmp_path, expected_frames):
    endpoint = f"ipc://{tmp_path}/pub"  # the viewer connects first
    cfg = config(tmp_path, endpoint, "flush_every_frames = 3\nflush_interval_ms = 100")
    want = expected_frames(cfg, "u2", SHAPE)
    raw = tmp_path / "want.raw"
    want.astype("<u2").tofile(raw)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.RCVTIMEO, 30000)
    for topic in (b"frame", b"readable", b"run"):
        sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.connect(endpoint)
    daemon = daemons("run", config=cfg, command="run", log="warn", ready=False).proc
    master = str(tmp_path / "data" / "bt" / "det" / "s1_master.h5")
    reader = None
    marks, during = [], 0
    try:
        while True:
            parts = sub.recv_multipart()
            msg = json.loads(parts[1])
            if parts[0] == b"run" and msg.get("event") == "end":
                break
            w = msg.get("readable_up_to", 0)
            if parts[0] == b"run" or w == 0 or (marks and w == marks[-1]):
                continue
            assert not marks or w > marks[-1], "the watermark never goes back"
            marks.append(w)
            if reader is None:
                reader = subprocess.Popen(
                    [sys.executable, "-c", READER, master, str(K), str(FRAMES), str(raw)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            reader.stdin.write(f"{w}\n")
            reader.stdin.flush()
            assert int(reader.stdout.readline()) == w, "the reader checked up to the watermark"
            during += daemon.poll() is None
    finally:
        assert daemon.wait(timeout=60) == 0
        if reader:
            reader.stdin.close()
            assert reader.wait(timeout=30) == 0
    assert marks[-1] == FRAMES
    assert during >= 5, f"most checks ran while the daemon was writing ({during} of {len(marks)})"
    with h5py.File(data_file(master, 1), "r") as f:
        assert f["/entry/data/data"].attrs["image_nr_high"] == K


def test_tiled_serves_the_rows_announced_while_the_run_goes_on(
        daemons, tmp_path, expected_frames, tiled_server):
    endpoint = f"ipc://{tmp_path}/pub"  # the viewer connects first
    # 6 s of run: each read through Tiled takes a while on a busy machine.
    cfg = config(tmp_path, endpoint, "flush_every_frames = 1", rate_hz=15.0)
    want = expected_frames(cfg, "u2", SHAPE)
    feed = DocumentFeed(endpoint, tiled_server)
    feed.start()
    daemon = daemons("run", config=cfg, command="run", log="warn", ready=False).proc
    seen = []
    try:
        while daemon.poll() is None:
            if feed.run_uid and feed.datums:
                try:
                    image = tiled_server[feed.run_uid]["primary"]["image"]
                except KeyError:
                    time.sleep(0.05)
                    continue
                rows = image.shape[0]
                if rows and (not seen or rows > seen[-1]):
                    # By slice, as viewers read: the file may already hold rows beyond the
                    # ones announced, which a whole-array read trips over (tiled 0.2.20's
                    # HDF5 adapter takes the file's shape) until the run ends.
                    got = image[:rows]
                    assert np.array_equal(got, want[:rows]), f"rows 1..{rows} during the run"
                    seen.append(rows)
            time.sleep(0.1)
    finally:
        assert daemon.wait(timeout=60) == 0
    feed.join(timeout=60)
    assert feed.error is None, repr(feed.error)
    assert len(seen) >= 2 and seen[0] < FRAMES, f"read during the run: {seen}"
    image = tiled_server[feed.run_uid]["primary"]["image"]
    assert np.array_equal(image.read(), want)
