//! Namespace plan renderers: the one-line summary and the table.

use super::planner::{Change, NamespacePlan};

/// One line for logs and run summaries.
pub fn summary(plan: &NamespacePlan) -> String {
    let drift = plan.decisions.iter().filter(|d| d.drift).count();
    let apply = plan.changes().count();
    let not_allowed = plan
        .decisions
        .iter()
        .filter(|d| d.change == Some(Change::NotAllowed))
        .count();
    format!(
        "{} namespaces, {drift} drifting: {apply} to change, {not_allowed} to make public not allowed (allow_make_public = false)",
        plan.decisions.len()
    )
}

pub fn render_table(plan: &NamespacePlan) -> String {
    let mut out = format!(
        "{:<12} {:<24} {:<8} {:<8} {:<16} {}\n",
        "INSTANCE", "NAMESPACE", "ACTUAL", "DESIRED", "RULE", "ACTION"
    );
    for d in &plan.decisions {
        let action = match d.change {
            None if d.drift => "-",
            None => "ok",
            Some(Change::Apply) if plan.blocked.is_some() => "blocked",
            Some(Change::Apply) => "change",
            Some(Change::NotAllowed) => "report only (allow_make_public = false)",
        };
        out.push_str(&format!(
            "{:<12} {:<24} {:<8} {:<8} {:<16} {}\n",
            d.instance,
            d.namespace,
            if d.public { "public" } else { "private" },
            d.desired,
            d.rule,
            action
        ));
    }
    if let Some(b) = &plan.blocked {
        out.push_str(&format!("BLOCKED: {b}\n"));
    }
    out
}
