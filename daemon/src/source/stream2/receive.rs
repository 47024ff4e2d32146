//! The run's side of a Stream V2 source: takes the socket and series from the listener,
//! turns each image into a frame (copied once from the message into a pool buffer, as it
//! arrived when it is in the stream's codec, decoded otherwise), ends at the series' `end`
//! (or at a start of the next series, or when the run is stopped) and gives the socket back.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use detingest_shm::{FrameBuf, FrameMeta, Name, PacketMask};
use detingest_writer::Codec;

use super::config::Stream2Config;
use super::counts::{MessageCounts, OncePerKind, Refusal};
use super::link::Series;
use super::message::{decode, Image, Message};
use crate::source::{PreparedSource, SourceOutput};

/// How often the counters are published to the source's stats.
const PUBLISH: Duration = Duration::from_millis(100);

/// A Stream V2 source ready for its run.
pub(super) struct Prepared {
    pub(super) cfg: Stream2Config,
    pub(super) name: Name,
}

impl PreparedSource for Prepared {
    fn buffers(&self, input_buffers: usize) -> (usize, usize) {
        let Some(series) = self.cfg.link.series() else {
            return (1, 1);
        };
        let (raw, es) = (series.pixel.frame_bytes(series.shape), series.pixel.size());
        let largest = Codec::ALL
            .into_iter()
            .map(|c| c.max_compressed_len(raw, es))
            .fold(raw, usize::max);
        (input_buffers, largest)
    }

    fn run(self: Box<Self>, out: &mut SourceOutput) {
        let Some((socket, series, held)) = self.cfg.link.take() else {
            tracing::error!(source = %self.name, "no series handed over; the run gets no image");
            out.end(None);
            return;
        };
        let mut rx = Receiver {
            series,
            counts: self.cfg.link.take_pending(),
            logged: OncePerKind::default(),
            last: None,
            name: &self.name,
        };
        out.start(0);
        tracing::info!(source = %self.name, series = rx.series.id, images = rx.series.images, "series started");
        let mut next = None;
        let mut ended = false;
        if let Some(first) = held {
            rx.counts.received += 1;
            rx.take(&first, out, &mut next, &mut ended);
        }
        let mut msg = zmq::Message::new();
        let mut published = Instant::now();
        while !ended && next.is_none() && !out.stop_requested() {
            if published.elapsed() >= PUBLISH {
                rx.publish(out);
                published = Instant::now();
            }
            match socket.poll(zmq::POLLIN, 50) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(source = %self.name, error = %e, "cannot poll the stream socket; ending the series");
                    break;
                }
            }
            if socket.recv(&mut msg, zmq::DONTWAIT).is_err() {
                continue;
            }
            rx.counts.received += 1;
            rx.take(&msg, out, &mut next, &mut ended);
        }
        if !ended {
            let why = if next.is_some() {
                "the next series started before its end"
            } else {
                "the run was stopped before its end"
            };
            tracing::warn!(source = %self.name, series = rx.series.id, why, "series ended early; later images of it are refused (counted before_start)");
        }
        out.end(rx.last);
        rx.publish(out);
        self.cfg.link.give_back(socket, next);
    }
}

/// One series being received.
struct Receiver<'a> {
    series: Series,
    counts: MessageCounts,
    logged: OncePerKind,
    last: Option<u64>,
    name: &'a Name,
}

