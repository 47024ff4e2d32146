"""Files detingestd writes, read back with the readers facilities use: h5py + hdf5plugin
and h5dump with HDF5_PLUGIN_PATH."""

import os
import subprocess

import h5py
import hdf5plugin
import numpy as np
import pytest
from conftest import data_file

SPECIFIC = "/entry/instrument/detector/detectorSpecific"


FILTERS = {"bslz4": 32008, "lz4": 32004}


def filters(d):
    return {int(k): tuple(v) for k, v in d._filters.items()}


@pytest.mark.parametrize("codec", ["bslz4", "lz4"])
def test_file_equals_the_generated_frames(run_daemon, expected_frames, codec):
    summary, cfg, path = run_daemon(synthetic="frames = 20\nseed = 3\nbank_frames = 20",
                                    writer=f'codec = "{codec}"')
    assert summary["streams"][0]["frames"] == 20
    want = expected_frames(cfg, "u2", (512, 1024))
    with h5py.File(path, "r") as f:
        assert f["/entry/data/data"].is_virtual, "the master's VDS spans the data files"
        assert np.array_equal(f["/entry/data/data"][()], want)
    with h5py.File(path, "r") as f, h5py.File(data_file(path), "r") as df:
        d = df["/entry/data/data"]
        assert d.shape == (20, 512, 1024)
        assert d.dtype == np.uint16
        assert d.chunks == (1, 512, 1024)
        assert list(filters(d)) == [FILTERS[codec]], d._filters
        if codec == "bslz4":
            # bitshuffle version (0.5, or the plugin's that ran set_local), element size 2,
            # automatic block size, LZ4 (test_filter_plugins.py checks each environment).
            assert len(filters(d)[32008]) == 5 and filters(d)[32008][2:] == (2, 0, 2)
        assert d.attrs["image_nr_low"] == 1
        assert d.attrs["image_nr_high"] == 20
        assert np.array_equal(d[()], want)
        assert f["/entry/definition"][()] == b"NXmx"
        assert f["/entry"].attrs["NX_class"] == "NXentry"
        assert f["/entry/data"].attrs["NX_class"] == "NXdata"
        det = f["/entry/instrument/detector"]
        assert det.attrs["NX_class"] == "NXdetector"
        assert det["x_pixel_size"].attrs["units"] == "m"
        assert det["bit_depth_image"][()] == 16
        assert f[SPECIFIC + "/nimages"][()] == 20
        assert list(f[SPECIFIC + "/frame_number"][()]) == list(range(1, 21))
        assert not f[SPECIFIC + "/frame_lost"][()].any()
    # Frames differ from each other, so an ordering mistake could not pass.
    assert all(not np.array_equal(want[i], want[i + 1]) for i in range(19))


def test_h5dump_reads_header_and_pixels(run_daemon, expected_frames):
    _, cfg, path = run_daemon(synthetic="frames = 3\nseed = 9\nbank_frames = 2\nshape = [16, 32]")
    want = expected_frames(cfg, "u2", (16, 32))
    env = dict(os.environ, HDF5_PLUGIN_PATH=hdf5plugin.PLUGIN_PATH)
    header = subprocess.run(["h5dump", "-H", str(path)], env=env, check=True,
                            capture_output=True, text=True).stdout
    assert 'DATASET "data"' in header and "H5T_STD_U16LE" in header
    assert 'VIRTUAL' in header or "EXTERNAL_LINK" not in header, header
    data_file = path.parent / "s1_data_000001.h5"
    props = subprocess.run(["h5dump", "-p", "-H", "-d", "/entry/data/data", str(data_file)],
                           env=env, check=True, capture_output=True, text=True).stdout
    assert "32008" in props and "CHUNKED ( 1, 16, 32 )" in props, props
    # -b writes the decoded dataset as raw binary: h5dump must run the bitshuffle plugin.
    raw = path.parent / "dump.bin"
    subprocess.run(["h5dump", "-d", "/entry/data/data", "-b", "LE", "-o", str(raw),
                    str(data_file)], env=env, check=True, capture_output=True)
    got = np.fromfile(raw, dtype="<u2").reshape(3, 16, 32)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("pixel,dtype", [("u8", "u1"), ("u32", "u4"), ("i32", "i4"),
                                         ("f32", "f4")])
@pytest.mark.parametrize("codec", ["bslz4", "lz4", "none"])
def test_every_pixel_type_and_codec_round_trips(run_daemon, expected_frames, pixel, dtype, codec):
    _, cfg, path = run_daemon(
        synthetic=f'frames = 5\npixel = "{pixel}"\nshape = [48, 80]\nbank_frames = 2',
        writer=f'codec = "{codec}"')
    want = expected_frames(cfg, dtype, (48, 80))
    with h5py.File(data_file(path), "r") as f:
        d = f["/entry/data/data"]
        assert d.dtype == np.dtype(dtype)
        assert list(filters(d)) == ([FILTERS[codec]] if codec in FILTERS else [])
        if codec == "bslz4":
            assert filters(d)[32008][2] == np.dtype(dtype).itemsize
        assert np.array_equal(d[()], want)


