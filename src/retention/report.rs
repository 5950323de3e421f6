//! Retention reports: JSON (`kcr-housekeeper/retention-report/v1`, also the
//! plan file `apply --plan` executes), a terminal table, Markdown, and one
//! self-contained HTML page. All four carry the same content.

use super::planner::{ActionKind, Plan, PlannedAction};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

pub const SCHEMA: &str = "kcr-housekeeper/retention-report/v1";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub schema: String,
    pub generated_at: DateTime<Utc>,
    pub mode: String,
    /// The instances the plan covers (name → id), so a plan file can be checked against the config.
    #[serde(default)]
    pub instances: Vec<ReportInstance>,
    /// The configured zone KCR's zone-less times are read in (`[kcr]
    /// timezone`), named in every header beside the UTC times; absent from
    /// reports written before it (and from the JSON when unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// The fingerprint of the retention config the plan was made with
    /// (`apply --plan` reports a mismatch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_fingerprint: Option<String>,
    pub summary: Summary,
    pub repositories: Vec<ReportRepository>,
    /// Quota relief: empty repositories and namespaces to delete
    /// (`[retention] delete_empty_repositories` / `delete_empty_namespaces`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relief: Vec<super::relief::ReliefAction>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportInstance {
    pub name: String,
    pub id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    pub repositories: usize,
    pub images: usize,
    pub delete_image: usize,
    pub delete_tag: usize,
    pub reclaimable_bytes: u64,
    /// Repositories blocked by the ratio guard, and the run if the budget blocked it.
    pub blocked: Vec<String>,
    /// Listings that failed or changed mid-way: instances and namespaces
    /// (`prod: …`, `prod/ns: …`), then repositories (`prod/ns/app: …`).
    /// Not empty means the run was partial.
    pub skipped: Vec<String>,
    /// Images rules condemn that are kept because they are in use
    /// (`instance/namespace/repository digest [tags]: in use (source: …, last seen …)`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_use: Vec<String>,
    /// KCR's own retention in the namespaces in scope: enabled rules,
    /// unreadable ones, or "unknown" where the endpoint does not offer it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_side: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportRepository {
    pub instance: String,
    pub namespace: String,
    pub repository: String,
    pub images: usize,
    pub actions: Vec<PlannedAction>,
    /// A repository the ratio guard blocked: the actions it stopped, for
    /// review. Never applied (`apply --plan` reads `actions` only); absent
    /// from the JSON when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked_actions: Vec<PlannedAction>,
}

impl Report {
    pub fn from_plan(plan: &Plan, mode: &str, instances: Vec<ReportInstance>) -> Report {
        let mut blocked = Vec::new();
        let mut in_use = Vec::new();
        // Instances and namespaces that could not be listed, then repositories.
        let mut skipped = plan.skipped.clone();
        if let Some(b) = &plan.blocked {
            blocked.push(format!("run: {b}"));
        }
        for r in &plan.repositories {
            let name = format!("{}/{}/{}", r.instance, r.namespace, r.repository);
            if let Some(b) = &r.blocked {
                blocked.push(format!("{name}: {b}"));
            }
            if let Some(s) = &r.skipped {
                skipped.push(format!("{name}: {s}"));
            }
            for v in &r.in_use {
                let tags: Vec<&str> = v.tags.iter().map(|t| t.as_str()).collect();
                in_use.push(format!(
                    "{name} {} [{}]: {}",
                    v.digest,
                    tags.join(", "),
                    v.reason
                ));
            }
        }
        Report {
            schema: SCHEMA.into(),
            generated_at: plan.generated_at,
            mode: mode.into(),
            instances,
            timezone: None,
            config_fingerprint: None,
            relief: Vec::new(),
            summary: Summary {
                repositories: plan.repositories.len(),
                images: plan.repositories.iter().map(|r| r.images).sum(),
                delete_image: plan.count(ActionKind::DeleteImage),
                delete_tag: plan.count(ActionKind::DeleteTag),
                reclaimable_bytes: plan.reclaimable_bytes(),
                blocked,
                skipped,
                in_use,
                server_side: plan.server_side.iter().map(|s| s.line()).collect(),
            },
            repositories: plan
                .repositories
                .iter()
                .map(|r| ReportRepository {
                    instance: r.instance.clone(),
                    namespace: r.namespace.clone(),
                    repository: r.repository.clone(),
                    images: r.images,
                    actions: r.actions.iter().map(|a| plan.materialize(a)).collect(),
                    blocked_actions: r
                        .blocked_actions
                        .iter()
                        .map(|a| plan.materialize(a))
                        .collect(),
                })
                .collect(),
        }
    }

