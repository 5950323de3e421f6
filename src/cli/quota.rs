//! `quota`: usage per instance.

use super::common::collect_inventory;
use super::{CliError, OutputFormat, io};
use crate::config::Config;
use crate::{app, quota};
use chrono::Utc;
use clap::Args;
use std::io::Write;

#[derive(Debug, Args)]
pub struct QuotaArgs {
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
}

pub(super) async fn run(c: &Config, args: &QuotaArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let conn = app::connect(c)
        .await
        .map_err(|e| CliError::Failed(e.into()))?;
    let rows = quota::measure(&conn.client, &c.instances)
        .await
        .map_err(|e| CliError::Failed(anyhow::Error::new(e).context("quota")))?;
    let granularity = c
        .quota
        .as_ref()
        .map_or(crate::config::StorageGranularity::None, |q| q.storage);
    let mut incomplete = Vec::new();
    let storage = if granularity == crate::config::StorageGranularity::None {
        Vec::new()
    } else {
        let inventory = collect_inventory(&conn.client, c, Utc::now()).await;
        incomplete = quota::incomplete(&inventory);
        quota::storage_rows(&inventory, granularity)
    };
    let text = match args.format {
        OutputFormat::Table if storage.is_empty() => quota::render_table(&rows),
        OutputFormat::Table => quota::render_table(&rows) + "\n" + &quota::render_storage(&storage),
        OutputFormat::Json => {
            serde_json::to_string_pretty(&serde_json::json!({ "usage": rows, "storage": storage }))
                .expect("usage serialises")
                + "\n"
        }
    };
    out.write_all(text.as_bytes()).map_err(io)?;
    if !incomplete.is_empty() {
        return Err(CliError::Failed(anyhow::anyhow!(
            "quota: partial: storage left out where listings failed: {}",
            incomplete.join("; ")
        )));
    }
    Ok(())
}
