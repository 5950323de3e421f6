//! The retention planner, table-driven, clause by clause (DESIGN §6), plus
//! properties that must hold for any inventory and rules.

use chrono::{DateTime, Duration, TimeZone, Utc};
use kcr_housekeeper::config::{self, RetentionConfig};
use kcr_housekeeper::inventory::{
    ImageInfo, InstanceInventory, Inventory, NamespaceInventory, RepositoryInventory,
};
use kcr_housekeeper::retention::planner::{ImageOutcome, Verdict};
use kcr_housekeeper::retention::{ActionKind, Plan, plan, plan_explained};
use proptest::prelude::*;
use std::path::Path;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap()
}

/// A retention config with neutral guards unless `head` sets them.
fn cfg(head: &str, rules: &str) -> RetentionConfig {
    let mut text = String::from(
        "[kcr]\nendpoint = \"sim:demo\"\n[[instances]]\nid = \"i\"\nname = \"prod\"\nregistry = \"r\"\n[retention]\n",
    );
    for (key, default) in [("min_age", "\"0s\""), ("max_deletion_ratio", "1.0")] {
        if !head.contains(key) {
            text.push_str(&format!("{key} = {default}\n"));
        }
    }
    text.push_str(head);
    text.push('\n');
    if !head.contains("[retention.protect]") {
        text.push_str("[retention.protect]\nnewest_images_per_repository = 0\n");
    }
    text.push_str(rules);
    config::parse(&text, "t.toml", Path::new("."), &|_: &str| None)
        .unwrap()
        .retention
        .unwrap()
}

fn img(n: u32, age_days: f64, tags: &[&str]) -> ImageInfo {
    ImageInfo {
        digest: format!("sha256:{n:064x}").into(),
        size: 1000 + u64::from(n),
        pushed_at: now() - Duration::seconds((age_days * 86_400.0) as i64),
        tags: kcr_housekeeper::inventory::tags(tags),
    }
}

fn inventory(repos: Vec<(&str, &str, Vec<ImageInfo>)>) -> Inventory {
    let mut namespaces: Vec<NamespaceInventory> = Vec::new();
    for (ns, repo, images) in repos {
        let r = RepositoryInventory {
            name: repo.into(),
            images,
            skipped: None,
            unlisted: false,
            updated_at: None,
        };
        match namespaces.iter_mut().find(|n| n.name == ns) {
            Some(n) => n.repositories.push(r),
            None => namespaces.push(NamespaceInventory {
                name: ns.into(),
                public: false,
                created_at: None,
                repositories: vec![r],
                error: None,
            }),
        }
    }
    Inventory {
        taken_at: now(),
        instances: vec![InstanceInventory {
            name: "prod".into(),
            id: "i".into(),
            namespaces,
            error: None,
        }],
    }
}

fn one(images: Vec<ImageInfo>) -> Inventory {
    inventory(vec![("apps", "web", images)])
}

/// Actions as (image number, kind, tags), sorted.
fn acts(p: &Plan) -> Vec<(u32, &'static str, Vec<String>)> {
    let mut v: Vec<_> = p
        .actions()
        .map(|(_, a)| {
            (
                u32::from_str_radix(&a.digest.to_string()[7..], 16).unwrap(),
                a.kind.as_str(),
                a.tags().iter().map(|t| t.to_string()).collect(),
            )
        })
        .collect();
    v.sort();
    v
}

fn t(tags: &[&str]) -> Vec<String> {
    tags.iter().map(|s| s.to_string()).collect()
}

const CI: &str = "[[retention.rules]]\nname = \"ci\"\ntags = [\"pr-*\"]\nolder_than = \"7d\"\n";

#[test]
fn one_kept_and_one_condemned_tag_loses_only_the_condemned_tag() {
    let p = plan(
        &one(vec![img(1, 30.0, &["pr-1", "v1.0.0"])]),
        &cfg("", CI),
        now(),
    );
    assert_eq!(acts(&p), vec![(1, "delete_tag", t(&["pr-1"]))]);
}

#[test]
fn all_tags_condemned_is_delete_image() {
    let p = plan(
        &one(vec![img(1, 30.0, &["pr-1", "pr-2"])]),
        &cfg("", CI),
        now(),
    );
    assert_eq!(acts(&p), vec![(1, "delete_image", t(&["pr-1", "pr-2"]))]);
    assert_eq!(p.reclaimable_bytes(), 1001);
}

#[test]
fn every_bound_must_hold_for_a_delete_rule() {
    let rules = "[[retention.rules]]\nname = \"ci\"\ntags = [\"pr-*\"]\nolder_than = \"7d\"\nkeep_latest = 2\n";
    let images = vec![
        img(1, 30.0, &["pr-1"]),
        img(2, 20.0, &["pr-2"]),
        img(3, 10.0, &["pr-3"]),
        img(4, 1.0, &["pr-4"]),
    ];
    // Ranks: 4 → 0, 3 → 1, 2 → 2, 1 → 3. Rank ≥ 2 AND older than 7d: images 2 and 1.
    let p = plan(&one(images), &cfg("", rules), now());
    assert_eq!(
        acts(&p),
        vec![
            (1, "delete_image", t(&["pr-1"])),
            (2, "delete_image", t(&["pr-2"]))
        ]
    );
}