    /// Pretty JSON, stable field order: the same plan gives the same bytes.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serialises") + "\n"
    }

    /// Read a plan file, naming the line and column of any defect.
    pub fn from_json(text: &str) -> Result<Report, String> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let r: Report = serde_path_to_error::deserialize(de).map_err(|e| {
            let inner = e.inner();
            format!(
                "line {} column {}: at {}: {}",
                inner.line(),
                inner.column(),
                e.path(),
                inner
            )
        })?;
        if r.schema != SCHEMA {
            return Err(format!("schema {:?} is not {SCHEMA:?}", r.schema));
        }
        Ok(r)
    }

    pub fn actions(&self) -> impl Iterator<Item = (&ReportRepository, &PlannedAction)> {
        self.repositories
            .iter()
            .flat_map(|r| r.actions.iter().map(move |a| (r, a)))
    }
}

/// Bytes in binary units: `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// What a delete frees, for people: `-` for a tag deletion.
fn size_text(a: &PlannedAction) -> String {
    if a.size > 0 {
        human_bytes(a.size)
    } else {
        "-".into()
    }
}

/// The tags an action deletes, the untagged marker, and for a `delete_tag`
/// the image's other tags (what verification compares).
fn tags_text(a: &PlannedAction, sep: &str) -> String {
    let mut s = if a.tags.is_empty() {
        UNTAGGED.to_owned()
    } else {
        a.tags.join(sep)
    };
    if !a.image_tags.is_empty() && a.image_tags != a.tags {
        s.push_str(&format!(" (image tags: {})", a.image_tags.join(sep)));
    }
    s
}

/// How every human format marks an image without tags.
pub const UNTAGGED: &str = "(untagged)";

/// A time as every format writes it: RFC 3339 in UTC, to the second.
pub fn time_text(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn repo_name(r: &ReportRepository) -> String {
    format!("{}/{}/{}", r.instance, r.namespace, r.repository)
}

/// What a repository keeps and deletes, as every human format says it.
struct RepoFigures {
    delete_image: usize,
    delete_tag: usize,
    kept_images: usize,
    bytes: u64,
}

fn figures(repo: &ReportRepository) -> RepoFigures {
    // A blocked repository deletes nothing: its stopped actions are listed apart.
    let delete_image = repo
        .actions
        .iter()
        .filter(|a| a.action == ActionKind::DeleteImage)
        .count();
    RepoFigures {
        delete_image,
        delete_tag: repo.actions.len() - delete_image,
        kept_images: repo.images.saturating_sub(delete_image),
        bytes: repo.actions.iter().map(|a| a.size).sum(),
    }
}

/// `keeps 5 images, deletes 1 image and 2 tags, frees up to 1.5 MiB`.
fn figures_text(f: &RepoFigures) -> String {
    let plural = |n: usize, one: &str| format!("{n} {one}{}", if n == 1 { "" } else { "s" });
    let mut s = format!(
        "keeps {}, deletes {} and {}",
        plural(f.kept_images, "image"),
        plural(f.delete_image, "image"),
        plural(f.delete_tag, "tag")
    );
    if f.bytes > 0 {
        s.push_str(&format!(", frees up to {}", human_bytes(f.bytes)));
    }
    s
}

/// Per rule: the actions it names, and the bytes of their image deletions.
fn rule_totals(r: &Report) -> Vec<(String, usize, u64)> {
    let mut totals: std::collections::BTreeMap<&str, (usize, u64)> = Default::default();
    for (_, a) in r.actions() {
        for rule in &a.rules {
            let t = totals.entry(rule.as_str()).or_default();
            t.0 += 1;
            t.1 += a.size;
        }
    }
    totals
        .into_iter()
        .map(|(rule, (n, bytes))| (rule.to_owned(), n, bytes))
        .collect()
}

/// The config key that lifts a block, from the planner's reason.
fn block_key(why: &str) -> Option<&'static str> {
    if why.contains("max_deletions_per_run") {
        Some("[retention] max_deletions_per_run")
    } else if why.contains("max_deletion_ratio") {
        Some("[retention] max_deletion_ratio")
    } else {
        None
    }
}

