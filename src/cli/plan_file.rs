//! A reviewed retention plan file (`apply retention --plan FILE`).

use super::CliError;
use crate::config::Config;
use crate::{duration, retention};
use chrono::Utc;
use std::path::Path;

/// Read and check a reviewed plan file: readable, a retention plan, bound to
/// this configuration's instances, not older than `max_plan_age`.
pub(super) fn read_plan_file(
    c: &Config,
    rc: &crate::config::RetentionConfig,
    path: &Path,
    now: chrono::DateTime<Utc>,
) -> Result<retention::report::Report, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("{}: cannot read plan: {e}", path.display())))?;
    let report = retention::report::Report::from_json(&text)
        .map_err(|e| CliError::Usage(format!("{}: not a retention plan: {e}", path.display())))?;
    if report.instances.is_empty() {
        return Err(CliError::Usage(format!(
            "{}: the plan has no `instances` binding (name → id); make a new one with plan retention --format json",
            path.display()
        )));
    }
    for inst in &report.instances {
        match c.instance_by_name(&inst.name) {
            Some(mine) if mine.id == inst.id => {}
            _ => {
                return Err(CliError::Usage(format!(
                    "{}: the plan is for instance {} ({}), which this configuration does not have",
                    path.display(),
                    inst.name,
                    inst.id
                )));
            }
        }
    }
    if let Some((r, _)) = report
        .actions()
        .find(|(r, _)| !report.instances.iter().any(|i| i.name == r.instance))
    {
        return Err(CliError::Usage(format!(
            "{}: the plan names instance {:?}, which its `instances` binding does not",
            path.display(),
            r.instance
        )));
    }
    let age = now.signed_duration_since(report.generated_at);
    let max = chrono::Duration::from_std(rc.max_plan_age).unwrap_or(chrono::Duration::MAX);
    if age > max {
        return Err(CliError::Usage(format!(
            "{}: the plan was made at {}, {} ago, longer than [retention] max_plan_age ({}): make a new plan",
            path.display(),
            report
                .generated_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            duration::format(age.to_std().unwrap_or_default()),
            duration::format(rc.max_plan_age)
        )));
    }
    // A little clock skew is fine; a plan from the future never ages out.
    if age < -chrono::Duration::minutes(5) {
        return Err(CliError::Usage(format!(
            "{}: the plan claims to be made at {}, in the future",
            path.display(),
            report
                .generated_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )));
    }
    Ok(report)
}
