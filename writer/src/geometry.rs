//! The experiment as NXmx describes it, for MX processing (DIALS, XDS via its readers):
//! `start_time`/`end_time_estimated`, `/entry/source`, `/entry/instrument/name` and `beam`,
//! `/entry/sample` with its goniometer chain, the detector's `depends_on` chain and one
//! NXdetector_module per module. docs/NXMX.md names the facts and the peers compared.
//!
//! Frame: NeXus (McStas), `z` along the beam, `y` up; lengths in metres, angles in degrees.
//! The detector's origin is where the beam meets it (its `transformations/translation` is
//! the distance along `z`); each module's `module_offset` is the vector from there to its
//! first pixel, gaps included.

use std::time::{Duration, SystemTime};

use hdf5::Group;

use crate::detector_info::{norm, AxisKind, DetectorInfo, Goniometer};
use crate::layout::RunLayout;
use crate::nxmx::{attr_str, ds_num, ds_str, nx_group};
use crate::WriteError;

/// Where the detector's chain starts (written only with a distance).
pub(crate) const DETECTOR_AXIS: &str = "/entry/instrument/detector/transformations/translation";

/// Most positions written per axis (a series announcing more gets this many).
const MAX_POSITIONS: u64 = 10_000_000;

/// ISO 8601 with the zone (UTC, `Z`), to the microsecond.
pub(crate) fn iso_time(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// `start_time` and `end_time_estimated` (from `frames` x `frame_time` when both are
/// known, else the start: it is required, and the real `end_time` follows at the end).
pub(crate) fn write_times(
    entry: &Group,
    info: &DetectorInfo,
    frames: u64,
    started: SystemTime,
) -> Result<(), WriteError> {
    ds_str(entry, "start_time", &iso_time(started))?;
    let run = info
        .frame_time
        .filter(|t| t.is_finite() && *t > 0.0 && frames > 0)
        .and_then(|t| Duration::try_from_secs_f64(t * frames as f64).ok());
    let estimate = run.and_then(|d| started.checked_add(d)).unwrap_or(started);
    ds_str(entry, "end_time_estimated", &iso_time(estimate))?;
    Ok(())
}

/// What catalogue ingestors read to name and file a run (SciCat's ingestor: `pid`,
/// `proposalId`, `datasetName`): `entry_identifier_uuid` (new for every master),
/// `experiment_identifier` and `title`, when known.
pub(crate) fn write_identity(entry: &Group, info: &DetectorInfo) -> Result<(), WriteError> {
    ds_str(
        entry,
        "entry_identifier_uuid",
        &uuid::Uuid::new_v4().to_string(),
    )?;
    if let Some(e) = &info.experiment_identifier {
        ds_str(entry, "experiment_identifier", e)?;
    }
    if let Some(t) = &info.title {
        ds_str(entry, "title", t)?;
    }
    Ok(())
}

/// `/entry/source` (its name) and the instrument's `name` and `beam`, as far as known.
pub(crate) fn write_beamline(
    entry: &Group,
    instrument: &Group,
    info: &DetectorInfo,
) -> Result<(), WriteError> {
    if let Some(name) = &info.source_name {
        let source = nx_group(entry, "source", "NXsource")?;
        ds_str(&source, "name", name)?;
        if let Some(kind) = &info.source_type {
            ds_str(&source, "type", kind)?;
        }
    }
    if let Some(name) = &info.instrument_name {
        ds_str(instrument, "name", name)?;
    }
    if let Some(w) = info.wavelength() {
        let beam = nx_group(instrument, "beam", "NXbeam")?;
        ds_num(&beam, "incident_wavelength", w, Some("angstrom"))?;
    }
    Ok(())
}

/// `/entry/sample`: its name and `depends_on` the innermost goniometer axis (`"."`: none).
pub(crate) fn write_sample(entry: &Group, info: &DetectorInfo) -> Result<(), WriteError> {
    let sample = nx_group(entry, "sample", "NXsample")?;
    if let Some(name) = &info.sample_name {
        ds_str(&sample, "name", name)?;
    }
    let innermost = match &info.goniometer {
        Some(g) if !g.axes.is_empty() => write_goniometer(&sample, g)?,
        _ => ".".to_owned(),
    };
    ds_str(&sample, "depends_on", &innermost)?;
    Ok(())
}

/// `/entry/sample/transformations`: per axis its position at each image, `_end` and
/// `_increment_set`, chained outermost first. Returns the innermost axis's path.
fn write_goniometer(sample: &Group, g: &Goniometer) -> Result<String, WriteError> {
    let group = nx_group(sample, "transformations", "NXtransformations")?;
    let n = g.images.clamp(1, MAX_POSITIONS) as usize;
    let mut depends_on = ".".to_owned();
    for axis in &g.axes {
        if axis.name.is_empty() || axis.name.contains('/') || group.link_exists(&axis.name) {
            continue;
        }
        let (kind, units) = match axis.kind {
            AxisKind::Rotation => ("rotation", "deg"),
            AxisKind::Translation => ("translation", "mm"),
        };
        let at = |i: usize| axis.start + i as f64 * axis.increment;
        let positions: Vec<f64> = (0..n).map(at).collect();
        let ds = group
            .new_dataset::<f64>()
            .shape(n)
            .create(axis.name.as_str())?;
        ds.write_raw(&positions)?;
        attr_str(&ds, "units", units)?;
        transformation(&ds, kind, &depends_on, unit(axis.vector))?;
        let ends: Vec<f64> = (1..=n).map(at).collect();
        let end =
            (group.new_dataset::<f64>().shape(n)).create(format!("{}_end", axis.name).as_str())?;
        end.write_raw(&ends)?;
        attr_str(&end, "units", units)?;
        let set = format!("{}_increment_set", axis.name);
        ds_num(&group, &set, axis.increment, Some(units))?;
        depends_on = format!("{}/{}", group.name(), axis.name);
    }
    Ok(depends_on)
}

/// The detector's chain (a translation along the beam by the distance, when known: then
/// its `depends_on`) and one NXdetector_module per module.
pub(crate) fn write_detector_geometry(
    det: &Group,
    info: &DetectorInfo,
    layout: &RunLayout,
) -> Result<(), WriteError> {
    let mut base = ".";
    if let Some(d) = info.detector_distance {
        let t = nx_group(det, "transformations", "NXtransformations")?;
        let ds = ds_num(&t, "translation", d, Some("m"))?;
        transformation(&ds, "translation", ".", [0.0, 0.0, 1.0])?;
        ds_str(det, "depends_on", DETECTOR_AXIS)?;
        base = DETECTOR_AXIS;
    }
    let (fast, slow) = (unit(info.fast_axis), unit(info.slow_axis));
    let [ny, nx] = layout.module_shape;
    let [gy, gx] = info.module_gap;
    let beam = [
        info.beam_center_y.unwrap_or(0.0),
        info.beam_center_x.unwrap_or(0.0),
    ];
    for m in 0..layout.modules() {
        let [oy, ox] = layout.tile_origin(m);
        let cols = layout.grid[1].max(1);
        // Where its first pixel is on the sensor plane, in pixels with the gaps.
        let y = f64::from(oy + (m / cols) * gy) - beam[0];
        let x = f64::from(ox + (m % cols) * gx) - beam[1];
        let offset: [f64; 3] = std::array::from_fn(|k| {
            x * info.x_pixel_size * fast[k] + y * info.y_pixel_size * slow[k]
        });
        let g = nx_group(det, &format!("module_{m:02}"), "NXdetector_module")?;
        write_ints(&g, "data_origin", &[oy, ox])?;
        write_ints(&g, "data_size", &[ny, nx])?;
        let length = norm(offset);
        let direction = if length > 0.0 {
            unit(offset)
        } else {
            [1.0, 0.0, 0.0]
        };
        let path = g.name();
        let o = ds_num(&g, "module_offset", length, Some("m"))?;
        transformation(&o, "translation", base, direction)?;
        let offset_path = format!("{path}/module_offset");
        for (name, size, axis) in [
            ("fast_pixel_direction", info.x_pixel_size, fast),
            ("slow_pixel_direction", info.y_pixel_size, slow),
        ] {
            let ds = ds_num(&g, name, size, Some("m"))?;
            transformation(&ds, "translation", &offset_path, axis)?;
        }
    }
    Ok(())
}

/// `v` scaled to length 1 (a zero vector stays zero; the configuration refuses it).
fn unit(v: [f64; 3]) -> [f64; 3] {
    let n = norm(v);
    if n > 0.0 {
        v.map(|c| c / n + 0.0) // no -0 in the file
    } else {
        v
    }
}

/// Makes `ds` an NXtransformations axis: its `transformation_type` (`"rotation"` or
/// `"translation"`), what it `depends_on`, its `vector`, no `offset`.
fn transformation(
    ds: &hdf5::Dataset,
    kind: &str,
    depends_on: &str,
    vector: [f64; 3],
) -> Result<(), WriteError> {
    attr_str(ds, "transformation_type", kind)?;
    attr_str(ds, "depends_on", depends_on)?;
    write_vector(ds, "vector", vector)?;
    write_vector(ds, "offset", [0.0; 3])
}

fn write_vector(ds: &hdf5::Dataset, name: &str, v: [f64; 3]) -> Result<(), WriteError> {
    ds.new_attr::<f64>().shape(3).create(name)?.write_raw(&v)?;
    Ok(())
}

fn write_ints(g: &Group, name: &str, values: &[u32; 2]) -> Result<(), WriteError> {
    let ds = g.new_dataset::<u32>().shape(2).create(name)?;
    ds.write_raw(values)?;
    Ok(())
}
