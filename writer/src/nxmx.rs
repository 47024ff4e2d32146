//! The NXmx group and metadata layout: `/entry` (NXentry, `definition = "NXmx"`),
//! `/entry/data` (NXdata), `/entry/instrument/detector` (NXdetector) with its
//! `detectorSpecific` group. Only creation of groups and metadata lives here.

use std::sync::Arc;

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
    /// Wavelength of the incident beam in ångström (`/entry/instrument/beam`).
    pub incident_wavelength: Option<f64>,
    /// The detector's own metadata, one `detectorSpecific` dataset per key: numbers and text
    /// as they are, booleans as 0/1, anything else as JSON text. Keys we write ourselves, or
    /// that are not HDF5 names, are skipped.
    pub specific: serde_json::Map<String, serde_json::Value>,
    /// Goniometer axes scanned, as a detector's start states them: written as
    /// `/entry/sample/goniometer/<axis>` (the position at each image) and `<axis>_increment`.
    pub goniometer: Option<Goniometer>,
    /// The pixel mask (`detectorSpecific/pixel_mask`, u32 per pixel of the image, row-major);
    /// `None`: all zero. Set by a source that receives one (not configurable).
    #[serde(skip)]
    pub pixel_mask: Option<Arc<[u32]>>,
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
            incident_wavelength: None,
            specific: serde_json::Map::new(),
            goniometer: None,
            pixel_mask: None,
        }
    }
}

/// Goniometer axes and the images they were scanned over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Goniometer {
    /// Images the scan has (positions written per axis).
    pub images: u64,
    /// `(axis, start, increment)` in degrees.
    pub axes: Vec<(String, f64, f64)>,
}

/// Most positions written per axis (a series announcing more gets this many).
const MAX_POSITIONS: u64 = 10_000_000;

/// `/entry/sample` (NXsample) with `goniometer` (NXtransformations): per axis the position at
/// each image (`start + i * increment`, degrees) and the increment. No axis vectors nor a
/// `depends_on` chain: a detector's stream does not carry them.
pub(crate) fn write_goniometer(entry: &Group, g: &Goniometer) -> Result<(), WriteError> {
    let sample = nx_group(entry, "sample", "NXsample")?;
    let gonio = nx_group(&sample, "goniometer", "NXtransformations")?;
    let n = g.images.clamp(1, MAX_POSITIONS) as usize;
    for (axis, start, increment) in &g.axes {
        if axis.is_empty() || axis.contains('/') || axis == "." || gonio.link_exists(axis) {
            continue;
        }
        let positions: Vec<f64> = (0..n).map(|i| start + i as f64 * increment).collect();
        let ds = gonio.new_dataset::<f64>().shape(n).create(axis.as_str())?;
        ds.write_raw(&positions)?;
        attr_str(&ds, "units", "deg")?;
        attr_str(&ds, "transformation_type", "rotation")?;
        ds_num(
            &gonio,
            &format!("{axis}_increment"),
            *increment,
            Some("deg"),
        )?;
    }
    Ok(())
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
    if let Some(w) = info.incident_wavelength {
        let beam = nx_group(&instrument, "beam", "NXbeam")?;
        ds_num(&beam, "incident_wavelength", w, Some("angstrom"))?;
    }
    let specific = det.create_group("detectorSpecific")?;
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
    Ok(specific)
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
