//! The ads queries of docs/api.md, with their parameter rules, shared by the
//! HTTP API and the CLI.
//!
//! * `aggregated_count(ad_id, from, to, filter)`: the sum of the per-minute
//!   counts over `[from, to)`; `from`/`to` are epoch ms or RFC 3339 and must
//!   be minute-aligned; default `to` is the end of the current minute (the
//!   still-open minute is included, so a click is visible within a second),
//!   default `from` is `to − 1 min`.
//! * `popular_ads(count, window, filter, to)`: the top `count` ads over the
//!   `window` minutes ending at `to` (default: end of the current minute).
//!   `window` must be one maintained for that filter (config `ads.popular`);
//!   by default the shortest one.
//!
//! `complete` is true when `to` is at or before the pipeline watermark: the
//! range is closed (late events within the allowed lateness may still
//! update it). `filter` is a filter id or name; an unknown one is
//! [`QueryError::UnknownFilter`] (404); every other bad parameter is
//! [`QueryError::InvalidParam`] (400) naming the parameter.

use riffle_core::time::{format_rfc3339_ms, parse_time_arg};
use riffle_core::{ErrorCode, HasCode};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::filter::FilterSet;
use crate::store::{AggregateStore, MINUTE_MS, NO_FILTER};

/// Most ads one `popular_ads` answer returns by default.
pub const DEFAULT_POPULAR_COUNT: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("invalid {param}: {message}")]
    InvalidParam {
        param: &'static str,
        message: String,
    },
    #[error("unknown filter {0:?} (GET /v1/ads/filters lists the filters)")]
    UnknownFilter(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl QueryError {
    fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        QueryError::InvalidParam {
            param,
            message: message.into(),
        }
    }
}

impl HasCode for QueryError {
    fn code(&self) -> ErrorCode {
        match self {
            QueryError::InvalidParam { .. } => ErrorCode::InvalidArgument,
            QueryError::UnknownFilter(_) => ErrorCode::NotFound,
            QueryError::Store(error) => error.code(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountParams {
    pub from: Option<String>,
    pub to: Option<String>,
    pub filter: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CountAnswer {
    pub ad_id: String,
    pub count: u64,
    pub from: i64,
    pub to: i64,
    pub filter_id: u32,
    pub complete: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PopularParams {
    pub count: Option<String>,
    pub window: Option<String>,
    pub filter: Option<String>,
    pub to: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PopularAnswer {
    pub ad_ids: Vec<String>,
    pub counts: Vec<u64>,
    /// Window length in minutes.
    pub window: u32,
    pub to: i64,
    pub filter_id: u32,
    pub complete: bool,
}

/// What a query needs from the running pipeline.
pub struct QueryContext<'a> {
    pub store: &'a dyn AggregateStore,
    pub filters: &'a FilterSet,
    /// (window_minutes, filter_id) of every maintained top-N.
    pub popular: &'a [(u32, u32)],
    pub top_n: u32,
    pub watermark: Option<i64>,
    pub now_ms: i64,
}

fn parse_minute(param: &'static str, value: &str) -> Result<i64, QueryError> {
    let ms = parse_time_arg(value).map_err(|e| {
        QueryError::invalid(
            param,
            format!("{value:?} is not epoch milliseconds or an RFC 3339 time ({e})"),
        )
    })?;
    if ms.rem_euclid(MINUTE_MS) != 0 {
        let floor = ms - ms.rem_euclid(MINUTE_MS);
        return Err(QueryError::invalid(
            param,
            format!(
                "{value:?} is not minute-aligned (e.g. {} or {floor})",
                format_rfc3339_ms(floor)
            ),
        ));
    }
    Ok(ms)
}

fn current_minute_end(now_ms: i64) -> i64 {
    now_ms.div_euclid(MINUTE_MS) * MINUTE_MS + MINUTE_MS
}

fn resolve_filter(filters: &FilterSet, value: Option<&str>) -> Result<u32, QueryError> {
    match value {
        None | Some("") => Ok(NO_FILTER),
        Some(value) => filters
            .resolve(value)
            .ok_or_else(|| QueryError::UnknownFilter(value.to_string())),
    }
}

pub fn aggregated_count(
    cx: &QueryContext<'_>,
    ad_id: &str,
    params: &CountParams,
) -> Result<CountAnswer, QueryError> {
    if ad_id.is_empty() {
        return Err(QueryError::invalid("ad_id", "must not be empty"));
    }
    let to = match params.to.as_deref() {
        Some(value) => parse_minute("to", value)?,
        None => current_minute_end(cx.now_ms),
    };
    let from = match params.from.as_deref() {
        Some(value) => parse_minute("from", value)?,
        None => to - MINUTE_MS,
    };
    if from > to {
        return Err(QueryError::invalid(
            "to",
            format!("{to} is before from ({from})"),
        ));
    }
    let filter_id = resolve_filter(cx.filters, params.filter.as_deref())?;
    let count = cx.store.count(ad_id, filter_id, from, to)?;
    Ok(CountAnswer {
        ad_id: ad_id.to_string(),
        count,
        from,
        to,
        filter_id,
        complete: cx.watermark.is_some_and(|w| to <= w),
    })
}

pub fn popular_ads(
    cx: &QueryContext<'_>,
    params: &PopularParams,
) -> Result<PopularAnswer, QueryError> {
    let filter_id = resolve_filter(cx.filters, params.filter.as_deref())?;
    let mut windows: Vec<u32> = cx
        .popular
        .iter()
        .filter(|(_, f)| *f == filter_id)
        .map(|(m, _)| *m)
        .collect();
    windows.sort_unstable();
    let listed = windows
        .iter()
        .map(|m| m.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let window = match params.window.as_deref() {
        Some(value) => {
            let minutes: u32 = value.parse().map_err(|_| {
                QueryError::invalid("window", format!("{value:?} is not a number of minutes"))
            })?;
            if !windows.contains(&minutes) {
                return Err(QueryError::invalid(
                    "window",
                    format!(
                        "no top-N is maintained over a {minutes}-minute window for filter {filter_id} (maintained: [{listed}]; config ads.popular)"
                    ),
                ));
            }
            minutes
        }
        None => *windows.first().ok_or_else(|| {
            QueryError::invalid(
                "filter",
                format!("no top-N is maintained for filter {filter_id} (config ads.popular)"),
            )
        })?,
    };
    let count = match params.count.as_deref() {
        Some(value) => value
            .parse::<u32>()
            .ok()
            .filter(|c| (1..=cx.top_n).contains(c))
            .ok_or_else(|| {
                QueryError::invalid(
                    "count",
                    format!("{value:?} is not a number in 1..={}", cx.top_n),
                )
            })?,
        None => DEFAULT_POPULAR_COUNT.min(cx.top_n),
    };
    let to = match params.to.as_deref() {
        Some(value) => parse_minute("to", value)?,
        None => current_minute_end(cx.now_ms),
    };
    let (mut ad_ids, mut counts) = match cx.store.top(window, filter_id, to)? {
        Some(top) => (top.ad_ids, top.counts),
        None => (Vec::new(), Vec::new()),
    };
    ad_ids.truncate(count as usize);
    counts.truncate(count as usize);
    Ok(PopularAnswer {
        ad_ids,
        counts,
        window,
        to,
        filter_id,
        complete: cx.watermark.is_some_and(|w| to <= w),
    })
}
