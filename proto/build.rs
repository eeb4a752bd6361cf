//! Generates the gRPC code from `parley/**.proto` with protox (no system protoc).

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "parley/auth/v1/auth.proto",
    "parley/chat/v1/chat.proto",
    "parley/ai/v1/ai.proto",
    "parley/presence/v1/presence.proto",
    "parley/bus/v1/bus.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("parley_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // A message's quote is boxed: most messages quote nothing.
        .boxed(".parley.chat.v1.Message.reply_to")
        .compile_fds(fds)?;
    Ok(())
}
