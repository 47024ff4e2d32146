"""Helper for tests/tests/bitshuffle_interop.rs: exchanges bitshuffle-LZ4 chunks between the
C library (PyPI bitshuffle, and hdf5plugin's HDF5 filter through h5py) and detingest.

    bitshuffle_interop.py write DIR   C-encoded chunks of known arrays -> DIR/cases.json
    bitshuffle_interop.py check DIR   decode detingest's chunks listed in DIR/ours.json with C
"""

import json
import struct
import sys
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import bitshuffle

DTYPES = {1: "<u1", 2: "<u2", 4: "<u4", 8: "<u8"}


def header(raw_len, es):
    block = max(8192 // es // 8 * 8, 128)
    return struct.pack(">QI", raw_len, block * es)


def write(d):
    rng = np.random.default_rng(7)
    cases = []
    for es, dt in DTYPES.items():
        block = max(8192 // es // 8 * 8, 128)
        for n in [0, 5, 8, 13, 64, block - 8, block, block + 3, 3 * block + 21, 50_000]:
            a = rng.poisson(0.7, size=n).astype(dt)
            name = f"pypi_es{es}_n{n}"
            chunk = header(a.nbytes, es) + bitshuffle.compress_lz4(a).tobytes()
            (d / f"{name}.raw").write_bytes(a.tobytes())
            (d / f"{name}.chunk").write_bytes(chunk)
            cases.append({"name": name, "es": es})
    # Through the HDF5 filter (hdf5plugin, C bitshuffle), one chunk per frame of a dataset.
    frames = rng.poisson(0.5, size=(3, 64, 96)).astype("<u2")
    path = d / "c_written.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("data", data=frames, chunks=(1, 64, 96),
                              **hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))
        for i in range(3):
            mask, chunk = ds.id.read_direct_chunk((i, 0, 0))
            assert mask == 0
            name = f"hdf5plugin_frame{i}"
            (d / f"{name}.raw").write_bytes(frames[i].tobytes())
            (d / f"{name}.chunk").write_bytes(chunk)
            cases.append({"name": name, "es": 2})
    (d / "cases.json").write_text(json.dumps(cases))


def check(d):
    ours = json.loads((d / "ours.json").read_text())
    for case in ours:
        es, name = case["es"], case["name"]
        chunk = (d / f"{name}.chunk").read_bytes()
        raw = np.frombuffer((d / f"{name}.raw").read_bytes(), dtype=DTYPES[es])
        total, block = struct.unpack(">QI", chunk[:12])
        assert total == raw.nbytes, (name, total, raw.nbytes)
        got = bitshuffle.decompress_lz4(np.frombuffer(chunk[12:], dtype=np.uint8),
                                        raw.shape, raw.dtype, block // es)
        assert np.array_equal(got, raw), name
    print(f"C bitshuffle decoded {len(ours)} detingest chunks")


if __name__ == "__main__":
    {"write": write, "check": check}[sys.argv[1]](Path(sys.argv[2]))
