//! Riffle's shared vocabulary: the event envelope and its types, time and
//! clocks, error codes that map to HTTP and gRPC statuses, and configuration.

pub mod config;
pub mod error;
pub mod event;
pub mod net;
pub mod time;

pub use error::ErrorCode;
