"""The Stream V2 output (`[sink.stream2]`): what detingestd writes, sent as DECTRIS Stream V2
series. Decoded in Python as DECTRIS's client does (cbor2 with tag hooks, dectris-compression
for the compressed byte strings), pixels equal to the HDF5 file; a second daemon's stream2
source takes it and writes the same chunks; no client costs nothing on disk."""

import time

import cbor2
import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle and LZ4 filters)
import numpy as np
import pytest
import zmq
from dectris.compression import decompress

from harness import connect_ready

SPECIFIC = "entry/instrument/detector/detectorSpecific"
DTYPES = {64: "<u1", 69: "<u2", 70: "<u4", 78: "<i4", 85: "<f4"}


def dectris_decode(raw):
    """A Stream V2 message as DECTRIS's reference client decodes it: tag 40 arrays over RFC
    8746 typed arrays, whose content may be a tag 56500 compressed byte string."""
    def hook(decoder, tag):
        if tag.tag == 56500:
            return ("compressed", tag.value)
        if tag.tag in DTYPES:
            value = tag.value
            if isinstance(value, tuple) and value[0] == "compressed":
                algorithm, elem_size, data = value[1]
                value = decompress(data, algorithm, elem_size=elem_size)
            return np.frombuffer(value, dtype=DTYPES[tag.tag])
        if tag.tag == 40:
            dims, array = tag.value
            return array.reshape(dims)
        return tag
    msg = cbor2.loads(raw, tag_hook=hook)
    return msg.value if isinstance(msg, cbor2.CBORTag) else msg


def compressed_payload(raw):
    """The image's chunk bytes as sent (no decompression)."""
    def hook(decoder, tag):
        return tag.value if tag.tag in (40, 56500, *DTYPES) else tag
    msg = cbor2.loads(raw, tag_hook=hook)
    msg = msg.value if isinstance(msg, cbor2.CBORTag) else msg
    (array,) = msg["data"].values()
    dims, content = array
    return content[2] if isinstance(content, list) else content


SYNTHETIC = """[[source]]
name = "det"
stream = { beamtime = "bt", source = "det", stream = "x" }
[source.synthetic]
shape = [96, 128]
pixel = "u16"
rate_hz = 200.0
seed = 11
"""


@pytest.fixture
def output(daemons):
    """`output(name, source, extra)`: a daemon with `source` and the tables in `extra`."""
    return lambda name, source, extra="": daemons(name, extra + "\n" + source)


def wait_connected(d, clients=1, timeout=20):
    """Waits until `d`'s Stream V2 output has `clients` connected (its `clients` counter)."""
    deadline = time.time() + timeout
    while (n := d.get("/run")["sinks"]["stream2"]["clients"]) != clients:
        assert time.time() < deadline, f"{n} clients connected"
        time.sleep(0.02)


def receive(sock, until_end=True, timeout=30):
    msgs, deadline = [], time.time() + timeout
    while time.time() < deadline:
        if sock.poll(200):
            raw = sock.recv()
            msgs.append(raw)
            if until_end and dectris_decode(raw)["type"] == "end":
                return msgs
    return msgs


