//! Config: the shipped examples parse; bad input is reported all at once with
//! file, line, column and key (messages are snapshotted).

use kcr_housekeeper::config::{self, Endpoint, FileFormat, Mode, RuleAction, Sink, TokenLifetime};
use std::path::Path;

fn env(name: &str) -> Option<String> {
    match name {
        "KSYUN_ACCESS_KEY_ID" => Some("AKLTexample".into()),
        "KSYUN_SECRET_ACCESS_KEY" => Some("example-secret".into()),
        "EMPTY" => Some("  ".into()),
        _ => None,
    }
}

fn parse(text: &str) -> Result<config::Config, config::ConfigErrors> {
    config::parse(text, "test.toml", Path::new("."), &env)
}

fn errors(text: &str) -> String {
    parse(text)
        .expect_err("config should be refused")
        .to_string()
}

#[test]
fn example_config_parses_and_documents_defaults() {
    let c = config::load(Path::new("config/example.toml"), &env).unwrap();
    assert_eq!(
        c.kcr.endpoint,
        Endpoint::Url("https://kcrs.api.ksyun.com".into())
    );
    assert_eq!(c.kcr.region, "cn-beijing-6");
    assert_eq!(c.kcr.requests_per_second, 10.0);
    assert_eq!(c.kcr.max_in_flight, 8);
    assert_eq!(c.kcr.timezone, chrono_tz::Asia::Shanghai);
    let creds = c.kcr.credentials.as_ref().unwrap();
    assert_eq!(creds.access_key_id, "AKLTexample");
    assert!(
        !format!("{c:?}").contains("example-secret"),
        "Debug never shows secrets"
    );
    assert_eq!(c.instances.len(), 1);
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:9187");
    let r = c.retention.as_ref().unwrap();
    assert_eq!(r.mode, Mode::DryRun);
    assert_eq!(r.rules.len(), 4);
    assert_eq!(r.rules[2].action, RuleAction::Keep);
    assert_eq!(r.rules[1].group_by.as_deref(), Some("group"));
    assert_eq!(r.max_deletions_per_run, 1000);
    assert_eq!(r.protect.tags.len(), 3);
    let u = r.in_use.as_ref().unwrap();
    let p = u.prometheus.as_ref().unwrap();
    assert_eq!(p.lookback, std::time::Duration::from_secs(7 * 86_400));
    assert_eq!(p.query, None);
    assert_eq!(u.timeout, std::time::Duration::from_secs(30));
    let t = c.tokens.as_ref().unwrap();
    assert_eq!(t.managed[0].lifetime, TokenLifetime::Days(30));
    assert_eq!(t.managed[0].sinks.len(), 3);
    assert!(matches!(
        t.managed[0].sinks[1],
        Sink::File {
            format: FileFormat::Env,
            ..
        }
    ));
    assert_eq!(
        c.jobs().iter().map(|j| j.job).collect::<Vec<_>>(),
        ["retention", "tokens", "namespaces", "quota"]
    );
}

