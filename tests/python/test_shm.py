"""Shared-memory rings end to end: C producers (separate processes, compiled against
include/detingest.h with -Wall -Wextra -Werror -pedantic, under AddressSanitizer) push
frames into a running detingestd; h5py reads the file back pixel for pixel. Also the
crash cases (producer killed mid-frame, daemon killed) and every error code."""

import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle and LZ4 filters)
import numpy as np
import pytest

import harness

ROOT = Path(__file__).resolve().parents[2]
W, H = 128, 64  # u16 frames of 16 KiB
CFLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-g"]


def pkg_config(prefix, *args):
    env = dict(os.environ, PKG_CONFIG_PATH=str(prefix / "lib" / "pkgconfig"))
    out = subprocess.run(["pkg-config", *args, "detingest"], env=env, check=True,
                         capture_output=True, text=True).stdout
    return out.split()


@pytest.fixture(scope="session")
def prefix(tmp_path_factory):
    """libdetingest installed the way a vendor gets it: `make install-lib PREFIX=...`."""
    prefix = tmp_path_factory.mktemp("prefix")
    subprocess.run(["make", "-s", "-C", str(ROOT), "install-lib", f"PREFIX={prefix}",
                    "PROFILE=debug"], check=True, timeout=600)
    return prefix


@pytest.fixture(scope="session")
def asan():
    """-fsanitize=address where the compiler supports it."""
    probe = subprocess.run(["cc", "-fsanitize=address", "-x", "c", "-", "-o", os.devnull],
                           input="int main(void){return 0;}", text=True, capture_output=True)
    return ["-fsanitize=address", "-fno-omit-frame-pointer"] if probe.returncode == 0 else []


@pytest.fixture(scope="session")
def ring_producer(prefix, asan, tmp_path_factory):
    exe = tmp_path_factory.mktemp("bin") / "ring_producer"
    lib = prefix / "lib"
    subprocess.run(["cc", *CFLAGS, *asan, str(ROOT / "tests/c/ring_producer.c"), "-o", str(exe),
                    *pkg_config(prefix, "--cflags", "--libs"), f"-Wl,-rpath,{lib}"],
                   check=True)
    return exe


def Daemon(detingestd, tmp, *, name="d", codec="bslz4", slots=8, end_on_close=True):
    """`detingestd run` on one shm source (a `harness.Daemon`, ready once its ring exists),
    with `ring` (the ring's path) and `summary_path`."""
    data = tmp / f"data-{name}"
    config = (
        f'data_dir = "{data}"\n'
        f'[writer]\ncodec = "{codec}"\n'
        '[live]\npublish = ""\nquery = ""\n'
        '[[source]]\nname = "mod0"\n'
        'stream = { beamtime = "bt", source = "det", stream = "s1" }\n'
        f'[source.shm]\ndir = "{tmp / "rings"}"\nshape = [{H}, {W}]\npixel = "u16"\n'
        f"slots = {slots}\nend_on_close = {'true' if end_on_close else 'false'}\n")
    summary = tmp / f"{name}.summary.json"
    d = harness.Daemon(detingestd, tmp, name, config, command="run", data=data,
                       args=["--summary-json", summary])
    d.ring, d.summary_path = tmp / "rings" / "mod0", summary
    return d


def finish(d, timeout=60):
    """Waits for the daemon to end (the producer closed) and returns its summary."""
    assert d.proc.wait(timeout=timeout) == 0, d.log_text()
    return json.loads(d.summary_path.read_text())


def master(d):
    return h5py.File(d.data / "bt" / "det" / "s1_master.h5", "r")


def expected(frame_numbers):
    n = np.asarray(frame_numbers, dtype=np.uint64)[:, None]
    i = np.arange(W * H, dtype=np.uint64)[None, :]
    return ((n * 7 + i) & 0xFFFF).astype(np.uint16).reshape(-1, H, W)


def run(exe, *args, timeout=60, **kw):
    return subprocess.run([str(exe), *map(str, args)], timeout=timeout, text=True,
                          capture_output=True, **kw)


@pytest.mark.parametrize("codec", ["bslz4", "lz4", "none"])
def test_c_producer_frames_read_back_pixel_for_pixel(detingestd, ring_producer, tmp_path, codec):
    d = Daemon(detingestd, tmp_path, codec=codec)
    r = run(ring_producer, "push", d.ring, 1, 60, W, H)
    assert r.returncode == 0, r.stderr
    summary = finish(d)
    assert summary["sources"][0] == {"name": "mod0", "sent": 60, "dropped": 0, "torn": 0,
                                     "malformed": 0}
    with master(d) as f:
        data = f["/entry/data/data"]
        assert data.shape == (60, H, W) and data.dtype == np.uint16
        assert (data[:] == expected(range(1, 61))).all()
        spec = f["/entry/instrument/detector/detectorSpecific"]
        assert list(spec["frame_number"][:]) == list(range(1, 61))
        assert not spec["frame_lost"][:].any()
    assert not d.ring.exists(), "the daemon removes its ring when it ends"


