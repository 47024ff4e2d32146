"""Operations (issue 20): Prometheus metrics parsed by prometheus-client's parsers during and
across runs, /health, the bearer token and the cross-site rules, request limits, the systemd
unit (systemd-analyze verify) and sd_notify readiness, and the live page in Debian's Chromium
driven by playwright-core."""

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families



ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token-for-the-tests-0123"


def write_config(tmp, port=0, control=""):
    token = tmp / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    cfg = tmp / "ops.toml"
    cfg.write_text(
        f'data_dir = "{tmp / "data"}"\n[live]\npublish = ""\nquery = ""\n'
        f'[control]\nlisten = "127.0.0.1:{port}"\n{control.replace("TOKEN_FILE", str(token))}\n'
        '[[source]]\nname = "det"\nstream = { beamtime = "bt", source = "det", stream = "x" }\n'
        "grid = [1, 1]\n[source.synthetic]\nshape = [256, 512]\nframes = 0\nrate_hz = 100.0\n"
        "bank_frames = 8\n")
    return cfg


@pytest.fixture
def serve(daemons, tmp_path):
    """`serve(control=..., port=0, nofile=None, env=None)`: the daemon on a 256 x 512 synthetic
    detector; `port` 0: one the kernel picks; `nofile`: its open-file limit (`ulimit -n`)."""
    def make(control="", port=0, nofile=None, env=None):
        def limit():  # as `ulimit -n` in the daemon's shell
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        cfg = write_config(tmp_path, port, control)
        return daemons(f"serve-{time.monotonic_ns()}", config=cfg, env=env, preexec_fn=limit)
    return make


def metrics(d, token=None):
    """`GET /metrics`'s text, checked to be Prometheus text 0.0.4."""
    status, data, headers = d.request("GET", "/metrics", token=token)
    assert status == 200, data
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return data.decode()


