//! A `start` message made into the [`Series`] its run needs: the stream name, the image
//! format, the pixel mask, and the run request with the NXmx metadata the start carries.
//!
//! Mapped into `[detector]` (the NXmx master): `detector_description`, `pixel_size_x/y`,
//! `sensor_material`, `sensor_thickness`, `beam_center_x/y`, `count_time`, `frame_time`,
//! `detector_distance` (or the z of `detector_translation`, which DECTRIS gives negative:
//! the detector sits at -z from the sample in its frame), `saturation_value`,
//! `number_of_triggers`, `incident_wavelength` (or `incident_energy` in eV converted to Å).
//! `goniometer` axes become `/entry/sample/goniometer` positions per image. Every other field
//! is the detector's own metadata, written into `detectorSpecific` (`goniometer` and
//! `threshold_energy` too, and other maps, as JSON text). The channel's `flatfield` and the
//! `countrate_correction_lookup_table` become NXdetector datasets with their values.

use std::sync::Arc;

use detingest_shm::{Name, PixelType};
use detingest_writer::{Table, TableValues};
use serde_json::{json, Map, Value};

use super::config::Stream2Config;
use super::link::Series;
use super::message::Start;
use super::metadata::widen;
use crate::contract::RunRequest;

use detingest_writer::HC_EV_ANGSTROM;

/// Start fields that become `[detector]` fields of the same name.
const SAME_NAME: [&str; 7] = [
    "sensor_material",
    "sensor_thickness",
    "beam_center_x",
    "beam_center_y",
    "count_time",
    "frame_time",
    "saturation_value",
];

/// Start fields with another `[detector]` name.
const RENAMED: [(&str, &str); 5] = [
    ("detector_description", "description"),
    ("detector_serial_number", "serial_number"),
    ("pixel_size_x", "x_pixel_size"),
    ("pixel_size_y", "y_pixel_size"),
    ("detector_distance", "detector_distance"),
];

/// Fields that are the message's framing, not metadata.
const FRAMING: [&str; 6] = [
    "type",
    "series_id",
    "series_unique_id",
    "image_size_x",
    "image_size_y",
    "image_dtype",
];

/// The series `start` opens, for source `source` (its stream's beamtime) of `cfg`, with
/// images of `pixel`. Refuses a stream name that is not a valid name.
pub fn series_of(
    start: &Start<'_>,
    cfg: &Stream2Config,
    source: &Name,
    beamtime: &Name,
    pixel: PixelType,
) -> Result<Series, String> {
    let stream = cfg.stream_name_of(start.series_id, &start.series_unique_id);
    Name::new(&stream).map_err(|e| format!("stream name {stream:?}: {e}"))?;
    let mut detector = detector_fields(&start.fields);
    detector["goniometer"] = goniometer(&start.fields, start.number_of_images);
    let mut request = RunRequest::new(beamtime.as_str(), source.as_str(), &stream);
    request
        .settings
        .insert("first_frame_number".into(), json!(0));
    // A detector's series ids restart with it: a name taken gets a suffix rather than the
    // series being refused.
    request.rename_if_exists = true;
    request.detector = detector.as_object().cloned();
    let pixel_masks = (start.pixel_masks.iter())
        .filter(|(_, mask)| mask.shape == start.image_size)
        .filter_map(|(channel, mask)| {
            let mut bytes = vec![0u8; mask.raw_len()];
            mask.decode_into(&mut bytes).ok()?;
            Some((channel.clone(), widen(&bytes, mask.pixel).into()))
        })
        .collect();
    let mut tables: Vec<(Option<String>, Table)> = (start.flatfields.iter())
        .filter(|(_, f)| f.shape == start.image_size && f.pixel == PixelType::F32)
        .filter_map(|(channel, f)| {
            let mut bytes = vec![0u8; f.raw_len()];
            f.decode_into(&mut bytes).ok()?;
            let values: Arc<[f32]> = (bytes.chunks_exact(4))
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let shape = f.shape.map(|d| d as usize).to_vec();
            let table = Table {
                name: "flatfield".into(),
                shape,
                values: TableValues::F32(values),
            };
            Some((Some(channel.clone()), table))
        })
        .collect();
    if !start.countrate_table.is_empty() {
        let table = Table {
            name: "countrate_correction_lookup_table".into(),
            shape: vec![start.countrate_table.len()],
            values: TableValues::U32(start.countrate_table.as_slice().into()),
        };
        tables.push((None, table));
    }
    Ok(Series {
        id: start.series_id,
        unique_id: start.series_unique_id.clone(),
        shape: start.image_size,
        pixel,
        channels: start.channels.clone(),
        images: start.number_of_images,
        pixel_masks,
        tables,
        request,
    })
}

