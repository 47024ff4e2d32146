//! The configuration's keyed errors, for the top level and every component's table.

use detingest_shm::PixelType;

use super::*;
use crate::source::synthetic::config::SyntheticConfig;

const MINIMAL: &str = r#"
    [[source]]
    name = "sim"
    stream = { beamtime = "bt", source = "det", stream = "s1" }
    [source.synthetic]
"#;

fn err(text: &str) -> ConfigError {
    Config::parse(text).expect_err("config should be refused")
}

const SHM: &str = r#"
    [[source]]
    name = "mod0"
    stream = { beamtime = "bt", source = "det", stream = "s1" }
    [source.shm]
    shape = [512, 1024]
    pixel = "u16"
"#;

#[test]
fn shm_source_gets_its_defaults() {
    let c = Config::parse(SHM).unwrap();
    let Some(s) = c.sources[0].shm.as_ref() else {
        panic!("shm source expected");
    };
    assert_eq!(
        s.ring_path(&c.sources[0].name),
        Path::new("/dev/shm/detingest/mod0")
    );
    assert_eq!((s.slots, s.file_mode(), s.end_on_close), (64, 0o600, false));
    let grouped = Config::parse(&SHM.replace("pixel", "group = \"root\"\npixel")).unwrap();
    let Some(g) = grouped.sources[0].shm.as_ref() else {
        panic!("shm source expected");
    };
    assert_eq!((g.file_mode(), g.gid(0).unwrap()), (0o660, Some(0)));
}

#[test]
fn bad_shm_settings_are_refused_by_key() {
    for (find, replace, key) in [
        ("pixel", "slots = 48\npixel", "source[0].shm.slots"),
        ("pixel", "slots = 1\npixel", "source[0].shm.slots"),
        ("[512, 1024]", "[0, 1024]", "source[0].shm.shape"),
        ("pixel", "mode = 0o400\npixel", "source[0].shm.mode"),
        ("pixel", "mode = 0o1777\npixel", "source[0].shm.mode"),
        (
            "pixel",
            "group = \"no-such-group-here\"\npixel",
            "source[0].shm.group",
        ),
        ("pixel", "dir = \"rings\"\npixel", "source[0].shm.dir"),
        ("pixel", "ring = \"../etc\"\npixel", "source[0].shm.ring"),
        ("pixel", "spin_us = 5000000\npixel", "source[0].shm.spin_us"),
        ("pixel = \"u16\"", "", "source[0].shm"),
    ] {
        let e = err(&SHM.replace(find, replace));
        assert!(e.key.starts_with(key), "{find} -> {replace}: got {e}");
    }
    let both = SHM.replace("[source.shm]", "[source.synthetic]\n[source.shm]");
    let e = err(&both);
    assert_eq!(e.key, "source[0]");
    assert!(e.to_string().contains("exactly one source kind"), "{e}");
}

const UDP: &str = r#"
    [[source]]
    name = "mod0"
    stream = { beamtime = "bt", source = "det", stream = "s1" }
    [source.udp]
    port = 50001
"#;

#[test]
fn bad_udp_settings_are_refused_by_key() {
    assert!(Config::parse(UDP).is_ok(), "JUNGFRAU defaults fit together");
    for (extra, key) in [
        ("shape = [256, 1024]", "source[0].udp.shape"),
        ("shape = [0, 1024]", "source[0].udp.shape"),
        ("packets_per_frame = 513", "source[0].udp.packets_per_frame"),
        ("payload_bytes = 8191", "source[0].udp.payload_bytes"),
        ("window = 0", "source[0].udp.window"),
        ("timeout_ms = 0", "source[0].udp.timeout_ms"),
        ("fill = 65536", "source[0].udp.fill"),
        ("restart_gap = 4", "source[0].udp.restart_gap"),
        ("restart_confirm = 0", "source[0].udp.restart_confirm"),
        ("receive = \"dpdk\"", "source[0].udp.receive"),
        ("bind = \"not-an-address\"", "source[0].udp.bind"),
    ] {
        let e = err(&format!("{UDP}{extra}\n"));
        assert_eq!(e.key, key, "{extra}: {e}");
    }
}

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.writer.codec, Codec::BitshuffleLz4);
    assert_eq!(c.sources[0].codec(c.writer.codec), Codec::BitshuffleLz4);
    let own = Config::parse(
        &MINIMAL.replace("[source.synthetic]", "codec = \"lz4\"\n[source.synthetic]"),
    )
    .unwrap();
    assert_eq!(own.sources[0].codec(own.writer.codec), Codec::Lz4);
    assert_eq!(c.pipeline.compress_workers, 2);
    let Some(s) = c.sources[0].synthetic.as_ref() else {
        panic!("synthetic source expected");
    };
    let d = SyntheticConfig::default();
    assert_eq!(
        (s.frames, s.shape, s.pixel, s.seed),
        (d.frames, d.shape, d.pixel, d.seed)
    );
    assert_eq!(
        (s.background, s.peaks, s.bank_frames),
        (d.background, d.peaks, d.bank_frames)
    );
    assert_eq!(s.shape, [512, 1024]);
    assert_eq!(s.pixel, PixelType::U16);
    assert_eq!(c.sources[0].policy, Policy::Block);
}

