//! Durable state in SQLite (WAL): job runs, audit records, the rotation
//! journal, grace marks and stored reports. Schema changes are embedded
//! migrations tracked by `PRAGMA user_version`; a database written by a newer
//! version, or a damaged one, is an error — never silently reset.
//!
//! The directory is created 0700 and the file 0600: it holds the audit trail.

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Each entry upgrades the schema by one version.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    "CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        job TEXT NOT NULL,
        trigger TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        result TEXT,
        summary TEXT NOT NULL DEFAULT '',
        error TEXT
    );
    CREATE INDEX runs_by_job ON runs(job, id);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        job TEXT NOT NULL,
        run_id INTEGER REFERENCES runs(id),
        instance TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        outcome TEXT NOT NULL
    );
    CREATE INDEX audit_by_time ON audit(at);
    CREATE TABLE rotation_journal (
        rotation_id TEXT PRIMARY KEY,
        token_name TEXT NOT NULL,
        instance TEXT NOT NULL,
        token_id TEXT,
        previous_token_id TEXT,
        step TEXT NOT NULL,
        expires_at TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        error TEXT
    );
    CREATE INDEX rotation_by_token ON rotation_journal(token_name, created_at);
    CREATE TABLE grace_marks (
        key TEXT PRIMARY KEY,
        first_planned_at TEXT NOT NULL,
        last_planned_at TEXT NOT NULL
    );
    CREATE TABLE reports (
        id INTEGER PRIMARY KEY,
        job TEXT NOT NULL,
        run_id INTEGER REFERENCES runs(id),
        generated_at TEXT NOT NULL,
        format TEXT NOT NULL,
        body BLOB NOT NULL
    );
    CREATE INDEX reports_latest ON reports(job, format, id);",
    // 2: an audit record's outcome is a status; the error has its own column.
    "CREATE TABLE audit_v2 (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        job TEXT NOT NULL,
        run_id INTEGER REFERENCES runs(id),
        instance TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        outcome TEXT NOT NULL CHECK (outcome IN
            ('started', 'applied', 'already_done', 'stale', 'failed', 'interrupted')),
        error TEXT
    );
    INSERT INTO audit_v2 (id, at, job, run_id, instance, action, target, detail, outcome, error)
    SELECT id, at, job, run_id, instance, action, target, detail,
        CASE
            WHEN outcome = 'applied' THEN 'applied'
            WHEN outcome IN ('already-done', 'already_done') THEN 'already_done'
            WHEN outcome = 'started' THEN 'started'
            WHEN outcome LIKE 'interrupted%' THEN 'interrupted'
            WHEN outcome LIKE 'stale%' OR outcome LIKE 'skipped%' THEN 'stale'
            ELSE 'failed'
        END,
        CASE
            WHEN outcome IN ('applied', 'already-done', 'already_done', 'started') THEN NULL
            WHEN outcome LIKE 'failed: %' THEN substr(outcome, 9)
            WHEN outcome LIKE 'skipped: %' THEN substr(outcome, 10)
            WHEN outcome LIKE 'stale: %' THEN substr(outcome, 8)
            WHEN outcome LIKE 'interrupted: %' THEN substr(outcome, 14)
            ELSE outcome
        END
    FROM audit;
    DROP TABLE audit;
    ALTER TABLE audit_v2 RENAME TO audit;
    CREATE INDEX audit_by_time ON audit(at);
    CREATE INDEX audit_by_job ON audit(job, id);",
    // 3: tokens (Step 7): this installation's id (written into every managed
    // token's Desc), when a journaled token was first missing from a listing,
    // and the backoff after failed rotations, per (token, instance).
    "ALTER TABLE rotation_journal ADD COLUMN absent_since TEXT;
    CREATE INDEX rotation_by_token_instance ON rotation_journal(token_name, instance, created_at);
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE token_backoff (
        token_name TEXT NOT NULL,
        instance TEXT NOT NULL,
        failures INTEGER NOT NULL,
        last_failure_at TEXT NOT NULL,
        error TEXT NOT NULL,
        config TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (token_name, instance)
    );",
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state {path}: cannot create directory: {source}")]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state {path}: cannot open: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("state {path}: cannot set permissions: {source}")]
    Permissions {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "state {path}: the database is damaged ({detail}); restore it from a backup or move it away"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "state {path}: schema version {found} is newer than this build supports ({supported}); run a newer kcr-housekeeper"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("state: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A fault injected by a test (`crate::failpoint`).
    #[error("state: {0}")]
    Injected(String),
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunResult {
    Success,
    Failure,
    Blocked,
    Skipped,
}

impl RunResult {
    pub fn as_str(self) -> &'static str {
        match self {
            RunResult::Success => "success",
            RunResult::Failure => "failure",
            RunResult::Blocked => "blocked",
            RunResult::Skipped => "skipped",
        }
    }
    fn parse(s: &str) -> Option<RunResult> {
        Some(match s {
            "success" => RunResult::Success,
            "failure" => RunResult::Failure,
            "blocked" => RunResult::Blocked,
            "skipped" => RunResult::Skipped,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub job: String,
    pub trigger: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `None` while the run is in progress (or if the process died during it).
    pub result: Option<RunResult>,
    pub summary: String,
    pub error: Option<String>,
}

/// Where an audited mutation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditStatus {
    /// Written before the call was sent; the call has not returned (yet).
    Started,
    Applied,
    /// The effect was already in place: nothing sent, or a retry found it done.
    AlreadyDone,
    /// Dropped: the registry no longer matches what was planned.
    Stale,
    Failed,
    /// The process stopped during the call: the outcome is unknown.
    Interrupted,
}

impl AuditStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditStatus::Started => "started",
            AuditStatus::Applied => "applied",
            AuditStatus::AlreadyDone => "already_done",
            AuditStatus::Stale => "stale",
            AuditStatus::Failed => "failed",
            AuditStatus::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<AuditStatus> {
        Some(match s {
            "started" => AuditStatus::Started,
            "applied" => AuditStatus::Applied,
            "already_done" => AuditStatus::AlreadyDone,
            "stale" => AuditStatus::Stale,
            "failed" => AuditStatus::Failed,
            "interrupted" => AuditStatus::Interrupted,
            _ => return None,
        })
    }

    /// The older free-text outcomes (`applied`, `already-done`, `failed: why`,
    /// `skipped: why`, …) as a status and an error.
    pub fn from_text(text: &str) -> (AuditStatus, Option<String>) {
        if let Some(s) = AuditStatus::parse(text) {
            return (s, None);
        }
        let (head, rest) = match text.split_once(':') {
            Some((h, r)) => (h.trim(), Some(r.trim().to_owned())),
            None => (text.trim(), None),
        };
        let status = match head {
            "" => AuditStatus::Started,
            "already-done" | "already_done" => AuditStatus::AlreadyDone,
            "applied" => AuditStatus::Applied,
            "stale" | "skipped" => AuditStatus::Stale,
            "interrupted" => AuditStatus::Interrupted,
            "started" => AuditStatus::Started,
            "failed" => AuditStatus::Failed,
            _ => return (AuditStatus::Failed, Some(text.to_owned())),
        };
        (status, rest.filter(|r| !r.is_empty()))
    }
}

impl std::fmt::Display for AuditStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for AuditStatus {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// One applied (or attempted) mutation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditRecord {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub job: String,
    pub run_id: Option<i64>,
    pub instance: String,
    /// e.g. `delete_image`, `delete_tag`, `modify_namespace_type`, `create_token`.
    pub action: String,
    /// e.g. `apps/web@sha256:…` or a token id.
    pub target: String,
    pub detail: String,
    pub outcome: AuditStatus,
    /// Why it failed, was stale or was interrupted.
    pub error: Option<String>,
}

/// A new audit record (id and time are assigned on insert).
#[derive(Clone, Debug)]
pub struct NewAudit<'a> {
    pub job: &'a str,
    pub run_id: Option<i64>,
    pub instance: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub detail: &'a str,
    /// A status (`applied`, `already_done`, …), or the older text form
    /// (`failed: why`), split into status and error on insert.
    pub outcome: &'a str,
}

/// The outcome of an audit record written before its call returned.
pub const AUDIT_STARTED: &str = "started";
/// ... and of one whose process stopped before it did.
pub const AUDIT_INTERRUPTED: &str = "interrupted";
/// The error of an interrupted record.
pub const AUDIT_INTERRUPTED_WHY: &str =
    "the process stopped during the call; the next run re-checks it";

/// One rotation of a managed token, as journaled before each step. Never
/// holds the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationRecord {
    pub rotation_id: String,
    pub token_name: String,
    pub instance: String,
    pub token_id: Option<String>,
    pub previous_token_id: Option<String>,
    /// The step reached (see `tokens::planner::Step`).
    pub step: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// When the step was reached.
    pub updated_at: DateTime<Utc>,
    pub error: Option<String>,
    /// When its token was first missing from a listing (cleared once listed):
    /// a token is forgotten only after two listings `list_lag` apart missed it.
    pub absent_since: Option<DateTime<Utc>>,
}

