//! `riffle reconcile` and `riffle recalc`: thin clients of the server's
//! `/v1/ads/reconcile` and `/v1/ads/recalc` (the server owns the log and the
//! aggregate store, so the work runs there).

use std::time::Duration;

use anyhow::bail;
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::Client;

fn time_value(text: &str) -> anyhow::Result<Value> {
    // Validate locally for a clear message; the server parses the same forms.
    riffle_core::time::parse_time_arg(text).map_err(|e| {
        anyhow::anyhow!("{text:?} is not epoch milliseconds or an RFC 3339 time: {e}")
    })?;
    Ok(Value::String(text.to_string()))
}

/// Prints the report; fails (exit status 1) when a stored count differs.
pub async fn reconcile(
    client: &Client,
    from: &str,
    to: &str,
    source: &str,
    json_output: bool,
) -> anyhow::Result<()> {
    let body = json!({ "from": time_value(from)?, "to": time_value(to)?, "source": source });
    let (_, report) = client
        .send_json(
            client
                .request(Method::POST, "/v1/ads/reconcile")
                .json(&body),
        )
        .await?;
    let mismatches = report["mismatch_count"].as_u64().unwrap_or(0);
    if json_output {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "range [{}, {}): {} stored rows, {} recounted rows, clicks stored {} / recounted {}, {} raw records read from the {}",
            report["from"], report["to"], report["stored_rows"], report["expected_rows"],
            report["stored_total"], report["expected_total"], report["records_read"],
            report["source"].as_str().unwrap_or("log")
        );
        for m in report["mismatches"].as_array().into_iter().flatten() {
            println!(
                "mismatch ad_id={} minute={} filter_id={} stored={} expected={}",
                m["ad_id"].as_str().unwrap_or_default(),
                m["minute"],
                m["filter_id"],
                m["stored"],
                m["expected"]
            );
        }
        if report["truncated"].as_bool() == Some(true) {
            println!("(list truncated; {mismatches} mismatches in total)");
        }
        println!("{mismatches} mismatches");
    }
    if mismatches > 0 {
        bail!("{mismatches} stored counts differ from the raw data (run `riffle recalc` over the range to repair)");
    }
    Ok(())
}

/// Starts a recalculation and follows it with a progress bar on stderr.
pub async fn recalc(client: &Client, from: &str, to: &str, source: &str) -> anyhow::Result<()> {
    let body = json!({ "from": time_value(from)?, "to": time_value(to)?, "source": source });
    let (_, started) = client
        .send_json(client.request(Method::POST, "/v1/ads/recalc").json(&body))
        .await?;
    let id = started["id"].as_u64().unwrap_or_default();
    // Drawn only when stderr is a terminal (indicatif hides it otherwise).
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "[{bar:20}] {percent:>3}% {pos}/{len} records {elapsed}",
        )
        .expect("valid template")
        .progress_chars("#>-"),
    );
    loop {
        let status = client.get(&format!("/v1/ads/recalc/{id}")).await?;
        let total = status["records_total"].as_u64().unwrap_or(0);
        bar.set_length(total);
        bar.set_position(status["records_read"].as_u64().unwrap_or(0).min(total));
        match status["state"].as_str() {
            Some("running") => tokio::time::sleep(Duration::from_millis(200)).await,
            Some("done") => {
                bar.finish();
                println!("{}", serde_json::to_string(&status)?);
                return Ok(());
            }
            _ => {
                bar.abandon();
                bail!(
                    "recalculation failed: {}",
                    status["error"].as_str().unwrap_or("unknown error")
                );
            }
        }
    }
}
