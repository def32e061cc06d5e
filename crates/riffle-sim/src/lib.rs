//! Workload generators for Riffle.
//!
//! * [`ads`]: `ad_click` traffic (Zipf-distributed ads, users, IPs, weighted
//!   countries) with injected duplicates, out-of-order and late events, and
//!   the exact [`ads::GroundTruth`] a correct ad click pipeline must produce.
//! * [`live`]: a live-streaming platform (streamers going live and offline,
//!   users with hidden tastes who browse, watch, chat, gift, follow and come
//!   back), its hidden truth, and the user model a recommender is judged by.
//!
//! Everything is deterministic: the same configuration (including its seed)
//! yields the same events, on every platform and every run. The random
//! numbers come from this crate's own [`rng::Rng`] (xoshiro256**), not from a
//! library whose streams may change between versions.

pub mod ads;
pub mod live;
pub mod rng;
pub mod zipf;
