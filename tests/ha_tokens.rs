//! Token rotation across replicas of one PostgreSQL state (Step 10 item 3).
//! Only the replica that creates a token knows its secret, and each
//! replica's sinks reach its own consumers (its `[tokens] delivery_group`).
//! Replica A rotates and delivers; A stops; B runs the tokens job: it says
//! its sinks never received the current token and rotates at once, and A's
//! token stays enabled past its overlap until A's sinks receive a newer one.
//! Throughout, the Step 4 invariants hold: every group's sinks log in, and
//! no token a group's sinks may hold is disabled before that group received
//! its replacement. The replicas are the real binary (`apply tokens`, the
//! tokens job's one execution path) against the simulator over HTTP.
//! Needs `KCR_TEST_PG_URL` (tests/common/pg.rs).

mod common;

use common::{demo_bin, demo_head_pg, output, pg, sim, text};
use kcr_housekeeper::kcr::TokenInfo;
use kcr_housekeeper::sim::{SimOptions, Simulator};
use kcr_housekeeper::tokens::planner::parse_desc;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

const URL_ENV: &str = "KCR_HOUSEKEEPER_DATABASE_URL";

/// One replica: its own directory (sinks, config) and delivery group, the shared state.
struct Replica {
    group: &'static str,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Replica {
    fn new(sim: &Simulator, group: &'static str) -> Replica {
        Replica::with(sim, group, "[log]\nlevel = \"info\"\n[tokens]\n")
    }

    /// A daemon replica's config: its admin server, leader id, JSON logs and
    /// the tokens job every 2 s.
    fn daemon(sim: &Simulator, group: &'static str) -> Replica {
        Replica::with(
            sim,
            group,
            "[server]\nlisten = \"127.0.0.1:0\"\n[scheduler]\njitter = \"0s\"\n[log]\nformat = \"json\"\nlevel = \"info\"\n\
             [tokens]\nschedule = \"*/2 * * * * *\"\n",
        )
    }

    /// `middle` ends with the `[tokens]` header.
    fn with(sim: &Simulator, group: &'static str, middle: &str) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let text = format!(
            "{head}[leader]\nrenew = \"500ms\"\nlease = \"4s\"\nid = \"{group}\"\n{middle}list_lag = \"500ms\"\ndelivery_group = \"{group}\"\n\
             [[tokens.managed]]\nname = \"ci-pull\"\ninstance = \"demo\"\nlifetime = \"30d\"\nrotate_before = \"10d\"\n\
             overlap = \"500ms\"\ndelete_after = \"500ms\"\nsinks = [\n  {{ kind = \"docker-config\", path = \"{d}/config.json\" }},\n  \
             {{ kind = \"file\", path = \"{d}/ci-pull.env\", format = \"env\" }},\n]\n",
            // A short KCR timeout allows a short lease: a replica that died
            // holding it (a one-shot apply takes it) blocks the other only briefly.
            head =
                demo_head_pg(sim, dir.path()).replacen("[kcr]\n", "[kcr]\ntimeout = \"1s\"\n", 1),
        );
        let config = dir.path().join("config.toml");
        std::fs::write(&config, text).unwrap();
        Replica { group, dir, config }
    }

    fn run(&self, sim: &Simulator, db: &pg::Db, args: &[&str], failpoint: Option<&str>) -> Output {
        self.run_traced(sim, db, args, failpoint, None)
    }

    /// With `trace`, every failpoint passed is appended to that file.
    fn run_traced(
        &self,
        sim: &Simulator,
        db: &pg::Db,
        args: &[&str],
        failpoint: Option<&str>,
        trace: Option<&std::path::Path>,
    ) -> Output {
        let mut cmd = demo_bin(sim, args);
        cmd.arg("--config").arg(&self.config).env(URL_ENV, &db.url);
        if let Some(fp) = failpoint {
            cmd.env("KCR_HOUSEKEEPER_FAILPOINT", fp);
        }
        if let Some(t) = trace {
            cmd.env("KCR_HOUSEKEEPER_FAILPOINT_TRACE", t);
        }
        output(cmd)
    }

    /// Every (username, secret) its sinks hold: the env file and the docker
    /// config (after a crash mid-delivery they may differ).
    fn credentials(&self, registry: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some((u, s, _)) = self.sink() {
            out.push((u, s));
        }
        if let Ok(text) = std::fs::read_to_string(self.dir.path().join("config.json")) {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            if let Some(auth) = v["auths"][registry]["auth"].as_str() {
                use base64::Engine as _;
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(auth)
                    .unwrap();
                let (u, s) = String::from_utf8(raw)
                    .unwrap()
                    .split_once(':')
                    .map(|(u, s)| (u.to_string(), s.to_string()))
                    .unwrap();
                out.push((u, s));
            }
        }
        out
    }

    fn apply(&self, sim: &Simulator, db: &pg::Db) -> Output {
        self.run(sim, db, &["apply", "tokens", "--yes"], None)
    }

    /// [`Replica::apply`] once the lease is free: a replica killed while it
    /// held the lease blocks the others (exit 3, naming it) until the lease
    /// runs out.
    async fn apply_when_free(&self, sim: &Simulator, db: &pg::Db) -> Output {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let out = self.apply(sim, db);
            if out.status.code() != Some(3) || std::time::Instant::now() > deadline {
                return out;
            }
            assert!(stderr(&out).contains("cli-"), "{}", text(&out));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// (username, secret, token id) its env sink holds, if any.
    fn sink(&self) -> Option<(String, String, String)> {
        let text = std::fs::read_to_string(self.dir.path().join("ci-pull.env")).ok()?;
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(str::to_string)
        };
        Some((
            get("KCR_USERNAME")?,
            get("KCR_TOKEN")?,
            get("KCR_TOKEN_ID")?,
        ))
    }

    fn sink_id(&self) -> String {
        self.sink().expect("the sink holds a token").2
    }
}

