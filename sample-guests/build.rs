//! Links every guest binary with the SDK's linker script.
fn main() {
    let script = std::env::var("DEP_PVGUEST_LINKER_SCRIPT")
        .expect("pvguest-sdk publishes its linker script (links = \"pvguest\")");
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--gc-sections",
        "-Wl,--build-id=none",
        &format!("-Wl,-T,{script}"),
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
