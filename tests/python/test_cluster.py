"""Several daemons take one detector ([cluster], docs/SCALING.md): three `detingestd serve`
processes on three loopback addresses, each making two modules of a 2 x 3 synthetic
detector into one shared data directory. One start on the first reaches all; the first
writes the whole detector's master, whose VDS h5py reads tile by tile from the three
daemons' data files."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle filter for h5py)
import numpy as np
import pytest
import zmq

from conftest import free_port
from harness import ApiError, connect_ready

GRID = (2, 3)
MODULE = (32, 48)
HOSTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
PARTS = [[[0, 0], [0, 1]], [[0, 2], [1, 0]], [[1, 1], [1, 2]]]


def synthetic(frames, rate, modules=None):
    mods = "" if modules is None else f"modules = {json.dumps(modules)}\n"
    return (f"[source.synthetic]\nframes = {frames}\nrate_hz = {rate}\n"
            f"shape = [{MODULE[0]}, {MODULE[1]}]\npixel = \"u16\"\nseed = 11\npeaks = 5\n"
            f"bank_frames = 8\n{mods}")


def source(frames, rate, modules=None):
    return ("[[source]]\nname = \"jf\"\n"
            "stream = { beamtime = \"bt\", source = \"jf\", stream = \"cfg\" }\n"
            f"grid = [{GRID[0]}, {GRID[1]}]\n" + synthetic(frames, rate, modules))


def body(name, peers, frames=40, rate=100.0, modules=None, first=1):
    peer_list = json.dumps([f"http://{h}:{p}" for h, p in peers])
    first = "" if first is None else f"first_frame_number = {first}\n"
    return (f"[writer]\nflush_interval_ms = 100\n"
            f"[run]\n{first}frames_per_file = 16\ndataset_timeout_ms = 500\n"
            f"[cluster]\nname = \"{name}\"\npeers = {peer_list}\nmerge_interval_ms = 50\n"
            f"dead_after_ms = 1500\n" + source(frames, rate, modules))


@pytest.fixture
def cluster(daemons, tmp_path):
    """Three daemons (d1 coordinates) sharing one data directory, on addresses chosen first
    (each daemon's configuration names the others)."""

    def make(frames=40, rate=100.0, first=None, publish="", extra="", elsewhere=None,
             names=("d1", "d2", "d3"), parts=PARTS):
        data = tmp_path / "shared"
        ports = [free_port() for _ in HOSTS]
        made = []
        for i, (host, port) in enumerate(zip(HOSTS, ports)):
            peers = [(h, p) for j, (h, p) in enumerate(zip(HOSTS, ports)) if j != i]
            text = body(names[i], peers, frames, rate, parts[i], (first or {}).get(i, 1))
            text += "\n" + extra if i == 0 else ""
            where = tmp_path / "elsewhere" if i == elsewhere else data
            made.append(daemons(f"d{i + 1}", text, listen=f"{host}:{port}", data=where,
                                publish=publish if i == 0 else "", source="jf"))
        return made

    return make


def generated(detingestd, tmp_path, frames):
    """The generator's whole images: every module of the grid, stitched."""
    cfg = tmp_path / "all.toml"
    cfg.write_text(source(frames, 0.0))
    out = tmp_path / "all.raw"
    subprocess.run([detingestd, "synth-dump", "--config", str(cfg), "--out", str(out)],
                   check=True, timeout=120)
    m = np.fromfile(out, dtype="<u2").reshape(frames, GRID[0] * GRID[1], *MODULE)
    rows = [np.concatenate([m[:, r * GRID[1] + c] for c in range(GRID[1])], axis=-1)
            for r in range(GRID[0])]
    return np.concatenate(rows, axis=1)


def wait_recorded(master, n, timeout=30):
    """Waits until the master (read with SWMR, as it is written) records `n` indices."""
    deadline = time.time() + timeout
    while True:
        try:
            with h5py.File(master, "r", swmr=True) as f:
                if f["/entry/instrument/detector/detectorSpecific/nimages"][()] >= n:
                    return
        except (OSError, KeyError):  # not there yet, or a read racing a flush
            pass
        assert time.time() < deadline, f"{master} never recorded {n}"
        time.sleep(0.05)


def tile(img, m):
    r, c = divmod(m, GRID[1])
    return img[..., r * MODULE[0]:(r + 1) * MODULE[0], c * MODULE[1]:(c + 1) * MODULE[1]]


def start(d, stream, frames):
    return d.call("POST", "/run/start", {"beamtime": "bt", "source": "jf", "stream": stream,
                                         "frames": frames})


def refused(d, path, body):
    with pytest.raises(ApiError) as e:
        d.call("POST", path, body)
    return e.value.status, e.value.message


def test_three_daemons_write_one_detector_read_whole_from_one_master(
        cluster, detingestd, tmp_path):
    d1, d2, d3 = cluster(frames=40)
    status = start(d1, "scan1", 40)
    assert [p["daemon"] for p in status["detector"]["parts"]] == ["d1", "d2", "d3"]
    for d, name in [(d2, "d2"), (d3, "d3")]:
        assert d.get("/run")["stream"] == f"bt/jf/scan1_{name}"
    end = d1.wait_run("bt/jf/scan1_d1", timeout=120)
    assert end["state"] == "finished", end
    assert end["detector"]["frames"] == 40 and end["detector"]["lost"] == 0, end["detector"]
    assert end["detector"]["merged"] == 40
    for d in (d2, d3):
        assert d.get("/run")["state"] == "finished"
    folder = tmp_path / "shared" / "bt" / "jf"
    names = sorted(p.name for p in folder.iterdir())
    for n in ("d1", "d2", "d3"):
        assert f"scan1_{n}_master.h5" in names and f"scan1_{n}_data_000003.h5" in names, names
    want = generated(detingestd, tmp_path, 40)
    with h5py.File(folder / "scan1_master.h5", "r") as f:
        data = f["/entry/data/data"]
        assert data.is_virtual and data.shape == (40, 2 * MODULE[0], 3 * MODULE[1])
        assert np.array_equal(data[()], want)
        spec = f["/entry/instrument/detector/detectorSpecific"]
        assert (spec["module_mask"][()] == 0b111111).all()
        assert not spec["frame_lost"][()].any()
        assert list(spec["frame_number"][()]) == list(range(1, 41))
        for n, mods in zip(("d1", "d2", "d3"), PARTS):
            g = f[f"/entry/detingest/daemons/{n}"]
            assert g["state"][()].decode() == "finished" and g["missing_from"][()] == 0
            assert sorted(g["modules"][()]) == sorted(r * 3 + c for r, c in mods)
        assert f["/entry/detingest/finished"][()] == 1
    # Each daemon's own master records its two modules only.
    with h5py.File(folder / "scan1_d2_master.h5", "r") as f:
        assert (f["/entry/instrument/detector/detectorSpecific/module_mask"][()]
                == (1 << 2 | 1 << 3)).all()


def test_a_daemon_killed_mid_run_leaves_its_modules_missing_from_where_it_stopped(
        cluster, detingestd, tmp_path):
    d1, d2, d3 = cluster(frames=300, rate=100.0, publish="tcp://127.0.0.1:*")
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVTIMEO, 30000)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    connect_ready(sub, d1.endpoint("zmq"))
    start(d1, "kill1", 300)
    folder = tmp_path / "shared" / "bt" / "jf"
    wait_recorded(folder / "kill1_d3_master.h5", 40)  # d3 has flushed some indices
    want = generated(detingestd, tmp_path, 300)
    # During the run the whole master is readable with SWMR: the merged records so far, and
    # the VDS (written at the start, the count being known) over each daemon's files.
    deadline = time.time() + 30
    while True:
        try:
            with h5py.File(folder / "kill1_master.h5", "r", swmr=True) as f:
                merged = f["/entry/instrument/detector/detectorSpecific/nimages"][()]
                if merged >= 16:
                    assert np.array_equal(f["/entry/data/data"][:16], want[:16])
                    break
        except OSError:  # a read racing a flush: HDF5's SWMR readers retry
            pass
        assert time.time() < deadline
        time.sleep(0.05)
    deadline = time.time() + 10
    while d1.get("/run")["detector"].get("merged", 0) < 16:  # GET /run shows the progress
        assert time.time() < deadline
        time.sleep(0.05)
    from prometheus_client.parser import text_string_to_metric_families
    metrics = {f.name: f for f in text_string_to_metric_families(d1.get("/metrics"))}
    assert metrics["detingest_detector_merged_indices"].samples[0].value >= 16
    d3.proc.send_signal(signal.SIGKILL)
    d3.proc.wait()
    end = d1.wait_run("bt/jf/kill1_d1", timeout=120)
    assert end["state"] == "finished"
    assert d2.get("/run")["state"] == "finished"
    with h5py.File(folder / "kill1_master.h5", "r") as f:  # no SWMR: marks were cleared
        g = f["/entry/detingest/daemons/d3"]
        assert g["state"][()].decode() == "died"
        stopped = int(g["missing_from"][()])
        assert 40 < stopped <= 300
        assert g["indices_recorded"][()] == stopped - 1
        mask = f["/entry/instrument/detector/detectorSpecific/module_mask"][()]
        assert len(mask) == 300
        assert (mask[:stopped - 1] == 0b111111).all()
        assert (mask[stopped - 1:] == 0b001111).all()  # modules 4 and 5 were d3's
        data = f["/entry/data/data"]
        assert np.array_equal(data[:stopped - 1], want[:stopped - 1])
        after = data[stopped - 1:]
        for m in range(4):
            assert np.array_equal(tile(after, m), tile(want[stopped - 1:], m))
        for m in (4, 5):
            assert not tile(after, m).any()  # missing: the fill value
    # The whole detector's stream, as a live viewer of d1 sees it: one record per index,
    # complete only while every daemon wrote its modules.
    frames = {}
    while True:
        topic, header = (p for p in sub.recv_multipart()[:2])
        header = json.loads(header)
        if topic == b"frame" and header["stream"] == "bt/jf/kill1":
            frames[header["index"]] = header
        if topic == b"run" and header["event"] == "end" and header["stream"] == "bt/jf/kill1":
            break
    ctx.destroy(linger=0)
    assert sorted(frames) == list(range(1, 301))
    assert all(frames[i]["complete"] for i in range(1, stopped))
    assert all(not frames[i]["complete"] and frames[i]["missing_modules"] == [4, 5]
               for i in range(stopped, 301))
    assert frames[1]["file"].endswith("kill1_master.h5") and frames[1]["data_file"] == frames[1]["file"]
    # The dead daemon's own files open without SWMR too (its write marks were cleared).
    with h5py.File(folder / "kill1_d3_data_000001.h5", "r") as f:
        assert f["/entry/data/data"].shape[0] == 16