#[test]
fn bad_stream_name_names_its_key() {
    let e = err(&MINIMAL.replace("\"bt\"", "\"../etc\""));
    assert_eq!(e.key, "source[0].stream.beamtime");
    assert!(e.message.contains("../etc"), "{e}");
}

#[test]
fn unknown_key_is_named() {
    let e = err(&format!("{MINIMAL}\nspeed = 3\n"));
    assert_eq!(e.key, "source[0].synthetic.speed");
    assert!(e.message.contains("speed"), "{e}");
    let e = err(&format!("[writer]\nflush_evry_frames = 3\n{MINIMAL}"));
    assert_eq!(e.key, "writer.flush_evry_frames");
    assert!(e.message.contains("flush_evry_frames"), "{e}");
}

#[test]
fn wrong_type_and_bad_enum_are_named() {
    let e = err(&format!("[writer]\ncodec = \"zip\"\n{MINIMAL}"));
    assert_eq!(e.key, "writer.codec");
    let e = err(&format!("{MINIMAL}\npixel = \"u12\"\n"));
    assert_eq!(e.key, "source[0].synthetic.pixel");
    let e = err(&format!("{MINIMAL}\nframes = \"many\"\n"));
    assert_eq!(e.key, "source[0].synthetic.frames");
}

#[test]
fn range_errors_are_named() {
    let e = err(&format!("[pipeline]\ncompress_workers = 0\n{MINIMAL}"));
    assert_eq!(e.key, "pipeline.compress_workers");
    let e = err(&format!("{MINIMAL}\nrate_hz = -1.0\n"));
    assert_eq!(e.key, "source[0].synthetic.rate_hz");
    let e = err(&format!("{MINIMAL}\nshape = [0, 10]\n"));
    assert_eq!(e.key, "source[0].synthetic.shape");
    let e = err(&format!("[threads]\ncompress = [0, 4096]\n{MINIMAL}"));
    assert_eq!(e.key, "threads.compress[1]");
}

#[test]
fn duplicate_streams_and_empty_sources_are_refused() {
    let twice = format!("{MINIMAL}{}", MINIMAL.replace("\"sim\"", "\"sim2\""));
    assert_eq!(err(&twice).key, "source[1].stream");
    let gridded = |name: &str, module: u16, grid: &str| {
        format!(
            "[[source]]\nname = \"{name}\"\ngrid = {grid}\n\
             stream = {{ beamtime = \"bt\", source = \"det\", stream = \"s1\" }}\n\
             [source.udp]\nport = {}\nmod_id = {}\nplace = [0, {module}]\npackets_per_frame = 2\n\
             payload_bytes = 1024\nshape = [1, 1024]\npixel = \"u16\"\n",
            9000 + module,
            1200 + module
        )
    };
    let two = format!(
        "{}{}",
        gridded("m0", 0, "[1, 2]"),
        gridded("m1", 1, "[1, 2]")
    );
    assert_eq!(
        Config::parse(&two).unwrap().sources.len(),
        2,
        "modules of one detector"
    );
    let same = format!(
        "{}{}",
        gridded("m0", 1, "[1, 2]"),
        gridded("m1", 1, "[1, 2]")
    );
    assert_eq!(err(&same).key, "source[1].udp.place");
    let other = format!(
        "{}{}",
        gridded("m0", 0, "[1, 2]"),
        gridded("m1", 1, "[2, 1]")
    );
    assert_eq!(err(&other).key, "source[1].stream");
    assert_eq!(err(&gridded("m2", 2, "[1, 2]")).key, "source[0].udp.place");
    assert_eq!(err("data_dir = \"x\"\n").key, "source");
    let kindless = MINIMAL.replace("[source.synthetic]", "");
    assert_eq!(err(&kindless).key, "source[0]");
}

#[test]
fn live_endpoints_are_checked() {
    for (text, key) in [
        ("publish = \"5556\"\n", "live.publish"),
        (
            "publish = \"tcp://a:1\"\nquery = \"tcp://a:1\"\n",
            "live.query",
        ),
        ("realtime_priority = 100\n", "live.realtime_priority"),
        ("batch_interval_us = 2000000\n", "live.batch_interval_us"),
    ] {
        assert_eq!(err(&format!("[live]\n{text}{MINIMAL}")).key, key, "{text}");
    }
    let c = Config::parse(&format!("[live]\npublish = \"\"\nquery = \"\"\n{MINIMAL}")).unwrap();
    assert!(c.sink.zmq.publish.is_empty());
}

