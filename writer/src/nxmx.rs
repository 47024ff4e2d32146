//! The NXmx metadata helpers and `/entry/instrument/detector` (NXdetector) with its
//! `detectorSpecific` group; the experiment's geometry is `geometry.rs`.

use hdf5::types::VarLenUnicode;
use hdf5::{Group, Location};

use crate::detector_info::DetectorInfo;
use crate::geometry;
use crate::layout::RunLayout;
use crate::WriteError;

fn text(s: &str) -> Result<VarLenUnicode, WriteError> {
    s.parse()
        .map_err(|_| WriteError::Metadata(format!("text {s:?} is not storable")))
}

/// Writes a string attribute.
pub(crate) fn attr_str(loc: &Location, name: &str, value: &str) -> Result<(), WriteError> {
    loc.new_attr::<VarLenUnicode>()
        .create(name)?
        .write_scalar(&text(value)?)?;
    Ok(())
}

/// Creates a group with its `NX_class`.
pub(crate) fn nx_group(parent: &Group, name: &str, class: &str) -> Result<Group, WriteError> {
    let g = parent.create_group(name)?;
    attr_str(&g, "NX_class", class)?;
    Ok(g)
}

/// Writes a scalar string dataset.
pub(crate) fn ds_str(parent: &Group, name: &str, value: &str) -> Result<hdf5::Dataset, WriteError> {
    let ds = parent.new_dataset::<VarLenUnicode>().create(name)?;
    ds.write_scalar(&text(value)?)?;
    Ok(ds)
}

/// Writes a scalar number dataset, with a `units` attribute when given.
pub(crate) fn ds_num<T: hdf5::H5Type>(
    parent: &Group,
    name: &str,
    value: T,
    units: Option<&str>,
) -> Result<hdf5::Dataset, WriteError> {
    let ds = parent.new_dataset::<T>().create(name)?;
    ds.write_scalar(&value)?;
    if let Some(u) = units {
        attr_str(&ds, "units", u)?;
    }
    Ok(ds)
}

/// `/entry/instrument` with the beamline (`geometry.rs`) and the NXdetector: its fields,
/// geometry, and `detectorSpecific` (NXcollection: `x/y_pixels_in_detector`, `ntrigger`,
/// the `pixel_mask` of the image's shape, contiguous as DIALS expects, also linked as the
/// NXdetector's). Returns `detectorSpecific`.
pub(crate) fn write_detector(
    entry: &Group,
    info: &DetectorInfo,
    layout: &RunLayout,
) -> Result<Group, WriteError> {
    let instrument = nx_group(entry, "instrument", "NXinstrument")?;
    geometry::write_beamline(entry, &instrument, info)?;
    let det = nx_group(&instrument, "detector", "NXdetector")?;
    ds_str(&det, "description", &info.description)?;
    if let Some(serial) = &info.serial_number {
        ds_str(&det, "serial_number", serial)?;
        ds_str(&det, "detector_number", serial)?; // DECTRIS's name (fabio's eiger2cbf)
    }
    ds_num(&det, "x_pixel_size", info.x_pixel_size, Some("m"))?;
    ds_num(&det, "y_pixel_size", info.y_pixel_size, Some("m"))?;
    ds_str(&det, "sensor_material", &info.sensor_material)?;
    ds_num(&det, "sensor_thickness", info.sensor_thickness, Some("m"))?;
    ds_num(
        &det,
        "bit_depth_image",
        8 * layout.pixel.size() as u32,
        None,
    )?;
    if let Some(bits) = info.bit_depth_readout {
        ds_num(&det, "bit_depth_readout", bits, None)?;
    }
    let saturation = info.saturation_value.unwrap_or(layout.pixel.max_value());
    ds_num(&det, "saturation_value", saturation, None)?;
    if let Some(under) = info.underload_value {
        ds_num(&det, "underload_value", under, None)?;
    }
    for (name, value, units) in [
        ("beam_center_x", info.beam_center_x, "pixel"),
        ("beam_center_y", info.beam_center_y, "pixel"),
        ("count_time", info.count_time, "s"),
        ("frame_time", info.frame_time, "s"),
        // NXmx's name, and DECTRIS's (fabio, Albula)
        ("distance", info.detector_distance, "m"),
        ("detector_distance", info.detector_distance, "m"),
    ] {
        if let Some(v) = value {
            ds_num(&det, name, v, Some(units))?;
        }
    }
    // Given (configured or sent by the detector), not derived from the geometry.
    if info.detector_distance.is_some() {
        ds_num(&det, "distance_derived", 0u8, None)?;
    }
    if info.beam_center_x.is_some() && info.beam_center_y.is_some() {
        ds_num(&det, "beam_center_derived", 0u8, None)?;
    }
    geometry::write_detector_geometry(&det, info, layout)?;
    let specific = nx_group(&det, "detectorSpecific", "NXcollection")?;
    let shape = layout.image_shape();
    ds_num(&specific, "x_pixels_in_detector", shape[1], None)?;
    ds_num(&specific, "y_pixels_in_detector", shape[0], None)?;
    ds_num(&specific, "ntrigger", info.ntrigger, None)?;
    let [ny, nx] = shape.map(|d| d as usize);
    let mask = specific
        .new_dataset::<u32>()
        .shape((ny, nx))
        .create("pixel_mask")?;
    if let Some(m) = info.pixel_mask.as_deref().filter(|m| m.len() == ny * nx) {
        mask.write_raw(m)?;
    }
    det.link_hard("detectorSpecific/pixel_mask", "pixel_mask")?;
    write_tables(&det, info)?;
    Ok(specific)
}

/// The detector's tables ([`DetectorInfo::tables`]) as datasets of the NXdetector (NXmx's
/// `flatfield`, `countrate_correction_lookup_table`); a name taken already is skipped.
fn write_tables(det: &Group, info: &DetectorInfo) -> Result<(), WriteError> {
    use crate::detector_info::TableValues;
    for t in info.tables.iter().filter(|t| !det.link_exists(&t.name)) {
        let shape = t.shape.as_slice();
        match &t.values {
            TableValues::F32(v) => det
                .new_dataset::<f32>()
                .shape(shape)
                .create(t.name.as_str())?
                .write_raw(v)?,
            TableValues::U32(v) => det
                .new_dataset::<u32>()
                .shape(shape)
                .create(t.name.as_str())?
                .write_raw(v)?,
        }
    }
    Ok(())
}

/// The detector's own metadata ([`DetectorInfo::specific`]) into `specific`, after our own
/// datasets: a key that exists already, or is not an HDF5 name, is skipped.
pub(crate) fn write_specific(specific: &Group, info: &DetectorInfo) -> Result<(), WriteError> {
    for (key, value) in &info.specific {
        let usable = !key.is_empty() && key != "." && !key.contains('/') && !key.contains('\0');
        if usable && !specific.link_exists(key) {
            write_one(specific, key, value)?;
        }
    }
    Ok(())
}

fn write_one(specific: &Group, key: &str, value: &serde_json::Value) -> Result<(), WriteError> {
    use serde_json::Value;
    match value {
        Value::Bool(b) => ds_num(specific, key, u8::from(*b), None)?,
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => ds_num(specific, key, u, None)?,
            (None, Some(i)) => ds_num(specific, key, i, None)?,
            _ => ds_num(specific, key, n.as_f64().unwrap_or(f64::NAN), None)?,
        },
        Value::String(text) => ds_str(specific, key, text)?,
        Value::Null => return Ok(()),
        other => ds_str(specific, key, &other.to_string())?,
    };
    Ok(())
}
