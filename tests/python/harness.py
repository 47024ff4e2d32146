"""One way to run detingestd in a test, and one HTTP client.

`Daemon` runs `detingestd serve` (or `run`, `demo`) with `--ready-file`: the daemon binds
the ports the kernel gives it (`[control] listen = "127.0.0.1:0"`, ZeroMQ endpoints
`tcp://127.0.0.1:*`) and, once ready, writes what it bound; a test reads its addresses from
there instead of guessing a free port, and waits for that file instead of sleeping. `http` is
the one HTTP client: every call to a daemon's API goes through it."""

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

#: A control API on a port the kernel picks, and no live sockets: what most tests want.
QUIET = '[control]\nlisten = "127.0.0.1:0"\n[sink.zmq]\npublish = ""\nquery = ""\n'


class Answer(NamedTuple):
    """An HTTP answer, whatever its status."""

    status: int
    body: bytes
    headers: object

    def json(self):
        return json.loads(self.body or b"{}")


def http(method, url, body=None, *, headers=None, raw=None, token=None, timeout=60):
    """`method url` with `body` as JSON (or `raw` bytes); an `Answer`, errors included."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Answer(r.status, r.read(), r.headers)
    except urllib.error.HTTPError as e:
        return Answer(e.code, e.read(), e.headers)


class ApiError(Exception):
    """The API refused a call: its status and message."""

    def __init__(self, status, message):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


class Daemon:
    """`detingestd <command>` on `config` (TOML text, or the path of a file), its output in
    `<tmp>/<name>.log`. With `ready`, returns once the daemon wrote its ready file (or fails
    with its log if it ended first)."""

    def __init__(self, exe, tmp, name, config, *, command="serve", args=(), env=None,
                 log="info", preexec_fn=None, ready=True, data=None, run_defaults=None,
                 source="eiger"):
        self.name, self.data, self.source = name, data, source
        #: What every `start` asks besides its own fields (its beamtime and source).
        self.run_defaults = dict(run_defaults or {})
        if isinstance(config, Path):
            self.cfg = config
        else:
            self.cfg = Path(tmp) / f"{name}.toml"
            self.cfg.write_text(config)
        self.log = Path(tmp) / f"{name}.log"
        self.ready_file = Path(tmp) / f"{name}.ready.json"
        self.ready_file.unlink(missing_ok=True)
        argv = [str(exe), "--log", log, "--ready-file", str(self.ready_file), command,
                "--config", str(self.cfg), *map(str, args)]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         preexec_fn=preexec_fn)
        self.info = None
        if ready:
            self.wait_ready()

    def wait_ready(self, timeout=60):
        """What the daemon bound, once it wrote it."""
        deadline = time.time() + timeout
        while not self.ready_file.exists():
            code = self.proc.poll()
            assert code is None, f"{self.name} ended ({code}) before it was ready:\n{self.log_text()}"
            assert time.time() < deadline, f"{self.name} not ready in {timeout} s:\n{self.log_text()}"
            time.sleep(0.02)
        self.info = json.loads(self.ready_file.read_text())
        return self.info

    @property
    def url(self):
        """The control API, `http://host:port`."""
        return self.info["url"]

    @property
    def port(self):
        return int(self.info["listen"].rsplit(":", 1)[1])

    def ports(self):
        """`{source name: port}` of the sources that bound one (`detingestd run`: a UDP
        source's `port = 0` resolved)."""
        return {s["name"]: int(s["bound"].rsplit(":", 1)[1])
                for s in self.info["sources"] if "bound" in s}

    def endpoint(self, sink="zmq", key="publish_endpoint"):
        """An endpoint a sink bound (`zmq` publish/query, `stream2` endpoint)."""
        return self.info["sinks"][sink][key]

    def request(self, method, path, body=None, **kw):
        """The API's `Answer` to `method path`, whatever its status."""
        return http(method, self.url + path, body, **kw)

    def call(self, method, path, body=None, token=None):
        """The JSON answer (the text of `/metrics`); an `ApiError` for a refusal."""
        a = self.request(method, path, body, token=token)
        if a.status >= 400:
            try:
                message = a.json().get("error", a.body.decode())
            except ValueError:
                message = a.body.decode()
            raise ApiError(a.status, message)
        return a.body.decode() if path == "/metrics" else a.json()

    def get(self, path, token=None):
        return self.call("GET", path, token=token)

    def answer(self, method, path, body=None, token=None, headers=None):
        """`(status, JSON)` of `method path`, a refusal's included."""
        a = self.request(method, path, body, token=token, headers=headers)
        return a.status, a.json()

    def start(self, **body):
        """`(status, JSON)` of `POST /run/start` with `body` over `run_defaults`."""
        return self.answer("POST", "/run/start", {**self.run_defaults, **body})

    def wait_run(self, stream=None, timeout=60):
        """The status once the run (of `stream`, `beamtime/source/name`, if given) has ended."""
        deadline = time.time() + timeout
        while True:
            status = self.get("/run")
            ours = stream is None or status["stream"] == stream
            if ours and status["state"] not in ("running", "idle"):
                return status
            assert time.time() < deadline, (status, self.log_text()[-3000:])
            time.sleep(0.05)

    def master(self, stream, beamtime="bt", source=None):
        """The master file of `stream` in the daemon's data directory."""
        return Path(self.data) / beamtime / (source or self.source) / f"{stream}_master.h5"

    def log_text(self):
        return self.log.read_text(errors="replace")

    def wait_for_log(self, text, timeout=30):
        """The log once `text` is in it (failing if the daemon ends first)."""
        deadline = time.time() + timeout
        while text not in (log := self.log_text()):
            assert self.proc.poll() is None, log
            assert time.time() < deadline, f"{text!r} never appeared in the log:\n{log}"
            time.sleep(0.02)
        return log

    def stop(self, sig=signal.SIGINT, timeout=60):
        """Sends `sig` (a running daemon) and returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def close(self, sig=signal.SIGINT):
        """Stops it and asserts a clean exit."""
        code = self.stop(sig)
        assert code == 0, self.log_text()[-3000:]

    def kill(self):
        self.proc.kill()
        self.proc.wait(timeout=10)

    def running(self):
        return self.proc.poll() is None


def connect_ready(sock, endpoint, timeout=10):
    """Connects the ZeroMQ `sock` to `endpoint` (a daemon's socket) and returns once the
    connection's handshake is done: the daemon then holds the pipe to it (a PUSH may send to
    it; a PUB has its subscriptions, which go out first on the connection)."""
    import zmq
    from zmq.utils.monitor import recv_monitor_message
    event = getattr(zmq, "EVENT_HANDSHAKE_SUCCEEDED", zmq.EVENT_CONNECTED)
    monitor = sock.get_monitor_socket(event)
    try:
        sock.connect(endpoint)
        assert monitor.poll(timeout * 1000), f"no connection to {endpoint} in {timeout} s"
        recv_monitor_message(monitor)
    finally:
        sock.disable_monitor()
        monitor.close()
