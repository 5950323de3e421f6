//! `explain [INSTANCE/]NAMESPACE/REPOSITORY`: why each image and tag is kept
//! or deleted.

use super::common::retention_config;
use super::{CliError, OutputFormat, failed, io};
use crate::config::Config;
use crate::{app, retention};
use chrono::Utc;
use clap::Args;
use std::io::Write;

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// [INSTANCE/]NAMESPACE/REPOSITORY: the form plan prints, or without the instance for every instance
    pub target: String,
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
}

/// The instance (when the target names one of the config's), the
/// namespace and the repository. Without a known instance first, the rest
/// after the first `/` is the repository (which may hold `/` itself).
pub(super) fn parse_target<'a>(
    c: &Config,
    target: &'a str,
) -> Result<(Option<&'a str>, &'a str, &'a str), CliError> {
    let bad = || {
        CliError::Usage(format!(
            "{target:?}: expected [INSTANCE/]NAMESPACE/REPOSITORY"
        ))
    };
    let (first, rest) = target.split_once('/').ok_or_else(bad)?;
    if c.instance_by_name(first).is_some()
        && let Some((ns, repo)) = rest.split_once('/')
        && !ns.is_empty()
        && !repo.is_empty()
    {
        return Ok((Some(first), ns, repo));
    }
    if first.is_empty() || rest.is_empty() {
        return Err(bad());
    }
    Ok((None, first, rest))
}

pub(super) async fn run(
    c: &Config,
    args: &ExplainArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    use retention::planner::{ImageOutcome, Verdict};
    let rc = retention_config(c)?;
    let (only, namespace, repository) = parse_target(c, &args.target)?;
    let conn = app::connect(c).await.map_err(|e| failed(e, "connecting"))?;
    let now = Utc::now();
    let mut instances = Vec::new();
    for inst in c
        .instances
        .iter()
        .filter(|i| only.is_none_or(|o| o == i.name))
    {
        let images = crate::inventory::list_images(&conn.client, &inst.id, namespace, repository)
            .await
            .map_err(|e| {
                failed(
                    e,
                    &format!("listing {}/{namespace}/{repository}", inst.name),
                )
            })?;
        // Quota relief judges an empty repository by its UpdateTime.
        let updated_at = match rc.delete_empty_repositories {
            Some(_) if images.is_empty() => conn
                .client
                // Every page: the endpoint may ignore the filter.
                .list_all(crate::kcr::DescribeRepository {
                    repo_name: Some(repository.to_owned()),
                    ..crate::kcr::DescribeRepository::all(&inst.id, namespace)
                })
                .await
                .map_err(|e| {
                    failed(
                        e,
                        &format!("describing {}/{namespace}/{repository}", inst.name),
                    )
                })?
                .into_iter()
                .find(|r| r.repo_name == repository)
                .and_then(|r| r.update_time)
                .map(|t| t.to_utc(conn.client.timezone())),
            _ => None,
        };
        instances.push(crate::inventory::InstanceInventory {
            name: inst.name.clone(),
            id: inst.id.clone(),
            namespaces: vec![crate::inventory::NamespaceInventory {
                name: namespace.to_owned(),
                public: false,
                created_at: None,
                repositories: vec![crate::inventory::RepositoryInventory {
                    name: repository.to_owned(),
                    images,
                    skipped: None,
                    unlisted: false,
                    updated_at,
                }],
                error: None,
            }],
            error: None,
        });
    }
    // The state holds each in-use source's last count (as `plan` reads it).
    let (state, uncompared) = match rc.in_use {
        Some(_) => {
            let (s, u) = super::plan::plan_state(c, true)?;
            (Some(s), u)
        }
        None => (None, None),
    };
    let in_use = retention::read_in_use(rc, c, state.as_ref(), now).await;
    let in_use_blocked = in_use.blocked();
    // As the job plans: only what the instance's declared scope manages.
    let inventory = std::sync::Arc::new(crate::inventory::Inventory {
        taken_at: now,
        instances,
    })
    .within_scope(&c.instances);
    let mut plan = retention::planner::plan_in_use(&inventory, rc, now, &in_use, true);
    // KCR's own retention in this namespace, and whether it blocks apply.
    retention::check_server_side(&conn.client, &inventory, &c.instances, rc, &mut plan, true).await;
    // The namespace's own relief is not judged here: only this repository was listed.
    let relief: Vec<_> = retention::relief::plan_relief(&inventory, &c.instances, rc, now)
        .into_iter()
        .filter(|a| a.repository.is_some())
        .collect();
    if args.format == OutputFormat::Json {
        let repositories: Vec<serde_json::Value> = plan
            .repositories
            .iter()
            .map(|r| {
                serde_json::json!({
                    "instance": r.instance,
                    "namespace": r.namespace,
                    "repository": r.repository,
                    "images": r.images,
                    "blocked": r.blocked,
                    "skipped": r.skipped,
                    "decisions": r.decisions,
                })
            })
            .collect();
        let doc = serde_json::json!({
            "schema": "kcr-housekeeper/explain/v1",
            "generated_at": now,
            "blocked": plan.blocked,
            "server_side": plan.server_side.iter().map(|s| s.line()).collect::<Vec<_>>(),
            "repositories": repositories,
            "relief": relief,
        });
        let text = serde_json::to_string_pretty(&doc).expect("serialises") + "\n";
        out.write_all(text.as_bytes()).map_err(io)?;
        return in_use_result(in_use_blocked, uncompared);
    }
    let verdict_text = |v: &Verdict| match v {
        Verdict::Unmatched => "kept: no rule matches".to_owned(),
        Verdict::Protected { reason } => format!("kept: {reason}"),
        Verdict::Kept { reason, .. } => format!("kept: {reason}"),
        Verdict::Spared { reason, .. } => format!("kept: {reason}"),
        Verdict::Condemned { reason, .. } => format!("DELETE: {reason}"),
    };
    let mut text = String::new();
    for s in &plan.server_side {
        text.push_str(&format!("SERVER-SIDE {}\n", s.line()));
    }
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
        if rc.delete_empty_repositories.is_some() {
            let verdict = match relief.iter().find(|a| a.instance == r.instance) {
                Some(a) => format!("DELETE repository: {}", a.reason),
                None if r.images > 0 => "kept: it holds images".to_owned(),
                None => "kept: empty, but updated within delete_empty_repositories older_than (or its UpdateTime is unknown)".to_owned(),
            };
            text.push_str(&format!("  quota relief: {verdict}\n"));
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
    out.write_all(text.as_bytes()).map_err(io)?;
    in_use_result(in_use_blocked, uncompared)
}

/// As `plan`: a source of what runs that could not be read makes the
/// explanation incomplete (an image in use may show as DELETE), so not 0.
/// Likewise when the state could not be opened to compare their answers.
fn in_use_result(
    blocked: Option<String>,
    uncompared: Option<super::plan::Uncompared>,
) -> Result<(), CliError> {
    match blocked {
        Some(why) => Err(CliError::Failed(anyhow::anyhow!("retention: {why}"))),
        None => super::plan::Uncompared::result(uncompared),
    }
}
