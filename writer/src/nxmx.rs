//! The NXmx group and metadata layout: `/entry` (NXentry, `definition = "NXmx"`),
//! `/entry/data` (NXdata), `/entry/instrument/detector` (NXdetector) with its
//! `detectorSpecific` group. Only creation of groups and metadata lives here.

use hdf5::types::VarLenUnicode;
use hdf5::{Group, Location};
use serde::{Deserialize, Serialize};

use crate::WriteError;

/// Detector description written into `/entry/instrument/detector` (FORMATS.md section 4).
/// Defaults describe a JUNGFRAU module; fields left `None` are not written.
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
    /// Beam centre, x, in pixels.
    pub beam_center_x: Option<f64>,
    /// Beam centre, y, in pixels.
    pub beam_center_y: Option<f64>,
    /// Exposure time per frame in seconds.
    pub count_time: Option<f64>,
    /// Frame period in seconds.
    pub frame_time: Option<f64>,
    /// Sample-to-detector distance in metres.
    pub detector_distance: Option<f64>,
    /// Counts at which a pixel saturates (default: the pixel type's maximum).
    pub saturation_value: Option<f64>,
    /// Triggers in the run (`detectorSpecific/ntrigger`, default 1).
    pub ntrigger: u64,
}

impl Default for DetectorInfo {
    fn default() -> Self {
        Self {
            description: "detingest synthetic JUNGFRAU-like detector".into(),
            x_pixel_size: 75e-6,
            y_pixel_size: 75e-6,
            sensor_material: "Si".into(),
            sensor_thickness: 320e-6,
            beam_center_x: None,
            beam_center_y: None,
            count_time: None,
            frame_time: None,
            detector_distance: None,
            saturation_value: None,
            ntrigger: 1,
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

/// The NXdetector description: `/entry/instrument/detector` and its `detectorSpecific`
/// (`x/y_pixels_in_detector`, `ntrigger`, and a zero `pixel_mask` of the image's shape,
/// contiguous as DIALS expects). Returns `detectorSpecific`.
pub(crate) fn write_detector(
    entry: &Group,
    info: &DetectorInfo,
    bit_depth: u32,
    max_value: f64,
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
    let saturation = info.saturation_value.unwrap_or(max_value);
    ds_num(&det, "saturation_value", saturation, None)?;
    for (name, value, units) in [
        ("beam_center_x", info.beam_center_x, "pixel"),
        ("beam_center_y", info.beam_center_y, "pixel"),
        ("count_time", info.count_time, "s"),
        ("frame_time", info.frame_time, "s"),
        ("detector_distance", info.detector_distance, "m"),
    ] {
        if let Some(v) = value {
            ds_num(&det, name, v, Some(units))?;
        }
    }
    let specific = det.create_group("detectorSpecific")?;
    ds_num(&specific, "x_pixels_in_detector", shape[1], None)?;
    ds_num(&specific, "y_pixels_in_detector", shape[0], None)?;
    ds_num(&specific, "ntrigger", info.ntrigger, None)?;
    let [ny, nx] = shape.map(|d| d as usize);
    specific
        .new_dataset::<u32>()
        .shape((ny, nx))
        .create("pixel_mask")?;
    Ok(specific)
}