/// This installation's tokens of `ci-pull` (not the demo's seed, an
/// earlier version's `Desc`).
async fn managed_tokens(sim: &Simulator) -> Vec<TokenInfo> {
    common::tokens_named(sim, "ci-pull")
        .await
        .into_iter()
        .filter(|t| {
            t.desc
                .as_deref()
                .and_then(parse_desc)
                .is_some_and(|d| d.install_id.is_some())
        })
        .collect()
}

/// A fresh database and simulator (its request log kept) and two CLI
/// replicas, `host-a` and `host-b`; `None` without PostgreSQL.
async fn two_replicas() -> Option<(pg::Db, Simulator, Replica, Replica)> {
    let db = pg::Db::create()?;
    let sim = sim(SimOptions {
        log_in_memory: true,
        ..Default::default()
    })
    .await;
    let a = Replica::new(&sim, "host-a");
    let b = Replica::new(&sim, "host-b");
    Some((db, sim, a, b))
}

fn enabled(all: &[TokenInfo], id: &str) -> bool {
    all.iter().any(|t| t.token_id == id && t.enable)
}

/// The Step 4 invariants across replicas: every replica whose sinks were
/// written holds a credential the registry accepts (so its token is enabled).
async fn check(sim: &Simulator, replicas: &[&Replica], label: &str) {
    let tokens = managed_tokens(sim).await;
    for r in replicas {
        let Some((user, secret, id)) = r.sink() else {
            continue;
        };
        assert!(
            sim.world(|w| w.login(&user, &secret, sim.now())),
            "{label}: the sinks of {} hold token {id}, which no longer logs in: {tokens:?}",
            r.group
        );
        assert!(enabled(&tokens, &id), "{label}: {} holds {id}", r.group);
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Rows of `(rotation's token id, group, delivered)` in the shared state.
fn deliveries(db: &pg::Db) -> Vec<(String, String, bool)> {
    pg::admin(
        &db.url,
        "SELECT token_id, delivery_group, (delivered_at IS NOT NULL)::text FROM token_delivery ORDER BY began_at",
    )
    .into_iter()
    .filter_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => Some((
            r.get(0)?.to_string(),
            r.get(1)?.to_string(),
            r.get(2)? == "true",
        )),
        _ => None,
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_that_never_received_the_current_token_says_so_rotates_and_keeps_the_old_one_for_its_holder()
 {
    let Some((db, sim, a, b)) = two_replicas().await else {
        return;
    };

    // A rotates and delivers to its own sinks.
    let out = a.apply(&sim, &db);
    assert!(out.status.success(), "{}", text(&out));
    let t1 = a.sink_id();
    assert_eq!(deliveries(&db), [(t1.clone(), "host-a".into(), true)]);
    check(&sim, &[&a, &b], "A rotated").await;

    // A stops. B's plan says why it rotates at once.
    let out = b.run(&sim, &db, &["plan", "tokens"], None);
    assert!(out.status.success(), "{}", text(&out));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains(&format!(
            "delivery group \"host-b\" never received current token {t1} (delivered by \"host-a\")"
        )),
        "{plan}"
    );
    let out = b.apply(&sim, &db);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("this replica's sinks never received the current token"),
        "B says so: {}",
        stderr(&out)
    );
    let t2 = b.sink_id();
    assert_ne!(t1, t2, "B delivered a token of its own");
    assert_eq!(a.sink_id(), t1, "A's sinks are A's");
    check(&sim, &[&a, &b], "B rotated").await;

    // Past the overlap: t1 is not retired, A's sinks still hold it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let out = b.apply(&sim, &db);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains(&format!("token {t1} stays enabled past its overlap")),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("never received"),
        "B has the current token"
    );
    check(&sim, &[&a, &b], "B past the overlap").await;
    assert!(enabled(&managed_tokens(&sim).await, &t1));

    // A leads again: it rotates to a token its sinks can hold; then t1 goes
    // (A has a newer one) and t2 stays (B has nothing newer).
    let out = a.apply(&sim, &db);
    assert!(out.status.success(), "{}", text(&out));
    let t3 = a.sink_id();
    assert!(t3 != t1 && t3 != t2);
    check(&sim, &[&a, &b], "A rotated again").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..2 {
        let out = a.apply(&sim, &db);
        assert!(out.status.success(), "{}", text(&out));
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let tokens = managed_tokens(&sim).await;
    assert!(
        !enabled(&tokens, &t1),
        "t1 retired once A had t3: {tokens:?}"
    );
    assert!(enabled(&tokens, &t2), "t2 kept for B: {tokens:?}");
    check(&sim, &[&a, &b], "A past the overlap").await;
    // Every disable was of a token no group's sinks still held.
    for e in sim.requests() {
        if e.action.as_deref() == Some("ModifyInstanceTokenStatus") && e.code == "OK" {
            let id = &e.params["TokenId"];
            assert!(
                id != &t2 && id != &t3,
                "disabled {id} while a sink holds it"
            );
        }
    }
    // No secret in the shared state.
    let (_, secret, _) = a.sink().unwrap();
    for table in ["token_delivery", "rotation_journal", "audit", "runs"] {
        let dump = pg::admin(
            &db.url,
            &format!("SELECT string_agg(t::text, ' ') FROM {table} t"),
        );
        assert!(!format!("{dump:?}").contains(&secret), "{table}");
    }
}

/// The rotation path's failpoints a replica passes, in order, over `runs`
/// clean runs 600 ms apart (rotate, then retire the seed token).
fn traced_points(path: &std::path::Path) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for l in std::fs::read_to_string(path).unwrap_or_default().lines() {
        if !seen.iter().any(|s| s == l) {
            seen.push(l.to_string());
        }
    }
    seen
}