impl Receiver<'_> {
    /// Handles one message: an image becomes a frame, `end` of this series sets `ended`, a
    /// start of another series is kept in `next`.
    fn take(
        &mut self,
        msg: &[u8],
        out: &mut SourceOutput,
        next: &mut Option<Vec<u8>>,
        ended: &mut bool,
    ) {
        match decode(msg) {
            Err(e) => self.refuse(Refusal::of(&e), &e),
            Ok(Message::Image(image)) => self.image(&image, out),
            Ok(Message::End { series_id }) if series_id == self.series.id => {
                self.counts.ends += 1;
                *ended = true;
            }
            Ok(Message::End { series_id }) => {
                self.refuse(Refusal::OtherSeries, &format!("end of series {series_id}"));
            }
            Ok(Message::Start(start)) if start.series_id == self.series.id => {
                self.refuse(Refusal::OtherSeries, &"a second start of this series");
            }
            Ok(Message::Start(_)) => *next = Some(msg.to_vec()),
        }
    }

    fn image(&mut self, image: &Image<'_>, out: &mut SourceOutput) {
        if image.series_id != self.series.id {
            let why = format!("image of series {}", image.series_id);
            return self.refuse(Refusal::OtherSeries, &why);
        }
        let Some((_, array)) = image.channels[0] else {
            return; // the decoder guarantees a first channel
        };
        if array.shape != self.series.shape || array.pixel != self.series.pixel {
            let why = format!(
                "image {} is {:?} {}, the start said {:?} {}",
                image.image_id,
                array.shape,
                array.pixel.name(),
                self.series.shape,
                self.series.pixel.name()
            );
            return self.refuse(Refusal::WrongFormat, &why);
        }
        if image.channels[1].is_some() {
            self.counts.extra_channels += 1;
            if self.logged.first(Refusal::ExtraChannels) {
                tracing::warn!(source = %self.name, channels = ?self.series.channels, "images carry several channels; only the first is written");
            }
        }
        let Some(mut buf) = out.buffer(image.image_id, 0) else {
            return; // dropped by policy: counted and recorded by `buffer`
        };
        let frame = if array.codec().is_some_and(|c| c == out.codec()) {
            if !buf.fill_from(array.bytes()) {
                let why = format!(
                    "image {}: {} bytes compressed, more than the image's {}",
                    image.image_id,
                    array.bytes().len(),
                    array.raw_len()
                );
                return self.refuse(Refusal::WrongFormat, &why);
            }
            self.counts.passed_through += 1;
            FrameBuf::Encoded(buf)
        } else {
            match array.decode_into(buf.spare_mut()) {
                Ok(n) => buf.set_len(n),
                Err(e) => {
                    let why = format!("image {}: {e}", image.image_id);
                    return self.refuse(Refusal::WrongFormat, &why);
                }
            }
            self.counts.decoded += 1;
            FrameBuf::Pooled(buf)
        };
        let meta = FrameMeta {
            frame_number: image.image_id,
            module: 0,
            pixel: array.pixel,
            shape: array.shape,
            timestamp_ns: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            detector_timestamp: image.times[0].map_or(0, nanoseconds),
            bunch_id: 0,
            missing: PacketMask::NONE,
        };
        self.counts.images += 1;
        self.last = Some(self.last.map_or(image.image_id, |l| l.max(image.image_id)));
        out.send(meta, frame); // a drop is counted by `send`
    }

    fn refuse(&mut self, r: Refusal, why: &dyn std::fmt::Display) {
        self.counts.refuse(r);
        log_refusal(self.name, self.series.id, &mut self.logged, r, why);
    }

    fn publish(&self, out: &SourceOutput) {
        let refused = self.counts.refused();
        let stats = out.stats();
        stats
            .malformed
            .store(refused, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut m) = stats.messages.lock() {
            *m = Some(self.counts);
        }
    }
}

/// A [start, stop, real]_time `[numerator, denominator]` in nanoseconds.
fn nanoseconds((num, den): (u64, u64)) -> u64 {
    if den == 0 {
        return 0;
    }
    (u128::from(num) * 1_000_000_000 / u128::from(den)).min(u128::from(u64::MAX)) as u64
}

/// Logs the first refusal of its kind.
pub(super) fn log_refusal(
    name: &Name,
    series: u64,
    logged: &mut OncePerKind,
    r: Refusal,
    why: &dyn std::fmt::Display,
) {
    if logged.first(r) {
        tracing::warn!(source = %name, series, refusal = ?r, %why, "Stream V2 message refused (further ones of this kind are only counted)");
    }
}

#[cfg(test)]
mod tests {
    use super::nanoseconds;

    #[test]
    fn detector_times_become_nanoseconds_without_overflow() {
        assert_eq!(nanoseconds((3, 2)), 1_500_000_000);
        assert_eq!(nanoseconds((1, 0)), 0);
        assert_eq!(nanoseconds((u64::MAX, 1)), u64::MAX);
    }
}
