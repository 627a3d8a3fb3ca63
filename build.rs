//! Compiles the gRPC contracts under `proto/` with the protoc that the
//! `protoc-bin-vendored` crate ships, so no system protobuf compiler is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(
        config,
        &[
            "proto/gatehouse/identity/v1/identity.proto",
            "proto/gatehouse/auth/v1/auth.proto",
            "proto/gatehouse/authz/v1/authz.proto",
            "proto/gatehouse/events/v1/events.proto",
            "proto/gatehouse/audit/v1/audit.proto",
        ],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
