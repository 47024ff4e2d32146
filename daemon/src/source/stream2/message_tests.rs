//! Stream V2 messages built as the specification lays them out (FORMATS.md section 10), and
//! every malformed case a source must count rather than crash on.

use minicbor::data::Tag;
use minicbor::Encoder;

use super::*;
use detingest_writer::Codec;

type Enc = Encoder<Vec<u8>>;

fn enc() -> Enc {
    let mut e = Encoder::new(Vec::new());
    e.tag(Tag::new(SELF_DESCRIBE)).unwrap();
    e
}

/// `ny x nx` u16 pixels, value = (y * 7 + x) % 1000.
fn pixels(shape: [u32; 2]) -> Vec<u8> {
    (0..shape[0] * shape[1])
        .flat_map(|i| (((i / shape[1] * 7 + i % shape[1]) % 1000) as u16).to_le_bytes())
        .collect()
}

fn bslz4(raw: &[u8]) -> Vec<u8> {
    let c = Codec::BitshuffleLz4;
    let mut out = vec![0; c.max_compressed_len(raw.len(), 2)];
    let n = c.compress_into(raw, 2, &mut out).unwrap();
    out.truncate(n);
    out
}

/// A tag 40 array of `shape` u16 over `bytes`, compressed with `algorithm` (`None`: raw).
fn array(e: &mut Enc, shape: [u32; 2], algorithm: Option<(&str, u64)>, bytes: &[u8]) {
    e.tag(Tag::new(MULTI_DIM)).unwrap().array(2).unwrap();
    e.array(2)
        .unwrap()
        .u32(shape[0])
        .unwrap()
        .u32(shape[1])
        .unwrap();
    // The typed array's tag outside, the compression tag inside, as an EIGER2 sends it.
    e.tag(Tag::new(69)).unwrap();
    if let Some((name, modifier)) = algorithm {
        e.tag(Tag::new(DECTRIS_COMPRESSION))
            .unwrap()
            .array(3)
            .unwrap();
        e.str(name).unwrap().u64(modifier).unwrap();
    }
    e.bytes(bytes).unwrap();
}

fn start_message(channels: &[&str]) -> Vec<u8> {
    let mut e = enc();
    e.map(12).unwrap();
    e.str("type").unwrap().str("start").unwrap();
    e.str("series_id").unwrap().u64(7).unwrap();
    e.str("series_unique_id").unwrap().str("01HV-7").unwrap();
    e.str("number_of_images").unwrap().u64(10).unwrap();
    e.str("image_size_x").unwrap().u32(64).unwrap();
    e.str("image_size_y").unwrap().u32(32).unwrap();
    e.str("image_dtype").unwrap().str("uint16").unwrap();
    e.str("channels")
        .unwrap()
        .array(channels.len() as u64)
        .unwrap();
    for c in channels {
        e.str(c).unwrap();
    }
    e.str("beam_center_x").unwrap().f64(31.5).unwrap();
    e.str("goniometer").unwrap().map(1).unwrap();
    e.str("omega").unwrap().map(2).unwrap();
    e.str("start").unwrap().f64(0.0).unwrap();
    e.str("increment").unwrap().f64(0.1).unwrap();
    e.str("arm_date")
        .unwrap()
        .tag(Tag::new(0))
        .unwrap()
        .str("2026-11-30T08:00:00Z")
        .unwrap();
    e.str("pixel_mask").unwrap().map(1).unwrap();
    e.str("threshold_1").unwrap();
    array(&mut e, [32, 64], None, &vec![0u8; 32 * 64 * 2]);
    e.into_writer()
}

fn image_message(id: u64, compression: Option<(&str, u64)>, bytes: &[u8]) -> Vec<u8> {
    let mut e = enc();
    e.map(5).unwrap();
    e.str("type").unwrap().str("image").unwrap();
    e.str("series_id").unwrap().u64(7).unwrap();
    e.str("image_id").unwrap().u64(id).unwrap();
    e.str("real_time")
        .unwrap()
        .array(2)
        .unwrap()
        .u64(1)
        .unwrap()
        .u64(1000)
        .unwrap();
    e.str("data")
        .unwrap()
        .map(1)
        .unwrap()
        .str("threshold_1")
        .unwrap();
    array(&mut e, [32, 64], compression, bytes);
    e.into_writer()
}

