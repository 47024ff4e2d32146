//! What a Stream V2 source's listener (between runs) and its run's source thread (during a
//! run) share: the PULL socket, which only one of them holds at a time; the series that
//! opens the next run; and refusals counted while no run was there to count them.
//!
//! The lock is only held to move these in and out, never while receiving.

use std::sync::{Arc, Mutex};

use crossbeam::channel::Sender;

use detingest_shm::PixelType;

use super::counts::MessageCounts;

/// A series a `start` announced: what its run needs to know before it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// `series_id`.
    pub id: u64,
    /// `series_unique_id`.
    pub unique_id: String,
    /// `[ny, nx]` of its images.
    pub shape: [u32; 2],
    /// Their pixel type (from `image_dtype`, else from the first image).
    pub pixel: PixelType,
    /// The channels its images carry; the first is written.
    pub channels: Vec<String>,
    /// Images announced (0: not said).
    pub images: u64,
    /// The start's pixel masks by channel, as `u32` per pixel (those of the image's shape
    /// that decode).
    pub pixel_masks: Vec<(String, Arc<[u32]>)>,
    /// Tables the start sent with their values (flatfield by channel; the count-rate lookup
    /// table for every channel: `None`).
    pub tables: Vec<(Option<String>, detingest_writer::Table)>,
    /// The run request the start makes (stream, metadata).
    pub request: crate::contract::RunRequest,
}

/// The shared state (see the module doc).
#[derive(Default)]
pub struct Link {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    socket: Option<zmq::Socket>,
    series: Option<Series>,
    /// An image the listener received to learn the pixel type: the run's first.
    held: Option<zmq::Message>,
    /// A start the run's source received for the next series (the last one had no `end`).
    next: Option<Vec<u8>>,
    /// Set by the source when it gave the socket back.
    returned: bool,
    /// Queues to the run's followers (further channels), registered as they are prepared.
    followers: Vec<Sender<Arc<zmq::Message>>>,
    pending: MessageCounts,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Link")
    }
}

impl Link {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut state)
    }

    /// The listener hands over the socket and the series before it starts the run.
    pub fn hand_over(&self, socket: zmq::Socket, series: Series, held: Option<zmq::Message>) {
        self.with(|s| {
            s.socket = Some(socket);
            s.series = Some(series);
            s.held = held;
            s.returned = false;
            s.followers.clear();
        });
    }

    /// A follower's queue, registered when it is prepared: the leader hands it every image.
    pub fn add_follower(&self, queue: Sender<Arc<zmq::Message>>) {
        self.with(|s| s.followers.push(queue));
    }

    /// The leader takes the followers' queues.
    pub fn take_followers(&self) -> Vec<Sender<Arc<zmq::Message>>> {
        self.with(|s| std::mem::take(&mut s.followers))
    }

    /// The series the next run is for, if the listener handed one over.
    pub fn series(&self) -> Option<Series> {
        self.with(|s| s.series.clone())
    }

    /// The run's source takes the socket and the held first image (the series stays, for
    /// the run's configuration to read its format until the run gives the socket back).
    pub fn take(&self) -> Option<(zmq::Socket, Option<zmq::Message>)> {
        self.with(|s| {
            s.series.as_ref()?;
            let socket = s.socket.take()?;
            Some((socket, s.held.take()))
        })
    }

    /// The run's source gives the socket back at its end, with the start of the next series
    /// if one came before an `end`.
    pub fn give_back(&self, socket: zmq::Socket, next: Option<Vec<u8>>) {
        self.with(|s| {
            s.socket = Some(socket);
            s.next = next;
            s.returned = true;
        });
    }

    /// The listener takes the socket back: after the run gave it back (`after_run`), or when
    /// the run did not start (then whatever was handed over is taken back too). Returns the
    /// socket and a start the run left for the next series.
    pub fn take_back(&self, after_run: bool) -> Option<(zmq::Socket, Option<Vec<u8>>)> {
        self.with(|s| {
            if after_run && !s.returned {
                return None;
            }
            s.series = None;
            s.held = None;
            s.returned = false;
            s.followers.clear();
            let socket = s.socket.take()?;
            Some((socket, s.next.take()))
        })
    }

    /// Adds refusals counted while no run was going; the next run's counts include them.
    pub fn count_pending(&self, f: impl FnOnce(&mut MessageCounts)) {
        self.with(|s| f(&mut s.pending));
    }

    /// Takes the refusals counted between runs.
    pub fn take_pending(&self) -> MessageCounts {
        self.with(|s| std::mem::take(&mut s.pending))
    }
}