/// The BLOCKED banner: which limit stopped what, and the key to change.
fn banner_lines(r: &Report) -> Vec<String> {
    r.summary
        .blocked
        .iter()
        .map(|b| match block_key(b) {
            Some(key) => format!(
                "BLOCKED by a safety limit: {b}. Review the plan; if it is right, raise {key} in the config."
            ),
            None => format!("BLOCKED by a safety limit: {b}."),
        })
        .collect()
}

/// Every time in a report is UTC.
const TIMES: &str = "times are UTC";

/// The header's time line: when, in UTC and in the configured zone, and
/// which zone KCR's own times were read in.
/// `generated 2026-11-22T12:00:00Z (2026-11-22 20:00:00 Asia/Shanghai); times are UTC, KCR's times read in Asia/Shanghai ([kcr] timezone)`
fn generated_text(r: &Report) -> String {
    let at = time_text(&r.generated_at);
    match r.timezone.as_deref() {
        None => format!("generated {at} ({TIMES})"),
        Some(zone) => {
            let local = zone
                .parse::<chrono_tz::Tz>()
                .map(|tz| {
                    format!(
                        " ({} {zone})",
                        r.generated_at
                            .with_timezone(&tz)
                            .format("%Y-%m-%d %H:%M:%S")
                    )
                })
                .unwrap_or_default();
            format!("generated {at}{local}; {TIMES}, KCR's times read in {zone} ([kcr] timezone)")
        }
    }
}

/// Why reclaimable bytes are an upper bound.
const UPPER_BOUND: &str = "an upper bound: a layer shared between images counts once per image, and KCR does not promise that a delete frees storage at once";

/// The plan deletes nothing (and nothing was blocked or skipped).
fn nothing_to_delete(r: &Report) -> bool {
    let s = &r.summary;
    s.delete_image + s.delete_tag == 0 && s.blocked.is_empty()
}

