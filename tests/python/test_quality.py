"""Live view of a multi-module detector and live data quality (docs/QUALITY.md): a 2 x 2 grid
written with module chunking, with module gaps in its geometry. The page's preview
(`/preview`, with the gaps) and the ZeroMQ previews (as the file holds the image) equal the
frame h5py reads; the per-frame statistics equal numpy's on every index; the spot finder finds
the peaks the synthetic detector placed; the radial profile agrees with pyFAI's integrate1d."""

import json
import math
import os
import subprocess
import time

import h5py
import hdf5plugin  # noqa: F401  (the bitshuffle filter for h5py)
import numpy as np
import pytest
import zmq

from harness import connect_ready
from test_operations import node_and_browser, ROOT

GRID, MODULE, GAP = (2, 2), (96, 128), (4, 6)
N = 60
CENTRE = (140.3, 101.7)  # beam centre x, y in pixels of the image with gaps
PIXEL = 75e-6
# Frame 7 lacks module 1; frame 9 never arrives: its index is lost.
WITHHELD = [(7, 1), (9, 0), (9, 1), (9, 2), (9, 3)]


def body(frames=N, rate=40.0, quality="analysis_hz = 200\nthreshold = 2"):
    withhold = ", ".join(f"[{n}, {m}]" for n, m in WITHHELD)
    return (
        f"[detector]\nbeam_center_x = {CENTRE[0]}\nbeam_center_y = {CENTRE[1]}\n"
        f"module_gap = [{GAP[0]}, {GAP[1]}]\nsaturation_value = 3000\n"
        f"[quality]\n{quality}\n"
        f'[run]\nchunking = "module"\nframes = {frames}\n'
        '[[source]]\nname = "det"\nstream = { beamtime = "bt", source = "det", stream = "q" }\n'
        f"grid = [{GRID[0]}, {GRID[1]}]\n[source.synthetic]\nshape = [{MODULE[0]}, {MODULE[1]}]\n"
        f"frames = {frames}\nrate_hz = {rate}\npeaks = 12\nbank_frames = 9\nseed = 11\n"
        f"withhold = [{withhold}]\n")


def with_gaps(frame):
    """The frame as the detector lays it out: GAP rows and columns of 0 between modules."""
    (my, mx), (gy, gx) = MODULE, GAP
    out = np.zeros((GRID[0] * my + (GRID[0] - 1) * gy, GRID[1] * mx + (GRID[1] - 1) * gx),
                   frame.dtype)
    for r in range(GRID[0]):
        for c in range(GRID[1]):
            out[r * (my + gy):r * (my + gy) + my, c * (mx + gx):c * (mx + gx) + mx] = \
                frame[r * my:(r + 1) * my, c * mx:(c + 1) * mx]
    return out


def bin_max(image, f):
    """docs/QUALITY.md's binning: each output pixel the largest of its f x f block."""
    ny, nx = image.shape[0] // f, image.shape[1] // f
    return image[:ny * f, :nx * f].reshape(ny, f, nx, f).max(axis=(1, 3))


@pytest.fixture
def run(daemons):
    """A finished 2 x 2 run and what a ZeroMQ subscriber and the page got during it."""
    d = daemons("q", body(), publish="tcp://127.0.0.1:*")
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    for t in (b"preview", b"quality", b"frame"):
        sub.setsockopt(zmq.SUBSCRIBE, t)
    connect_ready(sub, d.endpoint("zmq"))
    got = {"preview": [], "quality": [], "frame": []}
    pages = []
    try:
        d.call("POST", "/run/start", {"beamtime": "bt", "source": "det", "stream": "q"})
        deadline = time.time() + 60
        while True:
            while sub.poll(20):
                parts = sub.recv_multipart()
                got[parts[0].decode()].append(parts[1:])
            r = d.request("GET", "/preview", timeout=10)
            if r.status == 200:
                pages.append((dict(r.headers), r.body))
            if d.get("/run")["state"] != "running":
                break
            assert time.time() < deadline
        time.sleep(0.5)
        while sub.poll(200):
            parts = sub.recv_multipart()
            got[parts[0].decode()].append(parts[1:])
        status = d.get("/run")
        yield d, d.master("q", source="det"), got, pages, status
    finally:
        sub.close(0)
        ctx.term()
        d.close()


