#!/usr/bin/env python3
"""Live view of detingestd: prints every frame, shows the latest preview if matplotlib is there.
Usage: live_view.py [tcp://127.0.0.1:5556]   (needs pyzmq, numpy; bitshuffle for bslz4 previews)"""
import json, struct, sys
import numpy as np
import zmq

sub = zmq.Context().socket(zmq.SUB)
sub.connect(sys.argv[1] if len(sys.argv) > 1 else "tcp://127.0.0.1:5556")
sub.setsockopt(zmq.SUBSCRIBE, b"")
try:
    import matplotlib.pyplot as plt
    plt.ion(); image = None
except ImportError:
    plt = None

def pixels(h, payload):
    dtype = np.dtype(h["dtype"])
    if h["compression"] == "none":
        return np.frombuffer(payload, dtype).reshape(h["shape"])
    import bitshuffle  # bslz4: 12-byte header (size, block bytes), then bitshuffle-LZ4 blocks
    total, block = struct.unpack(">QI", payload[:12])
    data = np.frombuffer(payload[12:], np.uint8)
    return bitshuffle.decompress_lz4(data, (total // dtype.itemsize,), dtype,
                                     block // dtype.itemsize).reshape(h["shape"])

while True:
    topic, header, *rest = sub.recv_multipart()
    h = json.loads(header)
    if topic == b"frame":
        print(f'{h["stream"]} #{h["index"]} frame {h["frame_number"]} {h["bytes_compressed"]} B'
              f'{" LOST" if h["lost"] else ""} -> {h["file"]}')
    elif topic == b"run":
        print(f'run {h["event"]}: {h["stream"]} {h.get("frames", "")}')
    elif topic == b"preview" and plt and h["compression"] in ("none", "bslz4"):
        img = pixels(h, rest[0])
        image = plt.imshow(img, vmax=np.percentile(img, 99.9) + 1) if image is None else image
        image.set_data(img); plt.title(f'{h["acquisition_id"]} #{h["index"]}'); plt.pause(0.001)
