"""A multi-module detector over UDP the way slsDetectorPackage sends it, end to end through the
CLI. The sender here is written from the sls v2 header layout (FORMATS.md section 5), not from
the daemon's code: module ids from the modules' id files (not their places), two interfaces per
module (each half module to its own port, 64-style packet numbering restarting at 0 on each,
told apart by `row`), frame numbers that continue from an earlier acquisition and then restart
at 1 (`nextframenumber 1`), partial readout (`readnrows`: the middle packet numbers only), the
detector's timestamp and bunch id in every header. h5py reads every pixel back; the summary's
counters and the master's per-index records must say exactly what was sent.
"""

import socket
import struct
import time

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest

from conftest import stop_run

PAYLOAD = 1024             # bytes per packet
PPF = 4                    # packets per half-module frame (per port)
HALF = (8, 256)            # rows, columns of a half module: PPF * PAYLOAD bytes of u16
MOD_IDS = [[1234, 1301], [1417, 1520]]   # 2 x 2 modules, ids as in their id files
FILL = 0xFFFF



def header(frame, k, mod_id, row, column):
    # u64 frameNumber, u32 expLength, u32 packetNumber, u64 detSpec1 (bunch id),
    # u64 timestamp, u16 modId, u16 row, u16 column, u16 detSpec2, u32 detSpec3,
    # u16 detSpec4, u8 detType (3: JUNGFRAU), u8 version (2)
    return struct.pack("<QIIQQHHHHIHBB", frame, 0, k, bunch(frame), stamp(frame),
                       mod_id, row, column, 0, 0, 0, 3, 2)


def bunch(frame):
    return 5_000_000 + 3 * frame


def stamp(frame):
    return 10_000_000 * frame + 123   # 10 MHz detector clock


