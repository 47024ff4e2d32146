//! What a master file says about the experiment (`[detector]` in the configuration, a run
//! request's `detector` object, a Stream V2 `start`): the detector's static geometry and the
//! run's beam, sample and goniometer. Fields left `None` are not written (NXmx lets them be
//! absent; nothing is invented). docs/NXMX.md lists every key.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// hc in eV·Å: wavelength = HC / energy.
pub const HC_EV_ANGSTROM: f64 = 12_398.419_843_320_026;

/// The experiment description written into every master file (docs/NXMX.md).
/// Defaults describe a JUNGFRAU module.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorInfo {
    /// Free text, e.g. `"PSI JUNGFRAU 1M"`.
    pub description: String,
    /// The detector's serial number (`serial_number`, and DECTRIS's `detector_number`).
    pub serial_number: Option<String>,
    /// Pixel width in metres.
    pub x_pixel_size: f64,
    /// Pixel height in metres.
    pub y_pixel_size: f64,
    /// Sensor material, e.g. `"Si"`.
    pub sensor_material: String,
    /// Sensor thickness in metres.
    pub sensor_thickness: f64,
    /// Bits the detector reads out per pixel (the image's are the pixel type's).
    pub bit_depth_readout: Option<u32>,
    /// Pixels between neighbouring modules on the sensor plane, `[rows, columns]`: the image
    /// has none, the geometry (`module_offset`) has them. JUNGFRAU as Jungfraujoch lays it
    /// out `[36, 8]`; EIGER2 `[38, 12]` (16M: 8 x 512 + 7 x 38 = 4362 rows).
    pub module_gap: [u32; 2],
    /// Direction of increasing column on the sensor, in the NeXus (McStas) frame: `z` along
    /// the beam, `y` up. `[-1, 0, 0]`: seen from the sample, columns run to the left.
    pub fast_axis: [f64; 3],
    /// Direction of increasing row; `[0, -1, 0]`: rows run downwards.
    pub slow_axis: [f64; 3],
    /// Beam centre, x, in pixels of the image with the module gaps put in (docs/NXMX.md).
    pub beam_center_x: Option<f64>,
    /// Beam centre, y, in pixels (as `beam_center_x`).
    pub beam_center_y: Option<f64>,
    /// Exposure time per frame in seconds.
    pub count_time: Option<f64>,
    /// Frame period in seconds.
    pub frame_time: Option<f64>,
    /// Sample-to-detector distance in metres, along the beam.
    pub detector_distance: Option<f64>,
    /// Counts at which a pixel saturates (default: the pixel type's maximum).
    pub saturation_value: Option<f64>,
    /// Lowest count a pixel measures sensibly (not written unless given).
    pub underload_value: Option<f64>,
    /// Triggers in the run (`detectorSpecific/ntrigger`, default 1).
    pub ntrigger: u64,
    /// Wavelength of the incident beam in ångström (`/entry/instrument/beam`).
    pub incident_wavelength: Option<f64>,
    /// Photon energy in eV, used when no wavelength is given.
    pub incident_energy: Option<f64>,
    /// The beamline (`/entry/instrument/name`), e.g. `"DESY PETRA III BEAMLINE P11"`.
    pub instrument_name: Option<String>,
    /// The facility's source (`/entry/source/name`), e.g. `"PETRA III"`.
    pub source_name: Option<String>,
    /// NXsource `type`, e.g. `"Synchrotron X-ray Source"`, `"Free-Electron Laser"`.
    pub source_type: Option<String>,
    /// The sample (`/entry/sample/name`).
    pub sample_name: Option<String>,
    /// The run's title (`/entry/title`, a catalogue's dataset name; the daemon's default:
    /// the stream's name).
    pub title: Option<String>,
    /// The proposal or beamtime (`/entry/experiment_identifier`, a catalogue's proposal id;
    /// the daemon's default: the stream's beamtime).
    pub experiment_identifier: Option<String>,
    /// The detector's own metadata, one `detectorSpecific` dataset per key: numbers and text
    /// as they are, booleans as 0/1, anything else as JSON text. Keys we write ourselves, or
    /// that are not HDF5 names, are skipped.
    pub specific: serde_json::Map<String, serde_json::Value>,
    /// Goniometer axes scanned: `/entry/sample/transformations`, the sample's `depends_on`.
    pub goniometer: Option<Goniometer>,
    /// The pixel mask (u32 per pixel of the image, row-major, NXmx bits); `None`: all zero.
    /// Set by a source that receives one (not configurable).
    #[serde(skip)]
    pub pixel_mask: Option<Arc<[u32]>>,
    /// Per-pixel or per-count tables a detector sent (Stream V2 `flatfield`,
    /// `countrate_correction_lookup_table`), written as datasets of the NXdetector.
    #[serde(skip)]
    pub tables: Vec<Table>,
}

impl Default for DetectorInfo {
    fn default() -> Self {
        Self {
            description: "detingest synthetic JUNGFRAU-like detector".into(),
            serial_number: None,
            x_pixel_size: 75e-6,
            y_pixel_size: 75e-6,
            sensor_material: "Si".into(),
            sensor_thickness: 320e-6,
            bit_depth_readout: None,
            module_gap: [0, 0],
            fast_axis: [-1.0, 0.0, 0.0],
            slow_axis: [0.0, -1.0, 0.0],
            beam_center_x: None,
            beam_center_y: None,
            count_time: None,
            frame_time: None,
            detector_distance: None,
            saturation_value: None,
            underload_value: None,
            ntrigger: 1,
            incident_wavelength: None,
            incident_energy: None,
            instrument_name: None,
            source_name: None,
            source_type: None,
            sample_name: None,
            title: None,
            experiment_identifier: None,
            specific: serde_json::Map::new(),
            goniometer: None,
            pixel_mask: None,
            tables: Vec::new(),
        }
    }
}

