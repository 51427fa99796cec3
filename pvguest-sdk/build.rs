//! Publishes the guest linker script to the build scripts of crates that
//! depend on the SDK (`DEP_PVGUEST_LINKER_SCRIPT`).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:linker_script={dir}/guest.ld");
    println!("cargo:rerun-if-changed=guest.ld");
    println!("cargo:rerun-if-changed=build.rs");
}