def test_a_start_one_daemon_refuses_is_refused_everywhere_with_its_reason(cluster, tmp_path):
    d1, d2, d3 = cluster(frames=20, first={1: None})  # d2 has no [run] first_frame_number
    folder = tmp_path / "shared" / "bt" / "jf"
    folder.mkdir(parents=True)
    (folder / "taken_d3_master.h5").write_bytes(b"")
    code, message = refused(d1, "/run/start", {"beamtime": "bt", "source": "jf",
                                               "stream": "taken", "frames": 20,
                                               "first_frame_number": 1})
    assert code == 409 and "taken_d3_master.h5" in message and "127.0.0.3" in message, message
    for d in (d1, d2, d3):
        assert d.get("/run")["state"] == "idle"
    assert sorted(p.name for p in folder.iterdir()) == ["taken_d3_master.h5"]
    # A request d2's configuration cannot take: it does not know where index 1 starts.
    code, message = refused(d1, "/run/start", {"beamtime": "bt", "source": "jf",
                                               "stream": "s2", "frames": 20})
    assert code == 400 and "first_frame_number" in message and "127.0.0.2" in message, message
    for d in (d1, d2, d3):
        assert d.get("/run")["state"] == "idle"
    assert not (folder / "s2_d1_master.h5").exists()
    # With the number in the request it goes through, on every daemon.
    d1.call("POST", "/run/start", {"beamtime": "bt", "source": "jf", "stream": "ok",
                                   "frames": 20, "first_frame_number": 1})
    assert d1.wait_run("bt/jf/ok_d1", timeout=60)["detector"]["frames"] == 20
    assert (folder / "ok_master.h5").exists()