impl DetectorInfo {
    /// The wavelength in ångström: the one given, else from the energy; positive or `None`.
    pub fn wavelength(&self) -> Option<f64> {
        let from_energy = || {
            self.incident_energy
                .filter(|e| *e > 0.0)
                .map(|e| HC_EV_ANGSTROM / e)
        };
        self.incident_wavelength
            .or_else(from_energy)
            .filter(|w| w.is_finite() && *w > 0.0)
    }

    /// Checks what the geometry needs: the offending key and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, axis) in [("fast_axis", self.fast_axis), ("slow_axis", self.slow_axis)] {
            if norm(axis) < 1e-9 || axis.iter().any(|v| !v.is_finite()) {
                return Err((key, "must be a non-zero vector [x, y, z]".into()));
            }
        }
        for (key, v) in [
            ("x_pixel_size", self.x_pixel_size),
            ("y_pixel_size", self.y_pixel_size),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err((key, "must be a positive length in metres".into()));
            }
        }
        if let Some(g) = &self.goniometer {
            for a in &g.axes {
                if a.name.is_empty() || a.name.contains('/') || a.name == "." {
                    return Err((
                        "goniometer",
                        format!("axis name {:?} is not usable", a.name),
                    ));
                }
                if norm(a.vector) < 1e-9 {
                    return Err(("goniometer", format!("axis {:?}: zero vector", a.name)));
                }
            }
        }
        Ok(())
    }
}

/// Length of a vector.
pub(crate) fn norm(v: [f64; 3]) -> f64 {
    v.iter().map(|c| c * c).sum::<f64>().sqrt()
}

/// Goniometer axes and the images they were scanned over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Goniometer {
    /// Images the scan has (positions written per axis).
    pub images: u64,
    /// From the outermost axis (on the floor, e.g. omega) to the innermost (holding the
    /// sample, e.g. phi): each depends on the one before it.
    pub axes: Vec<Axis>,
}

/// One goniometer axis: `start + i * increment` at image `i`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "AxisSpec")]
pub struct Axis {
    /// Its name, e.g. `"omega"`.
    pub name: String,
    /// Position at the first image, degrees (millimetres for a translation).
    pub start: f64,
    /// Change per image.
    pub increment: f64,
    /// Its direction in the NeXus frame (default `[1, 0, 0]`: horizontal, across the beam).
    pub vector: [f64; 3],
    /// `"rotation"` (default) or `"translation"`.
    pub kind: AxisKind,
}

/// What an axis moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AxisKind {
    /// Degrees.
    #[default]
    Rotation,
    /// Millimetres.
    Translation,
}

/// An axis as written: `["omega", start, increment]` or a table with `vector` and `kind`.
#[derive(Deserialize)]
#[serde(untagged)]
enum AxisSpec {
    Short(String, f64, f64),
    Full {
        name: String,
        start: f64,
        increment: f64,
        #[serde(default = "default_vector")]
        vector: [f64; 3],
        #[serde(default)]
        kind: AxisKind,
    },
}

fn default_vector() -> [f64; 3] {
    [1.0, 0.0, 0.0]
}

impl From<AxisSpec> for Axis {
    fn from(s: AxisSpec) -> Self {
        match s {
            AxisSpec::Short(name, start, increment) => Self {
                name,
                start,
                increment,
                vector: default_vector(),
                kind: AxisKind::Rotation,
            },
            AxisSpec::Full {
                name,
                start,
                increment,
                vector,
                kind,
            } => Self {
                name,
                start,
                increment,
                vector,
                kind,
            },
        }
    }
}

/// A table of numbers a detector sent, written as a dataset of the NXdetector.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Its dataset name, e.g. `flatfield`.
    pub name: String,
    /// Its shape, slowest first.
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub values: TableValues,
}

/// The values of a [`Table`], in the type they came in; shared, not copied, when the
/// description is (a 16M detector's flatfield is 72 MB).
#[derive(Debug, Clone, PartialEq)]
pub enum TableValues {
    /// Floating point (a flatfield).
    F32(Arc<[f32]>),
    /// Unsigned (a count-rate lookup table).
    U32(Arc<[u32]>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_axis_is_three_values_or_a_table_with_its_vector() {
        let g: Goniometer = serde_json::from_value(serde_json::json!({
            "images": 10,
            "axes": [["omega", 0.0, 0.1],
                     {"name": "phi", "start": 5.0, "increment": 0.0, "vector": [-1, 0, 0]}],
        }))
        .unwrap();
        assert_eq!(g.axes[0].vector, [1.0, 0.0, 0.0]);
        assert_eq!(g.axes[1].vector, [-1.0, 0.0, 0.0]);
        // What the run request's overlay does: serialized and read again, unchanged.
        let again: Goniometer = serde_json::from_value(serde_json::to_value(&g).unwrap()).unwrap();
        assert_eq!(again, g);
    }

    #[test]
    fn the_wavelength_comes_from_the_energy_when_not_given() {
        let info = DetectorInfo {
            incident_energy: Some(12_398.419_843_320_026),
            ..DetectorInfo::default()
        };
        assert!((info.wavelength().unwrap() - 1.0).abs() < 1e-12);
        let both = DetectorInfo {
            incident_wavelength: Some(0.9),
            ..info
        };
        assert_eq!(both.wavelength(), Some(0.9));
        assert_eq!(DetectorInfo::default().wavelength(), None);
    }
}