def samples(text):
    """{(name, sorted labels): value} and {family: type}, by prometheus-client's parser."""
    values, types = {}, {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return values, types


def start(d, stream, token=None, **kw):
    status, body = d.answer("POST", "/run/start",
                          {"beamtime": "bt", "source": "det", "stream": stream, **kw}, token)
    assert status == 201, body
    return body


def test_metrics_parse_during_runs_and_counters_only_grow(serve):
    d = serve()
    assert d.answer("GET", "/health") == (200, {"status": "ok"})
    start(d, "m1")
    scrapes = []
    for _ in range(6):
        time.sleep(0.4)
        scrapes.append(samples(metrics(d)))
    values, types = scrapes[-1]
    for fam in ["detingest_frames_indexed", "detingest_indices_recorded", "detingest_raw_bytes",
                "detingest_source_frames", "detingest_notifications"]:
        assert types[fam] == "counter", fam
    for fam in ["detingest_compress_seconds", "detingest_write_seconds",
                "detingest_notify_latency_seconds"]:
        assert types[fam] == "histogram", fam
        buckets = sorted((float(dict(k[1])["le"]), v) for k, v in values.items()
                         if k[0] == fam + "_bucket")
        counts = [v for _, v in buckets]
        assert counts == sorted(counts), f"{fam}: buckets cumulative"
        assert buckets[-1][0] == float("inf") and buckets[-1][1] == values[(fam + "_count", ())]
        assert values[(fam + "_count", ())] > 0, fam
    assert values[("detingest_run_state", (("state", "running"),))] == 1
    assert values[("detingest_files_open", ())] == 1
    assert ("detingest_queue_items", (("queue", "write"),)) in values
    assert values[("detingest_source_frames_total", (("source", "det"),))] > 0
    assert ("detingest_sink_published_total", (("sink", "zmq"),)) in values

    def counters(v, t):
        return {k: x for k, x in v.items()
                if t.get(k[0].removesuffix("_total")) == "counter"
                or k[0].endswith(("_bucket", "_count", "_sum"))}

    for (a, ta), (b, tb) in zip(scrapes, scrapes[1:]):
        ca, cb = counters(a, ta), counters(b, tb)
        for k, x in ca.items():
            assert cb.get(k, 0) >= x, f"{k} went down: {x} -> {cb.get(k)}"
    first = counters(*scrapes[0])
    recorded_before = values[("detingest_indices_recorded_total", ())]
    assert recorded_before > first[("detingest_indices_recorded_total", ())], "counters move"

    # Across runs: the second run's counters start at zero, the metrics go on from the first.
    status, stopped = d.answer("POST", "/run/stop")
    assert status == 200
    after_stop, t = samples(metrics(d))
    assert after_stop[("detingest_runs_total", (("reason", "stop"),))] == 1
    assert after_stop[("detingest_indices_recorded_total", ())] == stopped["frames_recorded"]
    assert after_stop[("detingest_run_state", (("state", "finished"),))] == 1
    start(d, "m2")
    time.sleep(0.8)
    second, t2 = samples(metrics(d))
    for k, x in counters(after_stop, t).items():
        assert counters(second, t2).get(k, 0) >= x, f"{k} went down across runs"
    info = [k for k in second if k[0] == "detingest_run_info"]
    assert info == [("detingest_run_info", (("state", "running"), ("stream", "bt/det/m2")))]


def test_token_cross_site_and_limits(serve, detingestd, tmp_path):
    d = serve(control='token_file = "TOKEN_FILE"\nmax_body_bytes = 4096')
    good = {"beamtime": "bt", "source": "det", "stream": "t1", "frames": 20}
    # Reads and writes need the token; the page's files and /health do not.
    assert d.answer("GET", "/run")[0] == 401
    assert d.request("GET", "/metrics")[0] == 401
    assert d.request("GET", "/preview")[0] == 401
    status, page, headers = d.request("GET", "/")
    assert status == 200 and b"detingestd" in page
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert d.answer("GET", "/health")[0] == 200
    status, body = d.answer("POST", "/run/start", good)
    assert status == 401 and "bearer token" in body["error"]
    assert d.request("POST", "/run/start", good)[2]["WWW-Authenticate"] == "Bearer"
    assert d.answer("POST", "/run/start", good, token="wrong-token-of-the-same-size-00")[0] == 401
    # Cross-site requests are refused even with the token.
    for h in [{"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
              {"Sec-Fetch-Site": "same-site"}]:
        status, body = d.answer("POST", "/run/start", good, token=TOKEN, headers=h)
        assert status == 403, (h, body)
    # Malformed and oversized requests: 4xx, nothing started.
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert d.request("POST", "/run/start", raw=b"{not json", headers=auth)[0] == 400
    assert d.request("POST", "/run/start", raw=b"x" * 5000, headers=auth)[0] == 413
    assert d.request("POST", "/run/start", raw=json.dumps({**good, "stream": "../up"}).encode(),
                     headers=auth)[0] == 400
    assert d.request("DELETE", "/run", headers=auth)[0] == 405
    assert d.request("GET", "/nope", headers=auth)[0] == 404
    assert d.answer("GET", "/run", token=TOKEN)[1]["state"] == "idle", "nothing changed"
    # Same-origin requests with the token go through.
    status, body = d.answer("POST", "/run/start", good, token=TOKEN,
                          headers={"Origin": f"http://127.0.0.1:{d.port}",
                                   "Sec-Fetch-Site": "same-origin"})
    assert status == 201, body
    d.close()

    # public_reads: reads open, writes still need the token.
    p = serve(control='token_file = "TOKEN_FILE"\npublic_reads = true')
    assert p.answer("GET", "/run")[0] == 200
    assert "detingest_runs" in metrics(p)
    assert p.answer("POST", "/run/stop")[0] == 401


def test_loopback_without_token_refuses_foreign_host_names(serve):
    d = serve()
    h = {"Host": "rebound.evil.example"}
    assert d.request("GET", "/run", headers=h)[0] == 403
    assert d.request("POST", "/run/stop", headers=h)[0] == 403
    assert d.request("GET", "/run", headers={"Host": f"localhost:{d.port}"})[0] == 200


def test_bad_control_settings_name_their_key(detingestd, tmp_path):
    def check(control):
        cfg = write_config(tmp_path, 1, control)
        text = cfg.read_text().replace('listen = "127.0.0.1:1"\n', "")
        cfg.write_text(text)
        r = subprocess.run([detingestd, "check-config", str(cfg)], capture_output=True, text=True)
        return r.returncode, r.stderr

    code, err = check('listen = "0.0.0.0:8450"')
    assert code != 0 and "control.listen" in err and "token_file" in err
    assert check('listen = "0.0.0.0:8450"\ntoken_file = "TOKEN_FILE"')[0] == 0
    code, err = check("max_body_bytes = 1")
    assert code != 0 and "control.max_body_bytes" in err
    # An unreadable or shared token file stops `serve` with the key named.
    cfg = write_config(tmp_path, 0, 'token_file = "TOKEN_FILE"')
    (tmp_path / "token").chmod(0o644)
    r = subprocess.run([detingestd, "serve", "--config", str(cfg)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode != 0 and "control.token_file" in r.stderr and "chmod 600" in r.stderr


def test_make_install_puts_a_unit_that_verifies_and_readiness_is_notified(serve, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing (Debian's systemd package)")
    unit = (ROOT / "packaging" / "detingestd.service").read_text()
    assert "/usr/local/bin/detingestd serve" in unit
    # `make install-daemon` into a prefix of our own (the binary `make test` built: a build
    # of the daemon alone would unify features differently and rebuild its dependencies):
    # the unit's ExecStart names the installed binary.
    prefix = tmp_path / "prefix"
    subprocess.run(["make", "-s", "-C", str(ROOT), "install-daemon", f"PREFIX={prefix}",
                    "PROFILE=debug", "INSTALL_BUILD=0"], check=True, capture_output=True, timeout=900)
    installed = prefix / "lib" / "systemd" / "system" / "detingestd.service"
    assert f"ExecStart={prefix}/bin/detingestd serve" in installed.read_text()
    assert os.access(prefix / "bin" / "detingestd", os.X_OK)
    r = subprocess.run([analyze, "verify", str(installed)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "detingestd.service" not in r.stderr, r.stderr
    for needed in ["Type=notify", "ProtectSystem=strict", "ReadWritePaths=", "Restart=on-failure",
                   "CapabilityBoundingSet=CAP_NET_ADMIN CAP_SYS_NICE CAP_IPC_LOCK",
                   "NoNewPrivileges=yes", "User=detingest"]:
        assert needed in unit, needed

    # READY=1 arrives on $NOTIFY_SOCKET once the API answers.
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    d = serve(env={**os.environ, "NOTIFY_SOCKET": path})
    assert b"READY=1" in sock.recv(4096)
    assert d.answer("GET", "/health")[0] == 200
    d.close()
    assert b"STOPPING=1" in sock.recv(4096)


def node_and_browser():
    node = shutil.which("node")
    modules = ROOT / "target" / "node" / "node_modules"
    if node is None or not (modules / "playwright-core").is_dir() or not Path("/usr/bin/chromium").exists():
        pytest.fail("the browser test needs node, /usr/bin/chromium and playwright-core in "
                    "target/node (make test installs them)")
    return node, str(modules)


def run_page(node, modules, url, phase, shot, signal_file=""):
    return subprocess.Popen(
        [node, str(ROOT / "tests" / "browser" / "page.cjs"), url, TOKEN, str(shot), phase,
         str(signal_file)], env={**os.environ, "NODE_PATH": modules},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_live_page_in_chromium(serve, tmp_path):
    node, modules = node_and_browser()
    d = serve(control='token_file = "TOKEN_FILE"')
    start(d, "page1", token=TOKEN)
    artifacts = ROOT / "target" / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "live-page.png"
    p = run_page(node, modules, f"http://127.0.0.1:{d.port}/", "live", shot)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err + out
    seen = json.loads(out.strip().splitlines()[-1])
    assert "bt/det/page1" in seen["caption"]
    assert "401" in seen["refused"]
    assert shot.stat().st_size > 10_000
    # The run the form started: its fields (frames 40, frames_per_file 25) were obeyed.
    deadline = time.time() + 60
    while (run := d.answer("GET", "/run", token=TOKEN)[1])["state"] == "running":
        assert time.time() < deadline, run
        time.sleep(0.1)
    assert (run["stream"], run["frames_recorded"]) == ("bt/det/from_page", 40), run
    files = sorted(p.name for p in (tmp_path / "data" / "bt" / "det").glob("from_page_data_*.h5"))
    assert files == ["from_page_data_000001.h5", "from_page_data_000002.h5"], files


def test_live_page_reconnects_through_a_daemon_restart(detingestd, serve, tmp_path):
    node, modules = node_and_browser()
    d = serve(control='token_file = "TOKEN_FILE"')
    start(d, "before", token=TOKEN)
    flag = tmp_path / "page-live"
    p = run_page(node, modules, f"http://127.0.0.1:{d.port}/", "reconnect",
                 tmp_path / "unused.png", flag)
    deadline = time.time() + 60
    while not flag.exists():
        assert time.time() < deadline and p.poll() is None, p.stderr.read() if p.poll() else ""
        time.sleep(0.1)
    port = d.port
    d.close()
    time.sleep(2)
    again = serve(control='token_file = "TOKEN_FILE"', port=port)
    start(again, "after", token=TOKEN)
    out, err = p.communicate(timeout=90)
    assert p.returncode == 0, err + out
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["went_down"] and seen["came_back"]