#[test]
fn a_start_gives_the_series_geometry_channels_mask_and_the_rest_as_json() {
    let bytes = start_message(&["threshold_1", "threshold_2"]);
    let Message::Start(s) = decode(&bytes).unwrap() else {
        panic!("not a start");
    };
    assert_eq!((s.series_id, s.series_unique_id.as_str()), (7, "01HV-7"));
    assert_eq!(
        (s.number_of_images, s.image_size, s.pixel),
        (10, [32, 64], Some(PixelType::U16))
    );
    assert_eq!(s.channels, ["threshold_1", "threshold_2"]);
    assert_eq!(s.pixel_masks.len(), 1);
    assert_eq!(s.pixel_masks[0].1.shape, [32, 64]);
    assert_eq!(s.fields["beam_center_x"], 31.5);
    assert_eq!(s.fields["goniometer"]["omega"]["increment"], 0.1);
    assert_eq!(s.fields["arm_date"], "2026-11-30T08:00:00Z");
}

#[test]
fn a_bslz4_image_is_borrowed_as_the_hdf5_chunk_it_is() {
    let raw = pixels([32, 64]);
    let chunk = bslz4(&raw);
    let bytes = image_message(3, Some(("bslz4", 2)), &chunk);
    let Message::Image(image) = decode(&bytes).unwrap() else {
        panic!("not an image");
    };
    assert_eq!((image.series_id, image.image_id), (7, 3));
    assert_eq!(image.times[2], Some((1, 1000)));
    let arrays: Vec<_> = image.arrays().collect();
    assert_eq!(arrays.len(), 1);
    let (channel, a) = arrays[0];
    assert_eq!(
        (channel, a.shape, a.pixel),
        ("threshold_1", [32, 64], PixelType::U16)
    );
    let Payload::Bslz4(borrowed) = a.payload else {
        panic!("not bslz4: {:?}", a.payload);
    };
    assert_eq!(borrowed, &chunk[..], "the chunk as it arrived");
    let start = bytes.len() - chunk.len();
    assert!(
        std::ptr::eq(borrowed.as_ptr(), bytes[start..].as_ptr()),
        "not copied"
    );
    let raw_image = image_message(4, None, &raw);
    let Message::Image(image) = decode(&raw_image).unwrap() else {
        panic!("not an image");
    };
    assert_eq!(image.channels[0].unwrap().1.payload, Payload::Raw(&raw[..]));
}

#[test]
fn an_end_names_its_series() {
    let mut e = enc();
    e.map(2).unwrap();
    e.str("series_id").unwrap().u64(9).unwrap();
    e.str("type").unwrap().str("end").unwrap();
    assert_eq!(
        decode(&e.into_writer()).unwrap(),
        Message::End { series_id: 9 }
    );
}

