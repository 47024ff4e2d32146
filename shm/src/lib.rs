//! Frame memory for detingest: what a frame is, and where its bytes live.
//!
//! A frame is described by [`FrameMeta`] (detector frame number, module, [`PixelType`], shape,
//! timestamp, the [`PacketMask`] of packets that never arrived) and its pixels sit in a
//! [`PoolBuf`], a handle to one buffer of a fixed-size [`BufferPool`] allocated once at
//! start, in a shared-memory ring slot, or in shared immutable memory: either way a
//! [`FrameBuf`] handle moves down the pipeline; pixels are never copied between stages, and
//! dropping the handle returns the memory to its owner.
//! Streams are named by a [`StreamId`] whose three parts are validated [`Name`]s, since they
//! become directory and file names.
//!
//! The [`ring`] module holds the shared-memory rings vendor producers write frames into;
//! the daemon hands their slots down the pipeline as a [`FrameBuf`] like any other buffer.
//!
//! ```
//! use detingest_shm::{BufferPool, Name};
//! let pool = BufferPool::new(2, 4096);
//! let mut buf = pool.acquire();
//! buf.fill_from(&[1, 2, 3]);
//! assert_eq!(buf.as_slice(), &[1, 2, 3]);
//! assert!(Name::new("../etc").is_err());
//! ```

#[cfg(not(loom))]
mod frame_buf;
#[cfg(not(loom))]
mod model;
#[cfg(not(loom))]
mod pool;
pub mod ring;

#[cfg(not(loom))]
pub use frame_buf::FrameBuf;
#[cfg(not(loom))]
pub use model::{FrameMeta, Name, NameError, PacketMask, PixelType, StreamId, NAME_MAX};
#[cfg(not(loom))]
pub use pool::{BufferPool, PoolBuf};