def test_a_daemon_writing_elsewhere_or_named_twice_is_refused_before_anything_starts(
        cluster, tmp_path):
    d1, d2, d3 = cluster(frames=20, elsewhere=2)  # d3's data_dir is not the shared one
    code, message = refused(d1, "/run/start", {"beamtime": "bt", "source": "jf",
                                               "stream": "s", "frames": 20})
    assert code == 409 and "127.0.0.3" in message and "share one data directory" in message
    for d in (d1, d2, d3):
        assert d.get("/run")["state"] == "idle"
    e1, _, _ = cluster(frames=20, names=("d1", "d2", "d2"))  # two daemons named d2
    code, message = refused(e1, "/run/start", {"beamtime": "bt", "source": "jf",
                                               "stream": "s", "frames": 20})
    assert code == 409 and "127.0.0.3" in message and "its own cluster.name" in message


def test_cluster_configuration_errors_name_their_key(detingestd, tmp_path):
    def check(text):
        cfg = tmp_path / "c.toml"
        cfg.write_text(text)
        return subprocess.run([detingestd, "check-config", str(cfg)], capture_output=True,
                              text=True)

    r = check("[cluster]\nname = \"../x\"\n" + source(10, 0.0))
    assert r.returncode != 0 and "cluster.name" in r.stderr, r.stderr
    r = check("[cluster]\nname = \"a\"\npeers = [\"10.0.0.1:80\"]\n" + source(10, 0.0))
    assert r.returncode != 0 and "cluster.peers[0]" in r.stderr, r.stderr
    r = check(source(10, 0.0, [[2, 0]]))
    assert r.returncode != 0 and "source[0].synthetic.modules[0]" in r.stderr, r.stderr
    r = check("[cluster]\nname = \"a\"\n[run]\nchunking = \"frame\"\n" + source(10, 0.0))
    assert r.returncode != 0 and "run.chunking" in r.stderr, r.stderr
    cfg = tmp_path / "m.toml"
    cfg.write_text(f'data_dir = "{tmp_path}"\n[cluster]\nname = "a"\n' + source(10, 0.0))
    r = subprocess.run([detingestd, "run", "--config", str(cfg)], capture_output=True,
                       text=True)
    assert r.returncode != 0 and "serve" in r.stderr, r.stderr