def test_previews_of_a_module_chunked_grid_equal_the_file(run):
    d, master, got, pages, status = run
    with h5py.File(master, "r") as f:
        images = f["/entry/data/data"][()]
        assert f["/entry/detingest/chunking"][()].decode() == "module"
    assert images.shape == (N, GRID[0] * MODULE[0], GRID[1] * MODULE[1])
    # The page's preview: the detector image with its gaps, binned to fit (x1 here).
    assert pages, "the page got previews"
    for headers, raw in pages[-5:]:
        shape = tuple(int(v) for v in headers["X-Shape"].split(","))
        f, index = int(headers["X-Binning"]), int(headers["X-Index"])
        want = bin_max(with_gaps(images[index - 1]), f)
        got_image = np.frombuffer(raw, "<u2").reshape(shape)
        np.testing.assert_array_equal(got_image, want, f"page preview of index {index}")
    # ZeroMQ previews: the image as the file holds it, decoded (module chunks are assembled).
    assert got["preview"]
    for header, payload in got["preview"]:
        h = json.loads(header)
        assert h["compression"] == "none" and tuple(h["shape"]) == images.shape[1:]
        pixels = np.frombuffer(payload, h["dtype"]).reshape(h["shape"])
        np.testing.assert_array_equal(pixels, images[h["index"] - 1], f"index {h['index']}")


