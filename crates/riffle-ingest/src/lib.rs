//! Ways events get into Riffle: batch ingest (validation, routing,
//! durable append, backpressure) shared by the HTTP and gRPC surfaces, and
//! the log-file tailer behind `riffle tail`.

pub mod ingest;
pub mod metrics;
pub mod seed;
pub mod tail;

pub use ingest::{BodyFormat, IngestError, IngestOutcome, Ingestor, Rejection};