/// One crash scenario: replica A runs the tokens job (up to four runs 600 ms
/// apart) with `point` armed to abort the process, then replica B takes over
/// for four runs. Returns whether the point fired on A.
async fn crash_on_a_recover_on_b(point: &str) -> bool {
    let Some((db, sim, a, b)) = two_replicas().await else {
        return true;
    };
    let spec = format!("{point}=abort");
    let mut fired = false;
    for _ in 0..4 {
        let out = a.run(&sim, &db, &["apply", "tokens", "--yes"], Some(&spec));
        if stderr(&out).contains(&format!("failpoint {point}:")) {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(out.status.signal(), Some(6), "{point}: {}", text(&out));
            fired = true;
            break;
        }
        assert!(out.status.success(), "{point}: {}", text(&out));
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    // B leads from here on; A's process is gone mid-step.
    for run in 0..4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let out = b.apply_when_free(&sim, &db).await;
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "{point}: B's run {run} crashed: {}",
            text(&out)
        );
    }
    let out = b.apply(&sim, &db);
    assert!(out.status.success(), "{point}: B converges: {}", text(&out));
    let label = format!("A killed at {point}, B recovered");
    // Step 4: every credential any sink of either replica holds logs in.
    let registry = sim.endpoint().trim_start_matches("http://").to_string();
    for r in [&a, &b] {
        for (user, secret) in r.credentials(&registry) {
            assert!(
                sim.world(|w| w.login(&user, &secret, sim.now())),
                "{label}: a credential in {}'s sinks no longer logs in: {:?}",
                r.group,
                managed_tokens(&sim).await
            );
        }
    }
    assert!(
        b.sink().is_some(),
        "{label}: B delivered a token of its own"
    );
    // No undelivered token is left enabled; every applied mutation is audited.
    let state =
        kcr_housekeeper::state::Store::connect(&secrecy::SecretString::from(db.url.clone()))
            .unwrap();
    let journal = state.journal_for("ci-pull").unwrap();
    let in_sinks: Vec<String> = [&a, &b]
        .iter()
        .filter_map(|r| r.sink().map(|s| s.2))
        .collect();
    for t in managed_tokens(&sim).await.iter().filter(|t| t.enable) {
        let delivered = journal.iter().any(|r| {
            r.token_id.as_deref() == Some(t.token_id.as_str())
                && ["delivering", "verified", "current", "superseded"].contains(&r.step.as_str())
        });
        assert!(
            in_sinks.contains(&t.token_id) || delivered,
            "{label}: enabled token {} was never delivered: {journal:?}",
            t.token_id
        );
    }
    let audit = state.audit_since(None).unwrap();
    for e in sim.requests().into_iter().filter(|e| e.code == "OK") {
        let audited = match e.action.as_deref() {
            Some("CreateInstanceToken") => {
                let rid = parse_desc(&e.params["Desc"])
                    .unwrap()
                    .rotation_id
                    .to_owned();
                audit.iter().any(|r| {
                    r.action == "create_token" && r.detail.contains(&format!("rotation {rid}:"))
                })
            }
            Some("ModifyInstanceTokenStatus") => audit
                .iter()
                .any(|r| r.action == "disable_token" && r.target == e.params["TokenId"]),
            Some("DeleteInstanceToken") => audit
                .iter()
                .any(|r| r.action == "delete_token" && r.target == e.params["TokenId"]),
            _ => continue,
        };
        assert!(audited, "{label}: {e:?} applied but not audited");
    }
    fired
}

