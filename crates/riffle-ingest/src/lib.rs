//! riffle-ingest
