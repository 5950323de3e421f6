//! The command line as operators expect it, through the binary: completions,
//! man page, --version, broken pipes, --color/NO_COLOR, -q/-v, per-command
//! formats, explain's forms, errors said once with the endpoint, and the
//! commands that refuse a --config they would ignore.

mod common;

use common::*;
use kcr_housekeeper::sim::{GenerateSpec, SimOptions, Simulator, WorldSource};
use secrecy::ExposeSecret;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_kcr-housekeeper");

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Run the binary off the test's runtime thread (the simulator serves on it).
fn run_env(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("KCR_HOUSEKEEPER_LOG")
        .env_remove("NO_COLOR");
    for (k, v) in envs {
        c.env(k, v);
    }
    std::thread::spawn(move || c.output().unwrap())
        .join()
        .unwrap()
}

fn run(args: &[&str]) -> Output {
    run_env(args, &[])
}

fn creds(sim: &Simulator) -> Vec<(&'static str, String)> {
    let c = sim.credentials();
    vec![
        ("AK", c.access_key_id.clone()),
        ("SK", c.secret_access_key.expose_secret().to_owned()),
    ]
}

fn run_sim(sim: &Simulator, args: &[&str], extra: &[(&str, &str)]) -> Output {
    let mut envs: Vec<(&str, String)> = creds(sim);
    envs.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run_env(args, &envs)
}

fn config(sim: &Simulator, dir: &Path, tail: &str) -> String {
    let path = dir.join("config.toml");
    std::fs::write(&path, format!("{}{tail}", demo_head(sim, dir))).unwrap();
    path.to_str().unwrap().to_owned()
}

const RETENTION: &str = "[retention]\nmode = \"dry-run\"\n[retention.protect]\nnewest_images_per_repository = 1\n\
     [[retention.rules]]\nname = \"ci\"\ntags = [\"pr-*\", \"sha-*\", \"main-*\"]\nkeep_latest = 1\n\
     [[retention.rules]]\nname = \"untagged\"\nuntagged = true\nolder_than = \"1d\"\n";

#[test]
fn completions_for_bash_zsh_and_fish_name_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let o = run(&["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", text(&o.stderr));
        let script = text(&o.stdout);
        for cmd in ["plan", "apply", "history", "explain", "completions", "man"] {
            assert!(script.contains(cmd), "{shell} completion lacks {cmd}");
        }
    }
    // The bash script parses.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kcr-housekeeper.bash");
    std::fs::write(&path, run(&["completions", "bash"]).stdout).unwrap();
    let check = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(check.status.success(), "{}", text(&check.stderr));
    assert!(text(&run(&["completions", "zsh"]).stdout).starts_with("#compdef kcr-housekeeper"));
    assert!(text(&run(&["completions", "fish"]).stdout).contains("complete -c kcr-housekeeper"));
    // An unknown shell is a usage error.
    assert_eq!(run(&["completions", "tcsh"]).status.code(), Some(2));
}

