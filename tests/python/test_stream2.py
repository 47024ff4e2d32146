"""DECTRIS Stream V2 into detingestd (`[source.stream2]`): tickit-devices' EIGER simulator
(replaying a recorded EIGER2 16M image) and a sender written from the specification
(stream2_spec.py: cbor2, the C bitshuffle library, python-lz4) push series; h5py reads what
the daemon wrote, dectris-compression decodes what the producers sent."""

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cbor2
import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle and LZ4 filters)
import numpy as np
import pytest
from dectris.compression import decompress

import stream2_spec as spec
from conftest import ROOT, free_port

SPECIFIC = "entry/instrument/detector/detectorSpecific"
TICKIT_DATA = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" \
    / "site-packages" / "tickit_devices" / "eiger" / "data" / "stream2"


def stream2_source(endpoint, stream2=""):
    """A `[[source]]` "eiger" with a `[source.stream2]` connected to `endpoint`."""
    return ('[pipeline]\ninput_buffers = 8\noutput_buffers = 8\n'
            '[[source]]\nname = "eiger"\n'
            'stream = { beamtime = "bt", source = "eiger", stream = "unused" }\n'
            f'[source.stream2]\nendpoint = "{endpoint}"\n{stream2}\n')


@pytest.fixture
def serve(daemons):
    """`serve(endpoint)`: a daemon whose one source is a Stream V2 detector at `endpoint`
    (connected once it is ready)."""
    return lambda endpoint: daemons("serve", stream2_source(endpoint))


class EigerSim:
    """tickit-devices' EIGER simulator: REST on `rest`, Stream V2 (PUSH) on `stream`."""

    def __init__(self, tmp):
        self.rest, self.stream = free_port(), free_port()
        cfg = tmp / "eiger.yaml"
        cfg.write_text(
            "- type: tickit_devices.eiger.Eiger\n  name: eiger\n  inputs: {}\n"
            f"  host: 127.0.0.1\n  port: {self.rest}\n  stream_host: 127.0.0.1\n"
            f"  stream_legacy_port: {free_port()}\n  stream_cbor_port: {self.stream}\n")
        self.log = tmp / "eiger.log"
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "python" / "tickit_eiger.py"), str(cfg)],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while True:
            try:
                self.get("detector", "status/state")
                break
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()[-3000:]
                assert time.time() < deadline, "the EIGER simulator did not come up"
                time.sleep(0.2)
        self.put("stream", "config/format", "cbor")
        self.put("detector", "config/trigger_mode", "ints")

    def url(self, api, path):
        return f"http://127.0.0.1:{self.rest}/{api}/api/1.8.0/{path}"

    def get(self, api, path):
        with urllib.request.urlopen(self.url(api, path), timeout=10) as r:
            return json.loads(r.read())

    def put(self, api, path, value=None):
        body = b"" if value is None else json.dumps({"value": value}).encode()
        req = urllib.request.Request(self.url(api, path), data=body, method="PUT",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read() or b"null")

    def series(self, images, frame_time=0.05):
        """arm, trigger, wait, disarm: one series of `images`; returns its series id."""
        self.put("detector", "config/nimages", images)
        self.put("detector", "config/frame_time", frame_time)
        self.put("detector", "command/arm")
        self.put("detector", "command/trigger")
        deadline = time.time() + 60
        while self.get("detector", "status/state")["value"] == "acquire":
            assert time.time() < deadline
            time.sleep(0.05)
        return self.put("detector", "command/disarm")

    def close(self):
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def eiger(tmp_path):
    sim = EigerSim(tmp_path)
    yield sim
    sim.close()


def recorded_image():
    """The EIGER2 16M image tickit-devices replays: (its bslz4 chunk, the pixels
    dectris-compression decodes from it)."""
    msg = cbor2.loads((TICKIT_DATA / "image.cbor").read_bytes())
    msg = msg.value if isinstance(msg, cbor2.CBORTag) else msg
    dims, typed = msg["data"]["threshold_1"].value
    algorithm, elem_size, chunk = typed.value.value
    pixels = np.frombuffer(decompress(chunk, algorithm, elem_size=elem_size),
                           dtype=f"<u{elem_size}").reshape(dims)
    return chunk, pixels


