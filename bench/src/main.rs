//! `detingest-bench`: whole runs of detingest measured next to the baselines they must be
//! judged against, in one process on the same frames, so a noisy shared machine affects both
//! sides alike. Micro-benchmarks are criterion benches in `benches/`.

mod codec;
mod common;
mod events;
mod h5py_write;
mod kafka;
mod live;
mod pipeline;
mod quality;
mod redis;
mod shm;
mod soak;
mod stream2;
mod stream2_output;
mod udp;
mod visibility;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Benchmarks of detingest against same-run baselines.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// The full pipeline (synthetic source -> index -> compress -> HDF5 -> notifications) next
    /// to memcpy, the codec alone on the same thread count, and a plain write of the
    /// compressed bytes.
    Pipeline(pipeline::Args),
    /// One codec on many frames, next to the C bitshuffle library on the same frames.
    Codec(codec::Args),
    /// Ingest with live subscribers (one stalled) against none, and commit-to-receive latency.
    Live(live::Args),
    /// A producer process writing 1 MiB frames through a shared-memory ring, next to memcpy:
    /// transport rate, commit-to-consume latency, and the daemon's pipeline behind the ring.
    Shm(shm::Args),
    /// The UDP receive path's lossless packet rate next to a bare recvmmsg drain loop.
    Udp(udp::Args),
    /// The Redis sink on against off, written-to-visible latency for a reader, and Redis
    /// memory per index.
    Redis(redis::Args),
    /// The Kafka sink on against off, and how soon a pl72 command starts a run.
    Kafka(kafka::Args),
    /// Per-frame statistics and the sampled spot finding and radial profile against the
    /// same run with them off.
    Quality(quality::Args),
    /// Neutron events from Kafka into event files against a bare consumer of the same topic.
    Events(events::Args),
    /// The Stream V2 source's ingest rate next to a bare ZeroMQ PULL loop on the same
    /// messages, and its CPU per image next to our compression's.
    Stream2(stream2::Args),
    /// The Stream V2 output on against off, with a client draining it.
    Stream2Output(stream2_output::Args),
    /// A long run sampling memory, threads, file descriptors and open HDF5 objects: the slope
    /// per frame written after warm-up, failing above a threshold.
    Soak(soak::Args),
    /// What SWMR and each flush cadence cost the pipeline, against the pipeline without SWMR.
    Visibility(visibility::Args),
    /// The producer side of `shm` (run by it as a separate process).
    #[command(hide = true)]
    ShmProducer(shm::ProducerArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli
        .command
        .unwrap_or_else(|| Command::Pipeline(pipeline::Args::parse_from(["pipeline"])))
    {
        Command::Pipeline(args) => pipeline::run(&args),
        Command::Codec(args) => codec::run(&args),
        Command::Live(args) => live::run(&args),
        Command::Shm(args) => shm::run(&args),
        Command::Udp(args) => udp::run(&args),
        Command::Redis(args) => redis::run(&args),
        Command::Kafka(args) => kafka::run(&args),
        Command::Events(args) => events::run(&args),
        Command::Quality(args) => quality::run(&args),
        Command::Stream2(args) => stream2::run(&args),
        Command::Stream2Output(args) => stream2_output::run(&args),
        Command::Soak(args) => soak::run(&args),
        Command::Visibility(args) => visibility::run(&args),
        Command::ShmProducer(args) => shm::produce(&args),
    }
}
