//! The UDP source on real loopback sockets, through both receive paths: a simulated module
//! sends frames with known loss, duplicates, reordering and garbage; the file's complete
//! frames are byte-exact, incomplete ones carry exactly the injected losses (fill value in
//! their place), every counter matches what was injected, kind by kind, and the detector's
//! timestamp and bunch id are recorded per index.

use std::time::{Duration, Instant};

use detingest_daemon::config::Config;
use detingest_daemon::pipeline;
use detingest_daemon::sink::RunSinks;
use detingest_daemon::source::udp::assembler::PacketCounts;
use detingest_daemon::source::udp::simulator::{self, payload_byte, Simulation};
use detingest_tests::{read, SPECIFIC};

const PPF: u32 = 16;
const PAYLOAD: usize = 1024;
const FRAMES: u64 = 300;
const FILL: u16 = 0xDEAD;

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(receive: &str) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = format!(
        "data_dir = {:?}\n[live]\npublish = \"\"\nquery = \"\"\n\
         [pipeline]\ninput_buffers = 64\n\
         [[source]]\nname = \"mod3\"\ncodec = \"none\"\npolicy = \"block\"\n\
         stream = {{ beamtime = \"bt\", source = \"det\", stream = \"{receive}\" }}\n\
         [source.udp]\nbind = \"127.0.0.1\"\nport = {port}\nmod_id = 1234\n\
         packets_per_frame = {PPF}\npayload_bytes = {PAYLOAD}\nshape = [8, 1024]\npixel = \"u16\"\n\
         receive = \"{receive}\"\nfill = {FILL}\nrcvbuf_bytes = 4194304\n",
        dir.path().display().to_string()
    );
    let config = Config::parse(&text).unwrap();
    let running = pipeline::start(&config, RunSinks::none()).unwrap();
    let sim = Simulation {
        target: format!("127.0.0.1:{port}").parse().unwrap(),
        mod_id: 1234,
        place: [0, 0],
        packets_per_frame: PPF,
        readout: None,
        payload_bytes: PAYLOAD,
        first_frame: 1000,
        frames: FRAMES,
        rate_hz: 500.0, // slow enough for a busy 2-core machine running debug builds
        loss: 0.03,
        duplicate: 0.03,
        reorder: true,
        garbage_every: 10,
        seed: 7,
    };
    let sent = simulator::send(&sim).unwrap();
    let src = &running.sources()[0];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = packets(&src.summary()).map_or(0, |c| c.datagrams);
        if got == sent.datagrams {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "received {got} of {} datagrams",
            sent.datagrams
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    running.stop();
    let summary = running.wait();
    let c = packets(&summary.sources[0]).expect("UDP counters");

    // Counters, kind by kind.
    let sent_packets = FRAMES * u64::from(PPF) - sent.lost.len() as u64 + sent.duplicated;
    assert_eq!(c.datagrams, sent.datagrams);
    // A copy that arrives after its frame completed and left is late, not a duplicate.
    assert_eq!(c.duplicate + c.late, sent.duplicated, "duplicates");
    assert_eq!(c.accepted, sent_packets - sent.duplicated, "accepted");
    assert_eq!(
        c.too_short + c.bad_version + c.wrong_module + c.out_of_range + c.bad_length,
        sent.garbage,
        "garbage: {c:?}"
    );
    assert!(sent.garbage >= 29 && !sent.lost.is_empty() && sent.duplicated > 0);
    assert_eq!(c.packets_lost, sent.lost.len() as u64, "lost packets");
    assert_eq!((c.far_ahead, c.restarts, c.wrong_place), (0, 0, 0));
    assert_eq!(c.frames_complete + c.frames_incomplete, FRAMES);
    assert_eq!(summary.streams[0].frames, FRAMES);
    assert_eq!(summary.streams[0].lost, 0);

    // The file: every delivered byte exact, the fill value where packets were lost.
    let file = hdf5::File::open(&summary.streams[0].stream.file).unwrap();
    let data: Vec<u16> = read(&file, "/entry/data/data");
    let lost_counts: Vec<u32> = read(&file, &format!("{SPECIFIC}/packets_lost"));
    let bytes: Vec<u8> = read(&file, &format!("{SPECIFIC}/missing_packets"));
    let masks: Vec<[u8; 64]> = (bytes.chunks_exact(64))
        .map(|c| c.try_into().unwrap())
        .collect();
    let frame_numbers: Vec<u64> = read(&file, &format!("{SPECIFIC}/frame_number"));
    assert_eq!(frame_numbers, (1000..1000 + FRAMES).collect::<Vec<_>>());
    let stamps: Vec<u64> = read(&file, &format!("{SPECIFIC}/detector_timestamp"));
    let bunches: Vec<u64> = read(&file, &format!("{SPECIFIC}/bunch_id"));
    let want: Vec<u64> = frame_numbers
        .iter()
        .map(|&f| simulator::detector_timestamp(f))
        .collect();
    assert_eq!(stamps, want, "the detector's timestamps as sent");
    let want: Vec<u64> = frame_numbers
        .iter()
        .map(|&f| simulator::bunch_id(f))
        .collect();
    assert_eq!(bunches, want, "the bunch ids as sent");
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let frame_bytes = PPF as usize * PAYLOAD;
    for (i, f) in (1000..1000 + FRAMES).enumerate() {
        let frame = &bytes[i * frame_bytes..(i + 1) * frame_bytes];
        let mut lost_here = 0;
        for k in 0..PPF {
            let p = &frame[k as usize * PAYLOAD..(k as usize + 1) * PAYLOAD];
            let marked = masks[i][k as usize / 8] & (1 << (k % 8)) != 0;
            assert_eq!(
                marked,
                sent.lost.contains(&(f, k)),
                "frame {f} packet {k}: mask"
            );
            if sent.lost.contains(&(f, k)) {
                lost_here += 1;
                assert!(
                    p.chunks(2).all(|px| px == FILL.to_le_bytes()),
                    "frame {f} packet {k}: fill value"
                );
            } else {
                assert!(
                    p.iter()
                        .enumerate()
                        .all(|(j, &b)| b == payload_byte(f, k, j)),
                    "frame {f} packet {k}: payload"
                );
            }
        }
        assert_eq!(lost_counts[i], lost_here, "frame {f}: packets_lost");
    }
}

