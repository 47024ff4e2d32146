"""The documentation as a reader meets it: every relative link in README.md and docs/ leads
to a file (and heading) that exists, and every Python snippet runs as written, against what it
reads: `make demo`'s files (a short demo run in a scratch directory), a Blissdata database
with a run in it, a Kafka broker. The only change made to a snippet is the address of the
server it names (`redis://host:6379`, `host:9092`); an event file's snippet reads a run of
test_events.py's instrument as `run.nxs`."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_events import events_daemon  # noqa: F401 (a fixture)
from test_runs import Serve

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def snippets():
    for doc in DOCS:
        text = doc.read_text()
        for m in re.finditer(r"^```python\n(.*?)^```", text, re.M | re.S):
            line = text.count("\n", 0, m.start()) + 1
            yield pytest.param(m.group(1), id=f"{doc.relative_to(ROOT)}:{line}")


def anchor(heading):
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_leads_somewhere():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, frag = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
            elif frag and dest.suffix == ".md":
                heads = re.findall(r"^#+ (.*)$", dest.read_text(), re.M)
                if frag not in {anchor(h) for h in heads}:
                    broken.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken


@pytest.fixture(scope="module")
def demo_dir(detingestd, tmp_path_factory):
    """A scratch directory holding what `make demo` leaves in ./data (a shorter run)."""
    cwd = tmp_path_factory.mktemp("demo")
    subprocess.run([detingestd, "--log", "warn", "demo", "--data-dir", "data", "--frames", "40",
                    "--rate", "0", "--listen", "127.0.0.1:0"],
                   cwd=cwd, check=True, timeout=180, capture_output=True)
    return cwd


def run_snippet(code, cwd):
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, code + "\n" + out.stdout + out.stderr


@pytest.mark.parametrize("code", list(snippets()))
def test_every_python_snippet_runs_as_written(code, request, demo_dir, tmp_path):
    if "redis://host:6379" in code:
        server = request.getfixturevalue("redis_server")()
        serve = Serve(request.getfixturevalue("detingestd"), tmp_path,
                      live=f'publish = ""\nquery = ""\n[sink.redis]\nurl = "{server.url}"\n')
        try:
            assert serve.start(stream="doc", frames=10)[0] == 201
            serve.wait_run()
            run_snippet(code.replace("redis://host:6379", server.url), demo_dir)
        finally:
            serve.stop()
    elif "host:9092" in code:
        broker = request.getfixturevalue("kafka_broker")
        topic = re.search(r'produce\("([^"]+)"', code).group(1)
        broker.create_topics(topic)
        run_snippet(code.replace("host:9092", broker.bootstrap), demo_dir)
        consumer = broker.consumer(topic)
        got = []
        while len(got) < 2:
            m = consumer.poll(10)
            assert m is not None, f"the snippet's messages on {topic}: {got}"
            got.append(m.value()[4:8])
        assert got == [b"pl72", b"6s4t"]
    elif "scippnexus" in code:
        # An event run's file (tests/python/test_events.py's instrument), as `run.nxs`.
        import shutil
        import time

        import numpy as np
        from test_events import produce_run, start_and_stop
        request.getfixturevalue("events_daemon")
        broker = request.getfixturevalue("kafka_broker")
        rng = np.random.default_rng(1)
        _, wrdn, _ = start_and_stop(broker, "doc-run",
                                    lambda: produce_run(broker, time.time_ns(), 10, rng))
        shutil.copy(wrdn.file_name, tmp_path / "run.nxs")
        run_snippet(code, tmp_path)
    else:
        run_snippet(code, demo_dir)


def test_the_snippets_found_are_the_ones_the_docs_have():
    ids = [p.id for p in snippets()]
    assert len(ids) >= 5 and any(i.startswith("README.md") for i in ids), ids
