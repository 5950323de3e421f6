//! The HTML report in a real headless Chromium (Debian's `chromium`): it
//! renders, and the numbers on the page match the JSON report.

mod common;

use common::*;
use kcr_housekeeper::config;
use kcr_housekeeper::inventory::Inventory;
use kcr_housekeeper::retention::plan;
use kcr_housekeeper::retention::report::{Report, ReportInstance, render_html};
use kcr_housekeeper::sim::SimOptions;
use std::path::Path;
use std::process::Command;

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok())
}

fn text_of(dom: &str, id: &str) -> String {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the rendered page"));
    let from = dom[start..].find('>').unwrap() + start + 1;
    let to = dom[from..].find('<').unwrap() + from;
    dom[from..to].to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn html_report_renders_in_chromium_with_the_json_numbers() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install Debian's chromium package"
        );
        eprintln!("chromium is not installed; skipping (CI installs it)");
        return;
    };
    let sim = sim(SimOptions::default()).await;
    let cfg = config::load(Path::new("config/demo.toml"), &|_: &str| None).unwrap();
    let client = client_for(&sim);
    let now = chrono::Utc::now();
    let inv = Inventory::collect(&client, &cfg.instances, now).await;
    let p = plan(&inv, cfg.retention.as_ref().unwrap(), now);
    let report = Report::from_plan(
        &p,
        "dry-run",
        vec![ReportInstance {
            name: "demo".into(),
            id: DEMO_INSTANCE.into(),
        }],
    );
    let mut report = report;
    report.timezone = Some(cfg.kcr.timezone.name().into());
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert!(
        json["summary"]["delete_image"].as_u64().unwrap() > 0,
        "the demo plan has work in it"
    );

    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    std::fs::write(&page, render_html(&report)).unwrap();
    let out = std::thread::spawn({
        let page = page.clone();
        let profile = dir.path().join("profile");
        move || {
            Command::new(browser)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                ])
                .args([
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                ])
                .arg(format!("--user-data-dir={}", profile.display()))
                .arg("--dump-dom")
                .arg(format!("file://{}", page.display()))
                .output()
                .unwrap()
        }
    })
    .join()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains("<h1>Retention report</h1>"), "rendered");
    let s = &json["summary"];
    for key in ["repositories", "images", "delete_image", "delete_tag"] {
        assert_eq!(
            text_of(&dom, key),
            s[key].to_string(),
            "{key} on the page equals the JSON"
        );
    }
    assert!(dom.contains(&format!("data-bytes=\"{}\"", s["reclaimable_bytes"])));
    assert_eq!(
        text_of(&dom, "reclaimable"),
        kcr_housekeeper::retention::report::human_bytes(s["reclaimable_bytes"].as_u64().unwrap())
    );
    // One table row per action, in tables marked sortable.
    let rows = dom.matches("<tr class=\"delete_").count();
    assert_eq!(
        rows as u64,
        s["delete_image"].as_u64().unwrap() + s["delete_tag"].as_u64().unwrap()
    );
    assert!(dom.contains("class=\"sortable\""));
    // Step 8 item 8: an index with a filter box, one row per repository,
    // and the upper-bound label on reclaimable bytes.
    assert!(dom.contains("id=\"filter\""), "filter box");
    assert_eq!(
        dom.matches("<tr class=\"repo\"").count() as u64,
        s["repositories"].as_u64().unwrap(),
        "one index row per repository"
    );
    assert!(dom.contains("Reclaimable (upper bound)"));
    // The header names the instance and the configured zone; reasons count ranks from 1.
    assert!(dom.contains(&format!("demo ({DEMO_INSTANCE})")), "instance");
    let generated = text_of(&dom, "generated");
    let zone = cfg.kcr.timezone.name();
    assert!(
        generated.contains(&format!("times read in {zone} ([kcr] timezone)"))
            && generated.contains(&format!(
                "({} {zone})",
                report
                    .generated_at
                    .with_timezone(&cfg.kcr.timezone)
                    .format("%Y-%m-%d %H:%M:%S")
            )),
        "configured zone in the header: {generated}"
    );
    assert!(dom.contains(" newest, beyond keep_latest "), "ranks from 1");
    assert!(!dom.contains("rank 0"), "no 0-based rank");
}

