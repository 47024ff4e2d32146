//! The event run's decoders (ev44, pu00, f144, f142) on arbitrary bytes: never panics, and an
//! accepted ev44's pulses lie inside its events.
#![no_main]

use detingest_daemon::source::kafka_events::messages::{decode, EventMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(EventMessage::Events(e)) = decode(data) {
        for k in 0..e.pulses() {
            let (_, r) = e.pulse(k);
            assert!(r.start <= r.end && r.end <= e.time_of_flight.len());
            if !e.pixel_id.is_empty() {
                assert!(r.end <= e.pixel_id.len());
            }
        }
    }
});
