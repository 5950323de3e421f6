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
}
