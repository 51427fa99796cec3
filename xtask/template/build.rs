//! Links the guest with the SDK's linker script (see pvguest-sdk's docs).
fn main() {
    let script = std::env::var("DEP_PVGUEST_LINKER_SCRIPT").expect("pvguest-sdk publishes its linker script");
    for arg in ["-nostartfiles", "-nostdlib", "-static", "-no-pie", "-Wl,--gc-sections", "-Wl,--build-id=none"] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{script}");
    println!("cargo:rerun-if-changed=build.rs");
}
