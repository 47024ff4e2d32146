"""Filter values are right whether or not a filter plugin is visible to the daemon (issue 13),
and `detingestd check` / `repair` find and mend files written with a plugin's extra values.

The daemon runs in three environments: no plugin at all (HDF5_PLUGIN_PRELOAD="::"),
hdf5plugin's plugins on HDF5_PLUGIN_PATH (what docs/FILES.md suggests for h5dump), and Debian's
bitshuffle and hdf5-filter-plugin packages' plugins (`make test` extracts them into
target/debian-hdf5-plugins, without installing them). Every file is read back with h5py +
hdf5plugin in a child process (a misread crashes it, which must not take pytest along) and
with h5dump."""

import os
import subprocess
import sys
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest

from conftest import ROOT

DEBIAN = Path(os.environ.get("DETINGEST_DEBIAN_PLUGINS",
                             ROOT / "target" / "debian-hdf5-plugins"))


def plugin_env(kind):
    env = {k: v for k, v in os.environ.items()
           if k not in ("HDF5_PLUGIN_PATH", "HDF5_PLUGIN_PRELOAD")}
    if kind == "none":
        env["HDF5_PLUGIN_PRELOAD"] = "::"
    elif kind == "hdf5plugin":
        env["HDF5_PLUGIN_PATH"] = hdf5plugin.PLUGIN_PATH
    else:
        if not (DEBIAN / "libh5bshuf.so").exists():
            pytest.fail(f"Debian's plugins are missing from {DEBIAN}: run `make test`, "
                        "which extracts them (or set DETINGEST_DEBIAN_PLUGINS)")
        env["HDF5_PLUGIN_PATH"] = str(DEBIAN)
    return env