/// Step 10: a token rotation killed (abort, like kill -9) at every step
/// boundary on replica A — every failpoint a clean rotation and retirement
/// pass, the journal steps among them — is recovered by replica B sharing
/// the PostgreSQL state, with the Step 4 invariants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_killed_at_every_step_on_one_replica_is_recovered_by_another() {
    use futures::StreamExt;
    let Some(db) = pg::Db::create() else { return };
    let started = std::time::Instant::now();
    // A clean run of A enumerates the points.
    let sim0 = sim(SimOptions::default()).await;
    let a = Replica::new(&sim0, "host-a");
    let trace = a.dir.path().join("trace");
    for _ in 0..4 {
        let out = a.run_traced(
            &sim0,
            &db,
            &["apply", "tokens", "--yes"],
            None,
            Some(&trace),
        );
        assert!(out.status.success(), "{}", text(&out));
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let points = traced_points(&trace);
    for must in [
        "tokens.state.journal_creating",
        "tokens.api.create",
        "tokens.state.journal_created",
        "tokens.state.journal_delivering",
        "tokens.rotate.deliver",
        "tokens.state.journal_verified",
        "tokens.state.mark_current",
        "tokens.api.disable",
        "tokens.api.delete",
    ] {
        assert!(
            points.iter().any(|p| p == must),
            "{must} not passed: {points:?}"
        );
    }
    let results: Vec<(String, bool)> = futures::stream::iter(points.clone())
        .map(|p| async move {
            let fired = crash_on_a_recover_on_b(&p).await;
            (p, fired)
        })
        .buffer_unordered(3)
        .collect()
        .await;
    let not_fired: Vec<&String> = results.iter().filter(|r| !r.1).map(|r| &r.0).collect();
    assert!(
        not_fired.is_empty(),
        "points never reached on A: {not_fired:?}"
    );
    eprintln!(
        "{} step boundaries killed on A and recovered by B in {:?}",
        results.len(),
        started.elapsed()
    );
}