def test_a_stream_may_choose_its_own_codec(run_daemon, expected_frames):
    _, cfg, path = run_daemon(synthetic="frames = 4\nshape = [32, 64]\nbank_frames = 4",
                              writer='codec = "bslz4"', source='codec = "lz4"')
    with h5py.File(data_file(path), "r") as f:
        d = f["/entry/data/data"]
        assert list(filters(d)) == [32004]
        assert np.array_equal(d[()], expected_frames(cfg, "u2", (32, 64)))


def test_dropped_frames_keep_their_index_and_show_the_fill_value(run_daemon, expected_frames):
    summary, cfg, path = run_daemon(
        policy="drop",
        synthetic="frames = 300\nshape = [256, 512]\nbank_frames = 2\ncopy = true",
        writer="flush_every_frames = 1",
        pipeline="compress_workers = 1\nqueue_depth = 1\ninput_buffers = 2\noutput_buffers = 1")
    dropped = summary["sources"][0]["dropped"]
    assert dropped > 0, "the run must provoke drops"
    assert summary["sources"][0]["sent"] + dropped == 300
    # Dropped here, not lost: every frame reached the daemon.
    assert (summary["stats"]["dropped"], summary["stats"]["lost"]) == (dropped, 0)
    want = expected_frames(cfg, "u2", (256, 512))
    with h5py.File(path, "r") as f:
        d = f["/entry/data/data"][()]
        lost = f[SPECIFIC + "/frame_lost"][()].astype(bool)
        assert (f[SPECIFIC + "/frame_dropped"][()].astype(bool) == lost).all()
        numbers = f[SPECIFIC + "/frame_number"][()]
    assert d.shape[0] == 300, "indices 1..N without gaps"
    assert list(numbers) == list(range(1, 301))
    assert lost.sum() == dropped
    assert not d[lost].any(), "lost frames hold the fill value"
    assert np.array_equal(d[~lost], want[~lost])


def flushed(master):
    """Indices the master records as flushed (read with SWMR as it is written), or 0."""
    try:
        with h5py.File(master, "r", swmr=True) as f:
            return int(f[SPECIFIC + "/nimages"][()])
    except (OSError, KeyError):
        return 0


def test_killed_daemon_leaves_flushed_frames_readable(daemons, tmp_path, expected_frames):
    from conftest import data_file, write_config
    import signal
    import time

    cfg = write_config(tmp_path / "crash.toml", tmp_path / "data",
                       synthetic="frames = 100000\nrate_hz = 50.0\nshape = [128, 256]\n"
                                 "bank_frames = 2",
                       writer="flush_every_frames = 5\nflush_interval_ms = 200")
    d = daemons("crash", config=cfg, command="run", log="warn")
    path = tmp_path / "data" / "bt" / "det" / "s1_master.h5"
    deadline = time.time() + 30
    while flushed(path) < 10:  # a few flushes in (every 5 frames)
        assert time.time() < deadline, d.log_text()
        time.sleep(0.05)
    d.kill()
    # SWMR files keep the writer's mark after a crash: a plain open refuses them ...
    with pytest.raises(OSError, match="h5clear"):
        h5py.File(path, "r")
    # ... an SWMR reader opens them as they are ...
    with h5py.File(path, "r", swmr=True) as f, h5py.File(data_file(path), "r", swmr=True) as df:
        n = int(f[SPECIFIC + "/nimages"][()])
        assert n >= 5, "frames flushed before the kill are in the file"
        assert df["/entry/data/data"].shape[0] >= n
        got = df["/entry/data/data"][:n]
    # ... and `h5clear -s` clears the mark for every reader.
    for p in (path, data_file(path)):
        subprocess.run(["h5clear", "-s", str(p)], check=True)
    with h5py.File(path, "r") as f, h5py.File(data_file(path), "r") as df:
        assert int(f[SPECIFIC + "/nimages"][()]) == n
        assert "data" not in f["/entry/data"], "open-ended run: the VDS is written when it ends"
        assert np.array_equal(df["/entry/data/data"][:n], got)
    # Compare against the first n generated frames (dump a short copy of the source).
    short = cfg.read_text().replace("frames = 100000", f"frames = {n}")
    cfg.write_text(short)
    want = expected_frames(cfg, "u2", (128, 256))
    assert np.array_equal(got, want)
