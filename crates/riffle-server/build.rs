//! Compiles proto/ with protox (pure Rust), so no system protoc is needed.
//! Both files are package `riffle.v1`: one generated module.

const PROTOS: [&str; 2] = ["riffle/v1/ingest.proto", "riffle/v1/datasets.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files: Vec<_> = PROTOS.iter().map(|p| proto_root.join(p)).collect();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let descriptors = protox::compile(&files, [&proto_root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Payload chunks are handed on without a copy.
        .bytes(".riffle.v1.PublishChunk.data")
        .bytes(".riffle.v1.DataChunk.data")
        // Metadata keeps the service's (sorted) order.
        .btree_map(".riffle.v1.PublishHeader.metadata")
        .btree_map(".riffle.v1.VersionInfo.metadata")
        .compile_fds(descriptors)?;
    Ok(())
}