/// A UDP source's packet counts, from its summary.
fn packets(s: &detingest_daemon::contract::SourceSummary) -> Option<PacketCounts> {
    let kind = s.kind.as_ref()?;
    kind.as_any().downcast_ref::<PacketCounts>().copied()
}

#[test]
fn recvmmsg_path_accounts_for_every_packet() {
    run("recvmmsg");
}

#[test]
fn io_uring_path_accounts_for_every_packet() {
    run("io_uring");
}

/// Two ports, one per module of a 2 x 1 detector, feed one stream: the modules carry their
/// own ids (not their places) and are placed by the header's row, as slsReceiver does; the
/// same frame number is one image, and frames one module never sent show as its tile missing.
#[test]
fn two_ports_are_the_two_modules_of_one_stream() {
    const N: u64 = 100;
    const MOD_IDS: [u16; 2] = [1234, 1307];
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port()];
    let source = |m: usize| {
        format!(
            "[[source]]\nname = \"mod{m}\"\ncodec = \"none\"\ngrid = [2, 1]\n\
             stream = {{ beamtime = \"bt\", source = \"det\", stream = \"two\" }}\n\
             [source.udp]\nbind = \"127.0.0.1\"\nport = {}\nmod_id = {}\n\
             packets_per_frame = {PPF}\npayload_bytes = {PAYLOAD}\nshape = [8, 1024]\n\
             pixel = \"u16\"\nrcvbuf_bytes = 4194304\n",
            ports[m], MOD_IDS[m]
        )
    };
    let text = format!(
        "data_dir = {:?}\n[live]\npublish = \"\"\nquery = \"\"\n[pipeline]\ninput_buffers = 64\n\
         [run]\nfirst_frame_number = 1000\ndataset_ahead = 64\ndataset_timeout_ms = 5000\n{}{}",
        dir.path().display().to_string(),
        source(0),
        source(1)
    );
    let config = Config::parse(&text).unwrap();
    let running = pipeline::start(&config, RunSinks::none()).unwrap();
    // Module 1 misses the first two frames.
    let sims: Vec<Simulation> = (0..2)
        .map(|m| Simulation {
            target: format!("127.0.0.1:{}", ports[m]).parse().unwrap(),
            mod_id: MOD_IDS[m],
            place: [m as u16, 0],
            packets_per_frame: PPF,
            readout: None,
            payload_bytes: PAYLOAD,
            first_frame: 1000 + 2 * m as u64,
            frames: N - 2 * m as u64,
            rate_hz: 1000.0,
            loss: 0.0,
            duplicate: 0.0,
            reorder: false,
            garbage_every: 0,
            seed: m as u64,
        })
        .collect();
    let sent: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = sims
            .iter()
            .map(|sim| s.spawn(move || simulator::send(sim).unwrap().datagrams))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    for (src, &n) in running.sources().iter().zip(&sent) {
        while packets(&src.summary()).map_or(0, |c| c.datagrams) < n {
            assert!(Instant::now() < deadline, "datagrams never arrived");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    running.stop();
    let summary = running.wait();
    assert_eq!(summary.streams.len(), 1, "one stream for both ports");
    assert_eq!((summary.streams[0].frames, summary.streams[0].lost), (N, 0));
    let file = hdf5::File::open(&summary.streams[0].stream.file).unwrap();
    let data: Vec<u16> = read(&file, "/entry/data/data");
    let mask: Vec<u64> = read(&file, &format!("{SPECIFIC}/module_mask"));
    let want_mask: Vec<u64> = (0..N).map(|i| if i < 2 { 0b01 } else { 0b11 }).collect();
    assert_eq!(mask, want_mask);
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let tile = PPF as usize * PAYLOAD;
    for (i, f) in (1000..1000 + N).enumerate() {
        for m in 0..2 {
            let t = &bytes[(2 * i + m) * tile..(2 * i + m + 1) * tile];
            if mask[i] & (1 << m) == 0 {
                assert!(
                    t.iter().all(|&b| b == 0),
                    "frame {f}: missing module {m} is fill"
                );
                continue;
            }
            for k in 0..PPF {
                let p = &t[k as usize * PAYLOAD..(k as usize + 1) * PAYLOAD];
                assert!(
                    p.iter()
                        .enumerate()
                        .all(|(j, &b)| b == payload_byte(f, k, j)),
                    "frame {f} module {m} packet {k}"
                );
            }
        }
    }
}
