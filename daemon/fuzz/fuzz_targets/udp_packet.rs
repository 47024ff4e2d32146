//! The sls v2 parser on arbitrary datagrams: never panics, and a parsed packet's payload is
//! exactly what follows the 48-byte header.
#![no_main]

use detingest_daemon::source::udp::header::{PacketFormat, Sls2, SLS2_HEADER_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Sls2.parse(data) {
        assert_eq!(p.payload, &data[SLS2_HEADER_BYTES..]);
        assert_eq!(data[47], 2);
    }
});