fn summary_lines(r: &Report) -> Vec<String> {
    let s = &r.summary;
    let mut v = banner_lines(r);
    v.push(format!("schema: {}", r.schema));
    v.push(format!("mode: {}, {}", r.mode, generated_text(r)));
    if !r.instances.is_empty() {
        let list: Vec<String> = r
            .instances
            .iter()
            .map(|i| format!("{} ({})", i.name, i.id))
            .collect();
        v.push(format!("instances: {}", list.join(", ")));
    }
    if let Some(f) = &r.config_fingerprint {
        v.push(format!("retention config fingerprint: {f}"));
    }
    if !r.relief.is_empty() {
        v.push(format!("quota relief: {} to delete", r.relief.len()));
        for a in &r.relief {
            v.push(format!(
                "  {} {}/{}: {}",
                a.action.as_str(),
                a.instance,
                a.target(),
                a.reason
            ));
        }
    }
    v.push(format!(
        "{} repositories, {} images",
        s.repositories, s.images
    ));
    v.push(format!(
        "planned: {} delete_image, {} delete_tag, up to {} reclaimable ({} bytes), {UPPER_BOUND}",
        s.delete_image,
        s.delete_tag,
        human_bytes(s.reclaimable_bytes),
        s.reclaimable_bytes
    ));
    if nothing_to_delete(r) {
        v.push("nothing to delete: no rule condemns any image or tag".into());
    }
    for (rule, n, bytes) in rule_totals(r) {
        v.push(format!(
            "rule {rule}: {n} action{}, up to {}",
            if n == 1 { "" } else { "s" },
            human_bytes(bytes)
        ));
    }
    v.extend(s.blocked.iter().map(|b| format!("BLOCKED {b}")));
    v.extend(s.skipped.iter().map(|b| format!("SKIPPED {b}")));
    v.extend(s.in_use.iter().map(|b| format!("IN USE {b}")));
    v.extend(s.server_side.iter().map(|b| format!("SERVER-SIDE {b}")));
    v
}

/// Why a repository was skipped (its listing failed or was refused), as the
/// summary's `skipped` says it; `None` when it was planned.
fn skip_reason<'r>(r: &'r Report, repo: &ReportRepository) -> Option<&'r str> {
    let prefix = format!("{}: ", repo_name(repo));
    r.summary
        .skipped
        .iter()
        .find_map(|s| s.strip_prefix(prefix.as_str()))
}

/// Repositories the plan has no action for and that were not skipped
/// (listed, so every format names every repository).
fn quiet_repositories(r: &Report) -> impl Iterator<Item = &ReportRepository> {
    r.repositories.iter().filter(|x| {
        x.actions.is_empty() && x.blocked_actions.is_empty() && skip_reason(r, x).is_none()
    })
}

/// Repositories skipped, with the reason: nothing was planned for them
/// because their listing failed or was refused (review finding 12: they
/// were shown under "without actions", as if checked and clean).
fn skipped_repositories(r: &Report) -> impl Iterator<Item = (&ReportRepository, &str)> {
    r.repositories
        .iter()
        .filter_map(|x| skip_reason(r, x).map(|why| (x, why)))
}

/// A repository's actions to list: those planned, then those its block
/// stopped (marked `true`).
fn listed_actions(repo: &ReportRepository) -> impl Iterator<Item = (&PlannedAction, bool)> {
    repo.actions
        .iter()
        .map(|a| (a, false))
        .chain(repo.blocked_actions.iter().map(|a| (a, true)))
}

/// The action column: `delete_image`, or `delete_image (BLOCKED)` for one
/// a block stopped.
fn action_text(a: &PlannedAction, blocked: bool) -> String {
    if blocked {
        format!("{} (BLOCKED)", a.action.as_str())
    } else {
        a.action.as_str().to_owned()
    }
}

pub fn render_table(r: &Report) -> String {
    let mut out = summary_lines(r).join("\n") + "\n";
    for repo in r
        .repositories
        .iter()
        .filter(|x| !x.actions.is_empty() || !x.blocked_actions.is_empty())
    {
        let _ = writeln!(
            out,
            "\n{} ({} images): {}",
            repo_name(repo),
            repo.images,
            figures_text(&figures(repo))
        );
        let _ = writeln!(
            out,
            "  {:<12}  {:<71}  {:<20}  {:>10}  {:<30}  {:<16}  REASON",
            "ACTION", "DIGEST", "PUSHED", "SIZE", "TAGS", "RULES"
        );
        for (a, blocked) in listed_actions(repo) {
            let _ = writeln!(
                out,
                "  {:<12}  {:<71}  {:<20}  {:>10}  {:<30}  {:<16}  {}",
                action_text(a, blocked),
                a.digest,
                time_text(&a.pushed_at),
                size_text(a),
                tags_text(a, ","),
                a.rules.join(","),
                a.reason
            );
        }
    }
    let mut quiet = quiet_repositories(r).peekable();
    if quiet.peek().is_some() {
        out.push_str("\nwithout actions:\n");
        for repo in quiet {
            let _ = writeln!(out, "  {} ({} images)", repo_name(repo), repo.images);
        }
    }
    let mut skipped = skipped_repositories(r).peekable();
    if skipped.peek().is_some() {
        out.push_str("\nskipped (nothing planned):\n");
        for (repo, why) in skipped {
            let _ = writeln!(out, "  {}: {why}", repo_name(repo));
        }
    }
    out
}