def read_in_child(path, dataset="/entry/data/data"):
    """The dataset's filters and pixels, read by h5py + hdf5plugin in another process."""
    out = Path(str(path) + ".npy")
    code = ("import sys, h5py, hdf5plugin, numpy as np\n"
            "d = h5py.File(sys.argv[1], 'r')[sys.argv[2]]\n"
            "print({int(k): tuple(v) for k, v in d._filters.items()})\n"
            "np.save(sys.argv[3], d[()])\n")
    done = subprocess.run([sys.executable, "-c", code, str(path), dataset, str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"reader died ({done.returncode}): {done.stderr}"
    return eval(done.stdout), np.load(out)


def h5dump_pixels(path, dtype, shape, env):
    raw = Path(str(path) + ".bin")
    subprocess.run(["h5dump", "-d", "/entry/data/data", "-b", "LE", "-o", str(raw), str(path)],
                   env=env, check=True, capture_output=True)
    return np.fromfile(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)


@pytest.mark.parametrize("plugins", ["none", "hdf5plugin", "debian"])
@pytest.mark.parametrize("codec,pixel,dtype", [("bslz4", "u16", "u2"), ("bslz4", "u32", "u4"),
                                               ("bslz4", "f32", "f4"), ("lz4", "u16", "u2")])
def test_files_read_back_whichever_plugin_the_daemon_saw(run_daemon, expected_frames, detingestd,
                                                         plugins, codec, pixel, dtype):
    summary, cfg, master = run_daemon(
        synthetic=f'frames = 6\npixel = "{pixel}"\nshape = [40, 72]\nbank_frames = 3',
        writer=f'codec = "{codec}"', env=plugin_env(plugins))
    assert summary["streams"][0]["frames"] == 6
    want = expected_frames(cfg, dtype, (40, 72))
    data = master.parent / "s1_data_000001.h5"
    filters, got = read_in_child(data)
    if codec == "bslz4":
        values = filters[32008]
        # Version of whichever bitshuffle ran set_local (0.5 when none did), then element
        # size, automatic block, LZ4: exactly five values.
        assert len(values) == 5 and values[2:] == (np.dtype(dtype).itemsize, 0, 2), values
        if plugins == "none":
            assert values[:2] == (0, 5)
    else:
        assert filters == {32004: (0,)}
    assert np.array_equal(got, want)
    _, through_vds = read_in_child(master)
    assert np.array_equal(through_vds, want)
    for reader in ("hdf5plugin", "debian"):
        if codec == "lz4" or reader == "hdf5plugin":
            assert np.array_equal(h5dump_pixels(data, dtype, want.shape, plugin_env(reader)), want)
    checked = subprocess.run([detingestd, "check", str(data), str(master)],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert ": ok" in checked.stdout and "no filtered datasets" in checked.stdout


def affected_copy(good, bad):
    """Writes `bad` as detingest did before the fix with a plugin visible: the same groups,
    attributes and stored chunks, but filter values (major, minor, es) + (0, 5, es, 0, 2)."""
    with h5py.File(good, "r") as src, h5py.File(bad, "w") as dst:
        d = src["/entry/data/data"]
        es = d.dtype.itemsize
        dst.create_group("/entry").attrs["NX_class"] = src["/entry"].attrs["NX_class"]
        dst["/entry/definition"] = src["/entry/definition"][()]
        g = dst.create_group("/entry/data")
        for k, v in src["/entry/data"].attrs.items():
            g.attrs[k] = v
        # hdf5plugin's bitshuffle is registered in this process: its set_local prepends.
        out = g.create_dataset("data", shape=d.shape, maxshape=d.maxshape, dtype=d.dtype,
                               chunks=d.chunks, compression=32008,
                               compression_opts=(0, 5, es, 0, 2))
        for i in range(d.id.get_num_chunks()):
            info = d.id.get_chunk_info(i)
            mask, chunk = d.id.read_direct_chunk(info.chunk_offset)
            out.id.write_direct_chunk(info.chunk_offset, chunk, mask)
        for k, v in d.attrs.items():
            out.attrs[k] = v
        return tuple(out._filters["32008"])


def test_check_finds_and_repair_mends_files_written_with_prepended_values(
        run_daemon, expected_frames, detingestd, tmp_path):
    _, cfg, master = run_daemon(
        synthetic='frames = 7\nshape = [32, 48]\nbank_frames = 7\n[run]\nframes_per_file = 4',
        writer='codec = "bslz4"', env=plugin_env("none"))
    want = expected_frames(cfg, "u2", (32, 48))
    data = master.parent / "s1_data_000001.h5"
    good = tmp_path / "good.h5"
    data.rename(good)
    values = affected_copy(good, data)
    assert len(values) == 8 and values[3:] == (0, 5, 2, 0, 2), values

    checked = subprocess.run([detingestd, "check", str(data)], capture_output=True, text=True)
    assert checked.returncode == 1, checked.stdout
    assert "AFFECTED" in checked.stdout and "[0, 5, 2, 0, 2]" in checked.stdout

    repaired = subprocess.run([detingestd, "repair", str(data), str(good)],
                              capture_output=True, text=True)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "repaired /entry/data/data (1 chunks" not in repaired.stdout  # 4 frames, 4 chunks
    assert "repaired /entry/data/data (4 chunks copied unchanged)" in repaired.stdout
    assert f"{good}: nothing to repair" in repaired.stdout
    assert not list(data.parent.glob(".*.repair")), "no leftover temporary file"

    filters, got = read_in_child(data)
    assert filters == {32008: (0, 5, 2, 0, 2)}
    assert np.array_equal(got, want[:4])
    with h5py.File(data, "r") as f, h5py.File(good, "r") as g:
        for path in ("/entry", "/entry/data", "/entry/data/data"):
            assert dict(f[path].attrs) == dict(g[path].attrs), path
        assert f["/entry/definition"][()] == b"NXmx"
        for i in range(4):
            off = g["/entry/data/data"].id.get_chunk_info(i).chunk_offset
            assert (f["/entry/data/data"].id.read_direct_chunk(off)
                    == g["/entry/data/data"].id.read_direct_chunk(off)), "chunks unchanged"
    # The master's VDS reads through the repaired file.
    _, through_vds = read_in_child(master)
    assert np.array_equal(through_vds, want)
    assert subprocess.run([detingestd, "check", str(data)], capture_output=True).returncode == 0


def test_repair_refuses_values_it_cannot_explain_and_leaves_the_file(detingestd, tmp_path):
    path = tmp_path / "odd.h5"
    # Element size 4 on a 2-byte dataset, stored as given: no plugin in this writer.
    code = ("import sys, h5py\n"
            "f = h5py.File(sys.argv[1], 'w')\n"
            "f.create_dataset('x', shape=(2, 8), dtype='u2', chunks=(1, 8), compression=32008,"
            " compression_opts=(0, 5, 4, 0, 2), allow_unknown_filter=True)\n")
    subprocess.run([sys.executable, "-c", code, str(path)], env=plugin_env("none"), check=True)
    before = path.read_bytes()
    checked = subprocess.run([detingestd, "check", str(path)], capture_output=True, text=True)
    assert checked.returncode == 1 and "WRONG" in checked.stdout, checked.stdout
    refused = subprocess.run([detingestd, "repair", str(path)], capture_output=True, text=True)
    assert refused.returncode == 2 and "not repaired" in refused.stderr, refused.stderr
    assert path.read_bytes() == before
    missing = subprocess.run([detingestd, "check", str(tmp_path / "nope.h5")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "cannot read" in missing.stdout
