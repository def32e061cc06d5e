//! The gRPC surface (tonic): client-streaming ingest on the main gRPC
//! listener, and the dataset service on the dataset listeners.

pub mod datasets;
pub mod ingest;

pub use ingest::IngestService;