#[test]
fn man_page_is_roff_with_every_command_and_no_internal_references() {
    let o = run(&["man"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let page = text(&o.stdout);
    assert!(page.contains(".TH kcr-housekeeper 1"), "{page}");
    assert!(page.contains(".SH SUBCOMMANDS"), "{page}");
    for cmd in [
        "plan",
        "apply",
        "history",
        "explain",
        "quota",
        "sim",
        "completions",
    ] {
        assert!(
            page.contains(&format!("kcr\\-housekeeper\\-{cmd}(1)")),
            "{cmd} missing from SUBCOMMANDS"
        );
    }
    assert!(
        !page.contains("DESIGN"),
        "the man page points at a document users lack"
    );

    // --dir: a page for every page the SUBCOMMANDS sections name.
    let dir = tempfile::tempdir().unwrap();
    let o = run(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut named = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let page = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(page.contains(".TH kcr-housekeeper"), "{page}");
        for line in page.lines().filter(|l| l.ends_with("(1)")) {
            let file = line.trim_end_matches("(1)").replace("\\-", "-") + ".1";
            assert!(
                dir.path().join(&file).exists(),
                "{file} is named but not written"
            );
            named += 1;
        }
    }
    assert!(named > 15, "{named}");
    assert!(dir.path().join("kcr-housekeeper-plan-retention.1").exists());
}

#[test]
fn version_names_the_commit_and_the_build_date() {
    let o = run(&["--version"]);
    assert!(o.status.success());
    let v = text(&o.stdout);
    let rest = v
        .trim()
        .strip_prefix(&format!(
            "kcr-housekeeper {} (commit ",
            env!("CARGO_PKG_VERSION")
        ))
        .unwrap_or_else(|| panic!("{v}"));
    let (commit, date) = rest
        .strip_suffix(')')
        .and_then(|r| r.split_once(", built "))
        .unwrap_or_else(|| panic!("{v}"));
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{v}"
    );
    assert!(
        date == "unknown" || chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok(),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_into_a_closed_pipe_exits_0_silently() {
    let sim = sim(SimOptions {
        source: WorldSource::Generate(
            "namespaces=4,repos=10,images=40,seed=5"
                .parse::<GenerateSpec>()
                .unwrap(),
        ),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let id = sim.world(|w| w.instances[0].id.clone());
    let cfg = config(&sim, dir.path(), RETENTION);
    let generated = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(DEMO_INSTANCE, &id);
    std::fs::write(&cfg, generated).unwrap();
    // Whole, the report is far more than a pipe holds, so a reader that
    // goes after one line leaves the writer with a broken pipe.
    let whole = run_sim(&sim, &["plan", "retention", "--config", &cfg], &[]);
    assert!(whole.status.success(), "{}", text(&whole.stderr));
    assert!(whole.stdout.len() > 256 * 1024, "{}", whole.stdout.len());

    let (ak, sk) = {
        let c = creds(&sim);
        (c[0].1.clone(), c[1].1.clone())
    };
    let script = format!("set -o pipefail; '{BIN}' plan retention --config '{cfg}' | head -1");
    let o = std::thread::spawn(move || {
        Command::new("bash")
            .args(["-c", &script])
            .env("AK", ak)
            .env("SK", sk)
            .output()
            .unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stderr), "", "silent on a broken pipe");
    assert_eq!(text(&o.stdout).lines().count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn color_flag_no_color_and_quiet_verbose() {
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    // A rule that matches nothing in the demo: plan warns about it.
    let cfg = config(
        &sim,
        dir.path(),
        "[retention]\n[[retention.rules]]\nname = \"nothing\"\ntags = [\"zz-*\"]\nkeep_latest = 1\n\
         [[retention.rules]]\nname = \"untagged\"\nuntagged = true\nolder_than = \"7d\"\n",
    );
    let o = run_sim(&sim, &["plan", "retention", "--config", &cfg], &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("warning: rule \"nothing\" matches nothing"),
        "{err}"
    );
    assert!(!err.contains('\u{1b}'), "no colour off a terminal: {err:?}");
    assert!(!err.contains("DEBUG") && !err.contains("TRACE"), "{err}");

    // -q: errors only.
    let o = run_sim(&sim, &["plan", "retention", "-q", "--config", &cfg], &[]);
    assert!(o.status.success());
    assert_eq!(text(&o.stderr), "");
    // -vvv: every log.
    let o = run_sim(&sim, &["plan", "retention", "-vvv", "--config", &cfg], &[]);
    assert!(o.status.success());
    assert!(text(&o.stderr).contains("TRACE"), "{}", text(&o.stderr));
    // Both: a usage error.
    let o = run_sim(
        &sim,
        &["plan", "retention", "-q", "-v", "--config", &cfg],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));

    // --color always paints warnings, even with NO_COLOR set (a flag beats
    // the environment); --color never does not.
    let o = run_sim(
        &sim,
        &["plan", "retention", "--color", "always", "--config", &cfg],
        &[("NO_COLOR", "1")],
    );
    assert!(text(&o.stderr).contains("\u{1b}["), "{:?}", text(&o.stderr));
    let o = run_sim(
        &sim,
        &["plan", "retention", "--color", "never", "--config", &cfg],
        &[],
    );
    assert!(!text(&o.stderr).contains('\u{1b}'));

    // The history table paints its result column under --color always.
    let o = run_sim(
        &sim,
        &["apply", "retention", "--yes", "--config", &cfg],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = run_sim(
        &sim,
        &["history", "--color", "always", "--config", &cfg],
        &[],
    );
    assert!(
        text(&o.stdout).contains("\u{1b}[32msuccess"),
        "{:?}",
        text(&o.stdout)
    );
    let o = run_sim(&sim, &["history", "--config", &cfg], &[]);
    assert!(!text(&o.stdout).contains('\u{1b}'));
    assert!(text(&o.stdout).contains("success"));
}

#[tokio::test(flavor = "multi_thread")]
async fn formats_are_per_command_and_explain_takes_the_plan_form() {
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&sim, dir.path(), RETENTION);

    // A format a job cannot write is refused by the parser, with the valid ones.
    let o = run_sim(
        &sim,
        &["plan", "tokens", "--format", "html", "--config", &cfg],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("[possible values: table, json]"),
        "{}",
        text(&o.stderr)
    );
    let help = text(&run(&["plan", "namespaces", "--help"]).stdout);
    assert!(
        help.contains("table, json") && !help.contains("html"),
        "{help}"
    );
    let help = text(&run(&["plan", "retention", "--help"]).stdout);
    assert!(help.contains("markdown") && help.contains("html"), "{help}");
    // --plan belongs to apply retention only.
    let o = run(&["apply", "tokens", "--plan", "x.json"]);
    assert_eq!(o.status.code(), Some(2));

    // explain: NAMESPACE/REPOSITORY and the INSTANCE/NAMESPACE/REPOSITORY form plan prints.
    let short = run_sim(
        &sim,
        &["explain", "apps/web", "--format", "json", "--config", &cfg],
        &[],
    );
    assert!(short.status.success(), "{}", text(&short.stderr));
    let long = run_sim(
        &sim,
        &[
            "explain",
            "demo/apps/web",
            "--format",
            "json",
            "--config",
            &cfg,
        ],
        &[],
    );
    assert!(long.status.success(), "{}", text(&long.stderr));
    let (a, b): (serde_json::Value, serde_json::Value) = (
        serde_json::from_slice(&short.stdout).unwrap(),
        serde_json::from_slice(&long.stdout).unwrap(),
    );
    assert_eq!(a["schema"], "kcr-housekeeper/explain/v1");
    assert_eq!(a["repositories"], b["repositories"]);
    let repo = &a["repositories"][0];
    assert_eq!(repo["instance"], "demo");
    assert_eq!(repo["namespace"], "apps");
    assert_eq!(repo["repository"], "web");
    let decisions = repo["decisions"].as_array().unwrap();
    assert!(!decisions.is_empty());
    assert!(
        decisions
            .iter()
            .all(|d| d["digest"].is_string() && d["outcome"].is_string())
    );
    // The table form of the same.
    let o = run_sim(&sim, &["explain", "demo/apps/web", "--config", &cfg], &[]);
    assert!(
        text(&o.stdout).starts_with("demo/apps/web: "),
        "{}",
        text(&o.stdout)
    );
    // No repository: a usage error.
    let o = run_sim(&sim, &["explain", "apps", "--config", &cfg], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("[INSTANCE/]NAMESPACE/REPOSITORY"));
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_said_once_and_name_the_endpoint() {
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    // Refused credentials: an API error.
    let cfg = config(&sim, dir.path(), "");
    let port = sim.endpoint().rsplit(':').next().unwrap().to_owned();
    let o = run_sim(
        &sim,
        &["quota", "--config", &cfg],
        &[("SK", "not-the-secret-0123456789")],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{err}"
    );
    assert!(err.contains("SignatureDoesNotMatch"), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(!err.contains("not-the-secret"));

    // Nothing listening: the transport error names the host, said once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let text_cfg = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&sim.endpoint(), &format!("http://127.0.0.1:{closed_port}"));
    std::fs::write(&cfg, text_cfg).unwrap();
    let o = run_sim(&sim, &["quota", "--config", &cfg], &[]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{err}"
    );
    assert!(err.contains(&format!("127.0.0.1:{closed_port}")), "{err}");
    assert!(!err.contains("<endpoint>"), "{err}");
}

#[test]
fn demo_and_sim_refuse_a_config_they_would_ignore() {
    for args in [
        &["demo", "--config", "/etc/x.toml"][..],
        &["sim", "--config", "/etc/x.toml"][..],
        &["man", "--config", "/etc/x.toml"][..],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = text(&o.stderr);
        assert!(err.contains("--config /etc/x.toml: not used here"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn sim_prints_the_instances_and_registry_hosts_it_serves() {
    let mut child = Command::new(BIN)
        .args(["sim", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
        let done = line.starts_with("instance ");
        lines.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let all = lines.join("\n");
    assert!(all.contains("listening on http://127.0.0.1:"), "{all}");
    assert!(
        all.contains(&format!(
            "instance {DEMO_INSTANCE} (demo), registry host demo.ksyunkcr.com"
        )),
        "{all}"
    );
}