@pytest.mark.parametrize("mode", ["push", "pub"])
def test_output_decodes_as_dectris_client_does_pixels_equal_to_the_file(output, mode):
    a = output("a", SYNTHETIC, '[sink.stream2]\nendpoint = "tcp://127.0.0.1:*"\n'
                f'mode = "{mode}"\n[detector]\nbeam_center_x = 61.5\nbeam_center_y = 40.0\n'
                'incident_wavelength = 0.9763\ncount_time = 0.004\n')
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL if mode == "push" else zmq.SUB)
    if mode == "pub":
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    connect_ready(sock, a.endpoint("stream2", "endpoint"))  # (for PUB, subscribed) before the run
    a.call("POST", "/run/start", {"beamtime": "bt", "source": "det", "stream": "s1",
                                  "frames": 30, "user": {"sample": "thaumatin"}})
    msgs = receive(sock)
    sock.close()
    ctx.term()
    decoded = [dectris_decode(m) for m in msgs]
    assert [m["type"] for m in decoded] == ["start"] + ["image"] * 30 + ["end"]
    start = decoded[0]
    assert (start["image_size_y"], start["image_size_x"], start["image_dtype"]) == \
        (96, 128, "uint16")
    assert start["number_of_images"] == 30 and start["channels"] == ["threshold_1"]
    assert start["beam_center_x"] == 61.5 and start["incident_wavelength"] == 0.9763
    assert start["user_data"] == {"sample": "thaumatin"}
    assert {m["series_id"] for m in decoded} == {start["series_id"]}
    assert [m["image_id"] for m in decoded[1:-1]] == list(range(30))
    status = a.wait_run("bt/det/s1")
    with h5py.File(status["master"]) as f:
        data = f["entry/data/data"][:]
    with h5py.File(status["master"].replace("_master", "_data_000001")) as f:
        ds = f["entry/data/data"]
        for i, m in enumerate(decoded[1:-1]):
            assert np.array_equal(m["data"]["threshold_1"], data[i]), i
            # the chunk as the file holds it, not re-encoded
            assert compressed_payload(msgs[1 + i]) == ds.id.read_direct_chunk((i, 0, 0))[1]
    sink = status["sinks"]["stream2"]
    assert (sink["images_sent"], sink["images_dropped"], sink["series"]) == (30, 0, 1), sink


def test_round_trip_through_a_second_daemon_gives_identical_chunks(output):
    a = output("a", SYNTHETIC, '[sink.stream2]\nendpoint = "tcp://127.0.0.1:*"\n'
                "[detector]\nbeam_center_x = 61.5\nsaturation_value = 4000.0\n")
    b = output("b", '[[source]]\nname = "eiger"\n'
               'stream = { beamtime = "bt", source = "eiger", stream = "unused" }\n'
               f'[source.stream2]\nendpoint = "{a.endpoint("stream2", "endpoint")}"\n'
               'stream_name = "copy_{series_id}"\n')
    wait_connected(a)
    a.call("POST", "/run/start", {"beamtime": "bt", "source": "det", "stream": "orig",
                                  "frames": 40})
    first = a.wait_run("bt/det/orig")
    second = b.wait_run("bt/eiger/copy_1")
    assert second["frames_recorded"] == 40 and second["frames_lost"] == 0, second
    assert second["sources"][0]["messages"]["passed_through"] == 40
    files = [h5py.File(s["master"].replace("_master", "_data_000001")) for s in (first, second)]
    for i in range(40):
        chunks = [f["entry/data/data"].id.read_direct_chunk((i, 0, 0)) for f in files]
        assert chunks[0] == chunks[1], i
    with h5py.File(second["master"]) as f:
        det = f["entry/instrument/detector"]
        assert det["beam_center_x"][()] == 61.5 and det["saturation_value"][()] == 4000.0
        assert list(f[f"{SPECIFIC}/frame_lost"][:]) == [0] * 40


def test_no_client_costs_nothing_on_disk_and_is_counted(output):
    a = output("a", SYNTHETIC, '[sink.stream2]\nendpoint = "tcp://127.0.0.1:*"\n')
    a.call("POST", "/run/start", {"beamtime": "bt", "source": "det", "stream": "alone",
                                  "frames": 50})
    status = a.wait_run("bt/det/alone")
    assert status["frames_recorded"] == 50 and status["end_reason"] == "count"
    sink = status["sinks"]["stream2"]
    assert sink["images_sent"] == 0 and sink["images_dropped"] == 50, sink
    with h5py.File(status["master"]) as f:
        assert f["entry/data/data"].shape[0] == 50
    # A client connecting later gets the waiting start first, then the next series whole.
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    connect_ready(sock, a.endpoint("stream2", "endpoint"))
    a.call("POST", "/run/start", {"beamtime": "bt", "source": "det", "stream": "later",
                                  "frames": 10})
    a.wait_run("bt/det/later")
    types = [dectris_decode(m)["type"] for m in receive(sock, until_end=False, timeout=3)]
    wait_connected(a, 1)
    sock.close()
    ctx.term()
    wait_connected(a, 0)  # a client that leaves is counted gone
    assert types == ["start", "end", "start"] + ["image"] * 10 + ["end"], types
