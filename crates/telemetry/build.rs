//! Records the compiler's version for `tidings_build_info{rustc}`.

use std::process::Command;

fn main() {
    // Cargo names the compiler it builds with; a toolchain change rebuilds
    // everything, this script included.
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=TIDINGS_RUSTC_VERSION={version}");
    // Set by release and image builds; `unknown` otherwise.
    println!("cargo:rerun-if-env-changed=TIDINGS_BUILD_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");
}
