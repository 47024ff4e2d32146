//! The checked-in `include/detingest.h` is exactly what cbindgen generates from this crate.
//! `UPDATE_HEADER=1 cargo test -p detingest-ffi --test header` rewrites it.

use std::path::Path;

#[test]
fn checked_in_header_is_generated_from_the_crate() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen failed")
        .write(&mut generated);
    let header = crate_dir.join("../include/detingest.h");
    if std::env::var_os("UPDATE_HEADER").is_some() {
        std::fs::write(&header, &generated).unwrap();
    }
    let checked_in = std::fs::read(&header).unwrap_or_default();
    assert!(
        checked_in == generated,
        "include/detingest.h differs from what cbindgen generates from ffi/src; \
         run `UPDATE_HEADER=1 cargo test -p detingest-ffi --test header` and commit it"
    );
}
