"""A UDP source end to end through the CLI: a Python sender plays a detector module (sls v2
packets written here from FORMATS.md, with packets withheld and garbage in between), the
daemon runs until SIGTERM, and h5py reads the file: delivered bytes exact, the fill value
where packets were withheld, `packets_lost` and `missing_packets` equal to what was withheld."""

import socket
import struct
import time

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest

from conftest import stop_run

PPF, PAYLOAD, FRAMES, FILL = 8, 1024, 40, 0xABCD
WITHHELD = {(1005, 0), (1005, 7), (1020, 3), (1039, 6)}



def packet(frame, k, module=2):
    # u64 frameNumber, u32 expLength, u32 packetNumber, u64 bunchId, u64 timestamp,
    # u16 modId, u16 row, u16 column, u16 detSpec2, u32 detSpec3, u16 detSpec4, u8 detType, u8 version
    header = struct.pack("<QIIQQHHHHIHBB", frame, 0, k, 0, 0, module, 0, 0, 0, 0, 0, 0, 2)
    assert len(header) == 48
    payload = ((np.arange(PAYLOAD // 2, dtype=np.uint32) + frame * 31 + k * 1000) & 0xFFFF)
    return header + payload.astype("<u2").tobytes()


@pytest.mark.parametrize("receive", ["io_uring", "recvmmsg"])
def test_udp_frames_read_back_with_h5py(daemons, tmp_path, receive):
    summary = tmp_path / "summary.json"
    config = (
        f'data_dir = "{tmp_path / "data"}"\n'
        '[live]\npublish = ""\nquery = ""\n'
        '[[source]]\nname = "mod2"\npolicy = "block"\n'
        'stream = { beamtime = "bt", source = "det", stream = "s1" }\n'
        '[source.udp]\nbind = "127.0.0.1"\nport = 0\nmodule = 2\n'
        f"packets_per_frame = {PPF}\npayload_bytes = {PAYLOAD}\nshape = [8, 512]\n"
        f'pixel = "u16"\nfill = {FILL}\nreceive = "{receive}"\nrcvbuf_bytes = 4194304\n')
    daemon = daemons("udp", config=config, command="run", args=["--summary-json", summary])
    port = daemon.ports()["mod2"]  # the port the kernel gave
    text = daemon.wait_for_log("port ready")
    assert f"path={receive}" in text.replace('"', "")

    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for f in range(1000, 1000 + FRAMES):
        for k in range(PPF):
            if (f, k) not in WITHHELD:
                tx.sendto(packet(f, k), ("127.0.0.1", port))
        if f % 10 == 0:
            tx.sendto(b"", ("127.0.0.1", port))            # empty
            tx.sendto(b"\x02" * 100, ("127.0.0.1", port))  # version 2, module 0x0202: nonsense
            tx.sendto(packet(f, 1, module=9), ("127.0.0.1", port))  # another module
        time.sleep(0.001)
    s = stop_run(daemon, summary)
    c = s["sources"][0]["packets"]
    assert c["accepted"] == FRAMES * PPF - len(WITHHELD)
    assert c["packets_lost"] == len(WITHHELD)
    assert c["too_short"] == 4                  # the empty ones
    assert c["wrong_module"] == 8               # module 9, and the 0x02 bytes' module 514
    assert c["bad_version"] + c["bad_length"] + c["out_of_range"] + c["duplicate"] == 0
    assert (c["frames_complete"], c["frames_incomplete"]) == (FRAMES - 3, 3)

    with h5py.File(s["streams"][0]["file"], "r") as h:
        data = h["/entry/data/data"][:]
        spec = h["/entry/instrument/detector/detectorSpecific"]
        assert data.shape == (FRAMES, 8, 512)
        assert list(spec["frame_number"][:]) == list(range(1000, 1000 + FRAMES))
        masks = spec["missing_packets"][:]
        assert masks.shape == (FRAMES, 1, 64) and masks.dtype == np.uint8  # (index, module, bits)
        masks = masks[:, 0]
        lost = spec["packets_lost"][:]
        for i, f in enumerate(range(1000, 1000 + FRAMES)):
            frame = data[i].reshape(-1)
            want_lost = [k for k in range(PPF) if (f, k) in WITHHELD]
            assert lost[i] == len(want_lost)
            assert [k for k in range(PPF) if masks[i][k // 8] >> (k % 8) & 1] == want_lost
            for k in range(PPF):
                got = frame[k * PAYLOAD // 2:(k + 1) * PAYLOAD // 2]
                if k in want_lost:
                    assert (got == FILL).all(), (f, k)
                else:
                    want = np.frombuffer(packet(f, k)[48:], dtype="<u2")
                    assert (got == want).all(), (f, k)