#[test]
fn keep_latest_ranks_only_matched_images() {
    let rules = "[[retention.rules]]\nname = \"ci\"\ntags = [\"pr-*\"]\nkeep_latest = 1\n";
    let images = vec![
        img(1, 3.0, &["pr-1"]),
        img(2, 2.0, &["main"]),
        img(3, 1.0, &["pr-3"]),
    ];
    let p = plan(&one(images), &cfg("", rules), now());
    // Image 2 has no pr- tag: it is not ranked, so image 1 is the 2nd newest pr- image (rank 1).
    assert_eq!(acts(&p), vec![(1, "delete_image", t(&["pr-1"]))]);
}

#[test]
fn keep_beats_delete() {
    let rules = format!(
        "{CI}[[retention.rules]]\nname = \"keep-pr-1\"\naction = \"keep\"\ntags = [\"pr-1\"]\n"
    );
    let p = plan_explained(
        &one(vec![img(1, 30.0, &["pr-1"]), img(2, 30.0, &["pr-2"])]),
        &cfg("", &rules),
        now(),
    );
    assert_eq!(acts(&p), vec![(2, "delete_image", t(&["pr-2"]))]);
    let d = p.repositories[0]
        .decisions
        .iter()
        .find(|d| d.digest.to_string().ends_with('1'))
        .unwrap();
    assert!(matches!(&d.tags[0].verdict, Verdict::Kept { rule, .. } if rule == "keep-pr-1"));
}

#[test]
fn keep_rule_bounds_any_of() {
    let rules = format!(
        "{CI}[[retention.rules]]\nname = \"recent\"\naction = \"keep\"\ntags = [\"pr-*\"]\nnewer_than = \"15d\"\nkeep_latest = 1\n"
    );
    let images = vec![
        img(1, 40.0, &["pr-1"]),
        img(2, 20.0, &["pr-2"]),
        img(3, 10.0, &["pr-3"]),
        img(4, 50.0, &["pr-4"]),
    ];
    // Newest (3) kept by rank and age; 2 is neither newest nor young; 1 and 4 old.
    let p = plan(&one(images), &cfg("", &rules), now());
    assert_eq!(
        acts(&p),
        vec![
            (1, "delete_image", t(&["pr-1"])),
            (2, "delete_image", t(&["pr-2"])),
            (4, "delete_image", t(&["pr-4"]))
        ]
    );
}

#[test]
fn group_by_ranks_within_groups() {
    let rules = "[[retention.rules]]\nname = \"branches\"\ntags = [\"re:^(?P<group>[a-z-]+)-[0-9a-f]{7}$\"]\ngroup_by = \"group\"\nkeep_latest = 1\n";
    let images = vec![
        img(1, 1.0, &["main-aaaaaaa"]),
        img(2, 2.0, &["feat-bbbbbbb"]),
        img(3, 3.0, &["main-ccccccc"]),
        img(4, 4.0, &["feat-ddddddd"]),
        img(5, 5.0, &["other"]),
    ];
    let p = plan(&one(images), &cfg("", rules), now());
    // Newest of each group survives: main → 1, feat → 2.
    assert_eq!(
        acts(&p),
        vec![
            (3, "delete_image", t(&["main-ccccccc"])),
            (4, "delete_image", t(&["feat-ddddddd"]))
        ]
    );
}

#[test]
fn group_by_judges_a_tag_by_its_own_group() {
    let rules = "[[retention.rules]]\nname = \"branches\"\ntags = [\"re:^(?P<group>[a-z]+)-[0-9]$\"]\ngroup_by = \"group\"\nkeep_latest = 1\n";
    // Image 2 is the newest "b" but the second "a": only its a-tag goes.
    let images = vec![
        img(1, 1.0, &["a-1"]),
        img(2, 2.0, &["a-2", "b-2"]),
        img(3, 3.0, &["b-3"]),
    ];
    let p = plan(&one(images), &cfg("", rules), now());
    assert_eq!(
        acts(&p),
        vec![
            (2, "delete_tag", t(&["a-2"])),
            (3, "delete_image", t(&["b-3"]))
        ]
    );
}

#[test]
fn the_newest_image_survives_everything() {
    let head = "[retention.protect]\nnewest_images_per_repository = 1\n";
    let rules = "[[retention.rules]]\nname = \"all\"\nolder_than = \"1d\"\n[[retention.rules]]\nname = \"untagged\"\nuntagged = true\nolder_than = \"1d\"\n";
    let p = plan_explained(
        &one(vec![
            img(1, 90.0, &["x"]),
            img(2, 100.0, &["y"]),
            img(3, 95.0, &[]),
        ]),
        &cfg(head, rules),
        now(),
    );
    assert_eq!(
        acts(&p),
        vec![(2, "delete_image", t(&["y"])), (3, "delete_image", vec![])]
    );
    let newest = &p.repositories[0].decisions[0];
    assert_eq!(newest.outcome, ImageOutcome::Kept);
    assert!(
        matches!(&newest.tags[0].verdict, Verdict::Protected { reason } if reason.contains("newest"))
    );
}

#[test]
fn min_age_and_protected_tags_veto() {
    let head = "min_age = \"2d\"\n[retention.protect]\ntags = [\"v*\"]\nnewest_images_per_repository = 0\n";
    let rules = "[[retention.rules]]\nname = \"all\"\nolder_than = \"0s\"\n";
    let images = vec![
        img(1, 1.0, &["young"]),
        img(2, 10.0, &["v2", "old"]),
        img(3, 10.0, &["v3"]),
    ];
    let p = plan(&one(images), &cfg(head, rules), now());
    assert_eq!(acts(&p), vec![(2, "delete_tag", t(&["old"]))]);
}

