//! The Grafana dashboard and the Prometheus rules use only metrics the daemon
//! exports (and Prometheus's own `up`).

use kcr_housekeeper::metrics::Metrics;
use std::collections::BTreeSet;

/// Metric names in a PromQL expression: identifiers with our prefixes (or
/// `up`), histogram suffixes mapped to the family name.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < bytes.len()
                && ((bytes[i] as char).is_ascii_alphanumeric() || bytes[i] == b'_')
            {
                i += 1;
            }
            let word = &expr[start..i];
            let in_string = expr[..start].matches('"').count() % 2 == 1;
            let is_metric =
                word.starts_with("kcr_") || word.starts_with("process_") || word == "up";
            if is_metric && !in_string {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s))
                    .filter(|f| f.ends_with("_seconds"))
                    .unwrap_or(word);
                out.push(family.to_string());
            }
        } else {
            i += 1;
        }
    }
    out
}

fn known() -> BTreeSet<String> {
    let mut names: BTreeSet<String> = Metrics::new().metric_names().into_iter().collect();
    names.insert("up".into());
    names
}

#[test]
fn every_dashboard_expression_names_an_exported_metric() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/kcr-housekeeper.json"
    ))
    .unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let known = known();
    let mut exprs = 0;
    let mut used = BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let names = metrics_in(expr);
            assert!(
                !names.is_empty(),
                "{:?}: {expr} names no metric",
                panel["title"]
            );
            for n in names {
                assert!(
                    known.contains(&n),
                    "{:?}: {n} is not exported",
                    panel["title"]
                );
                used.insert(n);
            }
            exprs += 1;
        }
    }
    assert!(exprs >= 20, "{exprs} expressions");
    // Quota, tokens, retention and job health are all on it.
    for must in [
        "kcr_quota_usage_ratio",
        "kcr_token_expiry_timestamp_seconds",
        "kcr_housekeeper_retention_planned",
        "kcr_housekeeper_job_last_success_timestamp_seconds",
    ] {
        assert!(used.contains(must), "{must} missing from the dashboard");
    }
}

#[test]
fn every_alert_rule_names_an_exported_metric() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/kcr-housekeeper.rules.yml"
    ))
    .unwrap();
    let known = known();
    // Expressions are the `expr:` values (single line or a `|` block).
    let mut rules = 0;
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let mut expr = rest.trim().to_string();
        if expr == "|" {
            expr.clear();
            while let Some(next) = lines.peek() {
                if next.trim_start().starts_with("labels:") {
                    break;
                }
                expr.push_str(lines.next().unwrap());
                expr.push('\n');
            }
        }
        let names = metrics_in(&expr);
        assert!(!names.is_empty(), "{expr} names no metric");
        for n in names {
            assert!(
                known.contains(&n),
                "alert expression {expr:?}: {n} is not exported"
            );
        }
        rules += 1;
    }
    assert_eq!(rules, 15);
}

#[test]
fn the_metric_scanner_finds_names_and_skips_strings_and_functions() {
    assert_eq!(
        metrics_in(
            "histogram_quantile(0.9, sum by (le) (rate(kcr_housekeeper_job_duration_seconds_bucket[1h])))"
        ),
        vec!["kcr_housekeeper_job_duration_seconds"]
    );
    assert_eq!(metrics_in("up{job=\"kcr_fake\"}"), vec!["up"]);
    assert!(metrics_in("time()").is_empty());
}