fn md_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '|' | '\\' | '`' | '*' | '_' | '[' | ']' | '#' => {
                out.push('\\');
                out.push(c);
            }
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

pub fn render_markdown(r: &Report) -> String {
    let mut out = String::from("## Retention report\n\n");
    for l in summary_lines(r) {
        let _ = writeln!(out, "- {}", md_escape(&l));
    }
    for repo in r
        .repositories
        .iter()
        .filter(|x| !x.actions.is_empty() || !x.blocked_actions.is_empty())
    {
        let _ = write!(
            out,
            "\n### {} ({} images)\n\n{}\n\n| action | digest | pushed | size | tags | rules | reason |\n|---|---|---|---:|---|---|---|\n",
            md_escape(&repo_name(repo)),
            repo.images,
            figures_text(&figures(repo))
        );
        for (a, blocked) in listed_actions(repo) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                action_text(a, blocked),
                md_escape(&a.digest),
                time_text(&a.pushed_at),
                size_text(a),
                md_escape(&tags_text(a, ", ")),
                md_escape(&a.rules.join(", ")),
                md_escape(&a.reason)
            );
        }
    }
    let mut quiet = quiet_repositories(r).peekable();
    if quiet.peek().is_some() {
        out.push_str("\n### Without actions\n\n");
        for repo in quiet {
            let _ = writeln!(
                out,
                "- {} ({} images)",
                md_escape(&repo_name(repo)),
                repo.images
            );
        }
    }
    let mut skipped = skipped_repositories(r).peekable();
    if skipped.peek().is_some() {
        out.push_str("\n### Skipped (nothing planned)\n\n");
        for (repo, why) in skipped {
            let _ = writeln!(out, "- {}: {}", md_escape(&repo_name(repo)), md_escape(why));
        }
    }
    out
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// One self-contained page: summary, a section per repository, sortable tables.
pub fn render_html(r: &Report) -> String {
    let s = &r.summary;
    let mut body = String::new();
    body.push_str("<h1>Retention report</h1>");
    for line in banner_lines(r) {
        let _ = write!(body, "<p class=banner>{}</p>", html_escape(&line));
    }
    let _ = write!(
        body,
        "<p class=meta>mode <b>{}</b>, schema {}</p><p class=meta id=generated>{}</p>",
        html_escape(&r.mode),
        html_escape(&r.schema),
        html_escape(&generated_text(r)),
    );
    if let Some(f) = &r.config_fingerprint {
        let _ = write!(
            body,
            "<p class=meta>retention config fingerprint {}</p>",
            html_escape(f)
        );
    }
    if !r.instances.is_empty() {
        body.push_str("<p class=instances>instances: ");
        let list: Vec<String> = r
            .instances
            .iter()
            .map(|i| format!("{} ({})", html_escape(&i.name), html_escape(&i.id)))
            .collect();
        body.push_str(&list.join(", "));
        body.push_str("</p>");
    }
    let _ = write!(
        body,
        "<dl class=summary>\
         <dt>Repositories</dt><dd id=repositories>{}</dd>\
         <dt>Images</dt><dd id=images>{}</dd>\
         <dt>delete_image</dt><dd id=delete_image>{}</dd>\
         <dt>delete_tag</dt><dd id=delete_tag>{}</dd>\
         <dt>Reclaimable (upper bound)</dt><dd id=reclaimable data-bytes={}>{}</dd></dl>\
         <p class=note>Reclaimable bytes are {UPPER_BOUND}.</p>",
        s.repositories,
        s.images,
        s.delete_image,
        s.delete_tag,
        s.reclaimable_bytes,
        human_bytes(s.reclaimable_bytes)
    );
    for (class, label, items) in [
        ("blocked", "BLOCKED", &s.blocked),
        ("skipped", "SKIPPED", &s.skipped),
        ("in_use", "IN USE", &s.in_use),
        ("skipped", "SERVER-SIDE", &s.server_side),
    ] {
        if !items.is_empty() {
            let _ = write!(body, "<ul class={class}>");
            for i in items {
                let _ = write!(body, "<li>{label} {}</li>", html_escape(i));
            }
            body.push_str("</ul>");
        }
    }
    if nothing_to_delete(r) {
        body.push_str(
            "<p class=nothing id=nothing>Nothing to delete: no rule condemns any image or tag.</p>",
        );
    }
    let totals = rule_totals(r);
    if !totals.is_empty() {
        body.push_str("<h2>Per rule</h2><table class=rules><thead><tr><th>rule</th><th>actions</th><th>up to</th></tr></thead><tbody>");
        for (rule, n, bytes) in totals {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{n}</td><td>{}</td></tr>",
                html_escape(&rule),
                human_bytes(bytes)
            );
        }
        body.push_str("</tbody></table>");
    }
    if !r.repositories.is_empty() {
        body.push_str(
            "<h2>Repositories</h2><input id=filter type=search placeholder=\"filter repositories, tags, digests\" aria-label=filter>\
             <table class=\"sortable index\"><thead><tr><th>repository</th><th data-type=num>images</th><th data-type=num>kept</th>\
             <th data-type=num>delete_image</th><th data-type=num>delete_tag</th><th data-type=num>bytes (up to)</th></tr></thead><tbody>",
        );
        for (i, repo) in r.repositories.iter().enumerate() {
            let f = figures(repo);
            let name = html_escape(&repo_name(repo));
            let link = if repo.actions.is_empty() && repo.blocked_actions.is_empty() {
                name
            } else {
                format!("<a href=#repo-{i}>{name}</a>")
            };
            let _ = write!(
                body,
                "<tr class=repo><td>{link}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td data-sort={}>{}</td></tr>",
                repo.images,
                f.kept_images,
                f.delete_image,
                f.delete_tag,
                f.bytes,
                human_bytes(f.bytes)
            );
        }
        body.push_str("</tbody></table>");
    }
    for (i, repo) in r
        .repositories
        .iter()
        .enumerate()
        .filter(|(_, x)| !x.actions.is_empty() || !x.blocked_actions.is_empty())
    {
        let _ = write!(
            body,
            "<section id=repo-{i}><h2>{} <small>{} images</small></h2><p class=figures>{}</p><table class=sortable><thead><tr>\
             <th>action</th><th>digest</th><th>pushed</th><th data-type=num>size</th><th>tags</th><th>rules</th><th>reason</th>\
             </tr></thead><tbody>",
            html_escape(&repo_name(repo)),
            repo.images,
            figures_text(&figures(repo))
        );
        for (a, blocked) in listed_actions(repo) {
            let _ = write!(
                body,
                "<tr class={}><td>{}</td><td><code>{}</code></td><td>{}</td><td data-sort={}>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                if blocked {
                    "blocked"
                } else {
                    a.action.as_str()
                },
                html_escape(&action_text(a, blocked)),
                html_escape(&a.digest),
                time_text(&a.pushed_at),
                a.size,
                size_text(a),
                html_escape(&tags_text(a, ", ")),
                html_escape(&a.rules.join(", ")),
                html_escape(&a.reason)
            );
        }
        body.push_str("</tbody></table></section>");
    }
    let mut quiet = quiet_repositories(r).peekable();
    if quiet.peek().is_some() {
        body.push_str("<h2>Without actions</h2><ul class=quiet>");
        for repo in quiet {
            let _ = write!(
                body,
                "<li>{} ({} images)</li>",
                html_escape(&repo_name(repo)),
                repo.images
            );
        }
        body.push_str("</ul>");
    }
    let mut skipped = skipped_repositories(r).peekable();
    if skipped.peek().is_some() {
        body.push_str("<h2>Skipped (nothing planned)</h2><ul class=skipped>");
        for (repo, why) in skipped {
            let _ = write!(
                body,
                "<li>{}: {}</li>",
                html_escape(&repo_name(repo)),
                html_escape(why)
            );
        }
        body.push_str("</ul>");
    }
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>kcr-housekeeper retention report</title>\
         <style>{STYLE}</style></head><body>{body}<script>{SCRIPT}</script></body></html>\n"
    )
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:2em;color:#222}h1{margin:0 0 .2em}\
.meta{color:#666}dl.summary{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}\
dt{font-weight:600}ul.blocked li{color:#a00}ul.skipped li{color:#a60}ul.in_use li{color:#06a}ul.quiet{color:#666}\
table{border-collapse:collapse;margin:.5em 0 2em;width:100%}th,td{border-bottom:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}\
th{cursor:pointer;background:#f4f4f4;user-select:none}td:nth-child(3),td:nth-child(4){white-space:nowrap}th.asc:after{content:' ▲'}th.desc:after{content:' ▼'}\
tr.delete_image td:first-child{color:#a00;font-weight:600}tr.blocked td{color:#888;text-decoration:line-through}tr.blocked td:first-child{text-decoration:none;color:#a00}code{font-size:12px}\
.banner{background:#a00;color:#fff;padding:.6em 1em;font-weight:600;border-radius:4px}.note{color:#666;font-size:12px}\
.nothing{background:#e8f4e8;padding:.6em 1em;border-radius:4px}.figures{color:#444;margin:.2em 0}\
#filter{font:inherit;padding:.3em .6em;width:24em;max-width:100%;margin:.3em 0}.hidden{display:none}";

const SCRIPT: &str = "document.querySelectorAll('table.sortable').forEach(function(t){\
t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){\
var asc=!th.classList.contains('asc');t.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc')});\
th.classList.add(asc?'asc':'desc');var num=th.dataset.type==='num';var rows=Array.from(t.tBodies[0].rows);\
rows.sort(function(a,b){var x=a.cells[i].dataset.sort||a.cells[i].textContent,y=b.cells[i].dataset.sort||b.cells[i].textContent;\
var c=num?(Number(x)-Number(y)):x.localeCompare(y);return asc?c:-c});rows.forEach(function(r){t.tBodies[0].appendChild(r)})})})});\
var f=document.getElementById('filter');if(f){f.addEventListener('input',function(){var q=f.value.toLowerCase();\
document.querySelectorAll('tr.repo,section').forEach(function(e){e.classList.toggle('hidden',q!==''&&e.textContent.toLowerCase().indexOf(q)<0)})})}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(183_500_800), "175.0 MiB");
    }

    #[test]
    fn plan_files_are_checked() {
        assert!(
            Report::from_json("{\"schema\": 1")
                .unwrap_err()
                .starts_with("line 1 column")
        );
        let other = r#"{"schema":"something/else","generated_at":"2026-01-01T00:00:00Z","mode":"dry-run",
            "summary":{"repositories":0,"images":0,"delete_image":0,"delete_tag":0,"reclaimable_bytes":0,"blocked":[],"skipped":[]},
            "repositories":[]}"#;
        assert!(Report::from_json(other).unwrap_err().contains("is not"));
        let ok = other.replace("something/else", SCHEMA);
        assert_eq!(Report::from_json(&ok).unwrap().schema, SCHEMA);
    }
}