#[test]
fn every_documented_default_equals_the_built_in_default() {
    // A config with only the required keys must mean the same as example.toml's documented values.
    let minimal = r#"
        [kcr]
        access_key_id = { env = "KSYUN_ACCESS_KEY_ID" }
        secret_access_key = { env = "KSYUN_SECRET_ACCESS_KEY" }
        [[instances]]
        id = "i"
        name = "prod"
        registry = "prod.ksyunkcr.com"
        [retention]
        [tokens]
        [namespaces]
        [quota]
    "#;
    let m = parse(minimal).unwrap();
    let e = config::load(Path::new("config/example.toml"), &env).unwrap();
    assert_eq!(format!("{:?}", m.kcr), format!("{:?}", e.kcr));
    assert_eq!(format!("{:?}", m.server), format!("{:?}", e.server));
    assert_eq!(format!("{:?}", m.state), format!("{:?}", e.state));
    assert_eq!(format!("{:?}", m.scheduler), format!("{:?}", e.scheduler));
    assert_eq!(format!("{:?}", m.leader), format!("{:?}", e.leader));
    assert_eq!(format!("{:?}", m.log), format!("{:?}", e.log));
    assert_eq!(format!("{:?}", m.inventory), format!("{:?}", e.inventory));
    let (mr, er) = (m.retention.unwrap(), e.retention.unwrap());
    assert_eq!(
        (
            mr.schedule.as_str(),
            mr.mode,
            mr.min_age,
            mr.grace,
            mr.max_deletions_per_run,
            mr.max_deletion_ratio,
            mr.verify_before_delete
        ),
        (
            er.schedule.as_str(),
            er.mode,
            er.min_age,
            er.grace,
            er.max_deletions_per_run,
            er.max_deletion_ratio,
            er.verify_before_delete
        )
    );
    assert_eq!(
        mr.protect.newest_images_per_repository,
        er.protect.newest_images_per_repository
    );
    assert!(mr.protect.tags.is_empty(), "protect.tags defaults to empty");
    let (mt, et) = (m.tokens.unwrap(), e.tokens.unwrap());
    assert_eq!(
        (mt.schedule.as_str(), mt.mode),
        (et.schedule.as_str(), et.mode)
    );
    let (mn, en) = (m.namespaces.unwrap(), e.namespaces.unwrap());
    assert_eq!(
        (
            mn.schedule.as_str(),
            mn.mode,
            mn.default,
            mn.allow_make_public,
            mn.max_changes_per_run
        ),
        (
            en.schedule.as_str(),
            en.mode,
            en.default,
            en.allow_make_public,
            en.max_changes_per_run
        )
    );
    let (mq, eq) = (m.quota.unwrap(), e.quota.unwrap());
    assert_eq!(
        (mq.schedule.as_str(), mq.storage),
        (eq.schedule.as_str(), eq.storage)
    );
}

/// One managed token with one file sink, every other key at its default.
const ONE_TOKEN: &str = r#"
        [kcr]
        endpoint = "sim:demo"
        [[instances]]
        id = "i"
        name = "prod"
        registry = "r"
        [tokens]
        [[tokens.managed]]
        name = "ci-pull"
        instance = "prod"
        sinks = [{ kind = "file", path = "/x" }]
    "#;

#[test]
fn managed_token_defaults_match_the_example() {
    let text = ONE_TOKEN.replace("\"file\"", "\"raw-nothing-else\"");
    assert!(errors(&text).contains("unknown sink kind \"raw-nothing-else\""));
    let text = text.replace("raw-nothing-else", "file");
    let c = parse(&text).unwrap();
    let m = &c.tokens.unwrap().managed[0];
    let e = config::load(Path::new("config/example.toml"), &env).unwrap();
    let em = &e.tokens.unwrap().managed[0];
    assert_eq!(
        (
            m.lifetime,
            m.rotate_before,
            m.overlap,
            m.delete_after,
            m.verify
        ),
        (
            em.lifetime,
            em.rotate_before,
            em.overlap,
            em.delete_after,
            em.verify
        )
    );
}

#[test]
fn demo_config_needs_no_credentials() {
    let c = config::load(Path::new("config/demo.toml"), &|_: &str| None).unwrap();
    assert_eq!(c.kcr.endpoint, Endpoint::SimDemo);
    assert!(c.kcr.credentials.is_none());
}

#[test]
fn all_errors_reported_at_once_with_line_and_key() {
    let text = r#"[kcr]
endpoint = "http://kcrs.example.com"
secret_access_key = "plain-text-secret"
timeout = "30x"
colour = "blue"

[[instances]]
id = "i1"
name = "prod"
registry = "https://prod.ksyunkcr.com"

[[instances]]
id = "i2"
name = "prod"
registry = "b"

[retention]
schedule = "0 30 3 * *"
mode = "yes"
max_deletion_ratio = 1.5

[retention.protect]
tags = ["[unclosed"]

[[retention.rules]]
name = "no-bound"
tags = ["pr-*"]

[[retention.rules]]
name = "no-bound"
older_than = "14d"
group_by = "branch"
tags = ["re:^(?P<group>.+)$", "main-*"]

[[retention.rules]]
name = "keep-wrong"
action = "keep"
older_than = "1d"
unknown_key = 1

[tokens]
[[tokens.managed]]
name = "ci/pull"
instance = "staging"
lifetime = "90m"
rotate_before = "40d"
sinks = []

[namespaces]
default = "secret"
rules = [ { match = "Public*", visibility = "public" } ]

[quota]
storage = "everything"

[surprise]
x = 1
"#;
    let msg = errors(text);
    insta::assert_snapshot!(msg);
    // Every line names file:line:column: key.
    for line in msg.lines().filter(|l| l.starts_with("test.toml")) {
        let mut parts = line.splitn(4, ':');
        let (_, l, c) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        assert!(
            l.parse::<usize>().unwrap() > 0 && c.parse::<usize>().unwrap() > 0,
            "{line}"
        );
    }
    assert!(
        !msg.contains("plain-text-secret"),
        "a literal secret is never repeated"
    );
}