/// Consecutive failed rotations of one managed token on one instance: the
/// next attempt waits (exponentially, capped by the planner).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBackoff {
    pub failures: u32,
    pub last_failure_at: DateTime<Utc>,
    pub error: String,
    /// A fingerprint of the token's config when it failed: a changed config
    /// (the operator fixed a sink) is tried at once.
    pub config: String,
}

/// A stored report: when it was generated, and its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredReport {
    pub generated_at: DateTime<Utc>,
    pub body: Vec<u8>,
}

/// A handle to the store; clones share one connection.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn ensure_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn ensure_private_file(path: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(|_| ())
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase) | Some(rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

impl Store {
    /// Open (creating if needed) the database at `path` and bring its schema up to date.
    pub fn open(path: &Path) -> Result<Store, StateError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            create_private_dir(dir).map_err(|source| StateError::Directory {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        ensure_private_file(path).map_err(|source| StateError::Permissions {
            path: path.to_path_buf(),
            source,
        })?;
        let conn = Connection::open(path).map_err(|source| StateError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Self::init(conn, path)
    }

    /// A private in-memory store (tests and one-shot commands without state).
    pub fn in_memory() -> Result<Store, StateError> {
        Self::init(Connection::open_in_memory()?, Path::new(":memory:"))
    }

    fn init(conn: Connection, path: &Path) -> Result<Store, StateError> {
        let corrupt = |e: rusqlite::Error| {
            if is_corruption(&e) {
                StateError::Corrupt {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                }
            } else {
                StateError::Open {
                    path: path.to_path_buf(),
                    source: e,
                }
            }
        };
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(corrupt)?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(corrupt)?;
        if check != "ok" {
            return Err(StateError::Corrupt {
                path: path.to_path_buf(),
                detail: check,
            });
        }
        if path != Path::new(":memory:") {
            let mode: String = conn
                .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                .map_err(corrupt)?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(path = %path.display(), mode, "WAL mode unavailable; using the default journal");
            }
        }
        conn.execute_batch("PRAGMA foreign_keys=ON; PRAGMA synchronous=NORMAL;")
            .map_err(corrupt)?;
        let found: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(corrupt)?;
        if found > SCHEMA_VERSION {
            return Err(StateError::NewerSchema {
                path: path.to_path_buf(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let version = i as i64 + 1;
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", version)?;
            tx.commit()?;
            tracing::info!(path = %path.display(), version, "state schema migrated");
        }
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<R>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<R>) -> Result<R, StateError> {
        let conn = self.conn.lock().expect("state lock");
        Ok(f(&conn)?)
    }

    pub fn start_run(
        &self,
        job: &str,
        trigger: &str,
        at: DateTime<Utc>,
    ) -> Result<i64, StateError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO runs (job, trigger, started_at) VALUES (?1, ?2, ?3)",
                params![job, trigger, ts(at)],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    pub fn finish_run(
        &self,
        id: i64,
        at: DateTime<Utc>,
        result: RunResult,
        summary: &str,
        error: Option<&str>,
    ) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET finished_at = ?2, result = ?3, summary = ?4, error = ?5 WHERE id = ?1",
                params![id, ts(at), result.as_str(), summary, error],
            )
            .map(|_| ())
        })
    }

    /// A run that never started (skipped because another was running).
    pub fn record_skipped(
        &self,
        job: &str,
        trigger: &str,
        at: DateTime<Utc>,
        why: &str,
    ) -> Result<i64, StateError> {
        let id = self.start_run(job, trigger, at)?;
        self.finish_run(id, at, RunResult::Skipped, why, None)?;
        Ok(id)
    }

    fn run_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
        let started: String = r.get(3)?;
        let finished: Option<String> = r.get(4)?;
        let result: Option<String> = r.get(5)?;
        Ok(RunRecord {
            id: r.get(0)?,
            job: r.get(1)?,
            trigger: r.get(2)?,
            started_at: parse_ts(&started).unwrap_or_default(),
            finished_at: finished.as_deref().and_then(parse_ts),
            result: result.as_deref().and_then(RunResult::parse),
            summary: r.get(6)?,
            error: r.get(7)?,
        })
    }

    const RUN_COLUMNS: &'static str =
        "id, job, trigger, started_at, finished_at, result, summary, error";

    /// The latest finished, non-skipped run of `job`.
    pub fn last_run(&self, job: &str) -> Result<Option<RunRecord>, StateError> {
        self.with(|c| {
            c.query_row(
                &format!(
                    "SELECT {} FROM runs WHERE job = ?1 AND result IS NOT NULL AND result != 'skipped' ORDER BY id DESC LIMIT 1",
                    Self::RUN_COLUMNS
                ),
                params![job],
                Self::run_from_row,
            )
            .optional()
        })
    }

    pub fn last_success(&self, job: &str) -> Result<Option<RunRecord>, StateError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {} FROM runs WHERE job = ?1 AND result = 'success' ORDER BY id DESC LIMIT 1", Self::RUN_COLUMNS),
                params![job],
                Self::run_from_row,
            )
            .optional()
        })
    }

    /// Runs of `job` (or of every job), newest first.
    pub fn runs(&self, job: Option<&str>, limit: u32) -> Result<Vec<RunRecord>, StateError> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {} FROM runs WHERE (?1 IS NULL OR job = ?1) ORDER BY id DESC LIMIT ?2",
                Self::RUN_COLUMNS
            ))?;
            stmt.query_map(params![job, limit], Self::run_from_row)?
                .collect()
        })
    }

    /// Runs left without a result by a process that died; marked failed on start.
    pub fn close_abandoned_runs(&self, at: DateTime<Utc>) -> Result<usize, StateError> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET finished_at = ?1, result = 'failure', error = 'interrupted: the process stopped during the run' WHERE result IS NULL",
                params![ts(at)],
            )
        })
    }

    pub fn audit(&self, rec: &NewAudit<'_>, at: DateTime<Utc>) -> Result<i64, StateError> {
        let (status, error) = AuditStatus::from_text(rec.outcome);
        self.audit_status(rec, status, error.as_deref(), at)
    }

    /// Insert a record with its status and error.
    pub fn audit_status(
        &self,
        rec: &NewAudit<'_>,
        status: AuditStatus,
        error: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<i64, StateError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO audit (at, job, run_id, instance, action, target, detail, outcome, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![ts(at), rec.job, rec.run_id, rec.instance, rec.action, rec.target, rec.detail, status.as_str(), error],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    /// Write-ahead audit: record a mutation as `started` before sending it,
    /// so a process killed between the call and the record still leaves a
    /// trace. [`Store::audit_finish`] sets the outcome.
    pub fn audit_begin(&self, rec: &NewAudit<'_>, at: DateTime<Utc>) -> Result<i64, StateError> {
        self.audit_status(rec, AuditStatus::Started, None, at)
    }

    /// Set the outcome (text form, see [`NewAudit::outcome`]) and, when known
    /// only now, the target of a started record.
    pub fn audit_finish(
        &self,
        id: i64,
        outcome: &str,
        target: Option<&str>,
    ) -> Result<(), StateError> {
        let (status, error) = AuditStatus::from_text(outcome);
        self.audit_finish_status(id, status, error.as_deref(), target)
    }

    /// Set the status, error and (when known only now) target of a started record.
    pub fn audit_finish_status(
        &self,
        id: i64,
        status: AuditStatus,
        error: Option<&str>,
        target: Option<&str>,
    ) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "UPDATE audit SET outcome = ?2, error = ?3, target = COALESCE(?4, target) WHERE id = ?1",
                params![id, status.as_str(), error, target],
            )
            .map(|_| ())
        })
    }

    /// Records left `started` by a process that died mid-call: their outcome is unknown.
    pub fn close_interrupted_audit(&self) -> Result<usize, StateError> {
        self.with(|c| {
            c.execute(
                "UPDATE audit SET outcome = 'interrupted', error = ?1 WHERE outcome = 'started'",
                params![AUDIT_INTERRUPTED_WHY],
            )
        })
    }

    /// The records of one run left `started` (the run stopped mid-call):
    /// their outcome is unknown. Touches no other process's records.
    pub fn close_interrupted_audit_of_run(&self, run_id: i64) -> Result<usize, StateError> {
        self.with(|c| {
            c.execute(
                "UPDATE audit SET outcome = 'interrupted', error = ?1 WHERE outcome = 'started' AND run_id = ?2",
                params![AUDIT_INTERRUPTED_WHY, run_id],
            )
        })
    }

    /// Audit records at or after `since`, oldest first.
    pub fn audit_since(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<AuditRecord>, StateError> {
        self.audit_query(since, None, None)
    }

    /// Audit records at or after `since`, of `job` if given, the newest
    /// `limit` if given; oldest first.
    pub fn audit_query(
        &self,
        since: Option<DateTime<Utc>>,
        job: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<AuditRecord>, StateError> {
        let since = since.map(ts).unwrap_or_default();
        let limit = limit.map_or(-1, i64::from);
        let mut records = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, at, job, run_id, instance, action, target, detail, outcome, error FROM audit
                 WHERE at >= ?1 AND (?2 IS NULL OR job = ?2) ORDER BY id DESC LIMIT ?3",
            )?;
            stmt.query_map(params![since, job, limit], |r| {
                let at: String = r.get(1)?;
                let outcome: String = r.get(8)?;
                Ok(AuditRecord {
                    id: r.get(0)?,
                    at: parse_ts(&at).unwrap_or_default(),
                    job: r.get(2)?,
                    run_id: r.get(3)?,
                    instance: r.get(4)?,
                    action: r.get(5)?,
                    target: r.get(6)?,
                    detail: r.get(7)?,
                    // The CHECK constraint admits only the statuses.
                    outcome: AuditStatus::parse(&outcome).unwrap_or(AuditStatus::Failed),
                    error: r.get(9)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        records.reverse();
        Ok(records)
    }

    /// Note that `keys` were planned at `now`; forget marks not planned in
    /// this run (grace needs continuity). Returns when each key was first planned.
    pub fn update_grace_marks(
        &self,
        keys: &[String],
        now: DateTime<Utc>,
    ) -> Result<std::collections::HashMap<String, DateTime<Utc>>, StateError> {
        let at = ts(now);
        let mut conn = self.conn.lock().expect("state lock");
        let tx = conn.transaction()?;
        tx.execute(
            "CREATE TEMP TABLE IF NOT EXISTS planned_now (key TEXT PRIMARY KEY)",
            [],
        )?;
        tx.execute("DELETE FROM planned_now", [])?;
        {
            let mut ins = tx.prepare("INSERT OR IGNORE INTO planned_now (key) VALUES (?1)")?;
            let mut up = tx.prepare(
                "INSERT INTO grace_marks (key, first_planned_at, last_planned_at) VALUES (?1, ?2, ?2)
                 ON CONFLICT(key) DO UPDATE SET last_planned_at = excluded.last_planned_at",
            )?;
            for k in keys {
                ins.execute(params![k])?;
                up.execute(params![k, at])?;
            }
        }
        tx.execute(
            "DELETE FROM grace_marks WHERE key NOT IN (SELECT key FROM planned_now)",
            [],
        )?;
        let mut out = std::collections::HashMap::new();
        {
            let mut q = tx.prepare("SELECT key, first_planned_at FROM grace_marks")?;
            let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (k, first) = row?;
                out.insert(k, parse_ts(&first).unwrap_or(now));
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Insert or replace rotation journal records in one transaction (a step
    /// that moves two rotations, like marking one current and superseding the
    /// other, lands whole or not at all).
    pub fn journal_put(&self, records: &[RotationRecord]) -> Result<(), StateError> {
        let mut conn = self.conn.lock().expect("state lock");
        let tx = conn.transaction()?;
        {
            let mut up = tx.prepare(
                "INSERT INTO rotation_journal (rotation_id, token_name, instance, token_id, previous_token_id, step, expires_at, created_at, updated_at, error, absent_since)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT(rotation_id) DO UPDATE SET token_name = excluded.token_name, instance = excluded.instance,
                   token_id = excluded.token_id, previous_token_id = excluded.previous_token_id, step = excluded.step,
                   expires_at = excluded.expires_at, created_at = excluded.created_at, updated_at = excluded.updated_at,
                   error = excluded.error, absent_since = excluded.absent_since",
            )?;
            for r in records {
                up.execute(params![
                    r.rotation_id,
                    r.token_name,
                    r.instance,
                    r.token_id,
                    r.previous_token_id,
                    r.step,
                    r.expires_at.map(ts),
                    ts(r.created_at),
                    ts(r.updated_at),
                    r.error,
                    r.absent_since.map(ts)
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// This installation's id, generated on first use and kept for the life
    /// of the state: it tells this installation's tokens from another's that
    /// manages the same name on the same instance.
    pub fn install_id(&self) -> Result<String, StateError> {
        let fresh = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('install_id', ?1)",
                params![fresh],
            )?;
            c.query_row("SELECT value FROM meta WHERE key = 'install_id'", [], |r| {
                r.get(0)
            })
        })
    }

    /// The backoff of a managed token on an instance after failed rotations.
    pub fn token_backoff(
        &self,
        token_name: &str,
        instance: &str,
    ) -> Result<Option<TokenBackoff>, StateError> {
        let row: Option<(u32, String, String, String)> = self.with(|c| {
            c.query_row(
                "SELECT failures, last_failure_at, error, config FROM token_backoff WHERE token_name = ?1 AND instance = ?2",
                params![token_name, instance],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
        })?;
        Ok(row.and_then(|(failures, at, error, config)| {
            Some(TokenBackoff {
                failures,
                last_failure_at: parse_ts(&at)?,
                error,
                config,
            })
        }))
    }

    /// Count one more failed rotation under the config `config` (a
    /// fingerprint; failures under another config start over at 1); returns
    /// the consecutive failures.
    pub fn token_backoff_fail(
        &self,
        token_name: &str,
        instance: &str,
        at: DateTime<Utc>,
        error: &str,
        config: &str,
    ) -> Result<u32, StateError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO token_backoff (token_name, instance, failures, last_failure_at, error, config) VALUES (?1, ?2, 1, ?3, ?4, ?5)
                 ON CONFLICT(token_name, instance) DO UPDATE SET
                   failures = CASE WHEN config = excluded.config THEN failures + 1 ELSE 1 END,
                   last_failure_at = excluded.last_failure_at, error = excluded.error, config = excluded.config",
                params![token_name, instance, ts(at), error, config],
            )?;
            c.query_row(
                "SELECT failures FROM token_backoff WHERE token_name = ?1 AND instance = ?2",
                params![token_name, instance],
                |r| r.get(0),
            )
        })
    }

    /// A rotation succeeded: no more backoff.
    pub fn token_backoff_clear(&self, token_name: &str, instance: &str) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM token_backoff WHERE token_name = ?1 AND instance = ?2",
                params![token_name, instance],
            )
        })?;
        Ok(())
    }

    /// The journal of one managed token (every instance it lived on), oldest first.
    pub fn journal_for(&self, token_name: &str) -> Result<Vec<RotationRecord>, StateError> {
        self.with(|c| {
            c.prepare(
                "SELECT rotation_id, token_name, instance, token_id, previous_token_id, step, expires_at, created_at, updated_at, error, absent_since
                 FROM rotation_journal WHERE token_name = ?1 ORDER BY created_at, rotation_id",
            )?
            .query_map(params![token_name], |r| {
                let time = |i: usize| -> rusqlite::Result<DateTime<Utc>> {
                    let text: String = r.get(i)?;
                    parse_ts(&text).ok_or_else(|| {
                        rusqlite::Error::FromSqlConversionFailure(
                            i,
                            rusqlite::types::Type::Text,
                            format!("bad time {text:?}").into(),
                        )
                    })
                };
                Ok(RotationRecord {
                    rotation_id: r.get(0)?,
                    token_name: r.get(1)?,
                    instance: r.get(2)?,
                    token_id: r.get(3)?,
                    previous_token_id: r.get(4)?,
                    step: r.get(5)?,
                    expires_at: r
                        .get::<_, Option<String>>(6)?
                        .as_deref()
                        .and_then(parse_ts),
                    created_at: time(7)?,
                    updated_at: time(8)?,
                    error: r.get(9)?,
                    absent_since: r
                        .get::<_, Option<String>>(10)?
                        .as_deref()
                        .and_then(parse_ts),
                })
            })?
            .collect()
        })
    }

    pub fn put_report(
        &self,
        job: &str,
        run_id: Option<i64>,
        generated_at: DateTime<Utc>,
        format: &str,
        body: &[u8],
    ) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO reports (job, run_id, generated_at, format, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![job, run_id, ts(generated_at), format, body],
            )?;
            // Keep the latest few of each kind; reports are regenerated every run.
            c.execute(
                "DELETE FROM reports WHERE job = ?1 AND format = ?2 AND id NOT IN
                 (SELECT id FROM reports WHERE job = ?1 AND format = ?2 ORDER BY id DESC LIMIT 10)",
                params![job, format],
            )
            .map(|_| ())
        })
    }

    pub fn latest_report(
        &self,
        job: &str,
        format: &str,
    ) -> Result<Option<StoredReport>, StateError> {
        self.with(|c| {
            c.query_row(
                "SELECT generated_at, body FROM reports WHERE job = ?1 AND format = ?2 ORDER BY id DESC LIMIT 1",
                params![job, format],
                |r| {
                    let at: String = r.get(0)?;
                    Ok(StoredReport { generated_at: parse_ts(&at).unwrap_or_default(), body: r.get(1)? })
                },
            )
            .optional()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn runs_round_trip() {
        let s = Store::in_memory().unwrap();
        let id = s.start_run("quota", "schedule", now()).unwrap();
        assert_eq!(s.runs(Some("quota"), 10).unwrap()[0].result, None);
        s.finish_run(id, now(), RunResult::Success, "2 instances", None)
            .unwrap();
        s.record_skipped("quota", "api", now(), "already running")
            .unwrap();
        let last = s.last_run("quota").unwrap().unwrap();
        assert_eq!(
            (last.id, last.result, last.summary.as_str()),
            (id, Some(RunResult::Success), "2 instances")
        );
        assert_eq!(s.last_success("quota").unwrap().unwrap().id, id);
        assert!(s.last_run("retention").unwrap().is_none());
        assert_eq!(s.runs(None, 10).unwrap().len(), 2);
    }

    #[test]
    fn abandoned_runs_are_closed_as_failures() {
        let s = Store::in_memory().unwrap();
        s.start_run("retention", "schedule", now()).unwrap();
        assert_eq!(s.close_abandoned_runs(now()).unwrap(), 1);
        let r = s.last_run("retention").unwrap().unwrap();
        assert_eq!(r.result, Some(RunResult::Failure));
        assert!(r.error.unwrap().contains("interrupted"));
    }

    #[test]
    fn audit_and_reports() {
        let s = Store::in_memory().unwrap();
        let rec = NewAudit {
            job: "retention",
            run_id: None,
            instance: "prod",
            action: "delete_tag",
            target: "apps/web:pr-1",
            detail: "rule ci-builds",
            outcome: "applied",
        };
        s.audit(&rec, now()).unwrap();
        s.audit(&rec, now() + chrono::Duration::hours(2)).unwrap();
        assert_eq!(s.audit_since(None).unwrap().len(), 2);
        assert_eq!(
            s.audit_since(Some(now() + chrono::Duration::hours(1)))
                .unwrap()
                .len(),
            1
        );
        for i in 0..12 {
            s.put_report("retention", None, now(), "json", format!("{i}").as_bytes())
                .unwrap();
        }
        assert_eq!(
            s.latest_report("retention", "json").unwrap().unwrap().body,
            b"11"
        );
        assert!(s.latest_report("retention", "html").unwrap().is_none());
        let kept: i64 = s
            .with(|c| c.query_row("SELECT COUNT(*) FROM reports", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(kept, 10);
    }

    #[test]
    fn write_ahead_audit_records_survive_a_crash_as_interrupted() {
        let s = Store::in_memory().unwrap();
        let rec = NewAudit {
            job: "tokens",
            run_id: None,
            instance: "prod",
            action: "create_token",
            target: "rotation r1",
            detail: "ci-pull",
            outcome: "ignored: begin sets started",
        };
        let done = s.audit_begin(&rec, now()).unwrap();
        let crashed = s.audit_begin(&rec, now()).unwrap();
        s.audit_finish(done, "applied", Some("tok-1")).unwrap();
        let all = s.audit_since(None).unwrap();
        assert_eq!(
            (all[0].outcome.as_str(), all[0].target.as_str()),
            ("applied", "tok-1")
        );
        assert_eq!(
            (all[1].id, all[1].outcome.as_str()),
            (crashed, AUDIT_STARTED)
        );
        assert_eq!(s.close_interrupted_audit().unwrap(), 1);
        let all = s.audit_since(None).unwrap();
        assert_eq!(all[0].outcome, "applied");
        assert_eq!(all[1].outcome, AUDIT_INTERRUPTED);
        assert_eq!(all[1].target, "rotation r1");
    }

    #[test]
    fn a_version_1_audit_table_migrates_to_statuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
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
                    params![i as i64 + 1, outcome],
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
        // Only statuses can be stored.
        let bad = s.with(|c| c.execute("UPDATE audit SET outcome = 'failed: x' WHERE id = 1", []));
        assert!(bad.is_err());
        let id = s
            .audit(
                &NewAudit {
                    job: "tokens",
                    run_id: None,
                    instance: "prod",
                    action: "delete_token",
                    target: "t",
                    detail: "",
                    outcome: "failed: AccessDenied",
                },
                now(),
            )
            .unwrap();
        let last = s.audit_query(None, Some("tokens"), Some(1)).unwrap();
        assert_eq!(
            (last[0].id, last[0].outcome, last[0].error.as_deref()),
            (id, AuditStatus::Failed, Some("AccessDenied"))
        );
    }

    #[test]
    fn install_id_backoff_and_absence_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let s = Store::open(&path).unwrap();
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
        s.journal_put(&[RotationRecord {
            rotation_id: "r1".into(),
            token_name: "t".into(),
            instance: "prod".into(),
            token_id: Some("x".into()),
            previous_token_id: None,
            step: "current".into(),
            expires_at: None,
            created_at: now(),
            updated_at: now(),
            error: None,
            absent_since: Some(now()),
        }])
        .unwrap();
        drop(s);
        let s = Store::open(&path).unwrap();
        assert_eq!(s.install_id().unwrap(), id, "generated once per state");
        let b = s.token_backoff("t", "prod").unwrap().unwrap();
        assert_eq!((b.failures, b.error.as_str()), (2, "bang"));
        assert_eq!(s.token_backoff("t", "staging").unwrap(), None);
        assert_eq!(s.journal_for("t").unwrap()[0].absent_since, Some(now()));
        assert_eq!(b.config, "c1");
        assert_eq!(
            s.token_backoff_fail("t", "prod", now(), "x", "c2").unwrap(),
            1,
            "another config starts over"
        );
        s.token_backoff_clear("t", "prod").unwrap();
        assert_eq!(s.token_backoff("t", "prod").unwrap(), None);
    }

    #[test]
    fn grace_marks_need_continuity() {
        let s = Store::in_memory().unwrap();
        let keys = |v: &[&str]| v.iter().map(|k| k.to_string()).collect::<Vec<_>>();
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
    }

    #[cfg(unix)]
    #[test]
    fn files_are_private_and_schema_is_current() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.db");
        let s = Store::open(&path).unwrap();
        drop(s);
        let dmode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        let fmode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!((dmode, fmode), (0o700, 0o600));
        // Reopening applies no migration twice.
        let s = Store::open(&path).unwrap();
        let v: i64 = s
            .with(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    #[test]
    fn corrupt_and_newer_databases_are_refused() {
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

        let newer = dir.path().join("newer.db");
        let c = Connection::open(&newer).unwrap();
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(c);
        let e = Store::open(&newer).unwrap_err();
        assert!(matches!(e, StateError::NewerSchema { .. }), "{e}");
        assert!(e.to_string().contains("newer than this build supports"));
    }
}
