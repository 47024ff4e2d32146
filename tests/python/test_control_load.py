"""The control API under load a facility network brings (docs/OPERATIONS.md): thousands of idle
connections, clients that send their request head a byte at a time, fifty live pages, all
against a daemon limited to 512 file descriptors (`ulimit -n 512`). /health, a start and a
stop still answer within a second during and after, and every page gets its events."""

import json
import resource
import socket
import threading
import time

from http.client import HTTPConnection  # held event streams (harness.http reads whole answers)

from harness import http
from test_operations import TOKEN, serve, start  # noqa: F401

# Every answer within a second while 2,200 connections are held. /health once took 1.02 s on CI
# and 1 run in 3 here: a handshake dropped by std's accept queue of 128 and retried by the
# client a second later. The listener's queue is now the kernel's maximum (control/mod.rs):
# worst /health 29-78 ms in six runs.
LIMIT = 1.0


def timed(d, method, path, body=None):
    """Status and seconds of one request on a new connection."""
    t0 = time.monotonic()
    a = http(method, d.url + path, body, headers={"Content-Type": "application/json"},
             timeout=5)
    return a.status, time.monotonic() - t0


def raise_own_limit(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


def test_idle_and_slow_clients_cannot_take_the_api_down(serve):
    raise_own_limit(8192)
    d = serve(nofile=512)
    idle, slow = [], []
    stop = threading.Event()
    try:
        for _ in range(2000):  # connect and say nothing
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", d.port))
            idle.append(s)
        for _ in range(200):  # a request head, one byte now and then (slowloris)
            s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
            s.send(b"G")
            slow.append(s)

        def dribble():
            while not stop.is_set():
                for s in slow:
                    try:
                        s.send(b"E")
                    except OSError:
                        pass
                stop.wait(0.5)

        threading.Thread(target=dribble, daemon=True).start()
        worst = 0.0
        for _ in range(10):  # during: every answer comes
            status, took = timed(d, "GET", "/health")
            assert status == 200
            worst = max(worst, took)
        run = {"beamtime": "bt", "source": "det", "stream": "busy"}
        status, took = timed(d, "POST", "/run/start", run)
        assert status == 201 and took < LIMIT, (status, took)
        time.sleep(0.5)
        status, took = timed(d, "POST", "/run/stop", {})
        assert status == 200 and took < LIMIT, (status, took)
        assert worst < LIMIT, worst
    finally:
        stop.set()
        for s in idle + slow:
            s.close()
    time.sleep(0.5)
    for _ in range(5):  # after
        status, took = timed(d, "GET", "/health")
        assert status == 200 and took < LIMIT, (status, took)
    threads = len(list((__import__("pathlib").Path(f"/proc/{d.proc.pid}/task")).iterdir()))
    log = d.log.read_text()
    assert d.proc.poll() is None, log[-2000:]
    print(f"worst /health during: {worst * 1000:.0f} ms; daemon threads: {threads}")


def test_fifty_live_pages_all_get_events_within_a_second(serve):
    d = serve()
    start(d, "pages")
    got, errors = [], []
    t0 = time.monotonic()

    def page():
        try:
            c = HTTPConnection("127.0.0.1", d.port, timeout=10)
            c.request("GET", "/events")
            r = c.getresponse()
            assert r.status == 200, r.status
            buf = b""
            while b"data:" not in buf:
                buf += r.read1(4096)
            got.append(time.monotonic() - t0)
            time.sleep(1.5)  # stay connected while the others come
            c.close()
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(repr(e))

    threads = [threading.Thread(target=page) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    assert len(got) == 50 and max(got) < 1, sorted(got)[-5:]
    # Beyond [control] max_event_clients (64): 503, not a page left waiting.
    held = []
    for _ in range(64):
        c = HTTPConnection("127.0.0.1", d.port, timeout=10)
        c.request("GET", "/events")
        held.append((c, c.getresponse()))
    assert all(r.status == 200 for _, r in held)
    c = HTTPConnection("127.0.0.1", d.port, timeout=10)
    c.request("GET", "/events")
    assert c.getresponse().status == 503
    for c, _ in held:
        c.close()
    print(f"50 pages: first event after {min(got) * 1000:.0f}-{max(got) * 1000:.0f} ms")