def test_example_producer_builds_from_pkg_config_and_links_statically(
        detingestd, prefix, tmp_path):
    exe = tmp_path / "producer"
    subprocess.run(["cc", *CFLAGS, str(ROOT / "examples/producer.c"), "-o", str(exe),
                    *pkg_config(prefix, "--cflags"), str(prefix / "lib" / "libdetingest.a"),
                    *pkg_config(prefix, "--static", "--libs-only-l")[1:]], check=True)
    assert "libdetingest" not in subprocess.run(["ldd", str(exe)], capture_output=True,
                                                text=True).stdout
    assert len((ROOT / "examples/producer.c").read_text().splitlines()) < 80
    d = Daemon(detingestd, tmp_path)
    r = run(exe, d.ring, 25, W, H)
    assert r.returncode == 0, r.stderr
    assert finish(d)["streams"][0]["frames"] == 25
    with master(d) as f:
        assert (f["/entry/data/data"][:] == expected(range(1, 26))).all()


def test_killed_producer_costs_its_frame_and_a_new_one_continues(
        detingestd, ring_producer, tmp_path):
    d = Daemon(detingestd, tmp_path)
    assert stat.S_IMODE(d.ring.stat().st_mode) == 0o600
    first = subprocess.Popen([str(ring_producer), "push", str(d.ring), "1", "10", str(W), str(H),
                              "hang"], stdout=subprocess.PIPE, text=True)
    assert first.stdout.readline().strip() == "READY"  # frames 1-10 committed, 11 half-written
    first.send_signal(signal.SIGKILL)
    first.wait()
    time.sleep(0.2)
    assert d.proc.poll() is None, "the daemon keeps running"
    r = run(ring_producer, "push", d.ring, 12, 9, W, H)  # a new producer continues at 12
    assert r.returncode == 0, r.stderr
    summary = finish(d)
    assert summary["sources"][0]["torn"] == 1
    assert summary["sources"][0]["sent"] == 19
    assert summary["streams"][0] == {**summary["streams"][0], "frames": 20, "lost": 1}
    with master(d) as f:
        data = f["/entry/data/data"]
        spec = f["/entry/instrument/detector/detectorSpecific"]
        assert data.shape == (20, H, W), "index 11 keeps its place"
        assert list(spec["frame_number"][:]) == list(range(1, 21))
        assert [i + 1 for i, lost in enumerate(spec["frame_lost"][:]) if lost] == [11]
        kept = [n for n in range(1, 21) if n != 11]
        assert (data[[n - 1 for n in kept]] == expected(kept)).all()
        assert not (data[10] == 0xEEEE).any(), "nothing of the torn frame was written"
    assert "producer died" in d.log_text()


def test_daemon_gone_is_reported_within_the_timeout_and_a_new_daemon_replaces_the_ring(
        detingestd, ring_producer, tmp_path):
    d = Daemon(detingestd, tmp_path, end_on_close=False)
    p = subprocess.Popen([str(ring_producer), "until-gone", str(d.ring), str(W), str(H)],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "READY"
    time.sleep(0.2)
    d.kill()
    out, _ = p.communicate(timeout=30)
    code, ms = out.split()[1:]
    assert int(code) == -1, out  # DETINGEST_E_DAEMON_GONE
    assert float(ms) < 3000, f"the failing call took {ms} ms, its timeout is 3000"
    assert d.ring.exists(), "a killed daemon leaves its ring behind"
    d2 = Daemon(detingestd, tmp_path, name="d2")
    assert "stale ring" in d2.log_text()
    r = run(ring_producer, "push", d2.ring, 1, 5, W, H)
    assert r.returncode == 0, r.stderr
    assert finish(d2)["streams"][0]["frames"] == 5


def test_a_second_daemon_on_a_live_ring_is_refused(detingestd, tmp_path):
    d = Daemon(detingestd, tmp_path, end_on_close=False)
    cfg = tmp_path / "d.toml"
    other = subprocess.run([detingestd, "run", "--config", str(cfg)], capture_output=True,
                           text=True, timeout=60,
                           env=dict(os.environ, NO_COLOR="1"))
    assert other.returncode != 0
    assert "in use by a running daemon" in other.stderr + other.stdout
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=30) == 0, d.log_text()
    assert not d.ring.exists()


def test_every_misuse_gets_its_error_code(detingestd, ring_producer, tmp_path):
    d = Daemon(detingestd, tmp_path)
    good = d.ring.read_bytes()
    bad_magic, bad_version = tmp_path / "bad_magic", tmp_path / "bad_version"
    bad_magic.write_bytes(b"NOTARING" + good[8:])
    bad_version.write_bytes(good[:8] + (99).to_bytes(4, "little") + good[12:])
    r = run(ring_producer, "errors", d.ring, W, H, bad_magic, bad_version)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "WRONG" not in r.stdout
    assert f"expects {W}x{H} pixels of type code 2, got {W // 2}x{H}" in r.stdout, \
        "detingest_last_error names what was wrong"
    summary = finish(d)
    assert summary["sources"][0]["sent"] == 0
    assert not (d.data / "bt").exists(), "a stream that got no frame writes no file"