/// The value of `kcr_housekeeper_token_delivered{token="ci-pull"}` a daemon serves.
fn delivered_gauge(d: &common::replica::Replica) -> Option<f64> {
    let (_, text) = d.get("/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix("kcr_housekeeper_token_delivered{token=\"ci-pull\"} "))
        .and_then(|v| v.trim().parse().ok())
}

/// Poll `f` every 100 ms until it is true (within `within`).
fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + within;
    while !f() {
        assert!(
            std::time::Instant::now() < end,
            "not within {within:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Daemons: A leads and delivers; B, a follower, says on /metrics and /jobs
/// that its sinks never received the current token; A is killed (-9); B
/// leads within lease + renew, says so in its log, rotates to a token of its
/// own, and A's token stays enabled past its overlap (A's sinks hold it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_says_it_lacks_the_current_token_and_rotates_once_it_leads() {
    use common::replica::Replica as Daemon;
    let Some(db) = pg::Db::create() else { return };
    let sim = std::sync::Arc::new(sim(SimOptions::default()).await);
    let a = Replica::daemon(&sim, "host-a");
    let b = Replica::daemon(&sim, "host-b");
    let envs = [
        ("AK", sim.credentials().access_key_id.to_string()),
        ("SK", common::sim_secret(&sim)),
        (URL_ENV, db.url.clone()),
    ];
    // Off the runtime: the daemons are polled with blocking calls while the
    // simulator answers on the runtime.
    let (a, b, t1, t2, daemons) = tokio::task::spawn_blocking(move || {
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let start =
            |r: &Replica| Daemon::start(&std::fs::read_to_string(&r.config).unwrap(), &envs);
        let mut da = start(&a);
        eventually(Duration::from_secs(20), "A delivers", || a.sink().is_some());
        let t1 = a.sink_id();
        eventually(Duration::from_secs(10), "A's gauge", || {
            delivered_gauge(&da) == Some(1.0)
        });
        let db_ = start(&b);
        let jobs = db_.jobs().unwrap();
        assert_eq!(jobs["leader"], false, "{jobs}");
        assert_eq!(jobs["token_delivery"]["delivery_group"], "host-b", "{jobs}");
        assert_eq!(
            jobs["token_delivery"]["tokens"][0]["token_id"],
            t1.as_str(),
            "{jobs}"
        );
        assert_eq!(
            jobs["token_delivery"]["tokens"][0]["delivered"], false,
            "{jobs}"
        );
        assert_eq!(delivered_gauge(&db_), Some(0.0));
        assert!(b.sink().is_none(), "a follower writes no sink");

        da.kill();
        let killed = std::time::Instant::now();
        // lease + renew, and a second for polling on a loaded machine.
        let bound = Duration::from_millis(4500) + Duration::from_secs(1);
        eventually(bound, "B leads within lease + renew", || {
            db_.leads() == Some(true)
        });
        eprintln!("failover in {:?}", killed.elapsed());
        eventually(
            Duration::from_secs(20),
            "B delivers a token of its own",
            || b.sink().is_some(),
        );
        let t2 = b.sink_id();
        assert_ne!(t1, t2);
        assert!(
            db_.logs()
                .contains("this replica's sinks never received the current token"),
            "{}",
            db_.logs()
        );
        eventually(Duration::from_secs(10), "B's gauge", || {
            delivered_gauge(&db_) == Some(1.0)
        });
        // Past the overlap, a few cycles of B.
        std::thread::sleep(Duration::from_secs(5));
        (a, b, t1, t2, db_)
    })
    .await
    .unwrap();
    let tokens = managed_tokens(&sim).await;
    assert!(enabled(&tokens, &t1), "t1 kept for A's sinks: {tokens:?}");
    assert!(enabled(&tokens, &t2), "{tokens:?}");
    check(&sim, &[&a, &b], "after the failover").await;
    drop(daemons);
}