def test_eiger_simulator_series_are_written_as_the_detector_compressed_them(serve, eiger):
    daemon = serve(f"tcp://127.0.0.1:{eiger.stream}")
    chunk, pixels = recorded_image()
    streams = []
    for n in (4, 3):
        eiger.series(n)
        deadline = time.time() + 60
        while True:
            status = daemon.get("/run")
            if status["state"] != "running" and status["stream"] not in (None, *streams):
                break
            assert time.time() < deadline, (status, daemon.log.read_text()[-3000:])
            time.sleep(0.05)
        streams.append(status["stream"])
        assert status["end_reason"] == "source", status
        assert status["frames_recorded"] == n and status["frames_lost"] == 0, status
        m = status["sources"][0]["messages"]
        assert m["passed_through"] == n and m["decoded"] == 0, m
        stream = status["stream"].split("/")[-1]
        with h5py.File(daemon.master(stream)) as f:
            data = f["entry/data/data"]
            assert data.shape == (n, *pixels.shape) and data.dtype == np.uint16
            for i in range(n):
                assert np.array_equal(data[i], pixels), i
            det = f["entry/instrument/detector"]
            assert det["description"][()] == b"Dectris EIGER2 Si 16M"
            assert det["x_pixel_size"][()] == pytest.approx(75e-6)
            assert det["beam_center_x"].attrs["units"] == "pixel"
            assert det["sensor_thickness"][()] == pytest.approx(450e-6)
            assert f["entry/instrument/beam/incident_wavelength"][()] > 0
            gonio = json.loads(f[f"{SPECIFIC}/goniometer"][()])
            assert set(gonio) >= {"omega", "kappa", "phi"}
            omega = f["entry/sample/transformations/omega"][:]
            assert len(omega) == n and np.allclose(np.diff(omega), gonio["omega"]["increment"])
            # The chain from the sample down to the floor: phi, kappa, chi, omega.
            chain, at = [], f["entry/sample/depends_on"][()].decode()
            while at != ".":
                chain.append(at.rsplit("/", 1)[1])
                at = f[at].attrs["depends_on"]
            assert chain == ["phi", "kappa", "chi", "omega"], chain
            assert det["serial_number"][()] and det["detector_number"][()]
            assert list(f[f"{SPECIFIC}/frame_lost"][:]) == [0] * n
        with h5py.File(daemon.master(stream).with_name(f"{stream}_data_000001.h5")) as f:
            for i in range(n):
                filters, stored = f["entry/data/data"].id.read_direct_chunk((i, 0, 0))
                assert stored == chunk, "the chunk was not written as the detector sent it"
    assert len(set(streams)) == 2
    daemon.close()


def images(n, shape, dtype, seed):
    rng = np.random.default_rng(seed)
    return [rng.poisson(3.0, size=shape).astype(dtype) * (i + 1) for i in range(n)]


@pytest.fixture
def detector():
    d = spec.Detector()
    yield d
    d.close()


