//! The Stream V2 output's messages (`sink::stream2::encode`) decode with this source's
//! decoder to what was encoded: a daemon's output is another daemon's input.

use detingest_shm::PixelType;
use detingest_writer::{Codec, DetectorInfo};
use serde_json::json;

use super::message::{decode, Message, Payload};
use crate::sink::stream2::encode::{self, ImageFormat, SeriesIds};

fn ids() -> SeriesIds {
    SeriesIds {
        id: 3,
        unique: "bt/det/s1@1796000000000000000".into(),
    }
}

#[test]
fn start_image_and_end_encoded_by_the_output_decode_as_sent() {
    let format = ImageFormat {
        shape: [6, 8],
        pixel: PixelType::U16,
        codec: Codec::BitshuffleLz4,
    };
    let detector = DetectorInfo {
        beam_center_x: Some(3.5),
        incident_wavelength: Some(0.9763),
        specific: serde_json::from_value(json!({
            "goniometer": {"omega": {"start": 1.0, "increment": 0.1}},
            "detector_serial_number": "E-1",
        }))
        .unwrap(),
        ..DetectorInfo::default()
    };
    let mut buf = Vec::new();
    let user = json!({"sample": "x", "n": [1, 2]});
    let fields = encode::StartFields {
        ids: &ids(),
        format: &format,
        channel: "threshold_1",
        images: 10,
        detector: &detector,
        user: &user,
        started_ns: 0,
    };
    encode::start(&mut buf, &fields).unwrap();
    let Message::Start(s) = decode(&buf).unwrap() else {
        panic!("not a start");
    };
    assert_eq!(
        (s.series_id, s.series_unique_id.as_str()),
        (3, ids().unique.as_str())
    );
    assert_eq!((s.image_size, s.pixel), ([6, 8], Some(PixelType::U16)));
    assert_eq!(
        (s.number_of_images, s.channels.as_slice()),
        (10, &["threshold_1".to_owned()][..])
    );
    assert_eq!(s.fields["beam_center_x"], 3.5);
    assert_eq!(s.fields["incident_wavelength"], 0.9763);
    assert_eq!(s.fields["goniometer"]["omega"]["increment"], 0.1);
    assert_eq!(s.fields["detector_serial_number"], "E-1");
    assert_eq!(s.fields["user_data"], user);
    assert_eq!(s.fields["detector_description"], detector.description);

    let raw: Vec<u8> = (0..48u16).flat_map(|v| (v * 37).to_le_bytes()).collect();
    for codec in Codec::ALL {
        let mut chunk = vec![0; codec.max_compressed_len(raw.len(), 2)];
        let n = codec.compress_into(&raw, 2, &mut chunk).unwrap();
        chunk.truncate(n);
        let format = ImageFormat { codec, ..format };
        encode::image_head(&mut buf, &ids(), 41, "threshold_1", &format, chunk.len()).unwrap();
        buf.extend_from_slice(&chunk);
        let Message::Image(image) = decode(&buf).unwrap() else {
            panic!("not an image");
        };
        assert_eq!((image.series_id, image.image_id), (3, 41));
        let (channel, array) = image.channels[0].unwrap();
        assert_eq!(
            (channel, array.shape, array.pixel),
            ("threshold_1", [6, 8], PixelType::U16)
        );
        let (payload, expected) = match codec {
            Codec::None => (Payload::Raw(&chunk), None),
            Codec::Lz4 => (Payload::Lz4(&chunk), Some(Codec::Lz4)),
            Codec::BitshuffleLz4 => (Payload::Bslz4(&chunk), Some(Codec::BitshuffleLz4)),
        };
        assert_eq!(
            array.payload, payload,
            "{codec:?}: the chunk is carried as it is"
        );
        assert_eq!(array.codec(), expected);
        let mut back = vec![0; raw.len()];
        array.decode_into(&mut back).unwrap();
        assert_eq!(back, raw, "{codec:?}");
    }

    encode::end(&mut buf, &ids()).unwrap();
    assert_eq!(decode(&buf).unwrap(), Message::End { series_id: 3 });
}

#[test]
fn byte_string_heads_of_every_width_decode() {
    let format = ImageFormat {
        shape: [1, 1],
        pixel: PixelType::U8,
        codec: Codec::None,
    };
    let mut buf = Vec::new();
    // Chunk lengths that take each CBOR length width: the decoder must find the bytes.
    for len in [1usize, 30, 300, 70_000] {
        let format = ImageFormat {
            shape: [1, len as u32],
            ..format
        };
        encode::image_head(&mut buf, &ids(), 0, "c", &format, len).unwrap();
        buf.extend(std::iter::repeat_n(7u8, len));
        let Message::Image(image) = decode(&buf).unwrap() else {
            panic!("not an image");
        };
        assert_eq!(image.channels[0].unwrap().1.bytes().len(), len);
    }
}
