//! The store test suite, run against both backends: every test is a
//! function of a [`Place`] (where a store is opened, and reopened), and
//! `suite!` makes a `sqlite::` and a `postgres::` test of each.
//!
//! The PostgreSQL tests need `KCR_TEST_PG_URL` (a server where the user may
//! create databases; `.ci/run` starts one): each test gets a database of its
//! own, dropped at the end. The `pgbouncer::` tests reach the same server
//! through PgBouncer in transaction pooling mode (`KCR_TEST_PGBOUNCER_URL`).
//! Without the variables they are skipped, except when `CI` is set: then
//! they fail.

use super::*;
use crate::tokens::journal::{DeliveryRecord, RotationRecord, Step};
use secrecy::SecretString;
use std::time::Duration;

pub(super) fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// Where a test's store lives; [`Place::open`] may be called again to reopen it.
pub(super) enum Place {
    Sqlite(tempfile::TempDir),
    Postgres {
        admin: String,
        db: String,
        url: SecretString,
    },
}

pub(super) const PG_ENV: &str = "KCR_TEST_PG_URL";
/// The same server behind PgBouncer in transaction pooling mode.
pub(super) const PGBOUNCER_ENV: &str = "KCR_TEST_PGBOUNCER_URL";

/// Run `sql` on the server of `url` as its own connection (test set-up).
pub(super) fn pg_admin(url: &str, sql: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect to KCR_TEST_PG_URL");
        let task = tokio::spawn(conn);
        client.batch_execute(sql).await.expect(sql);
        drop(client);
        let _ = task.await;
    });
}

/// `url` with its database replaced by `db`.
pub(super) fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    format!("{}/{db}{query}", &base[..host_end])
}

/// The URL in `var`, or `None` (skip) when it is not configured and this
/// is not CI.
pub(super) fn env_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(u) if !u.is_empty() => Some(u),
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "{var} is not set but CI is: .ci/run starts PostgreSQL and PgBouncer and sets it"
            )
        }
        _ => {
            eprintln!("skipped: {var} is not set (no PostgreSQL to test against)");
            None
        }
    }
}

impl Place {
    pub(super) fn sqlite() -> Place {
        Place::Sqlite(tempfile::tempdir().unwrap())
    }

    /// A fresh, empty database on the test server.
    pub(super) fn postgres() -> Option<Place> {
        Place::postgres_via(PG_ENV)
    }

    /// A fresh database, reached through PgBouncer (transaction pooling).
    pub(super) fn pgbouncer() -> Option<Place> {
        Place::postgres_via(PGBOUNCER_ENV)
    }

    /// A fresh database, created directly and reached through the URL in `var`.
    fn postgres_via(var: &str) -> Option<Place> {
        let admin = env_url(PG_ENV)?;
        let through = env_url(var)?;
        let db = format!(
            "kcr_test_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        pg_admin(&admin, &format!("CREATE DATABASE {db}"));
        let url = SecretString::from(with_database(&through, &db));
        Some(Place::Postgres { admin, db, url })
    }

    pub(super) fn open(&self) -> Store {
        match self {
            Place::Sqlite(dir) => Store::open(&dir.path().join("state.db")).unwrap(),
            Place::Postgres { url, .. } => Store::connect(url).unwrap(),
        }
    }

    fn try_open(&self) -> Result<Store, StateError> {
        match self {
            Place::Sqlite(dir) => Store::open(&dir.path().join("state.db")),
            Place::Postgres { url, .. } => Store::connect(url),
        }
    }

    fn schema_version(&self, s: &Store) -> i64 {
        let sql = match self {
            Place::Sqlite(_) => "PRAGMA user_version",
            Place::Postgres { .. } => "SELECT max(version) FROM schema_version",
        };
        s.query(sql, vec![], |r| r.int(0, "version")).unwrap()[0]
    }

    fn set_schema_version(&self, s: &Store, v: i64) {
        match self {
            Place::Sqlite(_) => s.exec(&format!("PRAGMA user_version = {v}"), vec![]),
            Place::Postgres { .. } => s.exec("UPDATE schema_version SET version = $1", args![v]),
        }
        .unwrap();
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Place::Postgres { admin, db, .. } = self {
            pg_admin(admin, &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
        }
    }
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $name() { super::$name(&super::Place::sqlite()) } )*
        }
        mod postgres {
            $( #[test] fn $name() {
                if let Some(p) = super::Place::postgres() { super::$name(&p) }
            } )*
        }
        mod pgbouncer {
            $( #[test] fn $name() {
                if let Some(p) = super::Place::pgbouncer() { super::$name(&p) }
            } )*
        }
    };
}