def test_two_channels_gaps_mask_and_metadata_from_the_start(serve, detector):
    """A series of u32 images with two threshold channels: one stream per channel, every
    pixel as sent, the missing image recorded lost, the start's mask and metadata in the
    master."""
    daemon = serve(detector.endpoint)
    shape, n = (96, 80), 6
    ch = ("threshold_1", "threshold_2")
    low, high = images(n, shape, "<u4", 1), images(n, shape, "<u4", 2)
    mask = np.zeros(shape, "<u4")
    mask[3, 4], mask[50, 7] = 1, 8
    mask2 = mask.copy()
    mask2[90, 79] = 16  # each channel has its own (sent bitshuffle-LZ4 compressed)
    flat = {c: np.random.default_rng(k).uniform(0.9, 1.1, shape).astype("<f4")
            for k, c in enumerate(ch)}
    lookup = np.arange(0, 4000, 4, dtype="<u4")  # the spec's typed array (tag 70: u32 LE)
    detector.send(spec.start(7, shape, "uint32", ch, n=n, mask={ch[0]: mask, ch[1]: mask2},
                             flatfield={c: spec.array(a, "raw") for c, a in flat.items()},
                             countrate_correction_lookup_table=cbor2.CBORTag(
                                 70, lookup.tobytes())))
    sent = [i for i in range(n) if i != 3]  # image 3 never comes
    for i in sent:
        detector.send(spec.image(7, i, {ch[0]: low[i], ch[1]: high[i]}))
    detector.send(spec.end(7))
    status = daemon.wait_run("bt/eiger/series_7_threshold_1")
    assert status["end_reason"] == "source", status
    assert [s["name"] for s in status["sources"]] == ["eiger", "eiger-threshold_2"]
    for stream, pixels, mask, c in (("series_7_threshold_1", low, mask, ch[0]),
                                    ("series_7_threshold_2", high, mask2, ch[1])):
        with h5py.File(daemon.master(stream)) as f:
            data = f["entry/data/data"]
            assert data.shape == (n, *shape) and data.dtype == np.uint32, stream
            for i in sent:
                assert np.array_equal(data[i], pixels[i]), (stream, i)
            assert list(f[f"{SPECIFIC}/frame_lost"][:]) == [0, 0, 0, 1, 0, 0]
            assert list(f[f"{SPECIFIC}/frame_number"][:]) == list(range(n))
            assert np.array_equal(f[f"{SPECIFIC}/pixel_mask"][:], mask)
            det = f["entry/instrument/detector"]
            assert det["description"][()] == b"spec sender"
            assert det["beam_center_y"][()] == 40.25
            # detector_translation's z is -0.2: the distance is 0.2 (as DECTRIS's files say)
            assert det["detector_distance"][()] == 0.2 and det["distance"][()] == 0.2
            assert det["saturation_value"][()] == 12345
            assert det["serial_number"][()] == b"E-00-0000"
            assert np.array_equal(det["flatfield"][:], flat[c])  # its channel's, values kept
            assert np.array_equal(det["countrate_correction_lookup_table"][:], lookup)
            assert f["entry/instrument/beam/incident_wavelength"][()] == pytest.approx(1.0)
            assert json.loads(f[f"{SPECIFIC}/threshold_energy"][()]) == \
                {"threshold_1": 6000.0, "threshold_2": 7000.0}
            assert json.loads(f[f"{SPECIFIC}/user_data"][()]) == {"sample": "lysozyme"}
            omega = f["entry/sample/transformations/omega"]
            assert np.allclose(omega[:], 10.0 + 0.5 * np.arange(n))
            assert omega.attrs["units"] == "deg"
            assert f["entry/sample/transformations/omega_increment_set"][()] == 0.5
            assert f["entry/sample/depends_on"][()] == b"/entry/sample/transformations/omega"
    daemon.close()


def test_raw_and_lz4_images_are_encoded_by_the_daemon(serve, detector):
    """Images sent raw and LZ4 (DECTRIS's "lz4": HDF5 32004 framing, which dectris-compression
    decodes) are decoded and written with the stream's codec (bitshuffle-LZ4)."""
    daemon = serve(detector.endpoint)
    shape = (64, 48)
    for sid, encoding in ((1, "raw"), (2, "lz4")):
        pics = images(5, shape, "<u2", sid)
        if encoding == "lz4":  # the framing is DECTRIS's own: their decoder agrees
            chunk = spec.lz4_h5(pics[0])
            back = np.frombuffer(decompress(chunk, "lz4", elem_size=2), "<u2")
            assert np.array_equal(back.reshape(shape), pics[0])
        detector.send(spec.start(sid, shape, "uint16", n=5))
        detector.send(*[spec.image(sid, i, {"threshold_1": p}, encoding)
                        for i, p in enumerate(pics)])
        detector.send(spec.end(sid))
        status = daemon.wait_run(f"bt/eiger/series_{sid}")
        m = status["sources"][0]["messages"]
        assert (m["decoded"], m["passed_through"], m["images"]) == (5, 0, 5), m
        with h5py.File(daemon.master(f"series_{sid}")) as f:
            assert np.array_equal(f["entry/data/data"][:], np.stack(pics))
        with h5py.File(daemon.master(f"series_{sid}").with_name(
                f"series_{sid}_data_000001.h5")) as f:
            assert "32008" in f["entry/data/data"]._filters
    # The detector restarted: its series ids begin again. Series 1's name is taken; the
    # series is written under another, not refused.
    again = images(3, shape, "<u2", 5)
    detector.send(spec.start(1, shape, "uint16", n=3),
                  *[spec.image(1, i, {"threshold_1": p}) for i, p in enumerate(again)],
                  spec.end(1))
    daemon.wait_run("bt/eiger/series_1_2")
    with h5py.File(daemon.master("series_1_2")) as f:
        assert np.array_equal(f["entry/data/data"][:], np.stack(again))
    assert "stream name taken" in daemon.log.read_text()
    daemon.close()


