//! Compiles the flyteidl `.proto` files with `protox` (pure Rust: no `protoc` on the machine) and
//! generates prost types and tonic service stubs from the result; the descriptor set is kept for
//! the JSON form.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "flyteidl/core/security.proto",
        "flyteidl/service/auth.proto",
    ];
    println!("cargo:rerun-if-changed=protos");
    let fds = protox::compile(protos, ["protos"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("flyteidl.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    let mut config = prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_fds_with_config(fds, config)?;
    Ok(())
}
