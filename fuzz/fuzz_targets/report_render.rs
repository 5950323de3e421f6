//! The retention report renderers (table, Markdown, HTML, JSON) never panic,
//! whatever the report holds (issue 11 #24: a multi-byte digest was byte-sliced),
//! and every format names every action's digest. Two sources of reports: the
//! input read as a plan file, and the input's lines placed in every text field
//! of a synthesized report (so arbitrary strings reach the renderers without
//! having to be valid JSON first).
#![no_main]

use kcr_housekeeper::retention::report::{
    self, Report, ReportInstance, ReportRepository, Summary,
};
use kcr_housekeeper::retention::{ActionKind, PlannedAction};
use libfuzzer_sys::fuzz_target;

fn render_all(r: &Report) {
    let table = report::render_table(r);
    let markdown = report::render_markdown(r);
    let html = report::render_html(r);
    let json = r.to_json();
    assert_eq!(
        Report::from_json(&json).as_ref().map(|back| back == r),
        Ok(true),
        "the JSON reads back as the same report"
    );
    for (_, a) in r.actions() {
        assert!(table.contains(&a.digest), "table lacks {:?}", a.digest);
        assert!(html.contains(&html_escaped(&a.digest)), "html lacks {:?}", a.digest);
    }
    assert!(markdown.starts_with("## Retention report"));
}

fn html_escaped(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A valid report to fill: its times and the shape of an action.
const TEMPLATE: &str = r#"{"schema": "kcr-housekeeper/retention-report/v1",
 "generated_at": "2026-11-22T12:00:00Z", "mode": "dry-run", "instances": [],
 "summary": {"repositories": 0, "images": 0, "delete_image": 0, "delete_tag": 0,
             "reclaimable_bytes": 0, "blocked": [], "skipped": []},
 "repositories": [{"instance": "i", "namespace": "n", "repository": "r", "images": 1,
   "actions": [{"action": "delete_image", "digest": "d", "tags": [], "image_tags": [],
                "size": 0, "pushed_at": "1999-12-31T23:59:59Z", "rules": [], "reason": ""}]}]}"#;

fn synthesized(text: &str) -> Report {
    let mut r = Report::from_json(TEMPLATE).expect("the template is a report");
    let mut parts = text.split('\n').map(str::to_owned);
    let mut next = || parts.next().unwrap_or_default();
    let template: PlannedAction = r.repositories[0].actions[0].clone();
    let mut actions = Vec::new();
    for i in 0..3u64 {
        let mut a = template.clone();
        a.tags = next().split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect();
        a.image_tags = next().split(',').map(str::to_owned).collect();
        a.action = if i % 2 == 0 { ActionKind::DeleteImage } else { ActionKind::DeleteTag };
        a.digest = next();
        a.size = (text.len() as u64).wrapping_mul(1_000_003).wrapping_mul(i);
        a.rules = vec![next(), next()];
        a.reason = next();
        actions.push(a);
    }
    r.mode = next();
    r.instances = vec![ReportInstance { name: next(), id: next() }];
    r.summary = Summary {
        repositories: text.len(),
        images: text.chars().count(),
        delete_image: 2,
        delete_tag: 1,
        reclaimable_bytes: u64::MAX - text.len() as u64,
        blocked: vec![next()],
        skipped: vec![next(), next()],
        in_use: vec![next()],
        server_side: vec![next()],
    };
    r.repositories = vec![
        ReportRepository {
            instance: next(),
            namespace: next(),
            repository: next(),
            images: usize::MAX,
            actions,
            blocked_actions: vec![],
        },
        ReportRepository {
            instance: next(),
            namespace: next(),
            repository: next(),
            images: 0,
            actions: vec![],
            blocked_actions: vec![],
        },
    ];
    // Any zone name, known to chrono-tz or not (the header names it either way).
    r.timezone = Some(next());
    r
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(r) = Report::from_json(&text) {
        render_all(&r);
    }
    render_all(&synthesized(&text));
});