def test_series_back_to_back_are_both_written(serve, detector):
    """A series that starts as soon as the last one ended (its run still closing files)
    waits for that run's end and is written whole."""
    daemon = serve(detector.endpoint)
    shape = (64, 80)
    first, second = images(4, shape, "<u2", 6), images(4, shape, "<u2", 7)
    for sid, pics in ((30, first), (31, second)):
        detector.send(spec.start(sid, shape, "uint16", n=4),
                      *[spec.image(sid, i, {"threshold_1": p}) for i, p in enumerate(pics)],
                      spec.end(sid))
    daemon.wait_run("bt/eiger/series_31")
    for sid, pics in ((30, first), (31, second)):
        with h5py.File(daemon.master(f"series_{sid}")) as f:
            assert np.array_equal(f["entry/data/data"][:], np.stack(pics)), sid
    assert "did not start" not in daemon.log.read_text()
    daemon.close()


def test_a_start_without_dtype_takes_it_from_its_first_image(serve, detector):
    """A start without image_dtype (as DECTRIS's recording) waits for its first image; one
    re-armed before any image is replaced by the next series, which is written."""
    daemon = serve(detector.endpoint)
    shape = (40, 24)
    pics = images(3, shape, "<i4", 4)
    detector.send(spec.start(20, shape, None, n=3), spec.start(21, shape, None, n=3),
                  *[spec.image(21, i, {"threshold_1": p}) for i, p in enumerate(pics)],
                  spec.end(21))
    status = daemon.wait_run("bt/eiger/series_21")
    assert status["frames_recorded"] == 3, status
    with h5py.File(daemon.master("series_21")) as f:
        data = f["entry/data/data"]
        assert data.dtype == np.int32 and np.array_equal(data[:], np.stack(pics))
    assert not daemon.master("series_20").exists()
    assert "replaced by another before its first image" in daemon.log.read_text()
    daemon.close()


