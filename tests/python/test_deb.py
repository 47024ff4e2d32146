"""The Debian package (`make deb`, docs/PACKAGING.md), built here from the binaries the tests
run (`packaging/deb/build.sh` on the debug build; `make deb` builds release): lintian finds no
error, dpkg installs it into a scratch root (its maintainer scripts run there, chrootless)
with the expected files, the conffile and the system user, the unit it installs passes
`systemd-analyze verify` against that root, an upgrade keeps an edited conffile, and a purge
leaves nothing of it but the data directory."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {
    "/usr/bin/detingestd", "/usr/include/detingest.h", "/etc/detingest/detingestd.toml",
    "/lib/systemd/system/detingestd.service", "/usr/share/doc/detingest/copyright",
    "/usr/share/doc/detingest/changelog.gz",
    "/usr/share/doc/detingest/examples/detingest.example.toml",
}


def sh(*args, **kw):
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{args}: {out.stdout}{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def deb(detingestd, tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("dpkg --root needs root")
    out = tmp_path_factory.mktemp("deb")
    target = Path(detingestd).parent
    # `cargo test` leaves the C library in deps/ only: build it beside the daemon, as `make
    # deb` does (in the daemon's profile).
    sh("cargo", "build", "-q", "-p", "detingest-ffi", *(["--release"] if target.name == "release"
                                                          else []), cwd=ROOT)
    # gzip: xz takes some 20 s on the debug binary, and the test reads the package once.
    return Path(sh(ROOT / "packaging/deb/build.sh", target, out,
                   env={**os.environ, "DEB_COMPRESS": "gzip"}).strip())


def scratch_root(path):
    """An empty system for dpkg: its database and the account files the scripts edit."""
    (path / "var/lib/dpkg/info").mkdir(parents=True)
    (path / "var/lib/dpkg/updates").mkdir()
    (path / "var/lib/dpkg/status").touch()
    etc = path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\n")
    for f, line in (("shadow", "root:*:19000:0:99999:7:::\n"), ("gshadow", "root:*::\n")):
        (etc / f).write_text(line)
        (etc / f).chmod(0o640)
    # systemd's own units, so that `systemd-analyze verify --root` resolves the targets ours
    # orders itself against.
    shutil.copytree("/lib/systemd/system", path / "lib/systemd/system", symlinks=True)
    return path


def dpkg(root, *args):
    return sh("dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends", *args)


def test_lintian_finds_no_error(deb):
    out = subprocess.run(["lintian", "--no-tag-display-limit", str(deb)], capture_output=True,
                         text=True)
    errors = [line for line in out.stdout.splitlines() if line.startswith("E:")]
    assert out.returncode == 0 and not errors, out.stdout + out.stderr


def test_install_upgrade_and_purge_in_a_scratch_root(deb, tmp_path):
    root = scratch_root(tmp_path / "root")
    dpkg(root, "-i", deb)
    files = set(dpkg(root, "-L", "detingest").split())
    assert EXPECTED <= files, EXPECTED - files
    libs = {f for f in files if "/libdetingest.so" in f or f.endswith("/detingest.pc")}
    assert len(libs) == 4, libs  # the library, its soname and -ldetingest links, pkg-config
    status = dpkg(root, "-s", "detingest")
    assert "/etc/detingest/detingestd.toml" in status.split("Conffiles:")[1]
    passwd = (root / "etc/passwd").read_text()
    user = next(line for line in passwd.splitlines() if line.startswith("detingest:"))
    assert user.endswith(":/nonexistent:/usr/sbin/nologin"), user
    uid = int(user.split(":")[2])
    assert uid < 1000 and (root / "data/detingest").stat().st_uid == uid
    assert 'data_dir = "/data/detingest"' in (root / "etc/detingest/detingestd.toml").read_text()
    unit = root / "lib/systemd/system/detingestd.service"
    assert "ExecStart=/usr/bin/detingestd serve" in unit.read_text()
    sh("systemd-analyze", "verify", f"--root={root}", "detingestd.service")
    # The installed binary runs and accepts the configuration it installed.
    sh(root / "usr/bin/detingestd", "check-config", root / "etc/detingest/detingestd.toml")

    # An upgrade (the same package again) keeps an operator's edit of the configuration.
    conf = root / "etc/detingest/detingestd.toml"
    conf.write_text(conf.read_text() + "\n# edited on site\n")
    dpkg(root, "--force-confold", "-i", deb)
    assert conf.read_text().endswith("# edited on site\n")

    # Purge: the package's files, conffile, /etc/detingest and user go; the data stay.
    (root / "data/detingest/run_master.h5").write_bytes(b"data")
    dpkg(root, "-P", "detingest")
    assert not any((root / f.lstrip("/")).exists() for f in EXPECTED)
    assert not (root / "etc/detingest").exists()
    assert "detingest:" not in (root / "etc/passwd").read_text()
    assert "detingest:" not in (root / "etc/group").read_text()
    assert (root / "data/detingest/run_master.h5").read_bytes() == b"data"
