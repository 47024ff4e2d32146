"""Shared fixtures: the detingestd binary and a helper that writes a config and runs it."""

import json
import os
import subprocess
import time
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