def test_bad_messages_are_counted_by_kind_and_cost_nothing(serve, detector):
    """Garbage, cut CBOR, unknown types, images before a start, wrong shape and dtype, another
    series' images, missing fields, a corrupt chunk: counted by kind, logged once per kind,
    the daemon keeps going, and the good images are all written."""
    daemon = serve(detector.endpoint)
    shape = (32, 40)
    good = images(4, shape, "<u4", 9)
    img = spec.image(3, 1, {"threshold_1": good[1]})
    chunk = spec.bslz4(good[2])
    cut = spec.message({  # the chunk's last block cut short: its lengths do not add up
        "type": "image", "series_id": 3, "image_id": 2,
        "data": {"threshold_1": cbor2.CBORTag(40, [list(shape), cbor2.CBORTag(70, cbor2.CBORTag(
            spec.DECTRIS_COMPRESSION, ["bslz4", 4, chunk[:-7]]))])}})
    short = spec.message({  # raw bytes that do not fill the shape
        "type": "image", "series_id": 3, "image_id": 2,
        "data": {"threshold_1": cbor2.CBORTag(40, [list(shape), cbor2.CBORTag(70, b"\0" * 12)])}})
    detector.send(
        b"\x00garbage", spec.image(2, 0, {"threshold_1": good[0]}),  # before any start
        spec.end(2))                                                  # before any start
    detector.send(spec.start(3, shape, "uint32", n=4))
    detector.send(
        spec.image(3, 0, {"threshold_1": good[0]}),
        img[: len(img) // 2],                                          # cut short
        spec.message({"type": "status", "series_id": 3}),              # unknown type
        spec.message({"type": "image", "series_id": 3, "data": {}}),   # no image_id
        spec.image(3, 9, {"threshold_1": np.zeros((32, 41), "<u4")}),  # wrong shape
        spec.image(3, 9, {"threshold_1": np.zeros(shape, "<u2")}),     # wrong dtype
        spec.image(4, 1, {"threshold_1": good[1]}),                    # another series
        spec.message({"type": "image", "series_id": 3, "image_id": 1,
                      "data": {"threshold_1": "not an array"}}),       # not CBOR we take
        short,                                                         # bad field
        cut,                                                           # bad framing
        img, spec.image(3, 3, {"threshold_1": good[3]}), spec.end(3))
    status = daemon.wait_run("bt/eiger/series_3")
    m = status["sources"][0]["messages"]
    assert (m["malformed"], m["unknown_type"], m["missing_field"]) == (3, 1, 1), m
    assert (m["before_start"], m["other_series"], m["bad_field"]) == (2, 1, 1), m
    assert m["wrong_format"] == 3 and m["images"] == 3, m
    assert status["sources"][0]["malformed"] == 12
    with h5py.File(daemon.master("series_3")) as f:
        data = f["entry/data/data"]
        for i in (0, 1, 3):
            assert np.array_equal(data[i], good[i]), i
        assert list(f[f"{SPECIFIC}/frame_lost"][:]) == [0, 0, 1, 0]
    log = daemon.log.read_text()
    assert log.count("refusal=WrongFormat") == 1 and log.count("refusal=BeforeStart") == 1
    text = daemon.get("/metrics")
    assert 'detingest_stream2_messages_wrong_format_total{source="eiger"} 3' in text
    daemon.close()


def test_the_example_configuration_is_valid_and_bad_keys_are_named(detingestd, tmp_path):
    ok = subprocess.run([detingestd, "check-config", str(ROOT / "docs" / "stream2.example.toml")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    base = ('data_dir = "/tmp/x"\n[[source]]\nname = "e"\n'
            'stream = { beamtime = "b", source = "e", stream = "s" }\n{grid}'
            '[source.stream2]\nendpoint = "{endpoint}"\n{more}\n{sink}')
    cases = [
        (dict(endpoint="eiger:31001"), "source[0].stream2.endpoint"),
        (dict(more='stream_name = "../{series_id}"'), "source[0].stream2.stream_name"),
        (dict(more="high_water_mark = 0"), "source[0].stream2.high_water_mark"),
        (dict(more="colour = 1"), "colour"),
        (dict(grid="grid = [2, 1]\n"), "source[0].grid"),
        (dict(sink='[sink.stream2]\nendpoint = "31002"\n'), "sink.stream2.endpoint"),
        (dict(sink='[sink.stream2]\nendpoint = "tcp://*:1"\nbuffers = 0\n'),
         "sink.stream2.buffers"),
    ]
    for i, (fields, key) in enumerate(cases):
        values = {"grid": "", "endpoint": "tcp://127.0.0.1:31001", "more": "", "sink": "",
                  **fields}
        cfg = tmp_path / f"bad{i}.toml"
        cfg.write_text(base.replace("{grid}", values["grid"])
                       .replace("{endpoint}", values["endpoint"])
                       .replace("{more}", values["more"]).replace("{sink}", values["sink"]))
        p = subprocess.run([detingestd, "check-config", str(cfg)], capture_output=True, text=True)
        assert p.returncode != 0 and key in p.stderr, (key, p.stderr)
    # `run` (one run from a file) cannot take a detector's series: said, nothing written.
    cfg = tmp_path / "run.toml"
    cfg.write_text(base.replace("{grid}", "").replace("{endpoint}", "tcp://127.0.0.1:1")
                   .replace("{more}", "").replace("{sink}", "")
                   .replace('"/tmp/x"', f'"{tmp_path / "data"}"\n[live]\npublish = ""\nquery = ""'))
    p = subprocess.run([detingestd, "run", "--config", str(cfg)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode != 0 and "source[0].stream2" in p.stderr and "serve" in p.stderr
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("*.h5"))
