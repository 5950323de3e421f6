//! Helpers shared by the commands: progress bar, inventory, the job
//! sections of the config, output and confirmation.

use super::{CliError, io};
use crate::config::Config;
use chrono::Utc;
use std::io::Write;
use std::path::Path;

/// A progress bar on a terminal (standard error); nothing otherwise.
pub(super) struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    pub(super) fn new(what: &str, unit: &str, len: u64) -> Bar {
        if super::term::quiet() || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return Bar(None);
        }
        let pb = indicatif::ProgressBar::new(len);
        let template = format!("{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{elapsed}})");
        if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
            pb.set_style(style.progress_chars("=> "));
        }
        pb.set_message(what.to_owned());
        Bar(Some(pb))
    }
    pub(super) fn inc(&self) {
        if let Some(pb) = &self.0 {
            pb.inc(1);
        }
    }
    pub(super) fn finish(&self) {
        if let Some(pb) = &self.0 {
            pb.finish_and_clear();
        }
    }
}

impl crate::inventory::Progress for Bar {
    fn found(&self, n: u64) {
        if let Some(pb) = &self.0 {
            pb.inc_length(n);
        }
    }
    fn listed(&self) {
        self.inc();
    }
}

pub(super) async fn collect_inventory(
    client: &crate::kcr::Client,
    c: &Config,
    now: chrono::DateTime<Utc>,
) -> crate::inventory::Inventory {
    let bar = Bar::new("listing", "repositories", 0);
    let needs = crate::inventory::Needs::from_config(c);
    let inv =
        crate::inventory::Inventory::collect_needed(client, &c.instances, now, &bar, &needs).await;
    bar.finish();
    for i in inv.instances.iter().filter(|i| i.error.is_some()) {
        super::term::warn(&format!(
            "instance {}: {}",
            i.name,
            i.error.as_deref().unwrap_or_default()
        ));
    }
    inv
}

pub(super) fn retention_config(c: &Config) -> Result<&crate::config::RetentionConfig, CliError> {
    c.retention.as_ref().ok_or_else(|| {
        CliError::Usage(format!(
            "{}: no [retention] section: the retention job is off",
            c.source
        ))
    })
}

pub(super) fn namespaces_config(c: &Config) -> Result<&crate::config::NamespacesConfig, CliError> {
    c.namespaces.as_ref().ok_or_else(|| {
        CliError::Usage(format!(
            "{}: no [namespaces] section: nothing to plan",
            c.source
        ))
    })
}

pub(super) fn tokens_config(c: &Config) -> Result<&crate::config::TokensConfig, CliError> {
    c.tokens.as_ref().ok_or_else(|| {
        CliError::Usage(format!(
            "{}: no [tokens] section: nothing to plan",
            c.source
        ))
    })
}

/// Write a report to `--output FILE`, or to standard output.
pub(super) fn emit(output: Option<&Path>, text: &str, out: &mut dyn Write) -> Result<(), CliError> {
    match output {
        Some(path) => std::fs::write(path, text)
            .map_err(|e| CliError::Usage(format!("{}: cannot write: {e}", path.display()))),
        None => out.write_all(text.as_bytes()).map_err(io),
    }
}

/// `--yes`, or a "y" on the terminal; off a terminal without `--yes` is a usage error.
pub(super) fn confirmed(yes: bool, prompt: &str, out: &mut dyn Write) -> Result<bool, CliError> {
    if yes {
        return Ok(true);
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Err(CliError::Usage(
            "not a terminal: pass --yes to apply without confirmation".into(),
        ));
    }
    if confirm(prompt, out)? {
        return Ok(true);
    }
    writeln!(out, "nothing applied").map_err(io)?;
    Ok(false)
}

pub(super) fn confirm(prompt: &str, out: &mut dyn Write) -> Result<bool, CliError> {
    write!(out, "{prompt} [y/N] ").map_err(io)?;
    out.flush().map_err(io)?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).map_err(io)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES"))
}
