//! Shared helpers: a simulator on 127.0.0.1:0 and a client pointed at it.
#![allow(dead_code)]

pub mod pg;
pub mod replica;

use kcr_housekeeper::kcr::{Client, ClientConfig, RetryPolicy};
use kcr_housekeeper::sim::{Faults, SimOptions, Simulator};
use std::time::Duration;

pub const DEMO_INSTANCE: &str = "eb1d0d73-4845-4283-a736-000000000001";

pub async fn sim(opts: SimOptions) -> Simulator {
    Simulator::start(opts).await.expect("simulator starts")
}

pub async fn sim_with_faults(faults: Faults) -> Simulator {
    sim(SimOptions {
        faults,
        ..Default::default()
    })
    .await
}

pub fn config_for(sim: &Simulator) -> ClientConfig {
    let mut c = ClientConfig::new(sim.endpoint(), sim.credentials());
    c.requests_per_second = 1000.0;
    c.max_in_flight = 8;
    c.timeout = Duration::from_secs(10);
    c.retry = RetryPolicy {
        max_attempts: 5,
        base: Duration::from_millis(2),
        cap: Duration::from_millis(20),
    };
    c
}

pub fn client_for(sim: &Simulator) -> Client {
    Client::new(config_for(sim)).expect("client builds")
}

/// The head of a test config: `[kcr]` pointing at the simulator with
/// credentials from `$AK`/`$SK`, the demo instance (its registry is the
/// simulator itself, which serves `/v2/`) and `[state]` in `dir`.
pub fn demo_head(sim: &Simulator, dir: &std::path::Path) -> String {
    format!(
        "[kcr]\nendpoint = \"{endpoint}\"\naccess_key_id = {{ env = \"AK\" }}\nsecret_access_key = {{ env = \"SK\" }}\n\
         [[instances]]\nid = \"{DEMO_INSTANCE}\"\nname = \"demo\"\nregistry = \"{registry}\"\n\
         [state]\npath = \"{state}\"\n",
        endpoint = sim.endpoint(),
        registry = sim.endpoint().trim_start_matches("http://"),
        state = dir.join("state.db").display(),
    )
}

/// [`demo_head`] with `[state]` on PostgreSQL: the URL from
/// `$KCR_HOUSEKEEPER_DATABASE_URL` (set it on the command, e.g. to a
/// [`pg::Db`]'s). Replicas of one state share it.
pub fn demo_head_pg(sim: &Simulator, dir: &std::path::Path) -> String {
    let path_line = format!("path = \"{}\"", dir.join("state.db").display());
    let head = demo_head(sim, dir);
    assert!(head.contains(&path_line));
    head.replace(
        &path_line,
        "url = { env = \"KCR_HOUSEKEEPER_DATABASE_URL\" }",
    )
}

/// Every token of the demo instance, as the client lists them.
pub async fn demo_tokens(sim: &Simulator) -> Vec<kcr_housekeeper::kcr::TokenInfo> {
    client_for(sim)
        .list_all(kcr_housekeeper::kcr::DescribeInstanceToken {
            instance_id: DEMO_INSTANCE.into(),
            marker: None,
            max_results: None,
        })
        .await
        .unwrap()
}

/// The demo instance's tokens whose `Desc` names the managed token `name`
/// (any installation, any `Desc` format).
pub async fn tokens_named(sim: &Simulator, name: &str) -> Vec<kcr_housekeeper::kcr::TokenInfo> {
    demo_tokens(sim)
        .await
        .into_iter()
        .filter(|t| {
            t.desc
                .as_deref()
                .and_then(kcr_housekeeper::tokens::planner::parse_desc)
                .is_some_and(|d| d.name == name)
        })
        .collect()
}

