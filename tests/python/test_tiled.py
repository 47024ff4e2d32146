"""The daemon's Bluesky documents through bluesky's own TiledWriter into a real Tiled server
(`tiled serve catalog --temp`, started here on a free loopback port and stopped afterwards),
and the images read back through Tiled's HTTP client: while the run goes on (every index up to
the readable watermark equals what h5py reads) and after it ends (all indices, lost ones as
the fill value)."""

import importlib.util
import subprocess
import threading
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import zmq

from conftest import write_config

SPECIFIC = "/entry/instrument/detector/detectorSpecific"



def to_tiled():
    """examples/to_tiled.py, the recipe docs/NOTIFICATIONS.md gives, as a module."""
    path = Path(__file__).resolve().parents[2] / "examples" / "to_tiled.py"
    spec = importlib.util.spec_from_file_location("to_tiled", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class DocumentFeed(threading.Thread):
    """Runs examples/to_tiled.py's feed: the daemon's `bluesky` topic into TiledWriter."""

    def __init__(self, endpoint, client):
        super().__init__(daemon=True)
        from bluesky.callbacks.tiled_writer import TiledWriter
        self.example = to_tiled()
        self.writer = TiledWriter(client, batch_size=1)
        self.sub = self.example.subscribe(endpoint)
        self.sub.setsockopt(zmq.RCVTIMEO, 30000)
        self.names, self.error, self.run_uid = [], None, None
        self.datums = 0

    def run(self):
        try:
            for name, doc in self.example.feed(self.sub, self.writer, one_run=True):
                if name == "start":
                    self.run_uid = doc["uid"]
                self.names.append(name)
                self.datums += name == "stream_datum"
        except Exception as e:  # reported by the test
            self.error = e


def test_tiled_serves_every_frame_through_tiledwriter(daemons, tmp_path, tiled_server):
    endpoint = f"ipc://{tmp_path}/pub"  # the viewer connects first
    frames, lost = 30, {7, 18}
    cfg = write_config(
        tmp_path / "tiled.toml", tmp_path / "data",
        synthetic=f"frames = {frames}\nshape = [24, 40]\nbank_frames = {frames}\nrate_hz = 30.0\n"
                  f"withhold = {[[f, 0] for f in sorted(lost)]}",
        writer="flush_every_frames = 1",
        live=f'publish = "{endpoint}"\nquery = ""\nbluesky = true\nwait_for_subscribers = 1')
    cfg.write_text(cfg.read_text() + "[run]\nframes_per_file = 8\n")
    feed = DocumentFeed(endpoint, tiled_server)
    feed.start()
    daemon = daemons("run", config=cfg, command="run", log="warn", ready=False).proc
    assert daemon.wait(timeout=120) == 0
    feed.join(timeout=60)
    assert feed.error is None, repr(feed.error)
    assert feed.names.count("stream_resource") == 4, "one per data file (8 frames each)"
    assert feed.datums == frames

    master = tmp_path / "data" / "bt" / "det" / "s1_master.h5"
    with h5py.File(master, "r") as f:
        want = f["/entry/data/data"][()]
        lost_flags = f[SPECIFIC + "/frame_lost"][()]
    assert [i + 1 for i in np.flatnonzero(lost_flags)] == [f for f in sorted(lost)]
    image = tiled_server[feed.run_uid]["primary"]["image"]
    assert image.shape == (frames, 24, 40) and image.dtype == np.uint16
    got = image.read()
    assert np.array_equal(got, want), "Tiled serves what h5py reads, lost frames as fill"
    assert not got[6].any() and got[5].any()
