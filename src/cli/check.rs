//! `check`: validate the config; print the jobs and their next fire times.

use super::{CliError, io};
use crate::config::{Config, Endpoint};
use chrono::Utc;
use std::io::Write;

pub(super) fn run(c: &Config, out: &mut dyn Write) -> Result<(), CliError> {
    let endpoint = match &c.kcr.endpoint {
        Endpoint::Url(u) => u.clone(),
        Endpoint::SimDemo => "sim:demo (built-in simulator)".into(),
    };
    let mut s = format!(
        "{}: OK\nendpoint: {endpoint} (region {})\n",
        c.source, c.kcr.region
    );
    if let Some(creds) = &c.kcr.credentials {
        s.push_str(&format!(
            "access key: {}\n",
            crate::kcr::client::redact_key_id(&creds.access_key_id)
        ));
    }
    s.push_str("instances:\n");
    for i in &c.instances {
        s.push_str(&format!(
            "  {} ({}), registry {}\n",
            i.name,
            i.id,
            i.registry.as_deref().unwrap_or("(none)")
        ));
    }
    let tz = c.scheduler.timezone;
    let jobs = c.jobs();
    if jobs.is_empty() {
        s.push_str("jobs: none enabled\n");
    } else {
        s.push_str(&format!("jobs (cron read in {tz}):\n"));
        let now = Utc::now();
        for j in jobs {
            let next: Vec<String> = j
                .schedule
                .next_times(now, &tz, 3)
                .iter()
                .map(|t| t.format("%Y-%m-%d %H:%M:%S %Z").to_string())
                .collect();
            let mode = j.mode.map_or("-", |m| m.as_str());
            s.push_str(&format!(
                "  {:<11} {:<8} {:<16} next: {}\n",
                j.job,
                mode,
                format!("\"{}\"", j.schedule),
                next.join(", ")
            ));
        }
    }
    for w in rule_warnings(c) {
        s.push_str(&format!("warning: {w}\n"));
    }
    for w in c.warnings(Utc::now()) {
        s.push_str(&format!("warning: {w}\n"));
    }
    for w in crate::tokens::sinks::docker_config_warnings(c) {
        s.push_str(&format!("warning: {w}\n"));
    }
    out.write_all(s.as_bytes()).map_err(io)
}

/// Retention rules that can match nothing whatever the registry holds. (Rules
/// that match nothing in the current registry are reported by `plan`.)
pub fn rule_warnings(c: &Config) -> Vec<String> {
    let Some(rc) = &c.retention else {
        return Vec::new();
    };
    let impossible_ns = |p: &crate::pattern::Pattern| {
        !p.is_regex()
            && !p
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"*?[]!-^".contains(&b))
    };
    let mut out = Vec::new();
    for r in &rc.rules {
        if !r.namespaces.is_empty() && r.namespaces.iter().all(impossible_ns) {
            out.push(format!(
                "retention rule {:?} matches nothing: namespace names are lowercase letters and digits, and no pattern in {:?} can match one",
                r.name,
                r.namespaces.iter().map(|p| p.as_str()).collect::<Vec<_>>()
            ));
        }
        if !r.repositories.is_empty()
            && r.repositories.iter().all(|p| {
                r.exclude_repositories
                    .iter()
                    .any(|e| e.as_str() == p.as_str() || e.as_str() == "**")
            })
        {
            out.push(format!("retention rule {:?} matches nothing: exclude_repositories excludes every repository it names", r.name));
        }
    }
    out
}
