//! Quota renderers: the usage table with bars and the storage table.

use super::planner::{Storage, Usage};

/// The storage table as the `quota` command prints it.
pub fn render_storage(rows: &[Storage]) -> String {
    let mut out = format!(
        "{:<12} {:<40} {:>8} {:>12}\n",
        "INSTANCE", "NAMESPACE/REPOSITORY", "IMAGES", "STORED"
    );
    for r in rows {
        let name = match &r.repository {
            Some(repo) => format!("{}/{repo}", r.namespace),
            None => r.namespace.clone(),
        };
        out.push_str(&format!(
            "{:<12} {:<40} {:>8} {:>12}\n",
            r.instance,
            name,
            r.images,
            crate::retention::report::human_bytes(r.bytes)
        ));
    }
    out
}

/// A bar of `width` cells for a ratio (clamped to 0–1), in eighths.
pub fn bar(ratio: f64, width: usize) -> String {
    const PARTS: [&str; 8] = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];
    let eighths = (ratio.clamp(0.0, 1.0) * (width * 8) as f64).round() as usize;
    let mut s = "█".repeat(eighths / 8);
    s.push_str(PARTS[eighths % 8]);
    let cells = eighths / 8 + usize::from(!eighths.is_multiple_of(8));
    s.push_str(&"·".repeat(width.saturating_sub(cells)));
    s
}

/// The usage table as the `quota` command prints it.
pub fn render_table(rows: &[Usage]) -> String {
    let iw = rows
        .iter()
        .map(|r| r.instance.len())
        .max()
        .unwrap_or(0)
        .max("INSTANCE".len());
    let mut out = format!(
        "{:<iw$}  {:<12}  {:>6}  {:>6}  {:>6}  {}\n",
        "INSTANCE", "RESOURCE", "USED", "LIMIT", "RATIO", "USAGE"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<iw$}  {:<12}  {:>6}  {:>6}  {:>5.1}%  {}\n",
            r.instance,
            r.resource,
            r.used,
            r.limit,
            r.ratio * 100.0,
            bar(r.ratio, 20)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::planner::ratio;

    #[test]
    fn bars() {
        assert_eq!(bar(0.0, 4), "····");
        assert_eq!(bar(1.0, 4), "████");
        assert_eq!(bar(0.5, 4), "██··");
        assert_eq!(bar(0.8, 10), "████████··");
        assert_eq!(bar(1.5, 2), "██", "clamped");
        assert_eq!(bar(0.0625, 2), "▏·");
    }

    #[test]
    fn table_layout() {
        let rows = vec![Usage {
            instance: "demo".into(),
            resource: "namespaces",
            used: 8,
            limit: 10,
            ratio: 0.8,
        }];
        let t = render_table(&rows);
        assert!(
            t.lines().nth(1).unwrap().starts_with(
                "demo      namespaces         8      10   80.0%  ████████████████····"
            ),
            "{t}"
        );
        assert_eq!(ratio(1, 0), 0.0);
    }
}
