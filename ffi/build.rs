//! Gives the shared library its soname, so programs linked against `libdetingest.so` keep
//! working across compatible updates (`make install` adds the symlinks).

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libdetingest.so.{major}");
}
