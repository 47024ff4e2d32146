//! The C API of detingest, `libdetingest.so` / `libdetingest.a` with `include/detingest.h`.
//!
//! It will own the producer side that vendor DAQ software links: open a shared-memory ring by
//! name, acquire a slot, write a frame straight into it, commit or abort, with C return codes
//! and no panic crossing the boundary (issue 4). Nothing is exported yet.
