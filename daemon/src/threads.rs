//! Named, optionally pinned threads for the stages that move data.

use std::io;
use std::thread::{Builder, JoinHandle};

/// Spawns `f` on a thread called `name`, pinned to `core` when one is given. A failed pin is
/// logged, not fatal: the thread still runs, only unpinned.
pub fn spawn<F, T>(name: String, core: Option<usize>, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    Builder::new().name(name.clone()).spawn(move || {
        if let Some(id) = core {
            if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
                tracing::warn!(thread = %name, core = id, "could not pin thread to core");
            }
        }
        f()
    })
}
