//! `explain NAMESPACE/REPOSITORY`: why each image and tag is kept or deleted.

use super::common::retention_config;
use super::{CliError, failed, io};
use crate::config::Config;
use crate::{app, retention};
use chrono::Utc;
use clap::Args;
use std::io::Write;

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// NAMESPACE/REPOSITORY
    pub target: String,
}

pub(super) async fn run(
    c: &Config,
    args: &ExplainArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    use retention::planner::{ImageOutcome, Verdict};
    let rc = retention_config(c)?;
    let (namespace, repository) = args
        .target
        .split_once('/')
        .filter(|(n, r)| !n.is_empty() && !r.is_empty())
        .ok_or_else(|| {
            CliError::Usage(format!("{:?}: expected NAMESPACE/REPOSITORY", args.target))
        })?;
    let conn = app::connect(c).await.map_err(|e| failed(e, "connecting"))?;
    let now = Utc::now();
    let mut instances = Vec::new();
    for inst in &c.instances {
        let images = crate::inventory::list_images(&conn.client, &inst.id, namespace, repository)
            .await
            .map_err(|e| {
                failed(
                    e,
                    &format!("listing {}/{namespace}/{repository}", inst.name),
                )
            })?;
        instances.push(crate::inventory::InstanceInventory {
            name: inst.name.clone(),
            id: inst.id.clone(),
            namespaces: vec![crate::inventory::NamespaceInventory {
                name: namespace.to_owned(),
                public: false,
                repositories: vec![crate::inventory::RepositoryInventory {
                    name: repository.to_owned(),
                    images,
                    skipped: None,
                    unlisted: false,
                }],
                error: None,
            }],
            error: None,
        });
    }
    let state = rc
        .in_use
        .as_ref()
        .and_then(|_| crate::state::Store::open(&c.state.path).ok());
    let in_use = retention::read_in_use(rc, c, state.as_ref(), now).await;
    let plan = retention::planner::plan_in_use(
        &crate::inventory::Inventory {
            taken_at: now,
            instances,
        },
        rc,
        now,
        &in_use,
        true,
    );
    let verdict_text = |v: &Verdict| match v {
        Verdict::Unmatched => "kept: no rule matches".to_owned(),
        Verdict::Protected { reason } => format!("kept: {reason}"),
        Verdict::Kept { reason, .. } => format!("kept: {reason}"),
        Verdict::Spared { reason, .. } => format!("kept: {reason}"),
        Verdict::Condemned { reason, .. } => format!("DELETE: {reason}"),
    };
    let mut text = String::new();
    if let Some(b) = &plan.blocked {
        text.push_str(&format!("BLOCKED: {b}\n"));
    }
    for r in &plan.repositories {
        text.push_str(&format!(
            "{}/{}/{}: {} images
",
            r.instance, r.namespace, r.repository, r.images
        ));
        if let Some(b) = &r.blocked {
            text.push_str(&format!(
                "  BLOCKED: {b}
"
            ));
        }
        for d in &r.decisions {
            let outcome = match d.outcome {
                ImageOutcome::Kept => "kept",
                ImageOutcome::DeleteImage => "delete_image",
                ImageOutcome::DeleteTags => "delete_tag",
            };
            text.push_str(&format!(
                "  {} pushed {} {} -> {outcome}
",
                d.digest,
                d.pushed_at.format("%Y-%m-%d %H:%M"),
                retention::report::human_bytes(d.size)
            ));
            if let Some(v) = &d.untagged {
                text.push_str(&format!(
                    "    (untagged)  {}
",
                    verdict_text(v)
                ));
            }
            for t in &d.tags {
                text.push_str(&format!(
                    "    {:<24} {}
",
                    t.tag,
                    verdict_text(&t.verdict)
                ));
            }
        }
    }
    out.write_all(text.as_bytes()).map_err(io)
}
