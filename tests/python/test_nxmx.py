"""Master files that MX processing can use as they are (docs/NXMX.md): the demo, a 2 x 2 module
detector with gaps, a Stream V2 series with a goniometer and a cluster's whole-detector master
are checked by the NXDL validators (nexusformat's nxvalidate/nxcheck, PyPI nxvalidate), read
by PyPI nxmx (the reader DIALS uses) with the geometry that was configured, loaded whole by
nexusformat, and turned into CBF by fabio's eiger2cbf with the right header."""

import os
import re
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle filter for h5py)
import numpy as np
import nxmx
import pytest

import stream2_spec as spec
from test_cluster import PARTS, cluster, start  # noqa: F401
from test_runs import GRID, MODULE, N, serve  # noqa: F401
from test_stream2 import stream2_source

BIN = Path(sys.executable).parent
ANSI = re.compile(r"\x1b\[[0-9;]*m")

# What a beamline's configuration says (docs/NXMX.md's example): a rotation about omega.
EXPERIMENT = {
    "instrument_name": "TEST BEAMLINE X1", "source_name": "TEST RING",
    "source_type": "Synchrotron X-ray Source", "sample_name": "lysozyme",
    "serial_number": "JF-TEST-01", "bit_depth_readout": 16, "underload_value": 0,
    "incident_wavelength": 0.9763, "detector_distance": 0.15,
    "beam_center_x": 60.5, "beam_center_y": 40.25, "count_time": 0.0009, "frame_time": 0.001,
}
EXPERIMENT_TOML = "[detector]\n" + "".join(
    f"{k} = {v!r}\n".replace("'", '"') for k, v in EXPERIMENT.items())


def nexusformat_errors(path):
    """nexusformat's `nxvalidate -a NXmx`: its error count and what it printed."""
    out = subprocess.run([BIN / "nxvalidate", "-a", "NXmx", str(path)], capture_output=True,
                         text=True, timeout=120)
    text = ANSI.sub("", out.stdout + out.stderr)
    return int(re.search(r"Total number of errors: (\d+)", text).group(1)), text


def not_required_in_nxdl():
    """Names NXmx marks recommended or optional, in PyPI nxvalidate's NXDL or in the newer one
    nexusformat ships (nxvalidate 0.3.5b3 reads only `minOccurs`, so it reports them as
    missing required items; its NXDL also still requires a `CHANNELNAME_channel`, meant for
    multi-channel detectors, which the newer NXDL marks optional)."""
    import nexusformat
    import nxvalidate
    names = set()
    for package in (nxvalidate, nexusformat):
        nxdl = (Path(package.__file__).parent / "definitions" / "applications"
                / "NXmx.nxdl.xml")
        for el in ET.parse(nxdl).iter():
            if el.get("recommended") == "true" or el.get("optional") == "true":
                names.add(el.get("name") or el.get("type"))
    return names