/// Goniometer axes in the order they stack, from the floor up (a start's map has none): a
/// name not here comes after these, in name order.
const AXIS_ORDER: [&str; 4] = ["omega", "chi", "kappa", "phi"];

/// `goniometer {axis: {start, increment}}` as the `[detector] goniometer` overlay (null when
/// absent or empty), axes from the floor up ([`AXIS_ORDER`]). `two_theta` moves the
/// detector, not the sample: it stays in `detectorSpecific/goniometer` only.
fn goniometer(fields: &Map<String, Value>, images: u64) -> Value {
    let Some(Value::Object(axes)) = fields.get("goniometer") else {
        return Value::Null;
    };
    let mut axes: Vec<(&String, f64, f64)> = axes
        .iter()
        // The sample's axes; a name that cannot be a dataset stays in `detectorSpecific`
        // only (the series is not refused for it).
        .filter(|(name, _)| !matches!(name.as_str(), "two_theta" | "" | ".") && !name.contains('/'))
        .filter_map(|(name, axis)| {
            let start = axis.get("start")?.as_f64()?;
            let increment = axis.get("increment")?.as_f64()?;
            Some((name, start, increment))
        })
        .collect();
    let rank = |name: &str| {
        AXIS_ORDER
            .iter()
            .position(|a| *a == name)
            .unwrap_or(AXIS_ORDER.len())
    };
    axes.sort_by(|a, b| (rank(a.0), a.0).cmp(&(rank(b.0), b.0)));
    if axes.is_empty() {
        return Value::Null;
    }
    let axes: Vec<Value> = axes.iter().map(|(n, s, i)| json!([n, s, i])).collect();
    json!({"images": images, "axes": axes})
}