#[test]
fn syntax_error_points_at_the_line() {
    let msg = errors("[kcr]\nregion = \"cn-beijing-6\nmax_in_flight = 3\n");
    assert!(msg.starts_with("test.toml:2:"), "{msg}");
    assert!(msg.contains("TOML syntax error"), "{msg}");
}

#[test]
fn missing_credentials_name_the_variable_or_file() {
    let text = r#"
        [kcr]
        access_key_id = { env = "NOT_SET_ANYWHERE" }
        secret_access_key = { file = "does/not/exist" }
        [[instances]]
        id = "i"
        name = "prod"
        registry = "r"
    "#;
    let msg = errors(text);
    assert!(
        msg.contains("kcr.access_key_id: environment variable NOT_SET_ANYWHERE is not set"),
        "{msg}"
    );
    assert!(
        msg.contains("kcr.secret_access_key: cannot read secret file ./does/not/exist"),
        "{msg}"
    );
    let msg = errors(&text.replace("NOT_SET_ANYWHERE", "EMPTY"));
    assert!(msg.contains("environment variable EMPTY is empty"), "{msg}");
    let msg = errors("[[instances]]\nid = \"i\"\nname = \"p\"\nregistry = \"r\"\n");
    assert!(msg.contains("kcr.access_key_id: required"), "{msg}");
}

#[test]
fn secrets_from_files_are_read_relative_to_the_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sk"), "from-file\n").unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[kcr]\naccess_key_id = \"AKLTx\"\nsecret_access_key = { file = \"sk\" }\n[[instances]]\nid = \"i\"\nname = \"p\"\nregistry = \"r\"\n",
    )
    .unwrap();
    let c = config::load(&path, &|_: &str| None).unwrap();
    use secrecy::ExposeSecret;
    assert_eq!(
        c.kcr.credentials.unwrap().secret_access_key.expose_secret(),
        "from-file"
    );
}

#[test]
fn unreadable_config_names_the_file() {
    let msg = config::load(Path::new("/nonexistent/kcr.toml"), &env)
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("/nonexistent/kcr.toml: cannot read config"),
        "{msg}"
    );
}

#[test]
fn config_path_resolution() {
    let none = |_: &str| None;
    assert_eq!(
        config::resolve_path(None, &none),
        Path::new(config::DEFAULT_PATH)
    );
    let set = |n: &str| (n == config::PATH_ENV).then(|| "/tmp/x.toml".to_string());
    assert_eq!(config::resolve_path(None, &set), Path::new("/tmp/x.toml"));
    assert_eq!(
        config::resolve_path(Some(Path::new("a.toml")), &set),
        Path::new("a.toml")
    );
}

#[test]
fn deploy_configs_parse() {
    // Their secrets are files that exist only on a deployed host; everything else must be valid.
    for path in [
        "deploy/systemd/config.toml",
        "deploy/kubernetes/config.toml",
    ] {
        let err = config::load(Path::new(path), &env).unwrap_err();
        assert!(
            err.0
                .iter()
                .all(|e| e.message.starts_with("cannot read secret file")),
            "{path}: {err}"
        );
        assert_eq!(err.0.len(), 2, "{path}: {err}");
    }
}

