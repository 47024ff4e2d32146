"""The master file as the readers of the field see it: fabio (pyFAI's reader, EIGER format),
silx (`silx.io.nxdata.get_default`) and h5py each find the run's frames exactly once with
`master_data = "vds"` (the default); `"links"` is the DECTRIS layout (links only, as XDS's
neggia reads it), which fabio also counts once and nexusformat reads file by file (it models
any VDS as one frame per source file, so it misreads the VDS: asserted, so a fix shows)."""

import fabio
import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest
import silx.io
import silx.io.nxdata
from nexusformat.nexus import nxload

N, K = 12, 5


def run(run_daemon, master_data, chunking="module"):
    summary, cfg, path = run_daemon(
        synthetic=f"frames = {N}\nshape = [24, 40]\nbank_frames = {N}",
        writer=f'codec = "bslz4"\n[run]\nframes = {N}\nframes_per_file = {K}\n'
               f'master_data = "{master_data}"\nchunking = "{chunking}"')
    assert summary["streams"][0]["frames"] == N
    return cfg, path


def test_vds_master_every_reader_sees_each_frame_once(run_daemon, expected_frames):
    cfg, master = run(run_daemon, "vds")
    want = expected_frames(cfg, "u2", (24, 40))
    with h5py.File(master, "r") as f:
        assert list(f["/entry/data"]) == ["data"]
        assert np.array_equal(f["/entry/data/data"][()], want)
    img = fabio.open(str(master))
    assert img.nframes == N, "fabio counts every frame once"
    assert np.array_equal(img.getframe(N - 1).data, want[N - 1])
    with silx.io.open(str(master)) as f:
        default = silx.io.nxdata.get_default(f)
        assert default is not None and default.signal.shape == (N, 24, 40)
        assert np.array_equal(default.signal[3], want[3])
    # nexusformat 2.1 models any VDS as one frame per source file (its own scans' layout), so
    # it reports (3, 24, 40) here; the links layout below is what it reads right.
    assert nxload(str(master)).plottable_data.nxsignal.shape == (3, 24, 40)


def test_links_master_is_the_dectris_layout(run_daemon, expected_frames):
    cfg, master = run(run_daemon, "links", chunking="frame")
    want = expected_frames(cfg, "u2", (24, 40))
    with h5py.File(master, "r") as f:
        names = sorted(f["/entry/data"])
        assert names == ["data_000001", "data_000002", "data_000003"]
        linked = np.concatenate([f["/entry/data/" + n][()] for n in names])
        assert np.array_equal(linked, want)
        for n in names:  # what XDS's neggia needs: plain chunked datasets, one image a chunk
            d = f["/entry/data/" + n]
            assert not d.is_virtual and d.chunks == (1, 24, 40)
    img = fabio.open(str(master))
    assert img.nframes == N
    assert np.array_equal(img.getframe(K).data, want[K])
    root = nxload(str(master))
    shapes = [root.entry.data[n].shape for n in names]
    assert shapes == [(K, 24, 40), (K, 24, 40), (N - 2 * K, 24, 40)]
    assert np.array_equal(root.entry.data.data_000002.nxdata, want[K:2 * K])


@pytest.mark.parametrize("master_data,fabio_frames", [("both", 2 * N)])
def test_both_is_what_it_says(run_daemon, master_data, fabio_frames):
    _, master = run(run_daemon, master_data)
    assert fabio.open(str(master)).nframes == fabio_frames, "fabio counts the VDS and the links"


def test_a_run_that_ends_short_of_its_count_gets_a_vds_of_what_was_written(run_daemon):
    """The VDS of a run with a frame count is written when the run starts (readers and a crash
    find it); a run that ends early rewrites it over the indices it has."""
    summary, _, master = run_daemon(
        synthetic="frames = 7\nshape = [24, 40]",
        writer=f"[run]\nframes = {N}\nframes_per_file = {K}")
    assert summary["streams"][0]["frames"] == 7
    with h5py.File(master, "r") as f:
        assert f["/entry/data/data"].shape == (7, 24, 40)
    assert fabio.open(str(master)).nframes == 7