suite!(
    schema_is_current_and_reopening_migrates_nothing,
    a_newer_schema_is_refused,
    runs_round_trip,
    abandoned_runs_are_closed_as_failures,
    an_unreadable_time_or_result_is_an_error_never_1970,
    grace_marks_need_continuity,
    grace_marks_forget_what_is_not_planned_even_at_the_same_instant,
    an_unreadable_mark_is_an_error_not_a_fresh_start,
    the_latest_ten_reports_are_kept,
    audit_records_filter_by_time_job_and_limit,
    write_ahead_audit_records_survive_a_crash_as_interrupted,
    a_guard_dropped_mid_call_records_interrupted_and_a_finished_one_its_outcome,
    an_unreadable_audit_time_is_an_error,
    only_statuses_can_be_stored_as_outcomes,
    an_unknown_step_is_an_error_not_a_skipped_record,
    an_unreadable_backoff_time_is_an_error,
    install_id_backoff_and_absence_survive_reopening,
    meta_values_round_trip,
    deliveries_land_with_their_journal_step_and_read_back_per_group,
    copy_from_sqlite_moves_every_table_and_refuses_a_non_empty_target,
    one_holder_at_a_time_and_the_epoch_grows_on_every_change,
    a_fenced_write_behind_a_lost_lease_is_refused_and_not_applied,
    a_new_term_always_has_a_new_epoch_and_a_renewal_renews_only_its_own,
    a_store_fenced_until_a_local_deadline_refuses_without_asking,
    a_new_leader_closes_only_the_audit_records_of_earlier_epochs,
);

fn schema_is_current_and_reopening_migrates_nothing(p: &Place) {
    let s = p.open();
    assert_eq!(p.schema_version(&s), SCHEMA_VERSION);
    let id = s.start_run("quota", "schedule", now()).unwrap();
    drop(s);
    let s = p.open();
    assert_eq!(p.schema_version(&s), SCHEMA_VERSION);
    assert_eq!(s.run(id).unwrap().unwrap().job, "quota", "data kept");
}

fn a_newer_schema_is_refused(p: &Place) {
    let s = p.open();
    p.set_schema_version(&s, SCHEMA_VERSION + 1);
    drop(s);
    let e = p.try_open().unwrap_err();
    assert!(matches!(e, StateError::NewerSchema { .. }), "{e}");
    assert!(e.to_string().contains("newer than this build supports"));
}

fn runs_round_trip(p: &Place) {
    let s = p.open();
    let id = s.start_run("quota", "schedule", now()).unwrap();
    assert_eq!(s.runs(Some("quota"), 10).unwrap()[0].result, None);
    s.finish_run(id, now(), RunResult::Success, "2 instances", None)
        .unwrap();
    let skipped = s
        .record_skipped("quota", "api", now(), "already running")
        .unwrap();
    assert!(skipped > id);
    let last = s.last_run("quota").unwrap().unwrap();
    assert_eq!(
        (last.id, last.result, last.summary.as_str()),
        (id, Some(RunResult::Success), "2 instances")
    );
    assert_eq!(last.started_at, now());
    assert_eq!(s.last_success("quota").unwrap().unwrap().id, id);
    assert!(s.last_run("retention").unwrap().is_none());
    assert_eq!(s.runs(None, 10).unwrap().len(), 2);
    assert_eq!(s.runs(None, 1).unwrap()[0].id, skipped, "newest first");
    assert_eq!(
        s.run(skipped).unwrap().unwrap().result,
        Some(RunResult::Skipped)
    );
    assert!(s.run(skipped + 100).unwrap().is_none());
}

fn abandoned_runs_are_closed_as_failures(p: &Place) {
    let s = p.open();
    s.start_run("retention", "schedule", now()).unwrap();
    assert_eq!(s.close_abandoned_runs(now()).unwrap(), 1);
    let r = s.last_run("retention").unwrap().unwrap();
    assert_eq!(r.result, Some(RunResult::Failure));
    assert!(r.error.unwrap().contains("interrupted"));
    assert_eq!(s.close_abandoned_runs(now()).unwrap(), 0);
}

fn an_unreadable_time_or_result_is_an_error_never_1970(p: &Place) {
    let s = p.open();
    let id = s.start_run("quota", "schedule", now()).unwrap();
    s.exec(
        "UPDATE runs SET started_at = 'yesterday' WHERE id = $1",
        args![id],
    )
    .unwrap();
    let e = s.runs(None, 10).unwrap_err();
    assert!(matches!(e, StateError::Unreadable { .. }), "{e}");
    assert!(
        e.to_string().contains("\"yesterday\" in runs.started_at"),
        "{e}"
    );
    s.exec(
        "UPDATE runs SET started_at = '2026-11-22T10:00:00.000Z', result = 'maybe' WHERE id = $1",
        args![id],
    )
    .unwrap();
    let e = s.runs(None, 10).unwrap_err();
    assert!(e.to_string().contains("\"maybe\" in runs.result"), "{e}");
}

fn keys(v: &[&str]) -> Vec<String> {
    v.iter().map(|k| k.to_string()).collect()
}

fn grace_marks_need_continuity(p: &Place) {
    let s = p.open();
    let m = s.update_grace_marks(&keys(&["a", "b"]), now()).unwrap();
    assert_eq!(m["a"], now());
    let later = now() + chrono::Duration::hours(1);
    let m = s.update_grace_marks(&keys(&["a"]), later).unwrap();
    assert_eq!(m["a"], now(), "first planned time kept");
    assert!(!m.contains_key("b"), "b was not planned: forgotten");
    let m = s
        .update_grace_marks(&keys(&["a", "b"]), later + chrono::Duration::hours(1))
        .unwrap();
    assert_eq!(m["b"], later + chrono::Duration::hours(1), "b starts over");
    assert_eq!(m.len(), 2);
}