#[test]
fn untagged_rule_deletes_old_untagged_images_only() {
    let rules = "[[retention.rules]]\nname = \"untagged\"\nuntagged = true\nolder_than = \"7d\"\n";
    let images = vec![
        img(1, 30.0, &[]),
        img(2, 3.0, &[]),
        img(3, 30.0, &["keep-me"]),
    ];
    let p = plan(&one(images), &cfg("", rules), now());
    assert_eq!(acts(&p), vec![(1, "delete_image", vec![])]);
}

#[test]
fn include_and_exclude_globs_choose_repositories() {
    let rules = "[[retention.rules]]\nname = \"ci\"\nnamespaces = [\"apps\"]\nrepositories = [\"team/**\"]\nexclude_repositories = [\"team/keep*\"]\ntags = [\"pr-*\"]\nolder_than = \"1d\"\n";
    let inv = inventory(vec![
        ("apps", "team/a/b", vec![img(1, 9.0, &["pr-1"])]),
        ("apps", "team/keeper", vec![img(2, 9.0, &["pr-2"])]),
        ("apps", "solo", vec![img(3, 9.0, &["pr-3"])]),
        ("other", "team/x", vec![img(4, 9.0, &["pr-4"])]),
    ]);
    let p = plan(&inv, &cfg("", rules), now());
    assert_eq!(acts(&p), vec![(1, "delete_image", t(&["pr-1"]))]);
}

#[test]
fn unmatched_images_are_kept_and_idle_rules_reported() {
    let rules = format!(
        "{CI}[[retention.rules]]\nname = \"nothing\"\nnamespaces = [\"nope\"]\nolder_than = \"1d\"\n"
    );
    let p = plan_explained(&one(vec![img(1, 30.0, &["main"])]), &cfg("", &rules), now());
    assert!(acts(&p).is_empty());
    assert_eq!(
        p.repositories[0].decisions[0].tags[0].verdict,
        Verdict::Unmatched
    );
    assert_eq!(p.idle_rules, vec!["ci".to_string(), "nothing".to_string()]);
}

#[test]
fn ratio_blocks_a_repository_and_budget_blocks_the_run() {
    let rules = "[[retention.rules]]\nname = \"all\"\nolder_than = \"1d\"\n";
    let images = vec![
        img(1, 9.0, &["a"]),
        img(2, 9.0, &["b"]),
        img(3, 9.0, &["c"]),
        img(4, 9.0, &["d"]),
    ];
    let p = plan(
        &one(images.clone()),
        &cfg("max_deletion_ratio = 0.5", rules).clone(),
        now(),
    );
    // Four of four > 0.5 × 4: blocked, no actions.
    assert!(
        p.repositories[0]
            .blocked
            .as_deref()
            .unwrap()
            .contains("max_deletion_ratio")
    );
    assert!(acts(&p).is_empty());
    // The stopped actions stay for review, apart from the ones to apply.
    assert_eq!(p.repositories[0].blocked_actions.len(), 4);
    let p = plan(
        &one(images.clone()),
        &cfg("max_deletion_ratio = 1.0", rules),
        now(),
    );
    assert_eq!(acts(&p).len(), 4);
    assert!(p.blocked.is_none());
    let p = plan(
        &one(images),
        &cfg("max_deletions_per_run = 3", rules),
        now(),
    );
    assert!(
        p.blocked
            .as_deref()
            .unwrap()
            .contains("max_deletions_per_run 3")
    );
}

#[test]
fn skipped_repositories_plan_nothing() {
    let mut inv = one(vec![img(1, 30.0, &["pr-1"])]);
    inv.instances[0].namespaces[0].repositories[0].skipped =
        Some("DescribeImages: listing changed".into());
    let p = plan(&inv, &cfg("", CI), now());
    assert!(acts(&p).is_empty());
    assert!(p.repositories[0].skipped.is_some());
}

#[test]
fn reasons_name_rules_and_bounds() {
    let p = plan(
        &one(vec![img(1, 30.0, &["pr-1", "main"])]),
        &cfg("", CI),
        now(),
    );
    let (_, a) = p.planned_actions().next().unwrap();
    assert_eq!(a.rules, vec!["ci".to_string()]);
    assert_eq!(a.reason, "rule ci: age 30d > older_than 7d");
    assert_eq!(a.action, ActionKind::DeleteTag);
}

#[test]
fn written_out_actions_carry_every_rule_and_the_freed_bytes() {
    let rules = format!(
        "{CI}[[retention.rules]]\nname = \"sha\"\ntags = [\"sha-*\", \"pr-*\"]\nkeep_latest = 1\n\
         [[retention.rules]]\nname = \"untagged\"\nuntagged = true\nolder_than = \"1d\"\n"
    );
    let p = plan(
        &one(vec![
            img(1, 1.0, &["sha-1"]),
            img(2, 30.0, &["pr-2", "sha-2"]),
            img(3, 40.0, &[]),
        ]),
        &cfg("", &rules),
        now(),
    );
    let written: Vec<_> = p.planned_actions().map(|(_, a)| a).collect();
    assert_eq!(written.len(), 2, "{written:?}");
    let image = &written[0];
    assert_eq!(image.action, ActionKind::DeleteImage);
    assert_eq!(image.tags, vec!["pr-2".to_string(), "sha-2".to_string()]);
    assert_eq!(image.rules, vec!["ci".to_string(), "sha".to_string()]);
    assert_eq!(image.size, 1002);
    assert_eq!(
        image.reason,
        "every tag condemned; pr-2: rule ci: age 30d > older_than 7d; rule sha: 2nd newest, beyond keep_latest 1; \
         sha-2: rule sha: 2nd newest, beyond keep_latest 1"
    );
    let untagged = &written[1];
    assert_eq!(untagged.action, ActionKind::DeleteImage);
    assert!(untagged.tags.is_empty());
    assert_eq!(
        untagged.reason,
        "untagged; rule untagged: age 40d > older_than 1d"
    );
    assert_eq!(p.reclaimable_bytes(), 1002 + 1003);
}

