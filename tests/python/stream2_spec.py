"""DECTRIS Stream V2 messages written from the published specification (FORMATS.md section 10:
DECTRIS's stream_v2 CBOR description and its compression tag), with cbor2 and the C
bitshuffle library; and a PUSH socket that sends them as a detector does. Used by the
Stream V2 tests and benchmark; no detingest code is involved in making them."""

import struct

import bitshuffle
import cbor2
import lz4.block
import numpy as np
import zmq

TYPED = {np.dtype("<u1"): 64, np.dtype("<u2"): 69, np.dtype("<u4"): 70, np.dtype("<i4"): 78,
         np.dtype("<f4"): 85}
SELF_DESCRIBE = 55799
DECTRIS_COMPRESSION = 56500


def bslz4(a):
    """An HDF5 filter 32008 chunk: u64 BE bytes, u32 BE block bytes, then the C library's
    blocks (its default block size, as an EIGER2's)."""
    es = a.dtype.itemsize
    block = max(8192 // es // 8 * 8, 128)
    body = bitshuffle.compress_lz4(np.ascontiguousarray(a).reshape(-1), block)
    return struct.pack(">QI", a.nbytes, block * es) + body.tobytes()


def lz4_h5(a, block=1 << 16):
    """An HDF5 filter 32004 chunk (what DECTRIS calls "lz4"): u64 BE bytes, u32 BE block
    bytes, then per block u32 BE compressed length and an LZ4 block."""
    raw = np.ascontiguousarray(a).tobytes()
    out = [struct.pack(">QI", len(raw), block)]
    for i in range(0, len(raw), block):
        c = lz4.block.compress(raw[i:i + block], store_size=False)
        out.append(struct.pack(">I", len(c)) + c)
    return b"".join(out)


def array(a, encoding="bslz4"):
    """Tag 40 [dims, typed array], the typed array's content raw or under tag 56500."""
    a = np.asarray(a)
    tag = TYPED[a.dtype.newbyteorder("<") if a.dtype.byteorder == "=" else a.dtype]
    if encoding == "raw":
        content = a.astype(a.dtype.newbyteorder("<")).tobytes()
    elif encoding == "bslz4":
        content = cbor2.CBORTag(DECTRIS_COMPRESSION, ["bslz4", a.dtype.itemsize, bslz4(a)])
    else:
        content = cbor2.CBORTag(DECTRIS_COMPRESSION, ["lz4", 0, lz4_h5(a)])
    return cbor2.CBORTag(40, [list(a.shape), cbor2.CBORTag(tag, content)])


def message(fields):
    return cbor2.dumps(cbor2.CBORTag(SELF_DESCRIBE, fields))


def start(series_id, shape, dtype="uint32", channels=("threshold_1",), n=0, mask=None, **more):
    fields = {
        "type": "start", "series_id": series_id, "series_unique_id": f"uid-{series_id:04d}",
        "arm_date": cbor2.CBORTag(0, "2026-11-30T10:00:00.000+00:00"),
        "beam_center_x": 51.5, "beam_center_y": 40.25, "channels": list(channels),
        "count_time": 0.0099, "frame_time": 0.01, "detector_description": "spec sender",
        "detector_serial_number": "E-00-0000",
        "detector_translation": [0.0, 0.0, -0.2], "image_dtype": dtype,
        "image_size_x": shape[1], "image_size_y": shape[0], "incident_energy": 12398.419843320026,
        "number_of_images": n, "pixel_size_x": 7.5e-5, "pixel_size_y": 7.5e-5,
        "saturation_value": 12345, "sensor_material": "Si", "sensor_thickness": 4.5e-4,
        "goniometer": {"omega": {"start": 10.0, "increment": 0.5}},
        "threshold_energy": {c: 6000.0 + 1000 * i for i, c in enumerate(channels)},
        "user_data": {"sample": "lysozyme"},
    }
    if dtype is None:  # as DECTRIS's own recording: the images' typed arrays say it
        del fields["image_dtype"]
    if isinstance(mask, dict):  # {channel: mask}, compressed as images are
        fields["pixel_mask"] = {c: array(m) for c, m in mask.items()}
    elif mask is not None:
        fields["pixel_mask"] = {channels[0]: array(mask, "raw")}
    fields.update(more)
    return message(fields)


def image(series_id, image_id, data, encoding="bslz4"):
    """`data`: {channel: array}."""
    return message({
        "type": "image", "series_id": series_id, "series_unique_id": f"uid-{series_id:04d}",
        "image_id": image_id, "real_time": [10_000, 1_000_000],
        "start_time": [image_id * 10_000, 1_000_000],
        "stop_time": [image_id * 10_000 + 9_900, 1_000_000],
        "data": {c: array(a, encoding) for c, a in data.items()},
    })


def end(series_id):
    return message({"type": "end", "series_id": series_id,
                    "series_unique_id": f"uid-{series_id:04d}"})


class Detector:
    """A PUSH socket bound where the daemon connects, as a detector's stream interface, on a
    port the kernel picks. A PUSH socket holds what is sent until a peer is connected: a
    series sent before the daemon connects waits for it."""

    def __init__(self):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 5000)
        self.sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def send(self, *messages):
        for m in messages:
            self.sock.send(m, copy=False)

    def close(self):
        self.sock.close()
        self.ctx.term()
