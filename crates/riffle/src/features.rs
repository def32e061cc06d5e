//! `riffle features`: the feature definitions (docs/features.md).
//!
//! Built so far: listing and checking definitions. Serving (`get`), the
//! training-data export and the consistency job come with the features
//! pipeline.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use riffle_features::{FeatureSet, Window, DEFAULT_FEATURES};

#[derive(Subcommand)]
pub enum FeaturesCommand {
    /// List the features of a definitions file (default: the built-in set): name, entity,
    /// aggregation, window, events.
    List {
        /// A features.toml (docs/features.md). Default: the built-in set.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// One JSON object per feature instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check a definitions file; prints the first problem (file, feature, key) and fails.
    Check {
        /// The features.toml to check.
        file: PathBuf,
    },
}

fn load(file: Option<&PathBuf>) -> anyhow::Result<FeatureSet> {
    match file {
        None => Ok(FeatureSet::parse(DEFAULT_FEATURES, "built-in features")?),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Ok(FeatureSet::parse(&text, &path.display().to_string())?)
        }
    }
}

fn window(window: Window) -> String {
    match window {
        Window::Lifetime => "lifetime".to_owned(),
        Window::Sliding { ms, tile_ms } => format!("{} (tiles {})", human(ms), human(tile_ms)),
    }
}

fn human(ms: i64) -> String {
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

pub fn run(command: FeaturesCommand) -> anyhow::Result<()> {
    match command {
        FeaturesCommand::List { file, json } => {
            let set = load(file.as_ref())?;
            for f in &set.features {
                let aggregation = f.aggregation.as_str();
                if json {
                    let line = serde_json::json!({
                        "name": f.name,
                        "entity": f.entity.as_str(),
                        "aggregation": aggregation,
                        "field": f.field,
                        "k": (f.k > 0).then_some(f.k),
                        "timeout_ms": (f.timeout_ms > 0).then_some(f.timeout_ms),
                        "window": window(f.window),
                        "events": f.events,
                        "per": f.per,
                        "description": f.description,
                    });
                    println!("{line}");
                } else {
                    println!(
                        "{:<30} {:<14} {:<20} {:<22} {}",
                        f.name,
                        f.entity.as_str(),
                        aggregation,
                        window(f.window),
                        f.events.join(",")
                    );
                }
            }
            Ok(())
        }
        FeaturesCommand::Check { file } => {
            let set = load(Some(&file))?;
            println!("{}: {} features, valid", file.display(), set.features.len());
            Ok(())
        }
    }
}
