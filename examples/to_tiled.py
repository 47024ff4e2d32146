"""Feeds detingestd's Bluesky documents to a Tiled server through bluesky's TiledWriter.

    python examples/to_tiled.py ZMQ_PUBLISH_ENDPOINT TILED_URI API_KEY

The daemon needs `[sink.zmq] bluesky = true` and a `publish` endpoint; the Tiled server must be
allowed to read the daemon's data directory (`tiled serve catalog ... -r <data_dir>`). Each
run's images appear in Tiled as `<start uid>/primary/image` while the run goes on.
"""

import json
import sys

import zmq
from bluesky.callbacks.tiled_writer import TiledWriter
from tiled.client import from_uri


def subscribe(endpoint):
    """A socket subscribed to the daemon's `bluesky` topic."""
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"bluesky")
    sub.connect(endpoint)
    return sub


def feed(sub, writer, one_run=False):
    """Hands every document to `writer` (a TiledWriter); with `one_run`, returns the start
    document's uid after the run's `stop`. Yields each document name as it goes."""
    while True:
        _, name, doc = sub.recv_multipart()
        name, doc = name.decode(), json.loads(doc)
        writer(name, doc)
        yield name, doc
        if one_run and name == "stop":
            return


def main(endpoint, uri, api_key):
    writer = TiledWriter(from_uri(uri, api_key=api_key), batch_size=1)
    for name, doc in feed(subscribe(endpoint), writer):
        if name == "start":
            print(f"run {doc['uid']}: {doc.get('detingest_stream')}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