fn grace_marks_forget_what_is_not_planned_even_at_the_same_instant(p: &Place) {
    let s = p.open();
    s.update_grace_marks(&keys(&["a", "b", "b"]), now())
        .unwrap();
    let m = s.update_grace_marks(&keys(&["b"]), now()).unwrap();
    assert_eq!(m.keys().collect::<Vec<_>>(), ["b"]);
    assert!(s.update_grace_marks(&[], now()).unwrap().is_empty());
}

fn an_unreadable_mark_is_an_error_not_a_fresh_start(p: &Place) {
    let s = p.open();
    s.update_grace_marks(&["a".to_string()], now()).unwrap();
    s.exec("UPDATE grace_marks SET first_planned_at = 'soon'", vec![])
        .unwrap();
    let e = s.update_grace_marks(&["a".to_string()], now()).unwrap_err();
    assert!(matches!(e, StateError::Unreadable { .. }), "{e}");
}

fn the_latest_ten_reports_are_kept(p: &Place) {
    let s = p.open();
    let run = s.start_run("retention", "schedule", now()).unwrap();
    for i in 0..12 {
        s.put_report(
            "retention",
            Some(run),
            now(),
            "json",
            format!("{i}").as_bytes(),
        )
        .unwrap();
    }
    s.put_report("retention", None, now(), "html", &[0, 159, 255])
        .unwrap();
    assert_eq!(
        s.latest_report("retention", "json").unwrap().unwrap().body,
        b"11"
    );
    assert_eq!(
        s.latest_report("retention", "html").unwrap().unwrap().body,
        [0, 159, 255],
        "bytes, not text"
    );
    assert!(s.latest_report("retention", "md").unwrap().is_none());
    assert_eq!(s.count_rows("reports").unwrap(), 11);
}

fn mutation(job: &'static str, action: &'static str) -> Mutation<'static> {
    Mutation {
        job,
        run_id: None,
        instance: "prod",
        action,
        target: "apps/web:pr-1",
        detail: "rule ci-builds",
    }
}

fn audit_records_filter_by_time_job_and_limit(p: &Place) {
    let s = p.open();
    let rec = mutation("retention", "delete_tag");
    s.audit_unsent(&rec, AuditStatus::Applied, None, now())
        .unwrap();
    s.audit_unsent(
        &rec,
        AuditStatus::Applied,
        None,
        now() + chrono::Duration::hours(2),
    )
    .unwrap();
    let run = s.start_run("tokens", "api", now()).unwrap();
    let tok = s
        .audit_unsent(
            &Mutation {
                run_id: Some(run),
                ..mutation("tokens", "delete_token")
            },
            AuditStatus::Failed,
            Some("AccessDenied"),
            now(),
        )
        .unwrap();
    assert_eq!(s.audit_since(None).unwrap().len(), 3);
    assert_eq!(
        s.audit_since(Some(now() + chrono::Duration::hours(1)))
            .unwrap()
            .len(),
        1
    );
    let last = s.audit_query(None, Some("tokens"), Some(1)).unwrap();
    assert_eq!(
        (
            last[0].id,
            last[0].run_id,
            last[0].outcome,
            last[0].error.as_deref()
        ),
        (tok, Some(run), AuditStatus::Failed, Some("AccessDenied"))
    );
    let newest_two = s.audit_query(None, None, Some(2)).unwrap();
    assert_eq!(newest_two.len(), 2);
    assert!(newest_two[0].id < newest_two[1].id, "oldest first");
}

fn write_ahead_audit_records_survive_a_crash_as_interrupted(p: &Place) {
    let s = p.open();
    let rec = Mutation {
        target: "rotation r1",
        detail: "ci-pull",
        ..mutation("tokens", "create_token")
    };
    let done = s.audited(&rec, now()).unwrap();
    let crashed = s.audited(&rec, now()).unwrap();
    let crashed_id = crashed.id();
    // A process that dies runs no destructor.
    std::mem::forget(crashed);
    done.finish_as(AuditStatus::Applied, None, "tok-1").unwrap();
    let all = s.audit_since(None).unwrap();
    assert_eq!(
        (all[0].outcome.as_str(), all[0].target.as_str()),
        ("applied", "tok-1")
    );
    assert_eq!(
        (all[1].id, all[1].outcome.as_str()),
        (crashed_id, "started")
    );
    assert_eq!(s.close_interrupted_audit().unwrap(), 1);
    let all = s.audit_since(None).unwrap();
    assert_eq!(all[0].outcome, "applied");
    assert_eq!(all[1].outcome, "interrupted");
    assert_eq!(all[1].target, "rotation r1");
    // Per run: only that run's records.
    let run = s.start_run("tokens", "api", now()).unwrap();
    let other = s.start_run("tokens", "api", now()).unwrap();
    std::mem::forget(
        s.audited(
            &Mutation {
                run_id: Some(run),
                ..rec.clone()
            },
            now(),
        )
        .unwrap(),
    );
    std::mem::forget(
        s.audited(
            &Mutation {
                run_id: Some(other),
                ..rec.clone()
            },
            now(),
        )
        .unwrap(),
    );
    assert_eq!(s.close_interrupted_audit_of_run(run).unwrap(), 1);
    let all = s.audit_since(None).unwrap();
    assert_eq!(all[3].outcome, AuditStatus::Started, "the other run's");
}

