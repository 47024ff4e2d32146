//! The listener of a `[source.stream2]` (`detingestd serve` only): holds the PULL socket
//! between runs, and turns each `start` into a run through the daemon's run control. A start
//! without `image_dtype` waits for its first image, which says the pixel type and becomes the
//! run's first. While the run goes, the run's source holds the socket; the listener waits for
//! it back. Images and ends with no run are refused (counted `before_start`, in the next
//! run's counts, and logged once until then).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use detingest_shm::PixelType;

use super::config::Stream2Config;
use super::counts::{OncePerKind, Refusal};
use super::message::{decode, Message, Start};
use super::receive::log_refusal;
use super::series::series_of;
use crate::contract::{ApiError, RunState};
use crate::sink::RunControl;
use crate::source::SourceConfig;

/// How long a series' start waits for the run before it (its files closing) to end.
const PREVIOUS_RUN_WAIT: Duration = Duration::from_secs(60);

/// A running listener; stopped by [`Listener::signal`] and [`Listener::join`].
pub struct Listener {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Listener {
    /// Asks the listener to stop: it opens no more runs, and stops a run it opened.
    pub fn signal(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Waits for it to stop (once its run, if any, gave the socket back).
    pub fn join(self) {
        self.signal();
        let _ = self.thread.join();
    }
}

/// Connects `src`'s socket and starts its listener thread (`s2-<name>`), which opens runs
/// through `runs`.
pub fn spawn(src: &SourceConfig, runs: Weak<dyn RunControl>) -> std::io::Result<Listener> {
    let Some(cfg) = src.stream2.clone() else {
        return Err(std::io::Error::other("not a stream2 source"));
    };
    let socket = connect(&cfg).map_err(std::io::Error::other)?;
    tracing::info!(source = %src.name, endpoint = %cfg.endpoint, "waiting for the detector's series");
    let stop = Arc::new(AtomicBool::new(false));
    let state = Listening {
        cfg,
        src: src.clone(),
        runs,
        stop: Arc::clone(&stop),
        logged: OncePerKind::default(),
    };
    let thread = std::thread::Builder::new()
        .name(format!("s2-{}", src.name))
        .spawn(move || state.run(socket))?;
    Ok(Listener { stop, thread })
}

fn connect(cfg: &Stream2Config) -> Result<zmq::Socket, zmq::Error> {
    let socket = zmq::Context::new().socket(zmq::PULL)?;
    socket.set_rcvhwm(cfg.high_water_mark)?;
    socket.set_maxmsgsize(cfg.max_message_bytes)?;
    socket.set_linger(0)?;
    socket.connect(&cfg.endpoint)?;
    Ok(socket)
}

struct Listening {
    cfg: Stream2Config,
    src: SourceConfig,
    runs: Weak<dyn RunControl>,
    stop: Arc<AtomicBool>,
    logged: OncePerKind,
}

impl Listening {
    fn run(mut self, mut socket: zmq::Socket) {
        let mut msg = zmq::Message::new();
        let mut next: Option<Vec<u8>> = None;
        while !self.stopped() {
            let bytes: &[u8] = match next.as_deref() {
                Some(b) => b,
                None => {
                    if !matches!(socket.poll(zmq::POLLIN, 100), Ok(n) if n > 0)
                        || socket.recv(&mut msg, zmq::DONTWAIT).is_err()
                    {
                        continue;
                    }
                    self.cfg.link.count_pending(|c| c.received += 1);
                    &msg
                }
            };
            let start = match decode(bytes) {
                Ok(Message::Start(start)) => start,
                Ok(Message::Image(image)) => {
                    self.refuse(
                        Refusal::BeforeStart,
                        image.series_id,
                        &"an image with no run",
                    );
                    next = None;
                    continue;
                }
                Ok(Message::End { series_id }) => {
                    self.refuse(Refusal::BeforeStart, series_id, &"an end with no run");
                    next = None;
                    continue;
                }
                Err(e) => {
                    self.refuse(Refusal::of(&e), 0, &e);
                    next = None;
                    continue;
                }
            };
            self.cfg.link.count_pending(|c| c.starts += 1);
            if self.stopped() {
                break;
            }
            let (socket_back, after) = self.open_run(socket, &start);
            socket = socket_back;
            next = after;
            self.logged = OncePerKind::default();
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn refuse(&mut self, r: Refusal, series: u64, why: &dyn std::fmt::Display) {
        self.cfg.link.count_pending(|c| c.refuse(r));
        log_refusal(&self.src.name, series, &mut self.logged, r, why);
    }

    /// Opens the run of `start`; returns the socket once the run gave it back, and a start
    /// of the next series the run received.
    fn open_run(
        &mut self,
        socket: zmq::Socket,
        start: &Start<'_>,
    ) -> (zmq::Socket, Option<Vec<u8>>) {
        let (pixel, held) = match start.pixel {
            Some(p) => (p, None),
            None => match self.first_image(&socket, start) {
                Ok((p, msg)) => (p, Some(msg)),
                Err(next) => return (socket, next),
            },
        };
        let series = match series_of(
            start,
            &self.cfg,
            &self.src.name,
            &self.src.stream.beamtime,
            pixel,
        ) {
            Ok(s) => s,
            Err(why) => {
                tracing::error!(source = %self.src.name, series = start.series_id, %why, "series refused; its images are not written");
                return (socket, None);
            }
        };
        let (id, request) = (series.id, series.request.clone());
        self.cfg.link.hand_over(socket, series, held);
        let started = match self.runs.upgrade() {
            Some(runs) => {
                // The last series' run gives the socket back when its source ends, before its
                // files are closed: a series that follows at once waits for that run's end.
                let deadline = Instant::now() + PREVIOUS_RUN_WAIT;
                while runs.run_headline().state == RunState::Running && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                runs.start_run(&request)
            }
            None => Err(ApiError::unavailable("the daemon is shutting down")),
        };
        if let Err(e) = started {
            tracing::error!(source = %self.src.name, series = id, status = e.status, why = %e.message, "the series' run did not start; its images are not written");
            if let Some(back) = self.cfg.link.take_back(false) {
                return back;
            }
            // A source thread of the failed start took the socket: it gives it back as it ends.
        }
        let mut stop_asked = false;
        loop {
            if let Some(back) = self.cfg.link.take_back(true) {
                return back;
            }
            if self.stopped() && !stop_asked {
                // Shutting down: the run this listener opened must end for the socket to
                // come back (the daemon may have stopped the run before this one started).
                stop_asked = true;
                if let Some(runs) = self.runs.upgrade() {
                    let _ = runs.stop_run();
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the series' first image to learn its pixel type. Without one: `Err` with
    /// the start of another series that came first (the detector was armed again), or
    /// `Err(None)` if the series ended or the wait timed out.
    fn first_image(
        &mut self,
        socket: &zmq::Socket,
        start: &Start<'_>,
    ) -> Result<(PixelType, zmq::Message), Option<Vec<u8>>> {
        let deadline = Instant::now() + Duration::from_millis(self.cfg.first_image_timeout_ms);
        while Instant::now() < deadline && !self.stopped() {
            let mut msg = zmq::Message::new();
            if !matches!(socket.poll(zmq::POLLIN, 100), Ok(n) if n > 0)
                || socket.recv(&mut msg, zmq::DONTWAIT).is_err()
            {
                continue;
            }
            self.cfg.link.count_pending(|c| c.received += 1);
            match decode(&msg) {
                Ok(Message::Image(image)) if image.series_id == start.series_id => {
                    let pixel = image.channels[0].map(|(_, a)| a.pixel).ok_or(None)?;
                    return Ok((pixel, msg));
                }
                Ok(Message::End { series_id }) if series_id == start.series_id => {
                    self.cfg.link.count_pending(|c| c.ends += 1);
                    tracing::warn!(source = %self.src.name, series = series_id, "series ended without an image; no run");
                    return Err(None);
                }
                Ok(Message::Start(next)) if next.series_id != start.series_id => {
                    tracing::warn!(source = %self.src.name, series = start.series_id, next = next.series_id, "series replaced by another before its first image; no run");
                    return Err(Some(msg.to_vec()));
                }
                Ok(_) => self.refuse(
                    Refusal::OtherSeries,
                    start.series_id,
                    &"a message of another series while waiting for the first image",
                ),
                Err(e) => self.refuse(Refusal::of(&e), start.series_id, &e),
            }
        }
        tracing::warn!(source = %self.src.name, series = start.series_id, "no first image to learn the pixel type from (the start has no image_dtype); no run");
        Err(None)
    }
}
