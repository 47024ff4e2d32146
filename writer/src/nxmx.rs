//! The NXmx group and metadata layout of a data file: `/entry` (NXentry, `definition =
//! "NXmx"`), `/entry/data` (NXdata), `/entry/instrument/detector` (NXdetector) with its
//! `detectorSpecific` group. Only creation lives here; the per-frame writing is in
//! [`crate::StreamFile`].

use hdf5::types::VarLenUnicode;
use hdf5::{Group, Location};
use serde::{Deserialize, Serialize};

use crate::WriteError;

/// Detector description written into `/entry/instrument/detector`. Defaults describe a
/// JUNGFRAU module.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorInfo {
    /// Free text, e.g. `"PSI JUNGFRAU 1M"`.
    pub description: String,
    /// Pixel width in metres.
    pub x_pixel_size: f64,
    /// Pixel height in metres.
    pub y_pixel_size: f64,
    /// Sensor material, e.g. `"Si"`.
    pub sensor_material: String,
    /// Sensor thickness in metres.
    pub sensor_thickness: f64,
}

impl Default for DetectorInfo {
    fn default() -> Self {
        Self {
            description: "detingest synthetic JUNGFRAU-like detector".into(),
            x_pixel_size: 75e-6,
            y_pixel_size: 75e-6,
            sensor_material: "Si".into(),
            sensor_thickness: 320e-6,
        }
    }
}

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
pub(crate) fn ds_str(parent: &Group, name: &str, value: &str) -> Result<(), WriteError> {
    parent
        .new_dataset::<VarLenUnicode>()
        .create(name)?
        .write_scalar(&text(value)?)?;
    Ok(())
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

/// The NXdetector description: `/entry/instrument/detector` and its `detectorSpecific`.
pub(crate) fn write_detector(
    entry: &Group,
    info: &DetectorInfo,
    bit_depth: u32,
    saturation: f64,
    shape: [u32; 2],
) -> Result<Group, WriteError> {
    let instrument = nx_group(entry, "instrument", "NXinstrument")?;
    let det = nx_group(&instrument, "detector", "NXdetector")?;
    ds_str(&det, "description", &info.description)?;
    ds_num(&det, "x_pixel_size", info.x_pixel_size, Some("m"))?;
    ds_num(&det, "y_pixel_size", info.y_pixel_size, Some("m"))?;
    ds_str(&det, "sensor_material", &info.sensor_material)?;
    ds_num(&det, "sensor_thickness", info.sensor_thickness, Some("m"))?;
    ds_num(&det, "bit_depth_image", bit_depth, None)?;
    ds_num(&det, "saturation_value", saturation, None)?;
    let specific = det.create_group("detectorSpecific")?;
    ds_num(&specific, "x_pixels_in_detector", shape[1], None)?;
    ds_num(&specific, "y_pixels_in_detector", shape[0], None)?;
    Ok(specific)
}