fn a_guard_dropped_mid_call_records_interrupted_and_a_finished_one_its_outcome(p: &Place) {
    let s = p.open();
    let rec = mutation("retention", "delete_image");
    drop(s.audited(&rec, now()).unwrap());
    s.audited(&rec, now())
        .unwrap()
        .finish(AuditStatus::Failed, Some("AccessDenied"))
        .unwrap();
    let all = s.audit_since(None).unwrap();
    assert_eq!(all[0].outcome, AuditStatus::Interrupted);
    assert_eq!(all[0].error.as_deref(), Some(AUDIT_INTERRUPTED_WHY));
    assert_eq!(
        (all[1].outcome, all[1].error.as_deref()),
        (AuditStatus::Failed, Some("AccessDenied"))
    );
}

fn an_unreadable_audit_time_is_an_error(p: &Place) {
    let s = p.open();
    s.audit_unsent(
        &mutation("retention", "delete_tag"),
        AuditStatus::Applied,
        None,
        now(),
    )
    .unwrap();
    s.exec("UPDATE audit SET at = 'not a time'", vec![])
        .unwrap();
    let e = s.audit_since(None).unwrap_err();
    assert!(e.to_string().contains("\"not a time\" in audit.at"), "{e}");
}

fn only_statuses_can_be_stored_as_outcomes(p: &Place) {
    let s = p.open();
    let id = s
        .audit_unsent(
            &mutation("retention", "delete_tag"),
            AuditStatus::Applied,
            None,
            now(),
        )
        .unwrap();
    let bad = s.exec(
        "UPDATE audit SET outcome = 'failed: x' WHERE id = $1",
        args![id],
    );
    assert!(bad.is_err());
    assert_eq!(
        s.audit_since(None).unwrap()[0].outcome,
        AuditStatus::Applied
    );
}

fn record() -> RotationRecord {
    RotationRecord {
        rotation_id: "r1".into(),
        token_name: "t".into(),
        instance: "prod".into(),
        token_id: Some("x".into()),
        previous_token_id: None,
        step: Step::Current,
        expires_at: None,
        created_at: now(),
        updated_at: now(),
        error: None,
        absent_since: Some(now()),
    }
}

