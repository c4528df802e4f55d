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
    // Record payloads are `bytes::Bytes`: decoded as slices of the message buffer, moved (not
    // copied) through routing and retries, and sliced out of the read buffer on reads.
    let payloads = [
        ".millrace.v1.PutRecordsRequestEntry.data",
        ".millrace.v1.Record.data",
        ".millrace.storage.v1.BatchRecord.data",
        ".millrace.internal.v1.StoredRecord.data",
    ];
    payloads
        .iter()
        .fold(tonic_prost_build::configure(), |c, p| c.bytes(p))
        // Messages holding a secret get a hand-written Debug that leaves it out (src/lib.rs).
        .skip_debug([".millrace.v1.CreateAccessKeyResponse"])
        .compile_protos(&files, &[root])?;
    Ok(())
}
