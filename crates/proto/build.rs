//! Generates the gRPC and protobuf code from `proto/` with a vendored `protoc`, so a fresh
//! machine needs nothing but cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        root.join("millrace/v1/millrace.proto"),
        root.join("millrace/v1/internal.proto"),
        root.join("millrace/v1/storage.proto"),
        root.join("millrace/v1/errors.proto"),
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    tonic_prost_build::configure().compile_protos(&files, &[root])?;
    Ok(())
}