mod content {
    use chrono::TimeZone;
    use kcr_housekeeper::retention::ActionKind;
    use kcr_housekeeper::retention::PlannedAction;
    use kcr_housekeeper::retention::report::{
        Report, ReportInstance, ReportRepository, SCHEMA, Summary, UNTAGGED, human_bytes,
        render_html, render_markdown, render_table, time_text,
    };

    fn action(
        kind: ActionKind,
        digest: &str,
        tags: &[&str],
        image_tags: &[&str],
        size: u64,
    ) -> PlannedAction {
        let s = |v: &[&str]| v.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        PlannedAction {
            action: kind,
            digest: digest.into(),
            tags: s(tags),
            image_tags: s(image_tags),
            size,
            pushed_at: chrono::Utc.with_ymd_and_hms(2026, 3, 4, 5, 6, 7).unwrap(),
            rules: vec!["ci-builds".into(), "untagged-äöü".into()],
            reason: "rule ci-builds: 4th newest, beyond keep_latest 2 | <b>&".into(),
        }
    }

    /// Every shape a report takes: an untagged image with a digest that is not
    /// sha256 and has multi-byte characters, a tag deletion on an image that
    /// keeps other tags, repositories without actions, blocked and skipped ones.
    pub fn sample() -> Report {
        Report {
            schema: SCHEMA.into(),
            generated_at: chrono::Utc
                .with_ymd_and_hms(2026, 11, 22, 12, 0, 0)
                .unwrap(),
            mode: "dry-run".into(),
            timezone: Some("Asia/Shanghai".into()),
            config_fingerprint: Some("fp-5e1f0a".into()),
            relief: Vec::new(),
            instances: vec![ReportInstance {
                name: "prod".into(),
                id: "4f9c-prod-id".into(),
            }],
            summary: Summary {
                repositories: 3,
                images: 17,
                delete_image: 1,
                delete_tag: 1,
                reclaimable_bytes: 1_572_864,
                blocked: vec![
                    "prod/apps/big: 9 of 10 images would be deleted, over max_deletion_ratio 0.5"
                        .into(),
                ],
                skipped: vec![
                    "staging: DescribeNamespace: connection refused".into(),
                    "prod/apps/flaky: DescribeImages: the listing shifted while paging".into(),
                ],
                in_use: vec![],
                server_side: vec![],
            },
            repositories: vec![
                ReportRepository {
                    instance: "prod".into(),
                    namespace: "apps".into(),
                    repository: "web".into(),
                    images: 7,
                    actions: vec![
                        action(
                            ActionKind::DeleteImage,
                            "ämd5:日本語ダイジェスト-€",
                            &[],
                            &[],
                            1_572_864,
                        ),
                        action(
                            ActionKind::DeleteTag,
                            "sha256:0123456789abcdef",
                            &["pr-1"],
                            &["pr-1", "main-x"],
                            0,
                        ),
                    ],
                    blocked_actions: vec![],
                },
                ReportRepository {
                    instance: "prod".into(),
                    namespace: "apps".into(),
                    repository: "quiet-one".into(),
                    images: 4,
                    actions: vec![],
                    blocked_actions: vec![],
                },
                ReportRepository {
                    instance: "prod".into(),
                    namespace: "apps".into(),
                    repository: "big".into(),
                    images: 10,
                    actions: vec![],
                    blocked_actions: vec![],
                },
            ],
        }
    }

    fn unescape_html(s: &str) -> String {
        s.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&amp;", "&")
    }