#[test]
fn in_use_sources_are_validated_with_line_and_key() {
    let head =
        "[kcr]\nendpoint = \"sim:demo\"\n[[instances]]\nid = \"i\"\nname = \"prod\"\n[retention]\n";
    let e = errors(&format!(
        "{head}[retention.in_use]\nprometheus = {{ url = \"prometheus:9090\", lookback = \"30s\" }}\nfile = \"images.txt\"\nexec = []\ntimeout = \"0s\"\n"
    ));
    for want in [
        "test.toml:8:16: retention.in_use.prometheus.url: \"prometheus:9090\" is not an http(s) URL",
        "retention.in_use.prometheus.lookback: must be at least 1m",
        "test.toml:9:1: retention.in_use.file: \"images.txt\" is not an absolute path",
        "test.toml:10:1: retention.in_use.exec: needs a non-empty list",
        "test.toml:11:1: retention.in_use.timeout: must be more than 0s",
    ] {
        assert!(e.contains(want), "{want}\n{e}");
    }
    let e = errors(&format!("{head}[retention.in_use]\n"));
    assert!(e.contains("retention.in_use: names no source"), "{e}");
    let e = errors(&format!(
        "{head}[retention.in_use]\nfile = \"/x\"\nurl = \"http://p\"\n"
    ));
    assert!(
        e.contains("retention.in_use.url: unknown field `url`"),
        "{e}"
    );
    let c = parse(&format!(
        "{head}[retention.in_use]\nexec = [\"/bin/true\"]\nprometheus = {{ url = \"http://p:9090/\", query = \"up\" }}\n"
    ))
    .unwrap();
    let u = c.retention.unwrap().in_use.unwrap();
    let p = u.prometheus.unwrap();
    assert_eq!(
        (p.url.as_str(), p.query.as_deref()),
        ("http://p:9090", Some("up"))
    );
    assert_eq!(u.exec.unwrap(), ["/bin/true"]);
}

/// Review finding: `scope = ["apps"]` matched no `namespace/repository`, so
/// every refusal inside `apps` counted as expected and the run exited 0.
#[test]
fn a_scope_entry_without_a_repository_part_is_refused_with_the_fix() {
    let e = errors(
        "[kcr]\nendpoint = \"sim:demo\"\n[[instances]]\nid = \"i\"\nname = \"prod\"\nscope = [\"apps\", \"team-a/*\", \"**\"]\n",
    );
    assert!(
        e.contains(
            "instances[0].scope[0]: scope entries are namespace/repository globs; write \"apps/**\""
        ),
        "{e}"
    );
    assert!(!e.contains("scope[1]") && !e.contains("scope[2]"), "{e}");
}

/// Words in config (`mode`, `action`, `order_by`, `format`, …) are serde
/// enums: a wrong word is refused at its line and key with the words
/// expected, and checking goes on past it.
#[test]
fn a_wrong_word_names_line_key_and_the_words_expected() {
    let e = errors(
        "[kcr]\nendpoint = \"sim:demo\"\n[[instances]]\nid = \"i\"\nname = \"prod\"\n[log]\nformat = \"xml\"\n[retention]\nmode = \"Enforce\"\n[[retention.rules]]\nname = \"r\"\naction = \"purge\"\norder_by = \"alpha\"\nkeep_latest = 0\n",
    );
    for want in [
        "test.toml:7:1: log.format: unknown log format \"xml\"; expected \"text\" or \"json\"",
        "test.toml:9:1: retention.mode: unknown mode \"Enforce\"; expected \"dry-run\" or \"enforce\"",
        "test.toml:12:1: retention.rules[0].action: unknown action \"purge\"; expected \"delete\" or \"keep\"",
        "test.toml:13:1: retention.rules[0].order_by: unknown order \"alpha\"; expected \"pushed\" or \"semver\"",
        // Checking went on past the wrong words.
        "test.toml:14:1: retention.rules[0].keep_latest: 0 keeps nothing",
    ] {
        assert!(e.contains(want), "{want}\n{e}");
    }
    assert!(!e.contains("\nin `"), "no serde suffix: {e}");
}

