//! The calling thread's last error message: the detail behind a code (which field of a
//! frame description was wrong, which system call failed). Written on error paths only.

use std::cell::RefCell;
use std::ffi::{c_char, CString};

thread_local! {
    static LAST: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `msg` as this thread's last error.
pub(crate) fn set(msg: impl ToString) {
    let c = CString::new(msg.to_string().replace('\0', " ")).unwrap_or_default();
    LAST.with(|l| *l.borrow_mut() = c);
}

/// Pointer to this thread's last error message, valid until its next failing call.
pub(crate) fn get() -> *const c_char {
    LAST.with(|l| l.borrow().as_ptr())
}
