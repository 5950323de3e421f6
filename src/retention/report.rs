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
    /// The fingerprint of the retention config the plan was made with
    /// (`apply --plan` reports a mismatch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_fingerprint: Option<String>,
    pub summary: Summary,
    pub repositories: Vec<ReportRepository>,
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
    /// Repositories whose listing failed or changed mid-way.
    pub skipped: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportRepository {
    pub instance: String,
    pub namespace: String,
    pub repository: String,
    pub images: usize,
    pub actions: Vec<PlannedAction>,
}

impl Report {
    pub fn from_plan(plan: &Plan, mode: &str, instances: Vec<ReportInstance>) -> Report {
        let mut blocked = Vec::new();
        let mut skipped = Vec::new();
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
        }
        Report {
            schema: SCHEMA.into(),
            generated_at: plan.generated_at,
            mode: mode.into(),
            instances,
            config_fingerprint: None,
            summary: Summary {
                repositories: plan.repositories.len(),
                images: plan.repositories.iter().map(|r| r.images).sum(),
                delete_image: plan.count(ActionKind::DeleteImage),
                delete_tag: plan.count(ActionKind::DeleteTag),
                reclaimable_bytes: plan.reclaimable_bytes(),
                blocked,
                skipped,
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

fn short(digest: &str) -> &str {
    let d = digest.strip_prefix("sha256:").unwrap_or(digest);
    &d[..d.len().min(12)]
}

/// What a delete frees, for people: `-` for a tag deletion.
fn size_text(a: &PlannedAction) -> String {
    if a.size > 0 {
        human_bytes(a.size)
    } else {
        "-".into()
    }
}

fn tags_text(a: &PlannedAction, sep: &str) -> String {
    if a.tags.is_empty() {
        "(untagged)".into()
    } else {
        a.tags.join(sep)
    }
}

fn summary_lines(r: &Report) -> Vec<String> {
    let s = &r.summary;
    let mut v = vec![
        format!(
            "mode: {}, generated {}",
            r.mode,
            r.generated_at.to_rfc3339()
        ),
        format!("{} repositories, {} images", s.repositories, s.images),
        format!(
            "planned: {} delete_image, {} delete_tag, {} reclaimable",
            s.delete_image,
            s.delete_tag,
            human_bytes(s.reclaimable_bytes)
        ),
    ];
    v.extend(s.blocked.iter().map(|b| format!("BLOCKED {b}")));
    v.extend(s.skipped.iter().map(|b| format!("skipped {b}")));
    v
}

pub fn render_table(r: &Report) -> String {
    let mut out = summary_lines(r).join("\n") + "\n";
    for repo in r.repositories.iter().filter(|x| !x.actions.is_empty()) {
        let _ = writeln!(
            out,
            "\n{}/{}/{} ({} images)",
            repo.instance, repo.namespace, repo.repository, repo.images
        );
        let _ = writeln!(
            out,
            "  {:<12}  {:<12}  {:<20}  {:>10}  {:<30}  REASON",
            "ACTION", "DIGEST", "PUSHED", "SIZE", "TAGS"
        );
        for a in &repo.actions {
            let _ = writeln!(
                out,
                "  {:<12}  {:<12}  {:<20}  {:>10}  {:<30}  {}",
                a.action.as_str(),
                short(&a.digest),
                a.pushed_at.format("%Y-%m-%d %H:%M"),
                size_text(a),
                tags_text(a, ","),
                a.reason
            );
        }
    }
    out
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('<', "&lt;")
}

pub fn render_markdown(r: &Report) -> String {
    let mut out = String::from("## Retention report\n\n");
    for l in summary_lines(r) {
        let _ = writeln!(out, "- {}", md_escape(&l));
    }
    for repo in r.repositories.iter().filter(|x| !x.actions.is_empty()) {
        let _ = write!(
            out,
            "\n### `{}/{}/{}` ({} images)\n\n| action | digest | pushed | size | tags | reason |\n|---|---|---|---:|---|---|\n",
            repo.instance, repo.namespace, repo.repository, repo.images
        );
        for a in &repo.actions {
            let _ = writeln!(
                out,
                "| {} | `{}` | {} | {} | {} | {} |",
                a.action.as_str(),
                short(&a.digest),
                a.pushed_at.format("%Y-%m-%d %H:%M"),
                size_text(a),
                md_escape(&a.tags.join(", ")),
                md_escape(&a.reason)
            );
        }
    }
    out
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One self-contained page: summary, a section per repository, sortable tables.
pub fn render_html(r: &Report) -> String {
    let s = &r.summary;
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>Retention report</h1><p class=meta>mode <b>{}</b>, generated {}</p>\
         <dl class=summary>\
         <dt>Repositories</dt><dd id=repositories>{}</dd>\
         <dt>Images</dt><dd id=images>{}</dd>\
         <dt>delete_image</dt><dd id=delete_image>{}</dd>\
         <dt>delete_tag</dt><dd id=delete_tag>{}</dd>\
         <dt>Reclaimable</dt><dd id=reclaimable data-bytes={}>{}</dd></dl>",
        html_escape(&r.mode),
        r.generated_at.to_rfc3339(),
        s.repositories,
        s.images,
        s.delete_image,
        s.delete_tag,
        s.reclaimable_bytes,
        human_bytes(s.reclaimable_bytes)
    );
    for (class, items) in [("blocked", &s.blocked), ("skipped", &s.skipped)] {
        if !items.is_empty() {
            let _ = write!(body, "<ul class={class}>");
            for i in items {
                let _ = write!(body, "<li>{}</li>", html_escape(i));
            }
            body.push_str("</ul>");
        }
    }
    for repo in r.repositories.iter().filter(|x| !x.actions.is_empty()) {
        let _ = write!(
            body,
            "<section><h2>{}/{}/{} <small>{} images</small></h2><table class=sortable><thead><tr>\
             <th>action</th><th>digest</th><th>pushed</th><th data-type=num>size</th><th>tags</th><th>rules</th><th>reason</th>\
             </tr></thead><tbody>",
            html_escape(&repo.instance),
            html_escape(&repo.namespace),
            html_escape(&repo.repository),
            repo.images
        );
        for a in &repo.actions {
            let _ = write!(
                body,
                "<tr class={}><td>{}</td><td title=\"{}\"><code>{}</code></td><td>{}</td><td data-sort={}>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                a.action.as_str(),
                a.action.as_str(),
                html_escape(&a.digest),
                short(&a.digest),
                a.pushed_at.format("%Y-%m-%d %H:%M"),
                a.size,
                size_text(a),
                if a.tags.is_empty() {
                    "<i>untagged</i>".to_owned()
                } else {
                    html_escape(&a.tags.join(", "))
                },
                html_escape(&a.rules.join(", ")),
                html_escape(&a.reason)
            );
        }
        body.push_str("</tbody></table></section>");
    }
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>kcr-housekeeper retention report</title>\
         <style>{STYLE}</style></head><body>{body}<script>{SCRIPT}</script></body></html>\n"
    )
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:2em;color:#222}h1{margin:0 0 .2em}\
.meta{color:#666}dl.summary{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}\
dt{font-weight:600}ul.blocked li{color:#a00}ul.skipped li{color:#a60}\
table{border-collapse:collapse;margin:.5em 0 2em;width:100%}th,td{border-bottom:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}\
th{cursor:pointer;background:#f4f4f4;user-select:none}td:nth-child(3),td:nth-child(4){white-space:nowrap}th.asc:after{content:' ▲'}th.desc:after{content:' ▼'}\
tr.delete_image td:first-child{color:#a00;font-weight:600}code{font-size:12px}";

const SCRIPT: &str = "document.querySelectorAll('table.sortable').forEach(function(t){\
t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){\
var asc=!th.classList.contains('asc');t.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc')});\
th.classList.add(asc?'asc':'desc');var num=th.dataset.type==='num';var rows=Array.from(t.tBodies[0].rows);\
rows.sort(function(a,b){var x=a.cells[i].dataset.sort||a.cells[i].textContent,y=b.cells[i].dataset.sort||b.cells[i].textContent;\
var c=num?(Number(x)-Number(y)):x.localeCompare(y);return asc?c:-c});rows.forEach(function(r){t.tBodies[0].appendChild(r)})})})});";

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
