"""The Python test environment is one set of versions that work together
(tests/python/constraints.txt): every package the Makefile installs imports, as the
Makefile's own check names them, and pip finds no broken requirement."""

import importlib
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def makefile_imports():
    """The modules `make venv` checks for, from its `import ...;` line."""
    text = (ROOT / "Makefile").read_text()
    line = re.search(r'^venv:\n\t@if ! \$\(PY\) -c "import ([^;]+);', text, re.M)
    assert line, "the venv target's import check"
    return [m.strip() for m in line.group(1).split(",")]


def test_every_package_the_makefile_installs_imports():
    modules = makefile_imports()
    assert "tickit_devices.eiger" in modules and "tiled.server" in modules
    failed = {}
    for m in modules:
        try:
            importlib.import_module(m)
        except Exception as e:  # noqa: BLE001 - the point is to list every failure
            failed[m] = f"{type(e).__name__}: {e}"
    assert not failed, failed


def test_pip_finds_no_broken_requirement():
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_constraints_pin_every_installed_package():
    pinned = {line.split("==")[0].lower().replace("_", "-")
              for line in (ROOT / "tests/python/constraints.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    out = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True,
                         check=True).stdout
    installed = {line.split("==")[0].lower().replace("_", "-") for line in out.splitlines()
                 if "==" in line}
    assert installed <= pinned, sorted(installed - pinned)
