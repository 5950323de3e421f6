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

use common::{DEMO_INSTANCE, client_for, demo_bin, demo_head_pg, output, pg, sim, text};
use kcr_housekeeper::kcr::{DescribeInstanceToken, TokenInfo};
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
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let text = format!(
            "{head}[log]\nlevel = \"info\"\n[tokens]\nlist_lag = \"500ms\"\ndelivery_group = \"{group}\"\n\
             [[tokens.managed]]\nname = \"ci-pull\"\ninstance = \"demo\"\nlifetime = \"30d\"\nrotate_before = \"10d\"\n\
             overlap = \"500ms\"\ndelete_after = \"500ms\"\nsinks = [\n  {{ kind = \"docker-config\", path = \"{d}/config.json\" }},\n  \
             {{ kind = \"file\", path = \"{d}/ci-pull.env\", format = \"env\" }},\n]\n",
            head = demo_head_pg(sim, dir.path()),
        );
        let config = dir.path().join("config.toml");
        std::fs::write(&config, text).unwrap();
        Replica { group, dir, config }
    }

    fn run(&self, sim: &Simulator, db: &pg::Db, args: &[&str], failpoint: Option<&str>) -> Output {
        let mut cmd = demo_bin(sim, args);
        cmd.arg("--config").arg(&self.config).env(URL_ENV, &db.url);
        if let Some(fp) = failpoint {
            cmd.env("KCR_HOUSEKEEPER_FAILPOINT", fp);
        }
        output(cmd)
    }

    fn apply(&self, sim: &Simulator, db: &pg::Db) -> Output {
        self.run(sim, db, &["apply", "tokens", "--yes"], None)
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

async fn managed_tokens(sim: &Simulator) -> Vec<TokenInfo> {
    client_for(sim)
        .list_all(DescribeInstanceToken {
            instance_id: DEMO_INSTANCE.into(),
            marker: None,
            max_results: None,
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|t| {
            t.desc
                .as_deref()
                .and_then(parse_desc)
                .is_some_and(|d| d.name == "ci-pull" && d.install_id.is_some())
        })
        .collect()
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
    let Some(db) = pg::Db::create() else { return };
    let sim = sim(SimOptions {
        log_in_memory: true,
        ..Default::default()
    })
    .await;
    let a = Replica::new(&sim, "host-a");
    let b = Replica::new(&sim, "host-b");

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
