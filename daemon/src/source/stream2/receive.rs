//! The run's side of a Stream V2 source: takes the socket and series from the listener,
//! turns each image into a frame (copied once from the message into a pool buffer, as it
//! arrived when it is in the stream's codec, decoded otherwise), ends at the series' `end`
//! (or at a start of the next series, or when the run is stopped) and gives the socket back.

use std::sync::Arc;
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

/// A Stream V2 source ready for its run: the leader (the series' first channel), which
/// receives, or a follower (a further channel), which takes the leader's images.
pub(super) struct Prepared {
    pub(super) cfg: Stream2Config,
    pub(super) name: Name,
    /// The series, as it was when the run was prepared.
    pub(super) series: Series,
    /// A follower's queue from the leader.
    pub(super) follow: Option<crossbeam::channel::Receiver<Arc<zmq::Message>>>,
}

impl PreparedSource for Prepared {
    fn buffers(&self, input_buffers: usize) -> (usize, usize) {
        let series = &self.series;
        let (raw, es) = (series.pixel.frame_bytes(series.shape), series.pixel.size());
        let largest = Codec::ALL
            .into_iter()
            .map(|c| c.max_compressed_len(raw, es))
            .fold(raw, usize::max);
        (input_buffers, largest)
    }

    /// Buffers are sized for an incompressible image; an EIGER2's arrive far smaller (the
    /// recorded EIGER2 16M image: 36 MB raw, 0.5 MB sent), so only what arrives is touched.
    fn prefault(&self) -> bool {
        false
    }

    fn run(self: Box<Self>, out: &mut SourceOutput) {
        match self.follow {
            Some(ref rx) => self.follow(rx, out),
            None => self.lead(out),
        }
    }
}

impl Prepared {
    fn receiver(&self, series: Series, counts: MessageCounts) -> Receiver<'_> {
        let channel = self.cfg.channel;
        Receiver {
            channel: (series.channels.len() > 1)
                .then(|| series.channels.get(channel).cloned())
                .flatten(),
            series,
            counts,
            logged: OncePerKind::default(),
            last: None,
            name: &self.name,
            ended: false,
            next: None,
        }
    }

    /// The leader: receives until the series' end and hands each image to the followers.
    fn lead(&self, out: &mut SourceOutput) {
        let followers = self.cfg.link.take_followers();
        let Some((socket, held)) = self.cfg.link.take() else {
            tracing::error!(source = %self.name, "no series handed over; the run gets no image");
            out.end(None);
            return;
        };
        let mut rx = self.receiver(self.series.clone(), self.cfg.link.take_pending());
        out.start(0);
        tracing::info!(source = %self.name, series = rx.series.id, images = rx.series.images, channels = ?rx.series.channels, "series started");
        let forward = |msg: zmq::Message, rx: &mut Receiver<'_>, out: &mut SourceOutput| {
            if followers.is_empty() {
                rx.take(&msg, out);
                return;
            }
            let msg = Arc::new(msg);
            if rx.take(&msg, out) {
                for f in &followers {
                    let _ = f.send(Arc::clone(&msg)); // blocks as its pipeline does
                }
            }
        };
        if let Some(first) = held {
            forward(first, &mut rx, out); // counted received by the listener
        }
        let mut published = Instant::now();
        while !rx.ended && rx.next.is_none() && !out.stop_requested() {
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
            let mut msg = zmq::Message::new();
            if socket.recv(&mut msg, zmq::DONTWAIT).is_err() {
                continue;
            }
            rx.counts.received += 1;
            forward(msg, &mut rx, out);
        }
        drop(followers); // the followers end their streams when their queues close
        if !rx.ended {
            let why = if rx.next.is_some() {
                "the next series started before its end"
            } else {
                "the run was stopped before its end"
            };
            tracing::warn!(source = %self.name, series = rx.series.id, why, "series ended early; later images of it are refused (counted before_start)");
        }
        out.end(rx.last);
        rx.publish(out);
        self.cfg.link.give_back(socket, rx.next.take());
    }

    /// A follower: writes its channel of the leader's images until the leader ends.
    fn follow(
        &self,
        queue: &crossbeam::channel::Receiver<Arc<zmq::Message>>,
        out: &mut SourceOutput,
    ) {
        let mut rx = self.receiver(self.series.clone(), MessageCounts::default());
        out.start(0);
        let mut published = Instant::now();
        while let Ok(msg) = queue.recv() {
            if let Ok(Message::Image(image)) = decode(&msg) {
                rx.counts.received += 1;
                rx.image(&image, out);
            }
            if published.elapsed() >= PUBLISH {
                rx.publish(out);
                published = Instant::now();
            }
        }
        out.end(rx.last);
        rx.publish(out);
    }
}

/// One channel of one series being received.
struct Receiver<'a> {
    series: Series,
    /// The channel written, by name, when the series has several.
    channel: Option<String>,
    counts: MessageCounts,
    logged: OncePerKind,
    last: Option<u64>,
    name: &'a Name,
    /// The series' end came.
    ended: bool,
    /// A start of the next series came (the leader ends this one).
    next: Option<Vec<u8>>,
}

impl Receiver<'_> {
    /// Handles one message: an image becomes a frame, `end` of this series sets `ended`, a
    /// start of another series is kept in `next`. True for an image of this series (the
    /// followers' channels are in it too).
    fn take(&mut self, msg: &[u8], out: &mut SourceOutput) -> bool {
        match decode(msg) {
            Err(e) => self.refuse(Refusal::of(&e), &e),
            Ok(Message::Image(image)) => return self.image(&image, out),
            Ok(Message::End { series_id }) if series_id == self.series.id => {
                self.counts.ends += 1;
                self.ended = true;
            }
            Ok(Message::End { series_id }) => {
                self.refuse(Refusal::OtherSeries, &format!("end of series {series_id}"));
            }
            Ok(Message::Start(start)) if start.series_id == self.series.id => {
                self.refuse(Refusal::OtherSeries, &"a second start of this series");
            }
            Ok(Message::Start(_)) => self.next = Some(msg.to_vec()),
        }
        false
    }

    /// Writes this receiver's channel of `image`; true when the image is of this series.
    fn image(&mut self, image: &Image<'_>, out: &mut SourceOutput) -> bool {
        if image.series_id != self.series.id {
            let why = format!("image of series {}", image.series_id);
            self.refuse(Refusal::OtherSeries, &why);
            return false;
        }
        self.write(image, out);
        true
    }

    fn write(&mut self, image: &Image<'_>, out: &mut SourceOutput) {
        let array = match &self.channel {
            None => image.channels[0].map(|(_, a)| a),
            Some(name) => image.arrays().find(|(c, _)| c == name).map(|(_, a)| a),
        };
        let Some(array) = array else {
            let why = format!("image {} has no channel {:?}", image.image_id, self.channel);
            return self.refuse(Refusal::WrongFormat, &why);
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
        if self.channel.is_none() && image.channels[1].is_some() {
            self.counts.extra_channels += 1;
            if self.logged.first(Refusal::ExtraChannels) {
                tracing::warn!(source = %self.name, channels = ?self.series.channels, "images carry more channels than the start announced; only the first is written");
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
            // Checked in the copy, whose end is still in this core's cache.
            let framed = out
                .codec()
                .check_framing(buf.as_slice(), array.pixel.size());
            if framed != Ok(array.raw_len()) {
                let why = format!("image {}: chunk framing: {framed:?}", image.image_id);
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
        stats.set_kind(std::sync::Arc::new(self.counts));
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
