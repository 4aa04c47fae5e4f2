//! Compiles the gRPC protos with protox (a pure-Rust protobuf compiler), so no
//! system `protoc` is needed to build tidings.

use std::{env, error::Error, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/tidings/v1/common.proto",
    "proto/tidings/v1/notifications.proto",
    "proto/tidings/v1/contacts.proto",
    "proto/tidings/v1/preferences.proto",
    "proto/tidings/v1/templates.proto",
    "proto/tidings/v1/feed.proto",
    "proto/tidings/v1/inbox.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    // Kept for gRPC reflection and for foreign clients that want the schema.
    let out = PathBuf::from(env::var("OUT_DIR")?).join("tidings_descriptor.bin");
    fs::write(&out, prost::Message::encode_to_vec(&descriptors))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