/// The `[detector]` overlay a start's fields make.
fn detector_fields(fields: &Map<String, Value>) -> Value {
    let mut det = Map::new();
    let number = |k: &str| fields.get(k).and_then(Value::as_f64);
    for key in SAME_NAME {
        if let Some(v) = fields.get(key).filter(|v| v.is_number() || v.is_string()) {
            det.insert(key.into(), v.clone());
        }
    }
    for (from, to) in RENAMED {
        if let Some(v) = fields.get(from).filter(|v| v.is_number() || v.is_string()) {
            det.insert(to.into(), v.clone());
        }
    }
    // A pixel size that is no length keeps the configured one (the series is not refused).
    for key in ["x_pixel_size", "y_pixel_size"] {
        if !det
            .get(key)
            .and_then(Value::as_f64)
            .is_none_or(|v| v.is_finite() && v > 0.0)
        {
            det.remove(key);
        }
    }
    if !det.contains_key("detector_distance") {
        let z = fields
            .get("detector_translation")
            .and_then(|t| t.get(2))
            .and_then(Value::as_f64);
        if let Some(z) = z {
            det.insert("detector_distance".into(), json!(z.abs()));
        }
    }
    if let Some(n) = fields.get("number_of_triggers").and_then(Value::as_u64) {
        det.insert("ntrigger".into(), json!(n.max(1)));
    }
    let wavelength = number("incident_wavelength").or_else(|| {
        number("incident_energy")
            .filter(|e| *e > 0.0)
            .map(|e| HC_EV_ANGSTROM / e)
    });
    if let Some(w) = wavelength.filter(|w| w.is_finite() && *w > 0.0) {
        det.insert("incident_wavelength".into(), json!(w));
    }
    let taken: Vec<&str> = SAME_NAME
        .iter()
        .copied()
        .chain(RENAMED.iter().map(|r| r.0))
        .chain(FRAMING)
        .collect();
    let specific: Map<String, Value> = fields
        .iter()
        .filter(|(k, _)| !taken.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    det.insert("specific".into(), Value::Object(specific));
    Value::Object(det)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_starts_fields_become_nxmx_fields_and_the_rest_the_detectors_own() {
        let fields: Map<String, Value> = serde_json::from_value(json!({
            "detector_description": "Dectris EIGER2 Si 16M",
            "pixel_size_x": 7.5e-5, "pixel_size_y": 7.5e-5,
            "sensor_material": "Si", "sensor_thickness": 4.5e-4,
            "beam_center_x": 2110.5, "beam_center_y": 2200,
            "count_time": 0.001, "frame_time": 0.0011,
            "detector_translation": [0.0, 0.0, -0.15], // as an EIGER2 sends it
            "saturation_value": 65535, "number_of_triggers": 3,
            "incident_energy": 12398.419843320026,
            "goniometer": {"omega": {"start": 0.0, "increment": 0.1}},
            "detector_serial_number": "E-32-0123",
        }))
        .unwrap();
        let det = detector_fields(&fields);
        assert_eq!(det["description"], "Dectris EIGER2 Si 16M");
        assert_eq!(det["x_pixel_size"], 7.5e-5);
        assert_eq!(det["beam_center_y"], 2200);
        assert_eq!(det["detector_distance"], 0.15);
        assert_eq!(det["ntrigger"], 3);
        assert!((det["incident_wavelength"].as_f64().unwrap() - 1.0).abs() < 1e-12);
        let specific = det["specific"].as_object().unwrap();
        assert_eq!(det["serial_number"], "E-32-0123");
        assert!(!specific.contains_key("detector_serial_number"));
        assert_eq!(specific["goniometer"]["omega"]["increment"], 0.1);
        assert!(!specific.contains_key("count_time"));
        assert!(!specific.contains_key("pixel_size_x"));
    }

    #[test]
    fn odd_axis_names_and_pixel_sizes_are_left_out_not_a_refused_series() {
        let fields: Map<String, Value> = serde_json::from_value(json!({
            "pixel_size_x": 0.0, "pixel_size_y": 7.5e-5,
            "goniometer": {"a/b": {"start": 0.0, "increment": 1.0},
                           "omega": {"start": 0.0, "increment": 0.1}},
        }))
        .unwrap();
        let mut det = detector_fields(&fields);
        det["goniometer"] = goniometer(&fields, 3);
        assert!(det.get("x_pixel_size").is_none() && det["y_pixel_size"] == 7.5e-5);
        let info: detingest_writer::DetectorInfo = serde_json::from_value(det).unwrap();
        assert_eq!(info.validate(), Ok(()));
        let axes: Vec<&str> = info
            .goniometer
            .as_ref()
            .unwrap()
            .axes
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        assert_eq!(axes, ["omega"]);
    }

    #[test]
    fn goniometer_axes_stack_from_the_floor_up_and_two_theta_is_not_the_samples() {
        let fields: Map<String, Value> = serde_json::from_value(json!({"goniometer": {
            "phi": {"start": 1.0, "increment": 0.0}, "omega": {"start": 0.0, "increment": 0.1},
            "kappa": {"start": 2.0, "increment": 0.0}, "two_theta": {"start": 0.0, "increment": 0.0},
            "chi": {"start": 3.0, "increment": 0.0}, "aux": {"start": 0.0, "increment": 0.0},
        }}))
        .unwrap();
        let g = goniometer(&fields, 5);
        let names: Vec<&str> = (g["axes"].as_array().unwrap().iter())
            .map(|a| a[0].as_str().unwrap())
            .collect();
        assert_eq!(names, ["omega", "chi", "kappa", "phi", "aux"]);
        assert_eq!(g["images"], 5);
    }

    #[test]
    fn the_wavelength_given_wins_over_the_energy() {
        let fields: Map<String, Value> = serde_json::from_value(
            json!({"incident_wavelength": 0.9763, "incident_energy": 8000.0}),
        )
        .unwrap();
        assert_eq!(detector_fields(&fields)["incident_wavelength"], 0.9763);
    }
}
