//! riffle-ingest

pub mod seed;
pub mod tail;