    fn unescape_markdown(s: &str) -> String {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.extend(chars.next()),
                c => out.push(c),
            }
        }
        unescape_html(&out)
    }

    /// Issue 11 #28 and #24: the four formats carry the same content, and
    /// none panics on a digest that is not sha256 (multi-byte characters).
    #[test]
    fn every_format_carries_the_same_content() {
        let r = sample();
        let formats = [
            ("json", r.to_json()),
            ("table", render_table(&r)),
            ("markdown", unescape_markdown(&render_markdown(&r))),
            ("html", unescape_html(&render_html(&r))),
        ];
        let mut atoms: Vec<String> = vec![
            r.schema.clone(),
            r.mode.clone(),
            time_text(&r.generated_at),
            "4f9c-prod-id".into(),
            "fp-5e1f0a".into(),
        ];
        atoms.extend(r.summary.blocked.iter().cloned());
        atoms.extend(r.summary.skipped.iter().cloned());
        for repo in &r.repositories {
            atoms.push(repo.repository.clone());
            for a in &repo.actions {
                atoms.push(a.action.as_str().into());
                atoms.push(a.digest.clone());
                atoms.push(time_text(&a.pushed_at));
                atoms.push(a.reason.clone());
                atoms.extend(a.tags.iter().cloned());
                atoms.extend(a.image_tags.iter().cloned());
                atoms.extend(a.rules.iter().cloned());
            }
        }
        for (name, text) in &formats {
            for atom in &atoms {
                assert!(
                    text.contains(atom.as_str()),
                    "{name} lacks {atom:?}:\n{text}"
                );
            }
        }
        // The human formats: the untagged marker, sizes for people, the
        // repositories with their image counts, the summary's figures.
        for (name, text) in &formats[1..] {
            assert!(text.contains(UNTAGGED), "{name}: untagged marker");
            assert!(text.contains(&human_bytes(1_572_864)), "{name}: size");
            for repo in &r.repositories {
                let line = format!("prod/apps/{} ({} images)", repo.repository, repo.images);
                let html_line = format!(
                    "prod/apps/{} <small>{} images</small>",
                    repo.repository, repo.images
                );
                assert!(
                    text.contains(&line) || text.contains(&html_line),
                    "{name} lacks {line:?}"
                );
            }
            if *name == "html" {
                for (id, n) in [
                    ("repositories", 3),
                    ("images", 17),
                    ("delete_image", 1),
                    ("delete_tag", 1),
                ] {
                    assert!(text.contains(&format!("id={id}>{n}</dd>")), "{name}: {id}");
                }
                assert!(text.contains("data-bytes=1572864"), "{name}: bytes");
            } else {
                assert!(text.contains("3 repositories, 17 images"), "{name}");
                assert!(text.contains("1 delete_image, 1 delete_tag"), "{name}");
                assert!(text.contains("(1572864 bytes)"), "{name}");
            }
        }
        // The JSON marks an untagged deletion by its empty tags.
        let v: serde_json::Value = serde_json::from_str(&formats[0].1).unwrap();
        assert_eq!(
            v["repositories"][0]["actions"][0]["tags"],
            serde_json::json!([])
        );
        assert_eq!(v["repositories"][1]["actions"], serde_json::json!([]));
    }

    /// Step 8 item 8: the header says times are UTC; each repository says
    /// what it keeps and deletes and the bytes; totals per rule; a BLOCKED
    /// banner naming the limit and the key to change; reclaimable bytes are
    /// an upper bound; an empty plan says there is nothing to delete.
    #[test]
    fn every_human_format_explains_the_plan() {
        let r = sample();
        for (name, text) in [
            ("table", render_table(&r)),
            ("markdown", unescape_markdown(&render_markdown(&r))),
            ("html", unescape_html(&render_html(&r))),
        ] {
            for want in [
                "times are UTC",
                // The configured zone ([kcr] timezone) and the instance in the header.
                "generated 2026-11-22T12:00:00Z (2026-11-22 20:00:00 Asia/Shanghai)",
                "KCR's times read in Asia/Shanghai ([kcr] timezone)",
                "instances: prod (4f9c-prod-id)",
                "prod/apps/web",
                "keeps 6 images, deletes 1 image and 1 tag, frees up to 1.5 MiB",
                "rule ci-builds: 2 actions, up to 1.5 MiB",
                "rule untagged-äöü: 2 actions, up to 1.5 MiB",
                "BLOCKED by a safety limit: prod/apps/big: 9 of 10 images would be deleted, over max_deletion_ratio 0.5",
                "raise [retention] max_deletion_ratio in the config",
                "upper bound",
            ] {
                let found = text.contains(want)
                    // HTML puts the rule totals in a table.
                    || (name == "html"
                        && want.starts_with("rule ")
                        && text.contains(&format!(
                            "<td>{}</td><td>2</td><td>1.5 MiB</td>",
                            want.trim_start_matches("rule ").split(':').next().unwrap()
                        )));
                assert!(found, "{name} lacks {want:?}:\n{text}");
            }
            assert!(!text.contains("othing to delete"), "{name}");
        }
        let html = render_html(&r);
        assert!(html.contains("<input id=filter type=search"));
        assert_eq!(html.matches("<tr class=repo>").count(), 3);
        assert!(html.contains("<a href=#repo-0>prod/apps/web</a>"));
        assert!(html.contains("<section id=repo-0>"));

        let mut empty = sample();
        for repo in &mut empty.repositories {
            repo.actions.clear();
        }
        empty.summary.delete_image = 0;
        empty.summary.delete_tag = 0;
        empty.summary.reclaimable_bytes = 0;
        empty.summary.blocked.clear();
        for text in [
            render_table(&empty),
            render_markdown(&empty),
            render_html(&empty),
        ] {
            assert!(text.contains("othing to delete"), "{text}");
            assert!(!text.contains("BLOCKED"), "{text}");
        }
        // The JSON is the same plan file as before but for one new field on
        // purpose (item 8): the configured zone, absent when unknown, so a
        // report without it is byte-identical to what earlier versions wrote.
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "config_fingerprint",
                "generated_at",
                "instances",
                "mode",
                "repositories",
                "schema",
                "summary",
                "timezone"
            ]
        );
        assert_eq!(v["timezone"], "Asia/Shanghai");
        assert_eq!(v["summary"].as_object().unwrap().len(), 7);
        let mut zoneless = sample();
        zoneless.timezone = None;
        let json = zoneless.to_json();
        assert!(!json.contains("timezone"), "{json}");
        assert_eq!(Report::from_json(&json).unwrap(), zoneless);
        for text in [render_table(&zoneless), render_html(&zoneless)] {
            assert!(text.contains("generated 2026-11-22T12:00:00Z (times are UTC)"));
        }
    }

    /// Step 8 item 8: a ratio-blocked repository's actions are listed for
    /// review, marked BLOCKED, and never counted as deletions; the JSON
    /// carries them apart (`blocked_actions`), and only when there are some.
    #[test]
    fn a_blocked_repositorys_actions_are_listed_marked_blocked() {
        let mut r = sample();
        let stopped = action(
            ActionKind::DeleteImage,
            "sha256:b10cked",
            &["old"],
            &["old"],
            42,
        );
        r.repositories[2].blocked_actions = vec![stopped];
        for (name, text) in [
            ("table", render_table(&r)),
            ("markdown", unescape_markdown(&render_markdown(&r))),
            ("html", unescape_html(&render_html(&r))),
        ] {
            assert!(text.contains("sha256:b10cked"), "{name}");
            assert!(text.contains("delete_image (BLOCKED)"), "{name}");
            assert!(
                text.contains("keeps 10 images, deletes 0 images and 0 tags"),
                "{name}: a blocked repository deletes nothing"
            );
        }
        let html = render_html(&r);
        assert_eq!(html.matches("<tr class=blocked>").count(), 1);
        assert_eq!(
            html.matches("<tr class=delete_").count(),
            2,
            "deletions are the planned ones only"
        );
        let json = r.to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["repositories"][2]["actions"], serde_json::json!([]));
        assert_eq!(
            v["repositories"][2]["blocked_actions"][0]["digest"],
            "sha256:b10cked"
        );
        assert!(v["repositories"][0].get("blocked_actions").is_none());
        assert_eq!(
            Report::from_json(&json).unwrap(),
            r,
            "a plan file round-trips"
        );
        let planned: Vec<&str> = r.actions().map(|(_, a)| a.digest.as_str()).collect();
        assert!(
            !planned.contains(&"sha256:b10cked"),
            "apply never sees a blocked action"
        );
    }

    /// Issue 11 #24: digests and names of every shape, byte-sliced nowhere.
    #[test]
    fn no_digest_or_name_makes_a_renderer_panic() {
        for digest in [
            "",
            "é",
            "sha256:",
            "sha256:ééééééééééé",
            "sha256:€€€€€€€€€€€€€€",
            "漢字漢字漢字漢字",
            "a\u{301}\u{301}\u{301}\u{301}\u{301}",
        ] {
            let mut r = sample();
            r.repositories[0].actions[0].digest = digest.into();
            r.repositories[0].namespace = digest.into();
            for text in [
                render_table(&r),
                render_markdown(&r),
                render_html(&r),
                r.to_json(),
            ] {
                assert!(text.contains(digest));
            }
        }
    }
}