fn an_unknown_step_is_an_error_not_a_skipped_record(p: &Place) {
    let s = p.open();
    s.journal_put(&[record()]).unwrap();
    assert_eq!(s.journal_for("t").unwrap()[0].step, Step::Current);
    s.exec("UPDATE rotation_journal SET step = 'retired'", vec![])
        .unwrap();
    let e = s.journal_for("t").unwrap_err();
    assert!(matches!(e, StateError::Unreadable { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("\"retired\" in rotation_journal.step"),
        "{e}"
    );
}

fn an_unreadable_backoff_time_is_an_error(p: &Place) {
    let s = p.open();
    s.token_backoff_fail("t", "prod", now(), "boom", "c1")
        .unwrap();
    s.exec("UPDATE token_backoff SET last_failure_at = ''", vec![])
        .unwrap();
    assert!(matches!(
        s.token_backoff("t", "prod"),
        Err(StateError::Unreadable { .. })
    ));
}

fn install_id_backoff_and_absence_survive_reopening(p: &Place) {
    let s = p.open();
    let id = s.install_id().unwrap();
    assert_eq!(id.len(), 12);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        s.token_backoff_fail("t", "prod", now(), "boom", "c1")
            .unwrap(),
        1
    );
    assert_eq!(
        s.token_backoff_fail("t", "prod", now(), "bang", "c1")
            .unwrap(),
        2
    );
    let superseding = RotationRecord {
        rotation_id: "r0".into(),
        step: Step::Superseded,
        created_at: now() - chrono::Duration::days(1),
        expires_at: Some(now() + chrono::Duration::days(6)),
        absent_since: None,
        ..record()
    };
    s.journal_put(&[record(), superseding.clone()]).unwrap();
    drop(s);
    let s = p.open();
    assert_eq!(s.install_id().unwrap(), id, "generated once per state");
    let b = s.token_backoff("t", "prod").unwrap().unwrap();
    assert_eq!((b.failures, b.error.as_str()), (2, "bang"));
    assert_eq!(s.token_backoff("t", "staging").unwrap(), None);
    let journal = s.journal_for("t").unwrap();
    assert_eq!(journal, vec![superseding, record()], "oldest first");
    assert_eq!(b.config, "c1");
    assert_eq!(
        s.token_backoff_fail("t", "prod", now(), "x", "c2").unwrap(),
        1,
        "another config starts over"
    );
    s.token_backoff_clear("t", "prod").unwrap();
    assert_eq!(s.token_backoff("t", "prod").unwrap(), None);
    // An update replaces the record.
    s.journal_put(&[RotationRecord {
        step: Step::Superseded,
        ..record()
    }])
    .unwrap();
    assert_eq!(s.journal_for("t").unwrap()[1].step, Step::Superseded);
}

fn delivery(group: &str, done: bool) -> DeliveryRecord {
    DeliveryRecord {
        rotation_id: "r1".into(),
        token_name: "t".into(),
        group: group.into(),
        token_id: "x".into(),
        began_at: now(),
        delivered_at: done.then(now),
    }
}

fn deliveries_land_with_their_journal_step_and_read_back_per_group(p: &Place) {
    let s = p.open();
    assert_eq!(s.deliveries_for("t").unwrap(), vec![]);
    let delivering = RotationRecord {
        step: Step::Delivering,
        ..record()
    };
    s.journal_put_delivery(&[delivering], Some(&delivery("host-a", false)))
        .unwrap();
    assert_eq!(s.journal_for("t").unwrap()[0].step, Step::Delivering);
    assert_eq!(
        s.deliveries_for("t").unwrap(),
        vec![delivery("host-a", false)]
    );
    // Completed in the transaction of the next step; another group apart.
    let verified = RotationRecord {
        step: Step::Verified,
        ..record()
    };
    s.journal_put_delivery(&[verified], Some(&delivery("host-a", true)))
        .unwrap();
    s.journal_put_delivery(&[], Some(&delivery("host-b", false)))
        .unwrap();
    assert_eq!(
        s.deliveries_for("t").unwrap(),
        vec![delivery("host-a", true), delivery("host-b", false)]
    );
    assert_eq!(s.journal_for("t").unwrap()[0].step, Step::Verified);
    assert_eq!(s.deliveries_for("other").unwrap(), vec![]);
    // An unreadable time is an error naming table and column.
    s.exec(
        "UPDATE token_delivery SET began_at = 'yesterday' WHERE delivery_group = 'host-b'",
        vec![],
    )
    .unwrap();
    let e = s.deliveries_for("t").unwrap_err();
    assert!(e.to_string().contains("token_delivery.began_at"), "{e}");
}

fn meta_values_round_trip(p: &Place) {
    let s = p.open();
    assert_eq!(s.meta_get("k").unwrap(), None);
    s.meta_put("k", "v1").unwrap();
    s.meta_put("k", "v2").unwrap();
    assert_eq!(s.meta_get("k").unwrap().as_deref(), Some("v2"));
}

/// A SQLite store with a row in every table.
fn filled_sqlite(dir: &Path) -> Store {
    let src = Store::open(&dir.join("source.db")).unwrap();
    let run = src.start_run("retention", "schedule", now()).unwrap();
    src.finish_run(run, now(), RunResult::Success, "ok", None)
        .unwrap();
    src.start_run("tokens", "api", now()).unwrap();
    src.audit_unsent(
        &Mutation {
            run_id: Some(run),
            ..mutation("retention", "delete_tag")
        },
        AuditStatus::Applied,
        None,
        now(),
    )
    .unwrap();
    src.audit_unsent(
        &mutation("tokens", "create_token"),
        AuditStatus::Failed,
        Some("x"),
        now(),
    )
    .unwrap();
    src.journal_put(&[record()]).unwrap();
    src.update_grace_marks(&keys(&["a", "b"]), now()).unwrap();
    src.put_report("retention", Some(run), now(), "html", &[1, 2, 255])
        .unwrap();
    src.put_report("retention", None, now(), "json", b"{}")
        .unwrap();
    src.install_id().unwrap();
    src.token_backoff_fail("t", "prod", now(), "boom", "c1")
        .unwrap();
    src.journal_put_delivery(&[], Some(&delivery("host-a", true)))
        .unwrap();
    src
}

fn copy_from_sqlite_moves_every_table_and_refuses_a_non_empty_target(p: &Place) {
    let dir = tempfile::tempdir().unwrap();
    let src = filled_sqlite(dir.path());
    let target = p.open();
    let counts = src.copy_to(&target).unwrap();
    assert_eq!(
        counts.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        COPIED_TABLES
    );
    for (table, n) in &counts {
        assert!(*n > 0, "{table} has rows in the source");
        assert_eq!(target.count_rows(table).unwrap(), *n, "{table}");
    }
    assert_eq!(target.runs(None, 10).unwrap(), src.runs(None, 10).unwrap());
    assert_eq!(
        target.audit_since(None).unwrap(),
        src.audit_since(None).unwrap()
    );
    assert_eq!(
        target.journal_for("t").unwrap(),
        src.journal_for("t").unwrap()
    );
    assert_eq!(target.install_id().unwrap(), src.install_id().unwrap());
    assert_eq!(
        target.latest_report("retention", "html").unwrap(),
        src.latest_report("retention", "html").unwrap()
    );
    assert_eq!(
        target.token_backoff("t", "prod").unwrap(),
        src.token_backoff("t", "prod").unwrap()
    );
    assert_eq!(
        target.deliveries_for("t").unwrap(),
        src.deliveries_for("t").unwrap()
    );
    // New rows continue after the copied ids.
    let next = target.start_run("quota", "api", now()).unwrap();
    assert!(next > src.runs(None, 10).unwrap()[0].id, "{next}");
    // Twice: the target is no longer empty.
    let e = src.copy_to(&target).unwrap_err();
    assert!(
        matches!(e, CopyError::NotEmpty { table: "runs", .. }),
        "{e}"
    );
    assert_eq!(target.count_rows("audit").unwrap(), 2, "nothing added");
}

fn one_holder_at_a_time_and_the_epoch_grows_on_every_change(p: &Place) {
    let a = p.open();
    let b = p.open();
    let short = Duration::from_millis(300);
    if let Place::Sqlite(_) = p {
        // One host, one replica: the lease is simply held.
        assert_eq!(
            a.lease_take("leader", "a", short, None).unwrap(),
            LeaseState::Held {
                epoch: 1,
                remaining: short
            }
        );
        return;
    }
    // `renewing`: the epoch of the term being renewed (`None` starts one).
    let held = |s: &Store, who: &str, ttl: Duration, renewing: Option<i64>| match s
        .lease_take("leader", who, ttl, renewing)
    {
        Ok(LeaseState::Held { epoch, remaining }) => {
            assert!(
                remaining <= ttl && remaining > Duration::ZERO,
                "{remaining:?}"
            );
            Some(epoch)
        }
        Ok(LeaseState::HeldBy { .. }) => None,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(held(&a, "a", short, None), Some(1));
    match b.lease_take("leader", "b", short, None).unwrap() {
        LeaseState::HeldBy { holder, epoch, .. } => assert_eq!((holder.as_str(), epoch), ("a", 1)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        held(&a, "a", short, Some(1)),
        Some(1),
        "renewed: same epoch"
    );
    std::thread::sleep(Duration::from_millis(450));
    assert_eq!(
        held(&b, "b", Duration::from_secs(30), None),
        Some(2),
        "expired: taken over"
    );
    assert_eq!(
        held(&a, "a", short, Some(1)),
        None,
        "a may not renew b's lease"
    );
    // A clean release hands over at once, with a new epoch.
    assert!(
        !a.lease_release("leader", "a", 1).unwrap(),
        "not a's any more"
    );
    assert!(b.lease_release("leader", "b", 2).unwrap());
    assert_eq!(held(&a, "a", short, None), Some(3));
    // Another lease is independent.
    assert_eq!(held(&b, "b", short, None), None, "a holds it");
    assert!(matches!(
        b.lease_take("other", "b", short, None).unwrap(),
        LeaseState::Held { epoch: 1, .. }
    ));
}

fn a_fenced_write_behind_a_lost_lease_is_refused_and_not_applied(p: &Place) {
    let a = p.open();
    let b = p.open();
    let LeaseState::Held { epoch, .. } = a
        .lease_take("leader", "a", Duration::from_millis(400), None)
        .unwrap()
    else {
        panic!("free lease")
    };
    let fence = |margin| Fence {
        name: "leader".into(),
        holder: "a".into(),
        epoch,
        margin,
    };
    let fa = a.fenced(fence(Duration::from_millis(50)));
    let run = fa.start_run("retention", "schedule", now()).unwrap();
    if let Place::Sqlite(_) = p {
        return;
    }
    // Too close to the end of the lease: refused, though still held.
    let e = a
        .fenced(fence(Duration::from_secs(60)))
        .finish_run(run, now(), RunResult::Success, "x", None)
        .unwrap_err();
    assert!(matches!(e, StateError::Fenced { .. }), "{e}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(matches!(
        b.lease_take("leader", "b", Duration::from_secs(30), None)
            .unwrap(),
        LeaseState::Held { epoch: 2, .. }
    ));
    // The deposed holder's writes are refused and leave nothing behind.
    let e = fa
        .finish_run(run, now(), RunResult::Success, "late", None)
        .unwrap_err();
    assert!(matches!(e, StateError::Fenced { epoch: 1, .. }), "{e}");
    assert!(e.to_string().contains("nothing was written"), "{e}");
    let e = fa
        .audit_unsent(
            &mutation("retention", "delete_tag"),
            AuditStatus::Applied,
            None,
            now(),
        )
        .unwrap_err();
    assert!(matches!(e, StateError::Fenced { .. }), "{e}");
    assert_eq!(b.run(run).unwrap().unwrap().result, None);
    assert!(b.audit_since(None).unwrap().is_empty());
    // The new holder's fenced writes go through; the unfenced store still reads.
    let fb = b.fenced(Fence {
        name: "leader".into(),
        holder: "b".into(),
        epoch: 2,
        margin: Duration::from_secs(1),
    });
    fb.finish_run(run, now(), RunResult::Failure, "taken over", None)
        .unwrap();
    assert_eq!(
        a.run(run).unwrap().unwrap().result,
        Some(RunResult::Failure)
    );
    assert!(a.is_up(), "a refused write is not a database outage");
}

#[test]
fn statuses_round_trip_and_unknown_ones_are_refused() {
    for s in [
        AuditStatus::Started,
        AuditStatus::Applied,
        AuditStatus::AlreadyDone,
        AuditStatus::Stale,
        AuditStatus::Failed,
        AuditStatus::Interrupted,
    ] {
        assert_eq!(s.as_str().parse::<AuditStatus>().unwrap(), s);
        assert_eq!(
            serde_json::to_value(s).unwrap(),
            serde_json::json!(s.as_str())
        );
    }
    assert_eq!(AuditStatus::AlreadyDone.as_str(), "already_done");
    assert!("already-done".parse::<AuditStatus>().is_err());
}

#[test]
fn a_database_name_replaces_the_urls() {
    assert_eq!(
        with_database("postgresql://u:p@127.0.0.1:5/postgres?sslmode=disable", "x"),
        "postgresql://u:p@127.0.0.1:5/x?sslmode=disable"
    );
    assert_eq!(with_database("postgresql://h", "x"), "postgresql://h/x");
}

/// SQLite only: the file's permissions, damage, and the old migrations.
mod sqlite_only {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.db");
        drop(Store::open(&path).unwrap());
        let dmode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        let fmode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!((dmode, fmode), (0o700, 0o600));
        let s = Store::open(&path).unwrap();
        assert_eq!(
            s.lock_path("tokens").unwrap(),
            dir.path().join("sub/state.tokens.lock")
        );
        assert_eq!(Store::in_memory().unwrap().lock_path("tokens"), None);
    }

    #[test]
    fn a_corrupt_database_is_refused_never_reset() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.db");
        std::fs::write(
            &bad,
            b"this is not a database, just some text that is long enough to matter",
        )
        .unwrap();
        let e = Store::open(&bad).unwrap_err();
        assert!(matches!(e, StateError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("damaged"));
        assert!(
            std::fs::read(&bad).unwrap().starts_with(b"this is not"),
            "never reset"
        );
    }

    #[test]
    fn a_version_1_audit_table_migrates_to_statuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(schema::MIGRATIONS[0].sqlite).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            for (i, outcome) in [
                "applied",
                "already-done",
                "failed: InvalidParameterValue: tag not found",
                "skipped: the namespace is gone",
                "started",
                "interrupted: the process stopped during the call; the next run re-checks it",
            ]
            .iter()
            .enumerate()
            {
                c.execute(
                    "INSERT INTO audit (id, at, job, instance, action, target, outcome) VALUES (?1, '2026-01-01T00:00:00.000Z', 'retention', 'prod', 'delete_tag', 't', ?2)",
                    rusqlite::params![i as i64 + 1, outcome],
                )
                .unwrap();
            }
        }
        let s = Store::open(&path).unwrap();
        let got: Vec<(String, Option<String>)> = s
            .audit_since(None)
            .unwrap()
            .into_iter()
            .map(|r| (r.outcome.as_str().to_owned(), r.error))
            .collect();
        let want = [
            ("applied", None),
            ("already_done", None),
            ("failed", Some("InvalidParameterValue: tag not found")),
            ("stale", Some("the namespace is gone")),
            ("started", None),
            (
                "interrupted",
                Some("the process stopped during the call; the next run re-checks it"),
            ),
        ];
        let want: Vec<(String, Option<String>)> = want
            .iter()
            .map(|(o, e)| (o.to_string(), e.map(str::to_owned)))
            .collect();
        assert_eq!(got, want);
    }
}