#[test]
fn every_sink_table_is_mounted_under_sink_and_the_older_names_are_still_read() {
    // The new mount: errors name the key there.
    let e = err(&format!("[sink.zmq]\nhistory = 0\n{MINIMAL}"));
    assert_eq!(e.key, "sink.zmq.history");
    let e = err(&format!("[sink.kafka]\nbrokers = \"nohost\"\n{MINIMAL}"));
    assert_eq!(e.key, "sink.kafka.brokers");
    let e = err(&format!("[sink.quality]\nprofile_bins = 1\n{MINIMAL}"));
    assert_eq!(e.key, "sink.quality.profile_bins");
    let e = err(&format!("[sink.log]\nbogus = 1\n{MINIMAL}"));
    assert_eq!(e.key, "sink.log.bogus");
    // The older names: read, and errors name the key as the file wrote it.
    let e = err(&format!("[kafka]\nbrokers = \"nohost\"\n{MINIMAL}"));
    assert_eq!(e.key, "kafka.brokers");
    let e = err(&format!("[quality]\nbogus = 1\n{MINIMAL}"));
    assert_eq!(e.key, "quality.bogus");
    let c = Config::parse(&format!("[quality]\nthreshold = 7.0\n{MINIMAL}")).unwrap();
    assert_eq!(c.sink.quality.threshold, 7.0);
    // Both names of one table: refused, naming the older one.
    let e = err(&format!(
        "[live]\nhistory = 5\n[sink.zmq]\nhistory = 6\n{MINIMAL}"
    ));
    assert_eq!(e.key, "live");
    assert!(e.message.contains("[sink.zmq]"), "{}", e.message);
}

#[test]
fn run_and_grid_settings_are_checked_by_key() {
    for (text, key) in [
        ("[run]\nframes_per_file = 0\n", "run.frames_per_file"),
        ("[run]\ndataset_ahead = 5000\n", "run.dataset_ahead"),
        ("[run]\nchunking = \"tiles\"\n", "run.chunking"),
        ("[run]\nnext_stream = \"../x\"\n", "run.next_stream"),
    ] {
        assert_eq!(err(&format!("{text}{MINIMAL}")).key, key, "{text}");
    }
    let grid = MINIMAL.replace("[source.synthetic]", "grid = [9, 8]\n[source.synthetic]");
    assert_eq!(err(&grid).key, "source[0].grid");
    let loss = format!("{MINIMAL}module_loss = 2.0\n");
    assert_eq!(err(&loss).key, "source[0].synthetic.module_loss");
}

#[test]
fn syntax_error_is_reported() {
    let e = err("[writer\n");
    assert_eq!(e.key, ".");
    assert!(e.message.contains("line 1"), "{e}");
}

#[test]
fn flipped_rows_need_whole_rows_per_packet() {
    let udp = |flip: &str| {
        format!(
            "[[source]]\nname = \"eiger\"\n\
             stream = {{ beamtime = \"bt\", source = \"det\", stream = \"s1\" }}\n\
             [source.udp]\nport = 9000\npackets_per_frame = 4\npayload_bytes = 1024\n\
             shape = [8, {}]\npixel = \"u16\"\nflip_rows = true\n",
            flip
        )
    };
    assert!(
        Config::parse(&udp("256")).is_ok(),
        "two rows of 256 pixels a packet"
    );
    assert_eq!(err(&udp("384")).key, "source[0].udp.shape");
    let odd = udp("256")
        .replace("payload_bytes = 1024", "payload_bytes = 768")
        .replace("shape = [8, 256]", "shape = [6, 256]");
    assert_eq!(err(&odd).key, "source[0].udp.flip_rows");
}

#[test]
fn an_event_source_needs_brokers_here_or_in_kafka() {
    let events = r#"
[[source]]
name = "loki"
stream = { beamtime = "bt", source = "loki", stream = "x" }
[source.kafka_events]
topics = ["loki_events"]
banks = [{ source_name = "bank0" }]
"#;
    let e = err(events);
    assert_eq!(e.key, "source[0].kafka_events.brokers", "{e}");
    Config::parse(&format!(
        "[kafka]\nbrokers = \"k:9092\"\ncommand_topic = \"c\"\n{events}"
    ))
    .unwrap();
    Config::parse(&events.replace("topics =", "brokers = \"k:9092\"\ntopics =")).unwrap();
}