#[test]
fn every_malformed_message_is_refused_with_its_kind() {
    let raw = pixels([32, 64]);
    let chunk = bslz4(&raw);
    let mut wrong_total = chunk.clone();
    wrong_total[7] ^= 2;
    let mut zero_block = chunk.clone();
    zero_block[8..12].copy_from_slice(&0u32.to_be_bytes());
    let unknown = {
        let mut e = enc();
        e.map(1)
            .unwrap()
            .str("type")
            .unwrap()
            .str("calibration")
            .unwrap();
        e.into_writer()
    };
    let no_type = {
        let mut e = enc();
        e.map(1).unwrap().str("series_id").unwrap().u64(1).unwrap();
        e.into_writer()
    };
    let not_a_map = {
        let mut e = enc();
        e.array(1).unwrap().u64(1).unwrap();
        e.into_writer()
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "malformed"),
        ("json", b"{\"type\": \"image\"}".to_vec(), "malformed"),
        ("not a map", not_a_map, "malformed"),
        ("unknown type", unknown, "unknown_type"),
        ("no type", no_type, "missing_field"),
        (
            "raw bytes short",
            image_message(1, None, &raw[1..]),
            "bad_field",
        ),
        (
            "bslz4 wrong element size",
            image_message(1, Some(("bslz4", 4)), &chunk),
            "bad_field",
        ),
        (
            "bslz4 header size",
            image_message(1, Some(("bslz4", 2)), &wrong_total),
            "bad_field",
        ),
        (
            "bslz4 block 0",
            image_message(1, Some(("bslz4", 2)), &zero_block),
            "bad_field",
        ),
        (
            "bslz4 no header",
            image_message(1, Some(("bslz4", 2)), &chunk[..5]),
            "bad_field",
        ),
        (
            "zstd",
            image_message(1, Some(("zstd", 0)), &chunk),
            "bad_field",
        ),
    ];
    for (what, bytes, kind) in cases {
        let e = decode(&bytes).expect_err(what);
        assert_eq!(e.kind(), kind, "{what}: {e}");
    }
    // Every truncation of a good start and image is refused, never a panic.
    for good in [
        start_message(&["threshold_1"]),
        image_message(2, Some(("bslz4", 2)), &chunk),
    ] {
        for n in 0..good.len() {
            assert!(decode(&good[..n]).is_err(), "cut at {n}");
        }
    }
}

/// The messages tickit-devices recorded from an EIGER2 (its `data/stream2/{start,image,end}.cbor`),
/// when `DETINGEST_STREAM2_SAMPLES` names that folder: a producer no one here wrote.
#[test]
fn recorded_eiger2_messages_decode() {
    let Some(dir) = std::env::var_os("DETINGEST_STREAM2_SAMPLES") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let read = |name: &str| std::fs::read(dir.join(name)).expect("a recorded message");
    let start = read("start.cbor");
    let Message::Start(s) = decode(&start).unwrap() else {
        panic!("not a start");
    };
    eprintln!(
        "start: series {} {:?}, {} images, {:?} {:?}, channels {:?}, masks {}, fields {:?}",
        s.series_id,
        s.series_unique_id,
        s.number_of_images,
        s.image_size,
        s.pixel,
        s.channels,
        s.pixel_masks.len(),
        s.fields.keys().collect::<Vec<_>>()
    );
    let image = read("image.cbor");
    let Message::Image(i) = decode(&image).unwrap() else {
        panic!("not an image");
    };
    for (channel, a) in i.arrays() {
        let kind = match a.payload {
            Payload::Raw(b) => format!("raw {}", b.len()),
            Payload::Bslz4(b) => format!("bslz4 {}", b.len()),
            Payload::Lz4(b) => format!("lz4 {}", b.len()),
        };
        eprintln!(
            "image {}: {channel} {:?} {:?} {kind}",
            i.image_id, a.shape, a.pixel
        );
        assert_eq!(a.shape, s.image_size);
        // The chunk as it came is one our bitshuffle-LZ4 codec (HDF5 filter 32008) decodes.
        if let Payload::Bslz4(chunk) = a.payload {
            let mut out = vec![0u8; a.shape[0] as usize * a.shape[1] as usize * a.pixel.size()];
            let n = Codec::BitshuffleLz4.decompress_into(chunk, a.pixel.size(), &mut out);
            assert_eq!(n.ok(), Some(out.len()));
            let sum: u64 = out
                .chunks_exact(2)
                .map(|p| u64::from(u16::from_le_bytes([p[0], p[1]])))
                .sum();
            eprintln!("sum of pixels {sum}");
        }
    }
    assert!(matches!(
        decode(&read("end.cbor")).unwrap(),
        Message::End { .. }
    ));
    assert_eq!(s.fields["detector_description"], "Dectris EIGER2 Si 16M");
}