/// PostgreSQL only: the connection, its loss, and what is never shown.
mod postgres_only {
    use super::*;

    #[test]
    fn a_lost_connection_fails_the_write_and_the_next_call_reconnects() {
        let Some(p) = Place::postgres() else { return };
        let Place::Postgres { admin, db, .. } = &p else {
            unreachable!()
        };
        let s = p.open();
        assert!(s.is_up());
        let run = s.start_run("quota", "schedule", now()).unwrap();
        // A statement running when its backend is terminated fails: the
        // caller sees an error, never a pretended success.
        let busy = s.clone();
        let t = std::thread::spawn(move || busy.exec("SELECT pg_sleep(20)", vec![]));
        let started = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(500));
        pg_admin(
            admin,
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()"
            ),
        );
        let r = t.join().unwrap();
        assert!(r.is_err(), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(15));
        // The next call connects again; what was written is there.
        s.finish_run(run, now(), RunResult::Success, "ok", None)
            .unwrap();
        assert!(s.is_up());
        assert_eq!(
            s.run(run).unwrap().unwrap().result,
            Some(RunResult::Success)
        );
        // Terminated while idle: the backend reads as down at once, and
        // the next call connects again before sending anything.
        pg_admin(
            admin,
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()"
            ),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while s.is_up() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!s.is_up(), "a lost connection is reported down");
        assert_eq!(s.runs(None, 10).unwrap().len(), 1);
        assert!(s.is_up());
    }

    #[test]
    fn the_url_is_never_shown_and_a_bad_one_is_refused_without_echo() {
        let e = Store::connect(&SecretString::from(
            "postgresql://u:hunter2pass@[bad".to_string(),
        ))
        .unwrap_err();
        assert!(matches!(e, StateError::Url), "{e}");
        assert!(!e.to_string().contains("hunter2pass"));
        // Refused connection: the message names host and database, not the password.
        let e = Store::connect(&SecretString::from(
            "postgresql://kcr:hunter2pass@127.0.0.1:1/kcr?connect_timeout=2".to_string(),
        ))
        .unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(text.contains("postgresql://127.0.0.1:1/kcr"), "{text}");
        assert!(!text.contains("hunter2pass"), "{text}");
        let Some(p) = Place::postgres() else { return };
        let s = p.open();
        assert!(!format!("{s:?}").contains("postgresql://kcr:"));
        assert_eq!(s.backend_name(), "postgresql");
    }
}

