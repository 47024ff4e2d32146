//! The UDP source: detector modules stream each frame as a burst of packets to one port per
//! module; a pinned receiver thread per port assembles them into frames.
//!
//! - [`header`]: packet formats (sls v2) behind a trait;
//! - [`assembler`]: packets into frame buffers, every odd packet counted by kind;

pub mod assembler;
pub mod header;