// ------------------------------------------------------------------ properties

fn arb_images() -> impl Strategy<Value = Vec<ImageInfo>> {
    let tag = prop::sample::select(vec![
        "pr-1",
        "pr-2",
        "main-abc1234",
        "dev-abc1234",
        "v1.2.3",
        "latest",
        "keep-x",
        "sha-1",
    ]);
    prop::collection::vec((0u32..400, prop::collection::vec(tag, 0..4)), 0..25).prop_map(|v| {
        let mut images: Vec<ImageInfo> = v
            .into_iter()
            .enumerate()
            .map(|(i, (hours, tags))| {
                let mut tags: Vec<&str> = tags;
                tags.sort();
                tags.dedup();
                let mut im = img(i as u32, f64::from(hours) / 24.0, &tags);
                im.pushed_at = now() - Duration::hours(i64::from(hours));
                im
            })
            .collect();
        kcr_housekeeper::inventory::sort_images(&mut images);
        images
    })
}

const PROP_RULES: &str = "
[[retention.rules]]
name = \"ci\"
repositories = [\"web\"]
tags = [\"pr-*\", \"sha-*\"]
older_than = \"2d\"
keep_latest = 2
[[retention.rules]]
name = \"branches\"
tags = [\"re:^(?P<group>[a-z]+)-[0-9a-f]{7}$\"]
group_by = \"group\"
keep_latest = 1
[[retention.rules]]
name = \"keep\"
action = \"keep\"
tags = [\"keep-*\"]
[[retention.rules]]
name = \"untagged\"
untagged = true
older_than = \"1d\"
";

fn prop_cfg() -> RetentionConfig {
    cfg(
        "min_age = \"3h\"\n[retention.protect]\ntags = [\"latest\", \"v*.*.*\"]\nnewest_images_per_repository = 1\n",
        PROP_RULES,
    )
}

/// Everything a plan shows: the report (JSON) and every verdict.
fn rendered(p: &Plan) -> String {
    let report = kcr_housekeeper::retention::report::Report::from_plan(p, "dry-run", vec![]);
    let decisions: Vec<_> = p.repositories.iter().map(|r| &r.decisions).collect();
    report.to_json() + &serde_json::to_string(&decisions).unwrap()
}

proptest! {
    #[test]
    fn no_protected_or_kept_tag_is_ever_in_an_action(web in arb_images(), api in arb_images()) {
        let cfg = prop_cfg();
        let p = plan_explained(&inventory(vec![("apps", "web", web), ("apps", "api", api)]), &cfg, now());
        for repo in &p.repositories {
            for d in &repo.decisions {
                for td in &d.tags {
                    let protected = td.tag == "latest" || td.tag == "v1.2.3" || td.tag.starts_with("keep-");
                    let in_action = repo.actions.iter().any(|a| a.digest == d.digest && a.tags().iter().any(|t| *t == td.tag));
                    prop_assert!(!(protected && in_action), "{} deleted", td.tag);
                    if !td.verdict.is_condemned() {
                        prop_assert!(!in_action, "{} not condemned but in an action", td.tag);
                    }
                }
                // The newest image and anything younger than min_age stay whole.
                let young = now() - d.pushed_at < Duration::hours(3);
                if young || d.digest == repo.decisions[0].digest {
                    prop_assert_eq!(d.outcome, ImageOutcome::Kept);
                }
            }
        }
    }

    #[test]
    fn delete_image_only_when_every_tag_is_condemned(web in arb_images()) {
        let p = plan_explained(&one(web), &prop_cfg(), now());
        let repo = &p.repositories[0];
        for a in &repo.actions {
            let d = repo.decisions.iter().find(|d| d.digest == a.digest).unwrap();
            match a.kind {
                ActionKind::DeleteImage => {
                    prop_assert!(d.tags.iter().all(|t| t.verdict.is_condemned()));
                    let untagged_condemned = matches!(d.untagged, Some(Verdict::Condemned { .. }));
                    prop_assert!(!d.tags.is_empty() || untagged_condemned, "untagged image deleted without a verdict");
                }
                ActionKind::DeleteTag => prop_assert!(d.tags.iter().any(|t| !t.verdict.is_condemned())),
            }
        }
    }

    #[test]
    fn plan_is_deterministic(web in arb_images(), api in arb_images()) {
        let inv = inventory(vec![("apps", "web", web), ("apps", "api", api)]);
        let a = rendered(&plan_explained(&inv, &prop_cfg(), now()));
        let mut shuffled = inv.clone();
        shuffled.instances[0].namespaces[0].repositories.reverse();
        for r in &mut shuffled.instances[0].namespaces[0].repositories {
            r.images.reverse();
        }
        let b = rendered(&plan_explained(&shuffled, &prop_cfg(), now()));
        prop_assert_eq!(a, b);
    }

    #[test]
    fn nothing_outside_matched_repositories(web in arb_images(), other in arb_images()) {
        // Only "ci" is limited to repository "web"; with only it, nothing in "other" is touched.
        let only_ci = cfg("", "[[retention.rules]]\nname = \"ci\"\nrepositories = [\"web\"]\ntags = [\"pr-*\"]\nolder_than = \"1h\"\n");
        let p = plan(&inventory(vec![("apps", "web", web), ("apps", "other", other)]), &only_ci, now());
        prop_assert!(p.repositories.iter().filter(|r| r.repository == "other").all(|r| r.actions.is_empty()));
    }
}

/// Issue 11 #16/#25: listings that failed at any level are in the plan and the
/// report, make the run partial, and no rule whose scope was not listed
/// completely is called idle.
#[test]
fn failed_listings_make_the_plan_partial_and_no_rule_idle() {
    let rules = "[[retention.rules]]\nname = \"team\"\nnamespaces = [\"team\"]\nolder_than = \"1d\"\n\
                 [[retention.rules]]\nname = \"web\"\nrepositories = [\"web\"]\nolder_than = \"1d\"\n\
                 [[retention.rules]]\nname = \"elsewhere\"\nnamespaces = [\"other\"]\nolder_than = \"1d\"\n";
    let cfg = cfg("", rules);
    // A namespace whose repository listing failed.
    let mut inv = inventory(vec![("apps", "api", vec![img(1, 30.0, &["a"])])]);
    inv.instances[0].namespaces.push(NamespaceInventory {
        name: "team".into(),
        public: false,
        created_at: None,
        repositories: vec![],
        error: Some("DescribeRepository: HTTP 500".into()),
    });
    // A repository whose image listing failed.
    inv.instances[0].namespaces[0]
        .repositories
        .push(RepositoryInventory {
            name: "web".into(),
            images: vec![],
            skipped: Some("DescribeImages: listing changed".into()),
            unlisted: false,
            updated_at: None,
        });
    let p = plan(&inv, &cfg, now());
    assert_eq!(
        p.skipped,
        vec!["prod/team: DescribeRepository: HTTP 500".to_string()]
    );
    assert_eq!(
        p.incomplete(),
        vec![
            "prod/team: DescribeRepository: HTTP 500".to_string(),
            "prod/apps/web: DescribeImages: listing changed".to_string()
        ]
    );
    assert!(
        p.partial_reason()
            .unwrap()
            .starts_with("partial: 2 listings failed")
    );
    // "team" and "web" were not listed completely; "elsewhere" truly matched nothing.
    assert_eq!(p.idle_rules, vec!["elsewhere".to_string()]);
    let report = kcr_housekeeper::retention::report::Report::from_plan(&p, "dry-run", vec![]);
    assert_eq!(report.summary.skipped, p.incomplete());

    // An instance that could not be listed at all: every rule's scope is unknown.
    let mut inv = one(vec![img(1, 30.0, &["a"])]);
    inv.instances.push(InstanceInventory {
        name: "staging".into(),
        id: "j".into(),
        namespaces: vec![],
        error: Some("DescribeNamespace: connection refused".into()),
    });
    let p = plan(&inv, &cfg, now());
    assert_eq!(
        p.skipped,
        vec!["staging: DescribeNamespace: connection refused".to_string()]
    );
    assert!(p.idle_rules.is_empty(), "{:?}", p.idle_rules);
    assert!(p.partial_reason().is_some());
    // A complete listing is not partial.
    assert!(
        plan(&one(vec![img(1, 30.0, &["a"])]), &cfg, now())
            .partial_reason()
            .is_none()
    );
}

/// Issue 11 #23: 57 of 100 is not over 0.57 (a float product says 56.99…).
#[test]
fn the_ratio_block_compares_in_integers() {
    let rules = "[[retention.rules]]\nname = \"old\"\nolder_than = \"1d\"\n";
    let images = |old: u32| -> Vec<ImageInfo> {
        (0..100)
            .map(|n| img(n, if n < old { 9.0 } else { 0.5 }, &[&format!("t{n}")]))
            .collect()
    };
    let p = plan(
        &one(images(57)),
        &cfg("max_deletion_ratio = 0.57", rules),
        now(),
    );
    assert!(
        p.repositories[0].blocked.is_none(),
        "{:?}",
        p.repositories[0].blocked
    );
    assert_eq!(p.count(ActionKind::DeleteImage), 57);
    let p = plan(
        &one(images(58)),
        &cfg("max_deletion_ratio = 0.57", rules),
        now(),
    );
    assert_eq!(
        p.repositories[0].blocked.as_deref(),
        Some("58 of 100 images would be deleted, over max_deletion_ratio 0.57")
    );
    // Ratios that are not exact in binary floating point either.
    for (ratio, images_n, limit) in [(0.29, 100u32, 29u32), (0.1, 30, 3), (0.7, 10, 7)] {
        let imgs: Vec<ImageInfo> = (0..images_n)
            .map(|n| img(n, if n < limit { 9.0 } else { 0.5 }, &[&format!("t{n}")]))
            .collect();
        let p = plan(
            &one(imgs),
            &cfg(&format!("max_deletion_ratio = {ratio}"), rules),
            now(),
        );
        assert!(
            p.repositories[0].blocked.is_none(),
            "{ratio}: {limit} of {images_n}"
        );
    }
}

/// Issue 11 #21: an empty `namespaces` or `repositories` list is an error
/// naming the file, line and key (it used to mean "all"), as `keep_latest = 0` is.
#[test]
fn empty_scope_lists_and_keep_latest_zero_are_errors() {
    let head = "[kcr]\nendpoint = \"sim:demo\"\n[[instances]]\nid = \"i\"\nname = \"prod\"\nregistry = \"r\"\n[retention]\n";
    for (rule, line, key, says) in [
        (
            "namespaces = []\nolder_than = \"1d\"\n",
            10,
            "namespaces",
            "remove `namespaces` to match every namespace",
        ),
        (
            "repositories = []\nolder_than = \"1d\"\n",
            10,
            "repositories",
            "remove `repositories` to match every repository",
        ),
        (
            "older_than = \"1d\"\nkeep_latest = 0\n",
            11,
            "keep_latest",
            "0 keeps nothing",
        ),
        (
            "action = \"keep\"\nkeep_latest = 0\n",
            11,
            "keep_latest",
            "0 keeps nothing",
        ),
    ] {
        let text = format!("{head}[[retention.rules]]\nname = \"r\"\n{rule}");
        let e = config::parse(&text, "t.toml", Path::new("."), &|_: &str| None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("t.toml:{line}:1: retention.rules[0].{key}: ")) && e.contains(says),
            "{rule}: {e}"
        );
    }
    // Absent lists still mean "all"; an empty exclude list excludes nothing.
    let text = format!(
        "{head}[[retention.rules]]\nname = \"r\"\nexclude_repositories = []\nolder_than = \"1d\"\nkeep_latest = 1\n"
    );
    assert!(config::parse(&text, "t.toml", Path::new("."), &|_: &str| None).is_ok());
}

// ------------------------------------------------------------ version order

fn semver_rule(tags: &str, keep_latest: u32, extra: &str) -> RetentionConfig {
    cfg(
        "",
        &format!(
            "[[retention.rules]]\nname = \"versions\"\ntags = {tags}\nkeep_latest = {keep_latest}\norder_by = \"semver\"\n{extra}"
        ),
    )
}

#[test]
fn semver_order_keeps_the_highest_versions_not_the_newest_pushes() {
    // The hotfix v1.2.9 is pushed after v2.0.0: by push time it is among the
    // two newest; by version, v2.0.0 and v1.3.0 are the two highest.
    let images = vec![
        img(1, 1.0, &["v1.2.9"]),
        img(2, 10.0, &["v2.0.0"]),
        img(3, 15.0, &["v1.3.0"]),
        img(4, 20.0, &["v1.2.8"]),
    ];
    let by_version = plan(&one(images.clone()), &semver_rule("[\"v*\"]", 2, ""), now());
    assert_eq!(
        acts(&by_version),
        vec![
            (1, "delete_image", t(&["v1.2.9"])),
            (4, "delete_image", t(&["v1.2.8"]))
        ]
    );
    let pushed = cfg(
        "",
        "[[retention.rules]]\nname = \"versions\"\ntags = [\"v*\"]\nkeep_latest = 2\n",
    );
    let by_push = plan(&one(images), &pushed, now());
    assert_eq!(
        acts(&by_push),
        vec![
            (3, "delete_image", t(&["v1.3.0"])),
            (4, "delete_image", t(&["v1.2.8"]))
        ]
    );
}

/// (tags of each image newest push first) → image numbers in rank order.
fn version_ranks(images: &[&[&str]]) -> Vec<u32> {
    let images: Vec<ImageInfo> = images
        .iter()
        .enumerate()
        .map(|(i, tags)| img(i as u32 + 1, i as f64 + 1.0, tags))
        .collect();
    let cfg = semver_rule("[\"*\"]", 1, "");
    let mut ranks: Vec<(usize, usize)> =
        kcr_housekeeper::retention::planner::rule_ranks(&cfg.rules[0], &images)
            .into_iter()
            .map(|(i, _, r)| (r, i))
            .collect();
    ranks.sort();
    ranks.dedup();
    ranks.into_iter().map(|(_, i)| i as u32 + 1).collect()
}

/// (what, each image's tags newest push first, image numbers in rank order)
type VersionCase<'a> = (&'a str, &'a [&'a [&'a str]], &'a [u32]);

#[test]
fn version_order_table() {
    let cases: &[VersionCase] = &[
        (
            "hotfix pushed after a major release ranks below it",
            &[&["v1.2.9"], &["v2.0.0"], &["v1.2.10"]],
            &[2, 3, 1],
        ),
        (
            "pre-releases rank below their release, numerically",
            &[
                &["2.0.0-rc.2"],
                &["2.0.0-rc.10"],
                &["2.0.0"],
                &["2.0.0-alpha"],
            ],
            &[3, 2, 1, 4],
        ),
        (
            "a pre-release of a higher version is above a lower release",
            &[&["1.9.9"], &["v2.0.0-beta.1"]],
            &[2, 1],
        ),
        (
            "build metadata is ignored: equal precedence ties by push time",
            &[
                &["1.0.0+build.1"],
                &["1.0.0+build.9"],
                &["1.0.1+a"],
                &["v1.0.0"],
            ],
            &[3, 1, 2, 4],
        ),
        (
            "tags that are not versions rank after every version, newest push first",
            &[
                &["latest"],
                &["0.0.1"],
                &["main-abc1234"],
                &["1.2"],
                &["v1.0.0"],
            ],
            &[5, 2, 1, 3, 4],
        ),
        (
            "an image ranks by its highest version tag",
            &[&["v1.0.0"], &["v0.9.0", "v3.0.0", "stable"], &["v2.0.0"]],
            &[2, 3, 1],
        ),
        (
            "leading zeros and a capital V are not versions",
            &[&["V9.0.0"], &["01.0.0"], &["1.0.0"]],
            &[3, 1, 2],
        ),
    ];
    for (what, images, want) in cases {
        assert_eq!(version_ranks(images), *want, "{what}");
    }
}

#[test]
fn semver_order_with_group_by_keeps_the_highest_version_of_each_major() {
    let rules =
        "tags = [\"re:^v(?P<major>[0-9]+)\\\\.[0-9]+\\\\.[0-9]+$\"]\ngroup_by = \"major\"\n";
    let images = vec![
        img(1, 1.0, &["v1.4.1"]),
        img(2, 2.0, &["v2.1.0"]),
        img(3, 3.0, &["v1.5.0"]),
        img(4, 4.0, &["v2.0.3"]),
    ];
    let c = cfg(
        "",
        &format!(
            "[[retention.rules]]\nname = \"versions\"\nkeep_latest = 1\norder_by = \"semver\"\n{rules}"
        ),
    );
    let p = plan_explained(&one(images), &c, now());
    assert_eq!(
        acts(&p),
        vec![
            (1, "delete_image", t(&["v1.4.1"])),
            (4, "delete_image", t(&["v2.0.3"]))
        ]
    );
    // Reports and explain say the rank is in version order.
    let (_, a) = p
        .planned_actions()
        .find(|(_, a)| a.tags == ["v1.4.1"])
        .unwrap();
    assert_eq!(
        a.reason,
        "every tag condemned; v1.4.1: rule versions: 2nd highest version, beyond keep_latest 1"
    );
    let kept = &p.repositories[0].decisions[2].tags[0];
    assert_eq!(kept.tag, "v1.5.0");
    assert_eq!(
        kept.verdict,
        Verdict::Spared {
            rules: vec!["versions".into()],
            reason: "rule versions: highest version, within keep_latest 1".into()
        }
    );
}

#[test]
fn order_by_is_validated_with_file_line_and_key() {
    let text = "[kcr]\nendpoint = \"sim:demo\"\n[[instances]]\nid = \"i\"\nname = \"prod\"\nregistry = \"r\"\n[retention]\n\
        [[retention.rules]]\nname = \"a\"\nkeep_latest = 2\norder_by = \"version\"\n\
        [[retention.rules]]\nname = \"b\"\nuntagged = true\nkeep_latest = 2\norder_by = \"semver\"\n";
    let err = config::parse(text, "t.toml", Path::new("."), &|_: &str| None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("t.toml:11")
            && err.contains("retention.rules[0].order_by")
            && err.contains("expected \"pushed\" or \"semver\""),
        "{err}"
    );
    assert!(
        err.contains("t.toml:16") && err.contains("retention.rules[1].order_by"),
        "{err}"
    );
}

fn arb_version_tag() -> impl Strategy<Value = String> {
    let pre = prop::sample::select(vec![
        "",
        "-alpha",
        "-alpha.1",
        "-alpha.10",
        "-beta",
        "-rc.2",
        "-1",
    ]);
    let build = prop::sample::select(vec!["", "+b1", "+zz.9"]);
    prop_oneof![
        4 => (any::<bool>(), 0u64..3, 0u64..3, 0u64..12, pre, build).prop_map(|(v, a, b, c, p, m)| {
            format!("{}{a}.{b}.{c}{p}{m}", if v { "v" } else { "" })
        }),
        1 => prop::sample::select(vec!["latest", "main", "1.2", "nightly-5"]).prop_map(String::from),
    ]
}

proptest! {
    /// Ranks are a total order (each matched image one distinct rank, all of
    /// an image's tags share it) consistent with SemVer precedence: a higher
    /// version never ranks after a lower one, versions before non-versions,
    /// and ties (equal precedence, no version) in push order.
    #[test]
    fn version_ranks_are_a_total_order_consistent_with_semver(
        raw in prop::collection::vec((0u32..400, prop::collection::vec(arb_version_tag(), 1..3)), 0..20)
    ) {
        use kcr_housekeeper::retention::planner::{rule_ranks, tag_version};
        let mut images: Vec<ImageInfo> = raw
            .iter()
            .enumerate()
            .map(|(i, (hours, tags))| {
                let mut tags: Vec<&str> = tags.iter().map(String::as_str).collect();
                tags.sort();
                tags.dedup();
                let mut im = img(i as u32, 0.0, &tags);
                im.pushed_at = now() - Duration::hours(i64::from(*hours));
                im
            })
            .collect();
        kcr_housekeeper::inventory::sort_images(&mut images);
        let cfg = semver_rule("[\"*\"]", 1, "");
        let mut rank_of: Vec<Option<usize>> = vec![None; images.len()];
        for (i, _, r) in rule_ranks(&cfg.rules[0], &images) {
            prop_assert!(rank_of[i].is_none_or(|x| x == r), "image {i} has two ranks");
            rank_of[i] = Some(r);
        }
        let mut ranks: Vec<usize> = rank_of.iter().map(|r| r.unwrap()).collect();
        ranks.sort();
        prop_assert_eq!(ranks, (0..images.len()).collect::<Vec<_>>());
        let best = |i: usize| {
            images[i].tags.iter().filter_map(|t| tag_version(t)).max_by(|a, b| a.cmp_precedence(b))
        };
        for a in 0..images.len() {
            for b in 0..images.len() {
                let (ra, rb) = (rank_of[a].unwrap(), rank_of[b].unwrap());
                let before = match (best(a), best(b)) {
                    (Some(va), Some(vb)) => va.cmp_precedence(&vb).reverse().then(a.cmp(&b)),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => a.cmp(&b),
                };
                prop_assert_eq!(ra.cmp(&rb), before, "images {} and {}", a, b);
            }
        }
    }
}

/// Scoped keys (issue 13 #6): a refusal outside the instance's declared
/// scope is reported but not partial; any other skip is partial; a
/// repository whose images were not listed (no rule needs them) is left out
/// of the plan, and one a rule covers anyway is skipped, never "empty".
#[test]
fn expected_refusals_are_reported_but_not_partial_and_unlisted_repositories_never_planned() {
    use kcr_housekeeper::inventory::{ACCESS_DENIED, OUTSIDE_SCOPE};
    let cfg = cfg(
        "",
        "[[retention.rules]]\nname = \"all\"\nrepositories = [\"r*\"]\nolder_than = \"1d\"\n",
    );
    let denied = "DescribeImages: HTTP 403 AccessDenied: User: u is not authorized";
    // (skip reason, partial?)
    let table = [
        (format!("{OUTSIDE_SCOPE}: {denied}"), false),
        (format!("{ACCESS_DENIED}: {denied}"), true),
        ("DescribeImages: HTTP 500 InternalError".to_string(), true),
    ];
    for (reason, partial) in table {
        let mut inv = inventory(vec![("apps", "r1", vec![img(1, 30.0, &["a"])])]);
        let repos = &mut inv.instances[0].namespaces[0].repositories;
        repos.push(RepositoryInventory {
            name: "r2".into(),
            images: vec![],
            skipped: Some(reason.clone()),
            unlisted: false,
            updated_at: None,
        });
        let p = plan(&inv, &cfg, now());
        assert_eq!(p.partial_reason().is_some(), partial, "{reason}");
        let r2 = p
            .repositories
            .iter()
            .find(|r| r.repository == "r2")
            .unwrap();
        assert!(r2.actions.is_empty() && r2.skipped.as_deref() == Some(reason.as_str()));
        // Every skip is in the report, expected or not.
        let report = kcr_housekeeper::retention::report::Report::from_plan(&p, "dry-run", vec![]);
        assert_eq!(
            report.summary.skipped,
            vec![format!("prod/apps/r2: {reason}")]
        );
        // The one readable repository is planned either way.
        assert_eq!(p.count(ActionKind::DeleteImage), 1, "{reason}");
    }
    // Unlisted: left out when no rule covers it, skipped when one does.
    let mut inv = inventory(vec![("apps", "r1", vec![img(1, 30.0, &["a"])])]);
    for name in ["other", "r9"] {
        inv.instances[0].namespaces[0]
            .repositories
            .push(RepositoryInventory {
                name: name.into(),
                images: vec![],
                skipped: None,
                unlisted: true,
                updated_at: None,
            });
    }
    let p = plan(&inv, &cfg, now());
    assert!(!p.repositories.iter().any(|r| r.repository == "other"));
    let r9 = p
        .repositories
        .iter()
        .find(|r| r.repository == "r9")
        .unwrap();
    assert!(
        r9.skipped
            .as_deref()
            .unwrap()
            .starts_with("images not listed")
    );
    assert!(p.partial_reason().is_some());
}

/// Step 9 item 8, the pure part: enabled or unreadable server-side rules
/// block the namespace's repositories when enforcing (and only then, only
/// there); "not supported" blocks nothing; everything found is kept on the
/// plan for the reports; a run-level block stands.
#[test]
fn server_side_rules_block_their_namespace_when_enforcing() {
    use kcr_housekeeper::retention::{ServerSide, ServerSideState, apply_server_side};
    let c = cfg(
        "max_deletions_per_run = 3",
        "[[retention.rules]]\nname = \"all\"\ntags = [\"pr-*\"]\nolder_than = \"1d\"\n",
    );
    let inv = inventory(vec![
        (
            "a",
            "app",
            vec![img(1, 3.0, &["pr-1"]), img(2, 3.0, &["pr-2"])],
        ),
        (
            "b",
            "app",
            vec![img(3, 3.0, &["pr-3"]), img(4, 3.0, &["pr-4"])],
        ),
        ("c", "app", vec![img(5, 3.0, &["pr-5"])]),
    ]);
    let at = |ns: &str, state: ServerSideState| ServerSide {
        instance: "prod".into(),
        namespace: ns.into(),
        state,
    };
    let found = vec![
        at(
            "a",
            ServerSideState::Enabled {
                rules: vec!["latestPushedK 3".into()],
                trigger: None,
            },
        ),
        at("b", ServerSideState::Unreadable("AccessDenied".into())),
    ];
    let base = plan(&inv, &c, now());
    assert!(base.blocked.is_some(), "5 actions over the budget of 3");
    // Not enforcing: shown, nothing blocked.
    let mut p = base.clone();
    apply_server_side(&mut p, found.clone(), false, 3);
    assert_eq!(p.server_side, found);
    assert!(p.repositories.iter().all(|r| r.blocked.is_none()));
    // Enforcing: a and b blocked, c planned.
    let mut p = base.clone();
    apply_server_side(&mut p, found.clone(), true, 3);
    let blocked: Vec<&str> = p
        .repositories
        .iter()
        .filter(|r| r.blocked.is_some())
        .map(|r| r.namespace.as_str())
        .collect();
    assert_eq!(blocked, ["a", "b"]);
    assert_eq!(p.actions().count(), 1);
    assert!(
        p.blocked.is_some(),
        "a run-level block is never lifted here"
    );
    assert!(
        p.partial_reason().is_some_and(|r| r.contains("prod/b")),
        "unreadable rules make the run partial"
    );
    // Not supported: unknown, blocks nothing.
    let mut p = base.clone();
    let unknown = vec![ServerSide {
        instance: "prod".into(),
        namespace: "*".into(),
        state: ServerSideState::NotSupported("NoSuchEntity".into()),
    }];
    apply_server_side(&mut p, unknown, true, 3);
    assert!(p.repositories.iter().all(|r| r.blocked.is_none()));
    assert!(p.server_side[0].line().contains("unknown"));
}