fn a_new_term_always_has_a_new_epoch_and_a_renewal_renews_only_its_own(p: &Place) {
    let (a, b) = (p.open(), p.open());
    let ttl = Duration::from_secs(30);
    let epoch = |st: LeaseState| match st {
        LeaseState::Held { epoch, .. } => Ok(epoch),
        LeaseState::HeldBy { holder, epoch, .. } => Err((holder, epoch)),
    };
    if let Place::Sqlite(_) = p {
        assert_eq!(
            epoch(a.lease_take("leader", "a", ttl, None).unwrap()),
            Ok(1)
        );
        assert_eq!(a.lease_holder("leader").unwrap(), None);
        return;
    }
    assert_eq!(
        epoch(a.lease_take("leader", "a", ttl, None).unwrap()),
        Ok(1)
    );
    assert_eq!(
        epoch(a.lease_take("leader", "a", ttl, Some(1)).unwrap()),
        Ok(1)
    );
    // Another holder can neither take nor renew it.
    assert_eq!(
        epoch(b.lease_take("leader", "b", ttl, None).unwrap()),
        Err(("a".into(), 1))
    );
    assert_eq!(
        epoch(b.lease_take("leader", "b", ttl, Some(1)).unwrap()),
        Err(("a".into(), 1))
    );
    // The holder starting a new term (it lost its lease locally) gets a new
    // epoch at once; the old term can no longer renew.
    assert_eq!(
        epoch(a.lease_take("leader", "a", ttl, None).unwrap()),
        Ok(2)
    );
    assert_eq!(
        epoch(a.lease_take("leader", "a", ttl, Some(1)).unwrap()),
        Err(("a".into(), 2)),
        "a renewal of an old term is refused"
    );
    assert_eq!(b.lease_holder("leader").unwrap(), Some(("a".into(), 2)));
    // Expired: a renewal fails, a new holder takes it with the next epoch.
    assert_eq!(
        epoch(
            a.lease_take("leader", "a", Duration::from_millis(300), Some(2))
                .unwrap()
        ),
        Ok(2)
    );
    // 300ms, not 1ms: the answer itself must find the lease still valid
    // on a loaded machine (a 1ms lease failed once under load).
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(b.lease_holder("leader").unwrap(), None, "expired");
    assert!(epoch(a.lease_take("leader", "a", ttl, Some(2)).unwrap()).is_err());
    assert_eq!(
        epoch(b.lease_take("leader", "b", ttl, None).unwrap()),
        Ok(3)
    );
}

