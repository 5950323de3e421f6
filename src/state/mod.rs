//! Durable state in SQLite (WAL): job runs, audit records, the rotation
//! journal, grace marks and stored reports. Schema changes are embedded
//! migrations tracked by `PRAGMA user_version`; a database written by a newer
//! version, or a damaged one, is an error — never silently reset. So is a
//! value this build cannot read (a time, a status): never 1970, never a guess.
//!
//! The directory is created 0700 and the file 0600: it holds the audit trail.
//!
//! One file per concern, each adding its methods to [`Store`]:
//! - `runs.rs`: job runs (started, finished, skipped, abandoned);
//! - `audit.rs`: the one audited-mutation API ([`Store::audited`]), used by every job;
//! - `journal.rs`: the token rotation journal and backoff (the record type is
//!   the tokens job's: [`crate::tokens::journal::RotationRecord`]);
//! - `grace.rs`: grace marks (how long an action has been planned);
//! - `reports.rs`: the latest reports, served over HTTP.

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, params};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

mod audit;
mod grace;
mod journal;
mod reports;
mod runs;

pub use audit::{AUDIT_INTERRUPTED_WHY, AuditGuard, AuditRecord, AuditStatus, Mutation};
pub use journal::TokenBackoff;
pub use reports::StoredReport;
pub use runs::{RunRecord, RunResult};

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
    /// A stored value this build cannot read (a damaged row, or one a newer
    /// version wrote): an error rather than a default.
    #[error(
        "state {path}: unreadable {what}; restore the database from a backup or run a newer kcr-housekeeper"
    )]
    Unreadable { path: PathBuf, what: String },
    #[error("state: {0}")]
    Sql(rusqlite::Error),
    /// A fault injected by a test (`crate::failpoint`).
    #[error("state: {0}")]
    Injected(String),
}

impl From<rusqlite::Error> for StateError {
    fn from(e: rusqlite::Error) -> Self {
        StateError::Sql(e)
    }
}

/// The stored form of a time: RFC 3339, UTC, milliseconds.
fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A stored value that does not parse, carried through rusqlite's row
/// mapping and turned into [`StateError::Unreadable`] by [`Store::with`].
#[derive(Debug)]
struct Unreadable(String);

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreadable {}

fn unreadable(column: usize, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        rusqlite::types::Type::Text,
        Box::new(Unreadable(what)),
    )
}

/// Column `i` of `r`, a time named `what` (e.g. `runs.started_at`).
fn time_at(r: &rusqlite::Row<'_>, i: usize, what: &str) -> rusqlite::Result<DateTime<Utc>> {
    let text: String = r.get(i)?;
    parse_time(&text, i, what)
}

/// Column `i` of `r`, an optional time.
fn opt_time_at(
    r: &rusqlite::Row<'_>,
    i: usize,
    what: &str,
) -> rusqlite::Result<Option<DateTime<Utc>>> {
    r.get::<_, Option<String>>(i)?
        .map(|text| parse_time(&text, i, what))
        .transpose()
}

fn parse_time(text: &str, i: usize, what: &str) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| unreadable(i, format!("time {text:?} in {what} ({e})")))
}

/// A string enum stored as text under its strum name (`AuditStatus`,
/// `RunResult`, the token journal's `Step`): `as_str` is what is written,
/// [`enum_at`] reads it back (naming table and column when it cannot), and
/// a `&str` compares with it. `text_column!(AuditStatus);`
macro_rules! text_column {
    ($t:ty) => {
        impl $t {
            /// The name stored in the database (and shown to operators).
            pub fn as_str(self) -> &'static str {
                self.into()
            }
        }

        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}
pub(crate) use text_column;

/// Column `i` of `r`, a string enum `T` (see [`text_column!`]) named `what`
/// (e.g. `audit.outcome`).
fn enum_at<T: std::str::FromStr>(
    r: &rusqlite::Row<'_>,
    i: usize,
    what: &str,
) -> rusqlite::Result<T> {
    let text: String = r.get(i)?;
    text.parse()
        .map_err(|_| unreadable(i, format!("value {text:?} in {what}")))
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
        f(&conn).map_err(|e| self.error(e))
    }

    /// A transaction on the one connection; committed when `f` succeeds.
    fn with_tx<R>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<R>,
    ) -> Result<R, StateError> {
        let mut conn = self.conn.lock().expect("state lock");
        let run = |conn: &mut Connection| {
            let tx = conn.transaction()?;
            let r = f(&tx)?;
            tx.commit()?;
            Ok(r)
        };
        run(&mut conn).map_err(|e| self.error(e))
    }

    /// An unreadable value names the database; other errors stay SQL errors.
    fn error(&self, e: rusqlite::Error) -> StateError {
        match e {
            rusqlite::Error::FromSqlConversionFailure(_, _, inner)
                if inner.downcast_ref::<Unreadable>().is_some() =>
            {
                StateError::Unreadable {
                    path: self.path.clone(),
                    what: inner.to_string(),
                }
            }
            e => StateError::Sql(e),
        }
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
    /// A small remembered value (`meta` table), `None` if never set.
    pub fn meta_get(&self, key: &str) -> Result<Option<String>, StateError> {
        use rusqlite::OptionalExtension;
        self.with(|c| {
            c.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()
        })
    }

    /// Remember a small value (`meta` table).
    pub fn meta_put(&self, key: &str, value: &str) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) \
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
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