def pypi_nxvalidate_errors(path):
    """PyPI nxvalidate's errors on items NXmx requires (those on recommended or optional
    items left out)."""
    code = ("import os, sys\n"
            "os.get_terminal_size = lambda *a: os.terminal_size((400, 50))\n"
            "from nxvalidate.validate import validate_application\n"
            "validate_application(sys.argv[1], application='NXmx')\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=120)
    lines = ANSI.sub("", out.stdout + out.stderr).splitlines()
    optional = not_required_in_nxdl()
    errors = []
    for before, line in zip(lines, lines[1:]):
        if "required" in line:  # under "Field: /entry/x/name" or "Group: name: NXclass"
            name = before.strip().split(": ", 1)[-1].split(":")[0].rsplit("/", 1)[-1]
            if name not in optional:
                errors.append(f"{before.strip()}: {line.strip()}")
    return errors


def assert_valid_nxmx(path):
    n, text = nexusformat_errors(path)
    assert n == 0, text
    assert pypi_nxvalidate_errors(path) == []


def load_whole_tree(path):
    """nexusformat loads the file and reads every field (e.g. no H5T_ARRAY it cannot shape)."""
    from nexusformat.nexus import NXfield, nxload
    root = nxload(str(path))
    fields = 0
    for item in root.walk():
        if isinstance(item, NXfield) and item.nxname != "data":
            _ = item.nxdata
            fields += 1
    root.nxfile.close()
    return fields


def chain(f, path):
    """The names along a depends_on chain, from `path` down to "."."""
    names = []
    while path != ".":
        names.append(path.rsplit("/", 1)[-1])
        path = f[path].attrs["depends_on"]
        path = path.decode() if isinstance(path, bytes) else path
    return names


def module_corner(module):
    """Where an NXdetector_module's first pixel is relative to the detector's origin (m)."""
    o = module.module_offset
    return np.asarray(o.vector) * o[()].to("m").magnitude


def test_the_demo_master_is_nxmx_that_mx_software_reads(detingestd, tmp_path):
    subprocess.run([detingestd, "demo", "--data-dir", str(tmp_path), "--frames", "20",
                    "--rate", "100", "--listen", "127.0.0.1:0"], check=True,
                   capture_output=True, timeout=120)
    master = next((tmp_path / "demo" / "jungfrau").glob("*_master.h5"))
    assert_valid_nxmx(master)
    assert load_whole_tree(master) > 40
    with h5py.File(master) as f:
        entry = nxmx.NXmx(f).entries[0]
        assert entry.start_time <= entry.end_time_estimated and entry.end_time
        assert entry.source.name == "detingest demo synchrotron"
        sample = entry.samples[0]
        assert sample.name == "synthetic" and sample.depends_on.path.endswith("/omega")
        assert np.allclose(sample.depends_on[()].magnitude, 0.1 * np.arange(20))
        instrument = entry.instruments[0]
        assert instrument.name == "detingest demo beamline"
        assert instrument.beams[0].incident_wavelength.magnitude == 1.0
        det = instrument.detectors[0]
        assert det.distance.to("m").magnitude == 0.12 and det.bit_depth_readout == 16
        assert (det.beam_center_x.magnitude, det.beam_center_y.magnitude) == (512.5, 256.5)
        assert det.pixel_mask.shape == (512, 1024)
        [module] = det.modules
        assert list(module.data_origin) == [0, 0] and list(module.data_size) == [512, 1024]
        # The beam centre's pixel sits on the beam: corner + centre x fast + centre y slow = 0.
        fast = np.asarray(module.fast_pixel_direction.vector) * 75e-6
        slow = np.asarray(module.slow_pixel_direction.vector) * 75e-6
        assert np.allclose(module_corner(module) + 512.5 * fast + 256.5 * slow, 0, atol=1e-12)
        assert chain(f, module.fast_pixel_direction.path) == [
            "fast_pixel_direction", "module_offset", "translation"]
    # fabio's eiger2cbf: a CBF per image, the header from the master.
    out = tmp_path / "cbf"
    subprocess.run([BIN / "eiger2cbf", "-o", str(out / "img_{index:04d}.cbf"), str(master)],
                   check=True, capture_output=True, timeout=300)
    header = (out / "img_0000.cbf").read_bytes()[:2000].decode(errors="replace")
    for line in ("# Wavelength 1.0 A", "# Detector_distance 0.12 m",
                 "# Beam_xy (512.5, 256.5) pixels", "# Pixel_size 7.5e-05 m x 7.5e-05 m",
                 "S/N synthetic-0001"):
        assert line in header, header


def test_a_two_by_two_detector_with_gaps_has_every_module_where_it_is(serve):
    s = serve()
    gap = [36, 8]
    goniometer = {"images": N, "axes": [
        ["omega", 10.0, 0.5],
        {"name": "phi", "start": 30.0, "increment": 0.0, "vector": [-1, 0, 0]}]}
    code, st = s.start(stream="gaps", frames=N, frames_per_file=10,
                       detector={**EXPERIMENT, "module_gap": gap, "goniometer": goniometer})
    assert code == 201, st
    assert s.wait_run()["state"] == "finished"
    master = s.master("gaps")
    assert_valid_nxmx(master)
    assert load_whole_tree(master) > 40
    with h5py.File(master) as f:
        # What SciCat's ingestor reads to file a run (its metadata schema's NXS variables).
        for path, want in (("entry/title", "gaps"), ("entry/experiment_identifier", "bt"),
                           ("entry/instrument/name", EXPERIMENT["instrument_name"])):
            assert f[path].asstr()[()] == want, path
        assert uuid.UUID(f["entry/entry_identifier_uuid"].asstr()[()]).version == 4
        assert f["entry/start_time"].asstr()[()] < f["entry/end_time"].asstr()[()]
        entry = nxmx.NXmx(f).entries[0]
        det = entry.instruments[0].detectors[0]
        assert det.underload_value == 0 and det.saturation_value == 65535
        assert det.distance.to("m").magnitude == 0.15
        assert chain(f, f["entry/sample/depends_on"][()].decode()) == ["phi", "omega"]
        phi = f["entry/sample/transformations/phi"]
        assert list(phi.attrs["vector"]) == [-1, 0, 0] and phi[0] == 30.0
        assert f["entry/sample/transformations/omega_end"][0] == 10.5
        modules = {m.path.rsplit("/", 1)[1]: m for m in det.modules}
        assert len(modules) == GRID[0] * GRID[1]
        bx, by, px = EXPERIMENT["beam_center_x"], EXPERIMENT["beam_center_y"], 75e-6
        for m in range(4):
            mod = modules[f"module_{m:02d}"]
            r, c = divmod(m, GRID[1])
            assert list(mod.data_origin) == [r * MODULE[0], c * MODULE[1]]
            assert list(mod.data_size) == list(MODULE)
            # On the sensor: gaps between modules; fast = -x, slow = -y (docs/NXMX.md).
            x, y = c * (MODULE[1] + gap[1]) - bx, r * (MODULE[0] + gap[0]) - by
            assert np.allclose(module_corner(mod), [-x * px, -y * px, 0], atol=1e-12), m
            assert np.allclose(mod.fast_pixel_direction[()].to("m").magnitude, px)


def test_a_stream2_series_with_a_goniometer_is_valid_nxmx(daemons, tmp_path):
    detector = spec.Detector()
    try:
        d = daemons("serve", stream2_source(detector.endpoint) + EXPERIMENT_TOML)
        shape, n = (40, 60), 4
        detector.send(spec.start(5, shape, "uint16", n=n,
                                 goniometer={"omega": {"start": 0.0, "increment": 0.2},
                                             "phi": {"start": 90.0, "increment": 0.0},
                                             "two_theta": {"start": 0.0, "increment": 0.0}}))
        for i in range(n):
            detector.send(spec.image(5, i, {"threshold_1": np.full(shape, i, "<u2")}))
        detector.send(spec.end(5))
        d.wait_run("bt/eiger/series_5")
        master = d.master("series_5")
        assert_valid_nxmx(master)
        assert load_whole_tree(master) > 40
        with h5py.File(master) as f:
            det = nxmx.NXmx(f).entries[0].instruments[0].detectors[0]
            # The start's values win over the configuration's; its distance is positive.
            assert det.distance.to("m").magnitude == 0.2
            assert det.beam_center_x.magnitude == 51.5
            assert chain(f, f["entry/sample/depends_on"][()].decode()) == ["phi", "omega"]
        d.close()
    finally:
        detector.close()


def test_a_cluster_whole_detector_master_is_valid_nxmx(cluster, tmp_path):
    d1, d2, d3 = cluster(frames=30, rate=200.0, extra=EXPERIMENT_TOML)
    start(d1, "nx", 30)
    d1.wait_run("bt/jf/nx_d1", timeout=60)
    master = tmp_path / "shared" / "bt" / "jf" / "nx_master.h5"
    assert_valid_nxmx(master)
    assert load_whole_tree(master) > 40
    with h5py.File(master) as f:
        det = nxmx.NXmx(f).entries[0].instruments[0].detectors[0]
        assert len(det.modules) == sum(len(p) for p in PARTS)
    os.sync()
