//! A `start` message made into the [`Series`] its run needs: the stream name, the image
//! format, the pixel mask, and the run request with the NXmx metadata the start carries.
//!
//! Mapped into `[detector]` (the NXmx master): `detector_description`, `pixel_size_x/y`,
//! `sensor_material`, `sensor_thickness`, `beam_center_x/y`, `count_time`, `frame_time`,
//! `detector_distance` (or the z of `detector_translation`), `saturation_value`,
//! `number_of_triggers`, `incident_wavelength` (or `incident_energy` in eV converted to Å).
//! `goniometer` axes become `/entry/sample/goniometer` positions per image. Every other field
//! is the detector's own metadata, written into `detectorSpecific` (`goniometer` and
//! `threshold_energy` too, and other maps, as JSON text).

use detingest_shm::{Name, PixelType};
use serde_json::{json, Map, Value};

use super::config::Stream2Config;
use super::link::Series;
use super::message::Start;

/// hc in eV·Å: wavelength = HC / energy.
const HC_EV_ANGSTROM: f64 = 12_398.419_843_320_026;

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
const RENAMED: [(&str, &str); 4] = [
    ("detector_description", "description"),
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
    let request = json!({
        "beamtime": beamtime.as_str(),
        "source": source.as_str(),
        "stream": stream,
        "first_frame_number": 0,
        // A detector's series ids restart with it: a name taken gets a suffix rather than
        // the series being refused.
        "rename_if_exists": true,
        "detector": detector,
    });
    let pixel_masks = (start.pixel_masks.iter())
        .filter(|(_, mask)| mask.shape == start.image_size)
        .filter_map(|(channel, mask)| {
            let mut bytes = vec![0u8; mask.raw_len()];
            mask.decode_into(&mut bytes).ok()?;
            Some((channel.clone(), widen(&bytes, mask.pixel).into()))
        })
        .collect();
    Ok(Series {
        id: start.series_id,
        unique_id: start.series_unique_id.clone(),
        shape: start.image_size,
        pixel,
        channels: start.channels.clone(),
        images: start.number_of_images,
        pixel_masks,
        request,
    })
}

/// `goniometer {axis: {start, increment}}` as the `[detector] goniometer` overlay (null when
/// absent or empty).
fn goniometer(fields: &Map<String, Value>, images: u64) -> Value {
    let Some(Value::Object(axes)) = fields.get("goniometer") else {
        return Value::Null;
    };
    let axes: Vec<Value> = axes
        .iter()
        .filter_map(|(name, axis)| {
            let start = axis.get("start")?.as_f64()?;
            let increment = axis.get("increment")?.as_f64()?;
            Some(json!([name, start, increment]))
        })
        .collect();
    if axes.is_empty() {
        return Value::Null;
    }
    json!({"images": images, "axes": axes})
}

/// The mask as u32 per pixel, whatever its element type.
fn widen(bytes: &[u8], pixel: PixelType) -> Vec<u32> {
    match pixel.size() {
        1 => bytes.iter().map(|&b| u32::from(b)).collect(),
        2 => bytes
            .chunks_exact(2)
            .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    }
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
    if !det.contains_key("detector_distance") {
        let z = fields
            .get("detector_translation")
            .and_then(|t| t.get(2))
            .and_then(Value::as_f64);
        if let Some(z) = z {
            det.insert("detector_distance".into(), json!(z));
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
            "detector_translation": [0.0, 0.0, 0.15],
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
        assert_eq!(specific["detector_serial_number"], "E-32-0123");
        assert_eq!(specific["goniometer"]["omega"]["increment"], 0.1);
        assert!(!specific.contains_key("count_time"));
        assert!(!specific.contains_key("pixel_size_x"));
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
