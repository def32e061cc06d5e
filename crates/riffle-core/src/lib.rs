//! Riffle's shared vocabulary: the event envelope and its types, time and
//! clocks, error codes that map to HTTP and gRPC statuses, and configuration.

pub mod codec;
pub mod config;
pub mod error;
pub mod event;
pub mod net;
pub mod time;

pub use error::{ErrorCode, HasCode, InvalidValue};

/// For conformance suites, whose checks return `Result<(), String>`:
/// returns `Err` with the formatted message unless `$cond` holds.
#[macro_export]
macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Like [`check!`] for equality: the message gets `expected …, got …`.
#[macro_export]
macro_rules! check_eq {
    ($actual:expr, $expected:expr, $($fmt:tt)+) => {{
        let actual = $actual;
        let expected = $expected;
        if actual != expected {
            return Err(format!(
                "{}: expected {:?}, got {:?}",
                format!($($fmt)+),
                expected,
                actual
            ));
        }
    }};
}