/// Parse a config whose credentials are `$AK`/`$SK`, answered with the simulator's.
pub fn parse_config(
    sim: &Simulator,
    text: &str,
    dir: &std::path::Path,
) -> kcr_housekeeper::config::Config {
    use secrecy::ExposeSecret;
    let creds = sim.credentials();
    let (ak, sk) = (
        creds.access_key_id.clone(),
        creds.secret_access_key.expose_secret().to_string(),
    );
    kcr_housekeeper::config::parse(text, "test.toml", dir, &move |k: &str| match k {
        "AK" => Some(ak.clone()),
        "SK" => Some(sk.clone()),
        _ => None,
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The simulator's clock in UTC (it keeps Beijing time, UTC+8).
pub fn sim_utc(sim: &Simulator) -> chrono::DateTime<chrono::Utc> {
    use chrono::TimeZone;
    chrono::Utc.from_utc_datetime(&(sim.now() - chrono::Duration::hours(8)))
}

/// Each namespace of the simulator's first instance: public or not.
pub fn namespace_visibility(sim: &Simulator) -> std::collections::BTreeMap<String, bool> {
    sim.world(|w| {
        w.instances[0]
            .namespaces
            .iter()
            .map(|(n, ns)| (n.clone(), ns.public))
            .collect()
    })
}

/// A simulator over a generated registry, with faults.
pub fn generated_world(spec: &str, faults: Faults) -> SimOptions {
    SimOptions {
        source: kcr_housekeeper::sim::WorldSource::Generate(
            spec.parse::<kcr_housekeeper::sim::GenerateSpec>().unwrap(),
        ),
        faults,
        ..Default::default()
    }
}

/// Registry contents: (namespace/repo, digest) → tags.
pub fn registry_snapshot(
    sim: &Simulator,
) -> std::collections::BTreeMap<(String, String), std::collections::BTreeSet<String>> {
    sim.world(|w| {
        let mut m = std::collections::BTreeMap::new();
        for (ns_name, ns) in &w.instances[0].namespaces {
            for (repo_name, repo) in &ns.repos {
                for img in &repo.images {
                    m.insert(
                        (format!("{ns_name}/{repo_name}"), img.digest.clone()),
                        img.tags.iter().cloned().collect(),
                    );
                }
            }
        }
        m
    })
}

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_kcr-housekeeper");

/// How [`generated_config_with`] names the key and the instance.
pub struct Head<'a> {
    /// The access key id; `None`: the simulator's own.
    pub key_id: Option<&'a str>,
    /// The instance's name in the config (its id is the simulator's first instance).
    pub name: &'a str,
    pub registry: &'a str,
    /// Lines inside `[[instances]]` (a `scope = …`).
    pub instance_lines: &'a str,
}

impl Default for Head<'_> {
    fn default() -> Self {
        Head {
            key_id: None,
            name: "gen",
            registry: "r",
            instance_lines: "",
        }
    }
}

/// Write `dir/config.toml` and return its path: `[kcr]` at the simulator
/// (its key id, the secret from `$TEST_SK` — see [`run_bin`] — 500
/// requests/s), its first instance as `gen` with registry `r`, `[state]` in
/// `dir`, then `body`.
pub fn generated_config(sim: &Simulator, dir: &std::path::Path, body: &str) -> String {
    generated_config_with(sim, dir, &Head::default(), body)
}

/// [`generated_config`] with another key, instance name, registry or scope.
pub fn generated_config_with(
    sim: &Simulator,
    dir: &std::path::Path,
    head: &Head,
    body: &str,
) -> String {
    let id = sim.world(|w| w.instances[0].id.clone());
    let key_id = match head.key_id {
        Some(k) => k.to_owned(),
        None => sim.credentials().access_key_id,
    };
    let mut instance_lines = head.instance_lines.to_owned();
    if !instance_lines.is_empty() {
        instance_lines.push('\n');
    }
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[kcr]\nendpoint = \"{endpoint}\"\naccess_key_id = \"{key_id}\"\nsecret_access_key = {{ env = \"TEST_SK\" }}\nrequests_per_second = 500\n\
             [[instances]]\nid = \"{id}\"\nname = \"{name}\"\nregistry = \"{registry}\"\n{instance_lines}\
             [state]\npath = \"{state}\"\n{body}",
            endpoint = sim.endpoint(),
            name = head.name,
            registry = head.registry,
            state = dir.join("state.db").display(),
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

/// The simulator's secret access key, in clear (for a child's environment).
pub fn sim_secret(sim: &Simulator) -> String {
    use secrecy::ExposeSecret;
    sim.credentials()
        .secret_access_key
        .expose_secret()
        .to_owned()
}

/// The binary with `args` and `secret` in `$TEST_SK` (what
/// [`generated_config`] names); the caller's failpoint and log level stay out.
pub fn bin(secret: &str, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(BIN);
    c.args(args)
        .env("TEST_SK", secret)
        .env_remove("KCR_HOUSEKEEPER_FAILPOINT")
        .env_remove("KCR_HOUSEKEEPER_LOG");
    c
}

/// The binary with `args` for a [`demo_head`] config: the simulator's key in
/// `$AK`/`$SK`; the caller's failpoint and log level stay out.
pub fn demo_bin(sim: &Simulator, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(BIN);
    c.args(args)
        .env("AK", sim.credentials().access_key_id)
        .env("SK", sim_secret(sim))
        .env_remove("KCR_HOUSEKEEPER_FAILPOINT")
        .env_remove("KCR_HOUSEKEEPER_LOG");
    c
}

/// Run to the end on a thread of its own, so that a simulator on the
/// test's runtime keeps answering meanwhile.
pub fn output(mut c: std::process::Command) -> std::process::Output {
    std::thread::spawn(move || c.output().unwrap())
        .join()
        .unwrap()
}

/// [`bin`] with the simulator's secret, run to the end.
pub fn run_bin(sim: &Simulator, args: &[&str]) -> std::process::Output {
    output(bin(&sim_secret(sim), args))
}

/// Exit code, stdout and stderr, for assertions and their messages.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A job's context over `client`, `config` and `state`, with a run of `job`
/// started and fresh metrics, the system clock, nothing watching.
pub fn job_context(
    job: &str,
    client: Client,
    config: kcr_housekeeper::config::Config,
    state: kcr_housekeeper::state::Store,
) -> kcr_housekeeper::jobs::JobContext {
    let run_id = state.start_run(job, "cli", chrono::Utc::now()).unwrap();
    kcr_housekeeper::jobs::JobContext {
        client,
        config: std::sync::Arc::new(config),
        state,
        metrics: std::sync::Arc::new(kcr_housekeeper::metrics::Metrics::new()),
        cancel: Default::default(),
        run_id: Some(run_id),
        inventory: Default::default(),
        trigger: kcr_housekeeper::jobs::Trigger::Api,
        clock: kcr_housekeeper::jobs::system_clock(),
        watch: std::sync::Arc::new(kcr_housekeeper::jobs::Unwatched),
    }
}

/// `plan retention --format json --output dir/plan.json`: the plan and its path.
pub fn plan_json(
    sim: &Simulator,
    config: &str,
    dir: &std::path::Path,
) -> (serde_json::Value, String) {
    let out = dir.join("plan.json");
    let o = run_bin(
        sim,
        &[
            "plan",
            "retention",
            "--config",
            config,
            "--format",
            "json",
            "--output",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let t = std::fs::read_to_string(&out).unwrap();
    (
        serde_json::from_str(&t).unwrap(),
        out.to_str().unwrap().to_owned(),
    )
}

/// Successful deletions the simulator applied: (action, digest or tag).
pub fn deletes_in_log(sim: &Simulator) -> Vec<(String, String)> {
    sim.requests()
        .into_iter()
        .filter(|e| {
            e.code == "OK" && matches!(e.action.as_deref(), Some("DeleteImages" | "DeleteRepoTag"))
        })
        .map(|e| {
            (
                e.action.unwrap(),
                e.params
                    .get("ImageId")
                    .or(e.params.get("TagName"))
                    .cloned()
                    .unwrap(),
            )
        })
        .collect()
}

/// Send `sig` (`-INT`, `-TERM`, …) to a child, as a terminal or systemd would.
pub fn signal(child: &std::process::Child, sig: &str) {
    let kill = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
}

/// Wait (at most 60 s) until the simulator has answered `action` OK `n` times.
pub async fn wait_for_ok(sim: &Simulator, action: &str, n: usize) {
    let started = std::time::Instant::now();
    let done = || {
        sim.requests()
            .iter()
            .filter(|e| e.code == "OK" && e.action.as_deref() == Some(action))
            .count()
    };
    while done() < n {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{n} × {action} answered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// After a Ctrl-C'd one-shot `apply <job>`: `history --format json` lists
/// one run, of `job`, triggered `cli`, failed, saying it was cancelled; and
/// `audit --format json` leaves no record `started`. Returns the audit records.
pub fn assert_cancelled_cli_run(
    history: &std::process::Output,
    audit: &std::process::Output,
    job: &str,
) -> Vec<serde_json::Value> {
    assert!(history.status.success(), "{}", text(history));
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let r = &runs[0];
    assert_eq!(r["job"], job, "{r:#}");
    assert_eq!(r["trigger"], "cli", "{r:#}");
    assert_eq!(r["result"], "failure", "{r:#}");
    assert!(r["finished_at"].is_string(), "the run is closed: {r:#}");
    assert!(
        r["error"]
            .as_str()
            .unwrap_or_default()
            .contains("cancelled"),
        "{r:#}"
    );
    assert!(audit.status.success(), "{}", text(audit));
    let records: Vec<serde_json::Value> = serde_json::from_slice(&audit.stdout).unwrap();
    assert!(
        records.iter().all(|r| r["outcome"] != "started"),
        "no call left unfinished: {records:#?}"
    );
    records
}

/// `out` exited `code`; its stdout parsed as JSON.
pub fn json_stdout(out: &std::process::Output, code: i32) -> serde_json::Value {
    assert_eq!(out.status.code(), Some(code), "{}", text(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

/// Write `dir/config.toml` ([`demo_head`] + `body`), run `plan retention
/// --format json` on it (must exit 0): the report.
pub fn demo_plan_json(sim: &Simulator, dir: &std::path::Path, body: &str) -> serde_json::Value {
    let path = dir.join("config.toml");
    std::fs::write(&path, format!("{}{body}", demo_head(sim, dir))).unwrap();
    let mut plan = demo_bin(sim, &["plan", "retention", "--format", "json", "--config"]);
    plan.arg(&path);
    json_stdout(&output(plan), 0)
}

/// The demo world answering every call after `latency` (room to interrupt a run).
pub async fn sim_with_latency(latency: Duration) -> Simulator {
    sim_with_faults(Faults {
        latency,
        ..Default::default()
    })
    .await
}

/// Start `cmd`, and once the simulator has answered `action` OK, send it
/// SIGINT (a Ctrl-C): its output.
pub async fn ctrl_c_after(
    sim: &Simulator,
    mut cmd: std::process::Command,
    action: &str,
) -> std::process::Output {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_ok(sim, action, 1).await;
    signal(&child, "-INT");
    tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap()
}

/// Is the program `name` (a Debian package CI installs in `.ci/run`) here?
/// Locally its absence skips the test (with a message); under CI (`CI`
/// set) it fails it.
pub fn ci_tool(name: &str) -> bool {
    let found = std::process::Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is not installed; CI must install it (.ci/run)"
        );
        eprintln!("{name} is not installed; skipping (CI installs it)");
    }
    found
}

/// A new one-hour token of the demo instance (its username and secret log in
/// to the simulator's registry).
pub async fn demo_hour_token(client: &Client) -> kcr_housekeeper::kcr::CreatedToken {
    client
        .call(&kcr_housekeeper::kcr::CreateInstanceToken {
            instance_id: DEMO_INSTANCE.into(),
            lifetime: kcr_housekeeper::kcr::TokenLifetime::Hours(1),
            desc: None,
        })
        .await
        .expect("CreateInstanceToken")
}