fn a_store_fenced_until_a_local_deadline_refuses_without_asking(p: &Place) {
    let a = p.open();
    let LeaseState::Held { epoch, .. } = a
        .lease_take("leader", "a", Duration::from_secs(30), None)
        .unwrap()
    else {
        panic!("free lease")
    };
    let fence = Fence {
        name: "leader".into(),
        holder: "a".into(),
        epoch,
        margin: Duration::from_secs(1),
    };
    let deadline = std::sync::Arc::new(crate::state::LocalDeadline::new(
        std::time::Instant::now() + Duration::from_secs(20),
    ));
    let fa = a.fenced_until(fence, deadline.clone());
    let run = fa.start_run("retention", "schedule", now()).unwrap();
    if let Place::Sqlite(_) = p {
        assert_eq!(fa.epoch(), None, "SQLite is not fenced");
        return;
    }
    assert_eq!(fa.epoch(), Some(epoch));
    let id = fa
        .audit_unsent(
            &mutation("retention", "delete_tag"),
            AuditStatus::Applied,
            None,
            now(),
        )
        .unwrap();
    assert_eq!(a.audit_since(None).unwrap()[0].epoch, Some(epoch));
    assert!(id > 0);
    // This host's clock says the lease is (almost) over: refused, though
    // the database would still accept it.
    deadline.set(std::time::Instant::now() + Duration::from_millis(500));
    let e = fa
        .finish_run(run, now(), RunResult::Success, "late", None)
        .unwrap_err();
    assert!(matches!(e, StateError::Fenced { .. }), "{e}");
    assert_eq!(a.run(run).unwrap().unwrap().result, None, "nothing written");
}

/// Review finding 5 (Step 10): the new leader closes the `started` audit
/// records of earlier epochs (a dead leader's), never those of its own
/// epoch (SQLite, unfenced: all of them, one process).
fn a_new_leader_closes_only_the_audit_records_of_earlier_epochs(p: &Place) {
    let s = p.open();
    let fenced = |holder: &str| {
        let LeaseState::Held { epoch, .. } = s
            .lease_take("leader", holder, Duration::from_secs(30), None)
            .unwrap()
        else {
            panic!("free lease")
        };
        let fence = Fence {
            name: "leader".into(),
            holder: holder.into(),
            epoch,
            margin: Duration::from_secs(1),
        };
        let deadline = std::sync::Arc::new(crate::state::LocalDeadline::new(
            std::time::Instant::now() + Duration::from_secs(20),
        ));
        (epoch, s.fenced_until(fence, deadline))
    };
    let (old, fa) = fenced("a");
    std::mem::forget(
        fa.audited(&mutation("retention", "delete_image"), now())
            .unwrap(),
    );
    assert!(s.lease_release("leader", "a", old).unwrap());
    let (_, fb) = fenced("b");
    let mine = fb
        .audited(&mutation("retention", "delete_tag"), now())
        .unwrap();
    let closed = fb.close_interrupted_audit().unwrap();
    let all = s.audit_since(None).unwrap();
    let started = all.iter().filter(|r| r.outcome == "started").count();
    if let Place::Sqlite(_) = p {
        assert_eq!((closed, started), (2, 0), "one process: all of them");
        return;
    }
    assert_eq!((closed, started), (1, 1), "{all:?}");
    assert_eq!(all[0].outcome, "interrupted", "epoch {old}'s");
    drop(mine);
}