def payload(frame, mod_id, row, k):
    px = np.arange(PAYLOAD // 2, dtype=np.uint32)
    return ((px * 7 + frame * 131 + mod_id * 3 + row * 1009 + k * 17) % 0xFFFF).astype("<u2")


def packet(frame, k, mod_id, row, column):
    return header(frame, k, mod_id, row, column) + payload(frame, mod_id, row, k).tobytes()


class Detector:
    """Ports of a 2 x 2 JUNGFRAU-like detector with two interfaces per module: the half
    module at (row, column) of the 4 x 2 grid of halves belongs to module
    MOD_IDS[row // 2][column] and sends to its own port."""

    def __init__(self):
        self.halves = [(r, c) for r in range(4) for c in range(2)]
        self.ports = {}  # each half's port, once the daemon bound them (`listen`)
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.withheld = set()    # (frame, row, column, k)

    def mod_id(self, row, column):
        return MOD_IDS[row // 2][column]

    def name(self, row, column):
        """The `[[source]]` receiving the half at (row, column)."""
        return f"m{self.mod_id(row, column)}i{row % 2}"

    def listen(self, daemon):
        """Sends to the ports `daemon` bound for the halves."""
        bound = daemon.ports()
        self.ports = {h: bound[self.name(*h)] for h in self.halves}

    def send_frames(self, frames, withhold=()):
        for f in frames:
            for (r, c) in self.halves:
                for k in range(PPF):
                    if (f, r, c, k) in withhold:
                        self.withheld.add((f, r, c, k))
                        continue
                    self.tx.sendto(packet(f, k, self.mod_id(r, c), r, c),
                                   ("127.0.0.1", self.ports[(r, c)]))
            time.sleep(0.002)

    def image(self, frame, lost=()):
        """The image the file must hold for `frame`."""
        ny, nx = HALF
        img = np.empty((4 * ny, 2 * nx), dtype=np.uint16)
        rows = PAYLOAD // 2 // nx
        for (r, c) in self.halves:
            tile = img[r * ny:(r + 1) * ny, c * nx:(c + 1) * nx]
            for k in range(PPF):
                part = tile[k * rows:(k + 1) * rows]
                if (frame, r, c, k) in lost:
                    part[:] = FILL
                else:
                    part[:] = payload(frame, self.mod_id(r, c), r, k).reshape(rows, nx)
        return img


def sources(det, place_from_header):
    text = ""
    for (r, c) in det.halves:
        place = "" if place_from_header else f"place = [{r}, {c}]\n"
        text += (
            f'[[source]]\nname = "{det.name(r, c)}"\npolicy = "block"\ngrid = [4, 2]\n'
            'stream = { beamtime = "bt", source = "jf", stream = "s1" }\n'
            '[source.udp]\nbind = "127.0.0.1"\nport = 0\n'
            f"mod_id = {det.mod_id(r, c)}\n{place}"
            f"packets_per_frame = {PPF}\npayload_bytes = {PAYLOAD}\nshape = [{HALF[0]}, {HALF[1]}]\n"
            f'pixel = "u16"\nfill = {FILL}\nrcvbuf_bytes = 4194304\n')
    return text


def start(daemons, tmp_path, config_text):
    """`detingestd run` on the modules of `config_text`, ready once their ports are bound."""
    config = (f'data_dir = "{tmp_path / "data"}"\n[live]\npublish = ""\nquery = ""\n'
              "[run]\ndataset_timeout_ms = 2000\n" + config_text)
    summary = tmp_path / "summary.json"
    return daemons("det", config=config, command="run", args=["--summary-json", summary])


@pytest.mark.parametrize("last_before_restart", [25, 4_000, 1_000_000])
def test_two_interface_modules_with_real_ids_and_a_restart(daemons, tmp_path,
                                                            last_before_restart):
    """Frames continuing from an earlier acquisition, then the detector restarts at 1; the
    restart is `last_before_restart` frames back (below, near and beyond restart_gap)."""
    det = Detector()
    daemon = start(daemons, tmp_path, sources(det, place_from_header=True))
    det.listen(daemon)
    first_run = list(range(last_before_restart - 11, last_before_restart + 1))
    second_run = list(range(1, 16))
    lost = {(first_run[3], 1, 0, 2), (second_run[0], 3, 1, 0), (second_run[5], 2, 1, 3)}
    det.send_frames(first_run, withhold=lost)
    time.sleep(0.3)   # the detector server restarts
    det.send_frames(second_run, withhold=lost)
    # A packet of another module and one naming another half arrive on the first port.
    det.tx.sendto(packet(20, 0, 999, 0, 0), ("127.0.0.1", det.ports[(0, 0)]))
    det.tx.sendto(packet(20, 0, MOD_IDS[0][0], 1, 0), ("127.0.0.1", det.ports[(0, 0)]))
    s = stop_run(daemon, tmp_path / "summary.json")
    text = daemon.log_text()

    frames = first_run + second_run
    for src in s["sources"]:
        c = src["packets"]
        assert c["restarts"] == 1, (src["name"], c)
        assert c["late"] == 0 and c["far_ahead"] == 0 and c["frames_dropped"] == 0, c
    withheld_per_port = {}
    for (f, r, c, k) in det.withheld:
        withheld_per_port[(r, c)] = withheld_per_port.get((r, c), 0) + 1
    for (r, c) in det.halves:
        src = next(x for x in s["sources"] if x["name"] == f"m{det.mod_id(r, c)}i{r % 2}")
        assert src["packets"]["accepted"] == len(frames) * PPF - withheld_per_port.get((r, c), 0)
        assert src["packets"]["packets_lost"] == withheld_per_port.get((r, c), 0)
    first_port = next(x for x in s["sources"] if x["name"] == f"m{MOD_IDS[0][0]}i0")["packets"]
    assert (first_port["wrong_module"], first_port["wrong_place"]) == (1, 1)
    assert "detector restart" in text and "packets refused" in text
    assert s["stats"]["lost"] == 0 and s["stats"]["dropped"] == 0 and s["stats"]["stale"] == 0

    with h5py.File(s["streams"][0]["file"], "r") as h:
        data = h["/entry/data/data"][:]
        spec = h["/entry/instrument/detector/detectorSpecific"]
        assert data.shape == (len(frames), 4 * HALF[0], 2 * HALF[1])
        assert list(spec["frame_number"][:]) == frames, "the detector's own numbers"
        assert list(spec["sequence"][:]) == [0] * len(first_run) + [1] * len(second_run)
        assert list(spec["detector_timestamp"][:]) == [stamp(f) for f in frames]
        assert list(spec["bunch_id"][:]) == [bunch(f) for f in frames]
        assert not spec["frame_lost"][:].any() and not spec["frame_dropped"][:].any()
        assert (spec["module_mask"][:] == 0xFF).all()
        for i, f in enumerate(frames):
            assert (data[i] == det.image(f, lost)).all(), f"index {i + 1}, frame {f}"


def test_partial_readout_frames_are_complete_with_the_rows_read(daemons, tmp_path):
    """`readnrows` of half the rows: the detector sends packets 1-2 of 0-3 (their usual
    numbers); the frames are complete, the rows not read hold the fill value."""
    config = (
        '[[source]]\nname = "m1234"\npolicy = "block"\n'
        'stream = { beamtime = "bt", source = "jf", stream = "s1" }\n'
        '[source.udp]\nbind = "127.0.0.1"\nport = 0\nmod_id = 1234\n'
        f"packets_per_frame = {PPF}\nreadout_packets = [1, 3]\npayload_bytes = {PAYLOAD}\n"
        f'shape = [{HALF[0]}, {HALF[1]}]\npixel = "u16"\nfill = {FILL}\nrcvbuf_bytes = 4194304\n')
    daemon = start(daemons, tmp_path, config)
    port = daemon.ports()["m1234"]
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    frames = range(700, 720)
    for f in frames:
        for k in (1, 2):
            if (f, k) != (710, 2):
                tx.sendto(packet(f, k, 1234, 0, 0), ("127.0.0.1", port))
        time.sleep(0.002)
    s = stop_run(daemon, tmp_path / "summary.json")
    c = s["sources"][0]["packets"]
    assert (c["frames_complete"], c["frames_incomplete"], c["packets_lost"]) == (19, 1, 1)
    rows = PAYLOAD // 2 // HALF[1]
    with h5py.File(s["streams"][0]["file"], "r") as h:
        data = h["/entry/data/data"][:]
        spec = h["/entry/instrument/detector/detectorSpecific"]
        assert list(spec["packets_lost"][:]) == [1 if f == 710 else 0 for f in frames]
        for i, f in enumerate(frames):
            for k in range(PPF):
                part = data[i, k * rows:(k + 1) * rows]
                if k in (1, 2) and (f, k) != (710, 2):
                    assert (part.reshape(-1) == payload(f, 1234, 0, k)).all(), (f, k)
                else:
                    assert (part == FILL).all(), (f, k)


def test_a_run_that_receives_nothing_says_so(daemons, tmp_path):
    config = (
        '[[source]]\nname = "m1234"\npolicy = "block"\n'
        'stream = { beamtime = "bt", source = "jf", stream = "s1" }\n'
        '[source.udp]\nbind = "127.0.0.1"\nport = 0\nmod_id = 1234\n'
        f"packets_per_frame = {PPF}\npayload_bytes = {PAYLOAD}\n"
        f'shape = [{HALF[0]}, {HALF[1]}]\npixel = "u16"\nrcvbuf_bytes = 4194304\n')
    daemon = start(daemons, tmp_path, config)
    s = stop_run(daemon, tmp_path / "summary.json")
    assert s["streams"][0]["written"] is False and s["streams"][0]["file"] is None
    assert "nothing received, no file written" in daemon.log_text()
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("*.h5"))


def two_interface_ports(readnrows=None):
    """Module 1234 with two interfaces, each half module to its own port (`place` set): the
    configuration, and what gives the ports the daemon bound, in interface order."""
    text = ""
    for i in range(2):
        text += (
            f'[[source]]\nname = "m1234i{i}"\npolicy = "block"\ngrid = [2, 1]\n'
            'stream = { beamtime = "bt", source = "jf", stream = "s1" }\n'
            '[source.udp]\nbind = "127.0.0.1"\nport = 0\nmod_id = 1234\n'
            f"place = [{i}, 0]\ninterfaces = 2\ninterface = {i}\n"
            + (f"readnrows = {readnrows}\n" if readnrows else "")
            + f"packets_per_frame = {PPF}\npayload_bytes = {PAYLOAD}\n"
            f'shape = [{HALF[0]}, {HALF[1]}]\npixel = "u16"\nfill = {FILL}\nrcvbuf_bytes = 4194304\n')
    return (lambda daemon: [daemon.ports()[f"m1234i{i}"] for i in range(2)]), text


def test_readnrows_with_two_interfaces_gives_each_port_its_packets(daemons, tmp_path):
    """A module of 16 rows (two halves of 8, 2 rows per packet) read out with `readnrows 8`:
    rows 4-11 are read, so interface 0 sends its packets 2-3 and interface 1 its 0-1."""
    bound, config = two_interface_ports(readnrows=8)
    daemon = start(daemons, tmp_path, config)
    ports = bound(daemon)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = {0: (2, 3), 1: (0, 1)}
    frames = range(40, 60)
    for f in frames:
        for i, port in enumerate(ports):
            for k in sent[i]:
                tx.sendto(packet(f, k, 1234, i, 0), ("127.0.0.1", port))
        time.sleep(0.002)
    s = stop_run(daemon, tmp_path / "summary.json")
    for src in s["sources"]:
        c = src["packets"]
        assert (c["frames_complete"], c["frames_incomplete"], c["out_of_range"]) == (20, 0, 0), c
    rows = PAYLOAD // 2 // HALF[1]
    with h5py.File(s["streams"][0]["file"], "r") as h:
        data = h["/entry/data/data"][:]
        assert (h["/entry/instrument/detector/detectorSpecific/module_mask"][:] == 0b11).all()
        for n, f in enumerate(frames):
            for i in range(2):
                half = data[n, i * HALF[0]:(i + 1) * HALF[0]]
                for k in range(PPF):
                    part = half[k * rows:(k + 1) * rows].reshape(-1)
                    want = payload(f, 1234, i, k) if k in sent[i] else FILL
                    assert (part == want).all(), (f, i, k)


def test_swapped_interface_cables_are_refused_and_named(daemons, tmp_path):
    """Each port gets the other interface's packets (their headers say row 1 on the port
    placed at row 0): nothing is placed wrongly; the warning names what the packets said."""
    bound, config = two_interface_ports()
    daemon = start(daemons, tmp_path, config)
    ports = bound(daemon)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for f in range(1, 6):
        for i, port in enumerate(ports):
            for k in range(PPF):
                tx.sendto(packet(f, k, 1234, 1 - i, 0), ("127.0.0.1", port))
    s = stop_run(daemon, tmp_path / "summary.json")
    text = daemon.log_text()
    for src in s["sources"]:
        assert (src["packets"]["wrong_place"], src["packets"]["accepted"]) == (5 * PPF, 0)
    assert "row_column_seen=[1, 0]" in text and "place=[0, 0]" in text, text
    assert "all 40 packets received were refused" in text


def test_packets_of_another_module_name_the_id_seen(daemons, tmp_path):
    bound, config = two_interface_ports()
    daemon = start(daemons, tmp_path, config)
    ports = bound(daemon)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for k in range(PPF):
        tx.sendto(packet(1, k, 1301, 0, 0), ("127.0.0.1", ports[0]))
    s = stop_run(daemon, tmp_path / "summary.json")
    text = daemon.log_text()
    assert s["sources"][0]["packets"]["wrong_module"] == PPF
    assert "mod_id=1234" in text and "mod_id_seen=1301" in text, text
    assert "all 4 packets received were refused" in text