/// A wrong word in a required key (a sink's `kind`, a namespace rule's
/// `visibility`) is refused without hiding the errors around it; a missing
/// one is still "missing field".
#[test]
fn a_wrong_required_word_does_not_hide_the_rest() {
    let head = "[kcr]\nendpoint = \"sim:demo\"\n[[instances]]\nid = \"i\"\nname = \"prod\"\nregistry = \"r\"\n";
    let e = errors(&format!(
        "{head}[tokens]\n[[tokens.managed]]\nname = \"Bad\"\ninstance = \"prod\"\nsinks = [{{ kind = \"ftp\", path = \"/x\" }}, {{ kind = \"file\", path = \"/y\", format = \"yaml\" }}, {{ path = \"/z\" }}, {{ kind = \"docker-config\", path = \"rel/config.json\" }}]\n[namespaces]\ndefault = \"open\"\nrules = [ {{ match = \"a*\", visibility = \"hidden\" }}, {{ match = \"b*\" }} ]\n"
    ));
    for want in [
        "tokens.managed[0].name: invalid name \"Bad\"",
        "tokens.managed[0].sinks[0].kind: unknown sink kind \"ftp\"; expected \"docker-config\", \"containers-auth\", \"file\" or \"exec\"",
        "tokens.managed[0].sinks[1].format: unknown format \"yaml\"; expected \"env\", \"json\" or \"raw\"",
        "tokens.managed[0].sinks[2]: missing field `kind`",
        "tokens.managed[0].sinks[3].path: \"rel/config.json\" is not an absolute path",
        "test.toml:13:1: namespaces.default: unknown visibility \"open\"; expected \"public\", \"private\" or \"ignore\"",
        "namespaces.rules[0].visibility: unknown visibility \"hidden\"",
        "namespaces.rules[1]: missing field `visibility`",
    ] {
        assert!(e.contains(want), "{want}\n{e}");
    }
    assert!(
        !e.contains("sinks[0]: missing field"),
        "a refused word is not reported missing too: {e}"
    );
}

#[test]
fn delivery_group_defaults_to_the_host_name_and_a_bad_one_names_the_key() {
    let text = ONE_TOKEN;
    let c = parse(text).unwrap();
    assert_eq!(
        c.tokens.unwrap().delivery_group,
        kcr_housekeeper::tokens::config::host_name()
    );
    let shared = text.replace("[tokens]", "[tokens]\ndelivery_group = \"cluster\"");
    assert_eq!(
        parse(&shared).unwrap().tokens.unwrap().delivery_group,
        "cluster"
    );
    let bad = text.replace("[tokens]", "[tokens]\ndelivery_group = \"a b\"");
    let e = errors(&bad);
    assert!(e.contains("tokens.delivery_group"), "{e}");
    assert!(e.contains("invalid delivery group \"a b\""), "{e}");
}

#[test]
fn the_leader_lease_must_outlast_a_renewal_and_a_kcr_call() {
    let base = "[kcr]\nendpoint = \"sim:demo\"\ntimeout = \"5s\"\n[[instances]]\nid = \"i\"\nname = \"p\"\n";
    // The default lease (15s) suffices for a 5s call and a 5s renewal.
    let c = parse(base).unwrap();
    assert_eq!(
        (c.leader.renew, c.leader.lease, c.leader.id.as_deref()),
        (
            std::time::Duration::from_secs(5),
            std::time::Duration::from_secs(15),
            None
        )
    );
    // An explicit short lease for short tests.
    let c = parse(&format!(
        "{}[leader]\nrenew = \"500ms\"\nlease = \"4s\"\nid = \"replica-a\"\n",
        base.replace("5s", "1s")
    ))
    .unwrap();
    assert_eq!(c.leader.lease, std::time::Duration::from_secs(4));
    assert_eq!(c.leader.id.as_deref(), Some("replica-a"));
    // A lease shorter than twice the renewal period.
    let e = errors(&format!("{base}[leader]\nrenew = \"5s\"\nlease = \"9s\"\n"));
    assert!(
        e.contains("leader.lease") && e.contains("at least twice leader.renew"),
        "{e}"
    );
    // A lease a KCR call could outlast.
    let e = errors(&format!("{base}[leader]\nlease = \"10s\"\n"));
    assert!(
        e.contains("leader.lease") && e.contains("kcr.timeout (5s)"),
        "{e}"
    );
    // An id with a space; a zero renewal.
    let e = errors(&format!("{base}[leader]\nid = \"a b\"\nrenew = \"0s\"\n"));
    assert!(e.contains("leader.id") && e.contains("leader.renew"), "{e}");
}