def test_detingestd_merge_finishes_the_master_a_dead_coordinator_left(
        cluster, detingestd, tmp_path):
    d1, d2, d3 = cluster(frames=300, rate=100.0)
    start(d1, "orphan", 300)
    folder = tmp_path / "shared" / "bt" / "jf"
    wait_recorded(folder / "orphan_master.h5", 40)  # the coordinator has merged some
    d1.proc.send_signal(signal.SIGKILL)
    d1.proc.wait()
    killed = time.time()
    merge = [detingestd, "merge", "--dir", str(folder), "--stream", "orphan"]
    # While the daemons still write, an unfinished part may be alive: refused.
    early = subprocess.run(merge, capture_output=True, text=True, timeout=60)
    assert early.returncode != 0 and "may still run" in early.stderr, early.stderr
    for d, name in [(d2, "d2"), (d3, "d3")]:  # the others end their parts by count
        assert d.wait_run(f"bt/jf/orphan_{name}", timeout=60)["frames_recorded"] == 300
    time.sleep(max(0.0, killed + 3.5 - time.time()))  # d1's files quiet for 3 s
    out = subprocess.run(merge, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "d1: died" in out.stdout and "300 indices" in out.stdout, out.stdout
    want = generated(detingestd, tmp_path, 300)
    with h5py.File(folder / "orphan_master.h5", "r") as f:  # opens without SWMR: finished
        assert f["/entry/detingest/finished"][()] == 1
        g = f["/entry/detingest/daemons/d1"]
        assert g["state"][()].decode() == "died"
        stopped = int(g["missing_from"][()])
        assert 1 < stopped <= 300
        for n in ("d2", "d3"):
            assert f[f"/entry/detingest/daemons/{n}/state"][()].decode() == "finished"
        mask = f["/entry/instrument/detector/detectorSpecific/module_mask"][()]
        assert len(mask) == 300
        assert (mask[:stopped - 1] == 0b111111).all()
        assert (mask[stopped - 1:] == 0b111100).all()  # modules 0 and 1 were d1's
        data = f["/entry/data/data"]
        assert data.shape[0] == 300
        assert np.array_equal(data[:stopped - 1], want[:stopped - 1])
        for m in range(2, 6):
            assert np.array_equal(tile(data[stopped - 1:], m), tile(want[stopped - 1:], m))
        assert not tile(data[stopped - 1:], 0).any()
    # A finished master is not merged again.
    again = subprocess.run(merge, capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and "finished already" in again.stderr, again.stderr


def test_blissdata_reads_the_whole_detector_as_one_scan_from_the_coordinators_redis(
        cluster, detingestd, tmp_path, redis_server):
    from blissdata.redis_engine.store import DataStore
    server = redis_server()
    server.client().set("_PROTOCOL_VERSION_", 1)  # an initialised Blissdata database
    d1, d2, d3 = cluster(frames=30, extra=f'[sink.redis]\nurl = "{server.url}"\n')
    store = DataStore(server.url)
    since = store.get_last_scan_timetag()
    start(d1, "bliss1", 30)
    assert d1.wait_run("bt/jf/bliss1_d1", timeout=120)["detector"]["frames"] == 30
    scans = {}
    for _ in range(2):  # d1's part and the whole detector, in the order they began
        since, key = store.get_next_scan(since=since, timeout=10)
        scan = store.load_scan(key)
        scans[scan.info["detingest"]["stream"]] = scan
    assert set(scans) == {"bt/jf/bliss1", "bt/jf/bliss1_d1"}, set(scans)
    whole = scans["bt/jf/bliss1"]
    assert whole.state == 4 and whole.info["publishing"]["complete"]
    want = generated(detingestd, tmp_path, 30)
    image = whole.streams["jf:image"]
    assert len(image) == 30
    assert np.array_equal(image[:], want)  # through Blissdata's file fallback: the VDS
    assert not whole.streams["jf:lost"][:].any()


def test_a_kafka_job_starts_and_stops_every_daemon_and_hands_off_every_part(
        kafka_broker, cluster, tmp_path):  # the broker outlives the daemons: a fast teardown
    import hashlib
    from streaming_data_types import serialise_6s4t, serialise_pl72
    from test_kafka import Reader, TOPICS, kafka_table, send, SERVICE
    kafka_broker.create_topics(*TOPICS)
    d1, d2, d3 = cluster(extra=kafka_table(kafka_broker))
    deadline = time.time() + 30
    while not d1.get("/run")["sinks"]["kafka"]["commands_ready"]:
        assert time.time() < deadline
        time.sleep(0.1)
    reader = Reader(kafka_broker)
    send(kafka_broker, serialise_pl72("job-1", "kscan.nxs", service_id=SERVICE,
                                      metadata=json.dumps({"beamtime": "bt"})))
    answ = reader.wait(lambda sc, d: sc == "answ" and d.job_id == "job-1", what="answ")[0]
    assert (answ.outcome, answ.status_code) == (0, 201), answ.message
    for d, name in [(d2, "d2"), (d3, "d3")]:
        assert d.get("/run")["stream"] == f"bt/jf/kscan_{name}"
    deadline = time.time() + 30  # every part some way in before the stop
    while min(d.get("/run")["frames_recorded"] for d in (d1, d2, d3)) < 25:
        assert time.time() < deadline
        time.sleep(0.05)
    send(kafka_broker, serialise_6s4t("job-1", service_id=SERVICE, command_id="stop-1"))
    folder = tmp_path / "shared" / "bt" / "jf"
    whole = folder / "kscan_master.h5"
    wrdn = reader.wait(lambda sc, d: sc == "wrdn" and Path(d.file_name) == whole,
                       what="wrdn of the whole detector")[0]
    assert not wrdn.error_encountered, wrdn.message
    for d in (d2, d3):  # the stop reached every daemon
        assert d.get("/run")["end_reason"] == "stop"
    hand = json.loads(wrdn.metadata)
    names = [e["path"] for e in hand["files"]]
    assert names[0] == "kscan_master.h5"
    for n in ("d1", "d2", "d3"):
        assert f"kscan_{n}_master.h5" in names and f"kscan_{n}_data_000001.h5" in names, names
    for e in hand["files"]:
        on_disk = folder / e["path"]
        assert e["size"] == on_disk.stat().st_size
        assert e["chk"] == hashlib.sha256(on_disk.read_bytes()).hexdigest(), e
    with h5py.File(whole, "r") as f:
        n = len(f["/entry/data/data"])
        assert n == hand["frames"] and n >= 20
        # Each daemon stopped at its own index; the whole detector ends with the last index
        # every daemon recorded, every image whole (each part keeps what it wrote after).
        recorded = [f[f"/entry/detingest/daemons/{d}/indices_recorded"][()]
                    for d in ("d1", "d2", "d3")]
        mask = f["/entry/instrument/detector/detectorSpecific/module_mask"][()]
        assert n == min(recorded) and (mask == 0b111111).all(), (recorded, mask)
        for d in ("d1", "d2", "d3"):
            assert f[f"/entry/detingest/daemons/{d}/state"][()].decode() == "finished"