def test_frame_statistics_equal_numpys_on_every_index(run):
    d, master, got, pages, status = run
    with h5py.File(master, "r") as f:
        images = f["/entry/data/data"][()]
        stats = f["/entry/instrument/detector/frame_statistics"]
        assert stats.attrs["threshold"] == 2 and stats.attrs["saturation_value"] == 3000
        cols = {k: stats[k][()] for k in ("sum", "max", "saturated", "masked", "above_threshold")}
        modules = f["/entry/instrument/detector/detectorSpecific/module_mask"][()]
    (my, mx) = MODULE
    for i in range(N):
        frame = images[i]
        if modules[i] == 0:
            assert math.isnan(cols["sum"][i]) and math.isnan(cols["max"][i]), i
            continue
        # Over the modules written.
        tiles = [frame[(m // GRID[1]) * my:(m // GRID[1] + 1) * my,
                       (m % GRID[1]) * mx:(m % GRID[1] + 1) * mx]
                 for m in range(4) if modules[i] >> m & 1]
        px = np.concatenate([t.ravel() for t in tiles])
        kept = px[px != 65535]
        assert cols["sum"][i] == kept.astype(np.uint64).sum(), i
        assert cols["max"][i] == kept.max(), i
        assert cols["masked"][i] == (px == 65535).sum(), i
        assert cols["saturated"][i] == (kept >= 3000).sum(), i
        assert cols["above_threshold"][i] == (kept > 2).sum(), i
    assert bin(modules[6]).count("1") == 3, "frame 7 lacks module 1"
    # Each frame message carries them too.
    msgs = {m["index"]: m for m in (json.loads(p[0]) for p in got["frame"])}
    for i, m in msgs.items():
        if "stats" in m:
            assert m["stats"]["sum"] == cols["sum"][i - 1]
    assert sum("stats" in m for m in msgs.values()) >= N - 1
    metrics = d.get("/metrics")
    assert "detingest_frame_sum_count" in metrics and "detingest_frame_max_bucket" in metrics


def test_spots_find_the_placed_peaks(run, detingestd, tmp_path):
    d, master, got, pages, status = run
    assert got["quality"], "analyses were published"
    # The peaks the synthetic detector placed, from synth-dump, in detector-image pixels.
    cfg = tmp_path / "dump.toml"
    cfg.write_text(f'data_dir = "{tmp_path}"\n' + body())
    peaks_file = tmp_path / "peaks.jsonl"
    subprocess.run([detingestd, "synth-dump", "--config", str(cfg), "--out",
                    str(tmp_path / "frames.raw"), "--peaks", str(peaks_file)], check=True)
    placed = [json.loads(line) for line in peaks_file.read_text().splitlines()]
    (my, mx), (gy, gx) = MODULE, GAP
    found_total = recalled = strong = false_pos = 0
    for parts in got["quality"]:
        q = json.loads(parts[0])
        n = q["frame_number"]
        assert q["spot_count"] == len(q["spots"]) or len(q["spots"]) == 100
        peaks = []
        for p in placed:
            if p["frame_number"] != n or (n, p["module"]) in WITHHELD:
                continue
            m = p["module"]
            y = p["y"] + (m // GRID[1]) * (my + gy)
            x = p["x"] + (m % GRID[1]) * (mx + gx)
            peaks.append((y, x, p["height"]))
        near = lambda s, p: math.hypot(s["y"] - p[0], s["x"] - p[1]) < 2.5  # noqa: E731
        bright = [p for p in peaks if p[2] >= 50]
        strong += len(bright)
        recalled += sum(any(near(s, p) for s in q["spots"]) for p in bright)
        false_pos += sum(not any(near(s, p) for p in peaks) for s in q["spots"])
        found_total += q["spot_count"]
    print(f"spots: recall {recalled}/{strong} of peaks >= 50 counts, "
          f"{false_pos} false positives in {len(got['quality'])} frames")
    assert strong > 0 and recalled / strong >= 0.9
    assert false_pos <= 0.05 * found_total + 1


def test_radial_profile_agrees_with_pyfai(run):
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator
    from pyFAI.detectors import Detector
    d, master, got, pages, status = run
    with h5py.File(master, "r") as f:
        images = f["/entry/data/data"][()]
        modules = f["/entry/instrument/detector/detectorSpecific/module_mask"][()]
    checked = 0
    for parts in got["quality"][-5:]:
        q = json.loads(parts[0])
        p = q["profile"]
        i = q["index"]
        if modules[i - 1] != 0b1111:
            continue
        frame = with_gaps(images[i - 1]).astype(np.float64)
        mask = with_gaps(np.ones(images.shape[1:], np.uint8)) == 0  # the gaps
        ai = AzimuthalIntegrator(dist=0.1, poni1=CENTRE[1] * PIXEL, poni2=CENTRE[0] * PIXEL,
                                 detector=Detector(PIXEL, PIXEL, max_shape=frame.shape))
        bins = len(p["mean"])
        rmax_mm = p["bin_width"] * bins * PIXEL * 1e3
        res = ai.integrate1d(frame, bins, unit="r_mm", mask=mask, radial_range=(0, rmax_mm),
                             method=("no", "histogram", "cython"), correctSolidAngle=False)
        ours = np.array([np.nan if v is None else v for v in p["mean"]], float)
        both = ~np.isnan(ours) & (res.count > 0) if hasattr(res, "count") else ~np.isnan(ours)
        # Rings with enough pixels that one pixel on an edge cannot move the mean by 1 %.
        counted = np.array(p["pixels"]) >= 50
        sel = both & counted
        rel = np.abs(ours[sel] - res.intensity[sel]) / np.maximum(np.abs(res.intensity[sel]), 1e-9)
        print(f"index {i}: {sel.sum()} rings, worst relative difference {rel.max():.2e}")
        assert rel.max() <= 0.01
        checked += 1
    assert checked >= 1


def test_the_page_shows_the_grid_and_its_quality_in_chromium(daemons):
    node, modules = node_and_browser()
    d = daemons("page", body(frames=0, rate=20.0, quality="analysis_hz = 2"))
    try:
        d.call("POST", "/run/start", {"beamtime": "bt", "source": "det", "stream": "page"})
        artifacts = ROOT / "target" / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        shot = artifacts / "live-page-quality.png"
        p = subprocess.run(
            [node, str(ROOT / "tests" / "browser" / "page.cjs"), d.url + "/",
             "", str(shot), "quality"], env={**os.environ, "NODE_PATH": modules},
            capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr + p.stdout
        seen = json.loads(p.stdout.strip().splitlines()[-1])
        (my, mx), (gy, gx) = MODULE, GAP
        assert seen["image"] == [2 * mx + gx, 2 * my + gy], "the canvas is the image with gaps"
        assert "spots" in seen["quality"]
        d.call("POST", "/run/stop")
        d.wait_run("bt/det/page")
        # What the page drew is the frame h5py reads, with the gaps, binned as documented.
        v = seen["values"]
        with h5py.File(d.master("page", source="det"), "r") as f:
            frame = f["/entry/data/data"][v["index"] - 1]
        got = np.array(v["values"], np.uint16).reshape(v["ny"], v["nx"])
        np.testing.assert_array_equal(got, bin_max(with_gaps(frame), v["binning"]))
    finally:
        d.close()


def test_blissdata_gets_the_grids_images_from_redis(detingestd, tmp_path, redis_server):
    from test_redis import LiveReader
    server = redis_server()
    server.client().set("_PROTOCOL_VERSION_", 1)  # as an initialised Blissdata database
    cfg = tmp_path / "redis.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[live]\npublish = ""\nquery = ""\n'
                   f'[writer]\nflush_interval_ms = 50\n[sink.redis]\nurl = "{server.url}"\n'
                   "image_max_hz = 50\n" + body(rate=30.0))
    reader = LiveReader(server.url)
    reader.start()
    summary = tmp_path / "s.json"
    p = subprocess.run([detingestd, "--log", "warn", "run", "--config", str(cfg),
                        "--summary-json", str(summary)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    reader.join(timeout=60)
    assert reader.error is None, repr(reader.error)
    with h5py.File(tmp_path / "data/bt/det/q_master.h5", "r") as f:
        want = f["/entry/data/data"][()]
    got = reader.got["det:image"]
    assert sorted(got) == list(range(N))
    for i in range(N):
        np.testing.assert_array_equal(got[i], want[i], f"image {i}")
    redis = json.loads(summary.read_text())["sinks"]["redis"]
    assert redis["images"] > 0 and redis["images_undecodable"] == 0, redis
