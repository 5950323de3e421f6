//! Durable state: job runs, audit records, the rotation journal, grace marks
//! and stored reports, in SQLite (WAL; `[state] path`, the embedded default)
//! or PostgreSQL (`[state] url`, shared by replicas). Schema changes are
//! embedded migrations (`schema.rs`), the same versions on both; a database
//! written by a newer version, or a damaged one, is an error — never
//! silently reset. So is a value this build cannot read (a time, a status):
//! never 1970, never a guess.
//!
//! With SQLite the directory is created 0700 and the file 0600: it holds the
//! audit trail.
//!
//! # One store, two backends
//!
//! [`Store`] keeps its synchronous API whatever the backend, so no job
//! changes: every store method builds its SQL and its parameters once and
//! hands them to `Store::exec`, `Store::query` or `Store::tx`, which
//! run them on SQLite (one connection behind a mutex, as before) or on
//! PostgreSQL (`pg.rs`). The SQL is written once: `$1`, `$2`… placeholders
//! (SQLite reads `$N` as a parameter named `N`, numbered by first use, so
//! each statement uses its parameters first in ascending order — checked in
//! debug builds), `INSERT … RETURNING id` instead of `last_insert_rowid`,
//! `ON CONFLICT … DO UPDATE/NOTHING` upserts, no temporary tables. Rows come
//! back as plain values (`Row`) read by one mapping per record type.
//!
//! The PostgreSQL client (tokio-postgres) is async; it runs on a dedicated
//! thread with its own single-threaded runtime, and a store call waits for
//! its answer as it waits for SQLite's lock today (a short blocking call).
//! Making `Store` async instead would have changed every job and the
//! audit guard's `Drop`; the thread keeps them as they are, and keeps the
//! connection's I/O off the jobs' runtime. See `pg.rs` for PgBouncer safety
//! and reconnection.
//!
//! One file per concern, each adding its methods to [`Store`]:
//! - `runs.rs`: job runs (started, finished, skipped, abandoned);
//! - `audit.rs`: the one audited-mutation API ([`Store::audited`]), used by every job;
//! - `journal.rs`: the token rotation journal and backoff (the record type is
//!   the tokens job's: [`crate::tokens::journal::RotationRecord`]);
//! - `grace.rs`: grace marks (how long an action has been planned);
//! - `reports.rs`: the latest reports, served over HTTP;
//! - `copy.rs`: copying every table from one store to another (`state copy`);
//! - `lease.rs`: the leader lease row and the fence on writes (PostgreSQL).

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

mod audit;
mod copy;
mod grace;
mod journal;
mod lease;
mod pg;
mod reports;
mod runs;
mod schema;
#[cfg(test)]
mod suite;

pub use audit::{AUDIT_INTERRUPTED_WHY, AuditGuard, AuditRecord, AuditStatus, Mutation, Settled};
pub use copy::{COPIED_TABLES, CopyError};
pub use journal::TokenBackoff;
pub use lease::{Fence, LeaseState, LocalDeadline};
pub use reports::StoredReport;
pub use runs::{RunRecord, RunResult};
pub use schema::SCHEMA_VERSION;

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
        "state {at}: schema version {found} is newer than this build supports ({supported}); run a newer kcr-housekeeper"
    )]
    NewerSchema {
        at: String,
        found: i64,
        supported: i64,
    },
    /// A stored value this build cannot read (a damaged row, or one a newer
    /// version wrote): an error rather than a default.
    #[error(
        "state {at}: unreadable {what}; restore the database from a backup or run a newer kcr-housekeeper"
    )]
    Unreadable { at: String, what: String },
    #[error("state: {0}")]
    Sql(rusqlite::Error),
    /// A PostgreSQL error: refused, failed, or the connection was lost (a
    /// write that fails so may or may not have been applied; never retried
    /// blindly).
    #[error("state {at}: {source}")]
    Postgres {
        at: String,
        source: tokio_postgres::Error,
    },
    #[error(
        "state {at}: no answer within {secs}s; the connection was dropped (the statement may or may not have taken effect)"
    )]
    Timeout { at: String, secs: u64 },
    /// A fenced write found the lease no longer this holder's (taken over,
    /// expired, or too close to its end): nothing was written.
    #[error(
        "state {at}: lease {name} epoch {epoch} is no longer held (taken over or expiring); nothing was written"
    )]
    Fenced {
        at: String,
        name: String,
        epoch: i64,
    },
    #[error("state {at}: the database connection thread stopped")]
    WorkerGone { at: String },
    /// The URL is never repeated: it may hold a password.
    #[error(
        "state: the PostgreSQL URL is invalid (expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE?sslmode=disable|prefer|require)"
    )]
    Url,
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

/// A statement parameter, typed so that PostgreSQL is told its type (a
/// NULL has one too).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Param {
    Int(Option<i64>),
    Text(Option<String>),
    Blob(Vec<u8>),
}

impl From<i64> for Param {
    fn from(v: i64) -> Self {
        Param::Int(Some(v))
    }
}
impl From<Option<i64>> for Param {
    fn from(v: Option<i64>) -> Self {
        Param::Int(v)
    }
}
impl From<&str> for Param {
    fn from(v: &str) -> Self {
        Param::Text(Some(v.to_owned()))
    }
}
impl From<String> for Param {
    fn from(v: String) -> Self {
        Param::Text(Some(v))
    }
}
impl From<&String> for Param {
    fn from(v: &String) -> Self {
        Param::Text(Some(v.clone()))
    }
}
impl From<Option<&str>> for Param {
    fn from(v: Option<&str>) -> Self {
        Param::Text(v.map(str::to_owned))
    }
}
impl From<Option<String>> for Param {
    fn from(v: Option<String>) -> Self {
        Param::Text(v)
    }
}
impl From<&Option<String>> for Param {
    fn from(v: &Option<String>) -> Self {
        Param::Text(v.clone())
    }
}
impl From<&[u8]> for Param {
    fn from(v: &[u8]) -> Self {
        Param::Blob(v.to_vec())
    }
}

impl rusqlite::ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Param::Int(v) => v.to_sql(),
            Param::Text(v) => v.to_sql(),
            Param::Blob(v) => v.to_sql(),
        }
    }
}

/// `args![a, b]`: statement parameters.
macro_rules! args {
    ($($v:expr),* $(,)?) => { vec![$($crate::state::Param::from($v)),*] };
}
pub(crate) use args;

/// A value read back.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    /// The same value as a parameter (`state copy`).
    fn into_param(self) -> Param {
        match self {
            Value::Null => Param::Text(None),
            Value::Int(i) => Param::Int(Some(i)),
            Value::Text(t) => Param::Text(Some(t)),
            Value::Blob(b) => Param::Blob(b),
        }
    }
}

/// A string enum stored as text under its strum name (`AuditStatus`,
/// `RunResult`, the token journal's `Step`): `as_str` is what is written,
/// `Row::parse` reads it back (naming table and column when it cannot), and
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

/// One row read back; its getters say what they could not read.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Row(pub(crate) Vec<Value>);

/// What could not be read (turned into [`StateError::Unreadable`]).
type Unreadable = String;

impl Row {
    fn at(&self, i: usize) -> &Value {
        self.0.get(i).unwrap_or(&Value::Null)
    }

    fn int(&self, i: usize, what: &str) -> Result<i64, Unreadable> {
        self.opt_int(i, what)?
            .ok_or_else(|| format!("NULL in {what}"))
    }

    fn opt_int(&self, i: usize, what: &str) -> Result<Option<i64>, Unreadable> {
        match self.at(i) {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(*v)),
            other => Err(format!("value {other:?} in {what} (not an integer)")),
        }
    }

    fn text(&self, i: usize, what: &str) -> Result<String, Unreadable> {
        self.opt_text(i, what)?
            .ok_or_else(|| format!("NULL in {what}"))
    }

    fn opt_text(&self, i: usize, what: &str) -> Result<Option<String>, Unreadable> {
        match self.at(i) {
            Value::Null => Ok(None),
            Value::Text(v) => Ok(Some(v.clone())),
            other => Err(format!("value {other:?} in {what} (not text)")),
        }
    }

    fn blob(&self, i: usize, what: &str) -> Result<Vec<u8>, Unreadable> {
        match self.at(i) {
            Value::Blob(v) => Ok(v.clone()),
            Value::Text(v) => Ok(v.clone().into_bytes()),
            other => Err(format!("value {other:?} in {what} (not bytes)")),
        }
    }

    /// Column `i`, a time named `what` (e.g. `runs.started_at`).
    fn time(&self, i: usize, what: &str) -> Result<DateTime<Utc>, Unreadable> {
        parse_time(&self.text(i, what)?, what)
    }

    fn opt_time(&self, i: usize, what: &str) -> Result<Option<DateTime<Utc>>, Unreadable> {
        self.opt_text(i, what)?
            .map(|t| parse_time(&t, what))
            .transpose()
    }

    /// Column `i`, a string enum `T` named `what` (e.g. `audit.outcome`).
    fn parse<T: std::str::FromStr>(&self, i: usize, what: &str) -> Result<T, Unreadable> {
        let text = self.text(i, what)?;
        text.parse()
            .map_err(|_| format!("value {text:?} in {what}"))
    }
}

fn parse_time(text: &str, what: &str) -> Result<DateTime<Utc>, Unreadable> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("time {text:?} in {what} ({e})"))
}

/// One statement of a transaction.
#[derive(Clone, Debug)]
pub(crate) struct Stmt {
    pub sql: String,
    pub args: Vec<Param>,
}

impl Stmt {
    pub fn new(sql: impl Into<String>, args: Vec<Param>) -> Stmt {
        Stmt {
            sql: sql.into(),
            args,
        }
    }
}

/// What a statement returned: its rows, and the rows it changed.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub rows: Vec<Row>,
    pub changed: u64,
}

/// A handle to the store; clones share one connection.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// Where the state is, for messages: the SQLite path, or the
    /// PostgreSQL host, port and database (never the user or password).
    at: Arc<str>,
    /// The SQLite file (`None` in memory and on PostgreSQL).
    file: Option<Arc<Path>>,
    /// Set: every statement runs in a transaction that first checks this
    /// lease ([`Store::fenced`]; PostgreSQL only).
    fence: Option<Arc<Fence>>,
    /// With `fence`: this host's deadline of the lease ([`Store::fenced_until`]).
    deadline: Option<Arc<LocalDeadline>>,
}

#[derive(Clone)]
enum Backend {
    Sqlite(Arc<Mutex<Connection>>),
    Postgres(Arc<pg::Pg>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("at", &self.at).finish()
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

/// An open's error at `path`: damaged (`Corrupt`) or not (`Open`).
fn corrupt_at(path: &Path) -> impl Fn(rusqlite::Error) -> StateError + Copy + '_ {
    move |e| {
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
    }
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase) | Some(rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

/// In debug builds: a statement's `$N` placeholders are first used in
/// ascending order (SQLite numbers named parameters by first use).
fn check_placeholders(sql: &str) {
    if cfg!(debug_assertions) {
        let mut next = 1;
        let b = sql.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'$' {
                let digits: String = b[i + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit())
                    .map(|&c| c as char)
                    .collect();
                if let Ok(n) = digits.parse::<usize>() {
                    assert!(n <= next, "placeholder ${n} used before ${next} in {sql}");
                    if n == next {
                        next += 1;
                    }
                }
                i += 1 + digits.len();
            } else {
                i += 1;
            }
        }
    }
}

fn sqlite_rows(stmt: &mut rusqlite::Statement<'_>, args: &[Param]) -> rusqlite::Result<Outcome> {
    let n = stmt.column_count();
    let mut rows = stmt.query(rusqlite::params_from_iter(args.iter()))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let mut values = Vec::with_capacity(n);
        for i in 0..n {
            use rusqlite::types::ValueRef;
            values.push(match r.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(v) => Value::Int(v),
                ValueRef::Real(v) => Value::Text(v.to_string()),
                ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => Value::Blob(b.to_vec()),
            });
        }
        out.push(Row(values));
    }
    drop(rows);
    Ok(Outcome {
        rows: out,
        changed: 0,
    })
}

fn sqlite_run(conn: &Connection, s: &Stmt) -> rusqlite::Result<Outcome> {
    check_placeholders(&s.sql);
    let mut stmt = conn.prepare_cached(&s.sql)?;
    if stmt.column_count() == 0 {
        let changed = stmt.execute(rusqlite::params_from_iter(s.args.iter()))?;
        Ok(Outcome {
            rows: Vec::new(),
            changed: changed as u64,
        })
    } else {
        let mut o = sqlite_rows(&mut stmt, &s.args)?;
        o.changed = o.rows.len() as u64;
        Ok(o)
    }
}

impl Store {
    /// Open the state the config names: the SQLite file, or the PostgreSQL
    /// database (connecting and bringing its schema up to date).
    pub fn open_config(config: &crate::config::StateConfig) -> Result<Store, StateError> {
        match config {
            crate::config::StateConfig::Sqlite { path } => Store::open(path),
            crate::config::StateConfig::Postgres { url } => Store::connect(url),
        }
    }

    /// Connect to PostgreSQL at `url` (a secret: it is never logged) and
    /// bring the schema up to date.
    pub fn connect(url: &secrecy::SecretString) -> Result<Store, StateError> {
        let pg = pg::Pg::connect(url)?;
        Ok(Store {
            at: pg.location().into(),
            file: None,
            fence: None,
            deadline: None,
            backend: Backend::Postgres(Arc::new(pg)),
        })
    }

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

    /// Check, without changing it, that the existing SQLite file at `path`
    /// is a sound database this build can use (what [`Store::open`] would
    /// refuse: a damaged file, a newer schema). For `doctor`: a file that is
    /// writable but damaged stops every job, so "writable" alone is not OK.
    pub fn probe_file(path: &Path) -> Result<(), StateError> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|source| StateError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Self::verify(&conn, path).map(|_| ())
    }

    /// What every open checks first: the file is a sound database
    /// (`quick_check`) of a schema version this build knows (returned).
    fn verify(conn: &Connection, path: &Path) -> Result<i64, StateError> {
        let corrupt = corrupt_at(path);
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
        let found: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(corrupt)?;
        if found > SCHEMA_VERSION {
            return Err(StateError::NewerSchema {
                at: path.display().to_string(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(found)
    }

    fn init(conn: Connection, path: &Path) -> Result<Store, StateError> {
        let found = Self::verify(&conn, path)?;
        let corrupt = corrupt_at(path);
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
        for (i, m) in schema::MIGRATIONS.iter().enumerate().skip(found as usize) {
            let version = i as i64 + 1;
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(m.sqlite)?;
            tx.pragma_update(None, "user_version", version)?;
            tx.commit()?;
            tracing::info!(path = %path.display(), version, "state schema migrated");
        }
        Ok(Store {
            backend: Backend::Sqlite(Arc::new(Mutex::new(conn))),
            at: path.display().to_string().into(),
            file: (path != Path::new(":memory:")).then(|| Arc::from(path)),
            fence: None,
            deadline: None,
        })
    }

    /// Where the state is, for messages (never a password).
    pub fn location(&self) -> &str {
        &self.at
    }

    /// A lock file for `what` for processes sharing this state on this
    /// host: beside the SQLite file (`state.tokens.lock`), or in the temp
    /// directory, named after the PostgreSQL database. `None` in memory.
    /// (Replicas on other hosts are fenced by the database, not by this.)
    pub fn lock_path(&self, what: &str) -> Option<PathBuf> {
        match &self.backend {
            Backend::Sqlite(_) => self
                .file
                .as_ref()
                .map(|f| f.with_extension(format!("{what}.lock"))),
            Backend::Postgres(_) => {
                use sha2::Digest;
                let hash = hex::encode(sha2::Sha256::digest(self.at.as_bytes()));
                Some(
                    std::env::temp_dir()
                        .join(format!("kcr-housekeeper-{}.{what}.lock", &hash[..16])),
                )
            }
        }
    }

    /// `"sqlite"` or `"postgresql"`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgresql",
        }
    }

    /// Whether the last statement reached the database (PostgreSQL: the
    /// connection is up; SQLite: always). For `kcr_housekeeper_state_backend_up`.
    pub fn is_up(&self) -> bool {
        match &self.backend {
            Backend::Sqlite(_) => true,
            Backend::Postgres(pg) => pg.is_up(),
        }
    }

    /// Run statements in one transaction (committed when all succeed);
    /// returns what each returned.
    pub(crate) fn tx(&self, stmts: Vec<Stmt>) -> Result<Vec<Outcome>, StateError> {
        match &self.backend {
            Backend::Sqlite(conn) => {
                let mut conn = conn.lock().expect("state lock");
                let run = |conn: &mut Connection| {
                    let tx = conn.transaction()?;
                    let out = stmts
                        .iter()
                        .map(|s| sqlite_run(&tx, s))
                        .collect::<rusqlite::Result<Vec<_>>>()?;
                    tx.commit()?;
                    Ok(out)
                };
                run(&mut conn).map_err(StateError::Sql)
            }
            Backend::Postgres(pg) => {
                self.check_local_deadline()?;
                pg.run(stmts, true, self.fence.as_deref().cloned())
            }
        }
    }

    /// Run one statement on its own; its rows and the rows it changed.
    pub(crate) fn one(&self, sql: &str, args: Vec<Param>) -> Result<Outcome, StateError> {
        let stmts = vec![Stmt::new(sql, args)];
        let mut out = match &self.backend {
            Backend::Sqlite(conn) => {
                let conn = conn.lock().expect("state lock");
                sqlite_run(&conn, &stmts[0])
                    .map(|o| vec![o])
                    .map_err(StateError::Sql)
            }
            Backend::Postgres(pg) => {
                self.check_local_deadline()?;
                pg.run(stmts, false, self.fence.as_deref().cloned())
            }
        }?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Run a statement; the rows it changed.
    pub(crate) fn exec(&self, sql: &str, args: Vec<Param>) -> Result<u64, StateError> {
        self.one(sql, args).map(|o| o.changed)
    }

    /// Run a query; its rows, each read by `f`.
    pub(crate) fn query<T>(
        &self,
        sql: &str,
        args: Vec<Param>,
        f: impl Fn(&Row) -> Result<T, Unreadable>,
    ) -> Result<Vec<T>, StateError> {
        let rows = self.one(sql, args)?.rows;
        self.read(&rows, f)
    }

    /// Read rows with `f`; what it cannot read is [`StateError::Unreadable`].
    pub(crate) fn read<T>(
        &self,
        rows: &[Row],
        f: impl Fn(&Row) -> Result<T, Unreadable>,
    ) -> Result<Vec<T>, StateError> {
        rows.iter()
            .map(|r| f(r).map_err(|what| self.unreadable(what)))
            .collect()
    }

    fn unreadable(&self, what: String) -> StateError {
        StateError::Unreadable {
            at: self.at.to_string(),
            what,
        }
    }

    /// This installation's id, generated on first use and kept for the life
    /// of the state: it tells this installation's tokens from another's that
    /// manages the same name on the same instance.
    pub fn install_id(&self) -> Result<String, StateError> {
        let fresh = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let out = self.tx(vec![
            Stmt::new(
                "INSERT INTO meta (key, value) VALUES ('install_id', $1) ON CONFLICT (key) DO NOTHING",
                args![fresh],
            ),
            Stmt::new("SELECT value FROM meta WHERE key = 'install_id'", vec![]),
        ])?;
        let rows = &out[1].rows;
        self.read(rows, |r| r.text(0, "meta.install_id"))?
            .pop()
            .ok_or_else(|| self.unreadable("meta.install_id (missing)".into()))
    }

    /// A small remembered value (`meta` table), `None` if never set.
    pub fn meta_get(&self, key: &str) -> Result<Option<String>, StateError> {
        Ok(self
            .query("SELECT value FROM meta WHERE key = $1", args![key], |r| {
                r.text(0, "meta.value")
            })?
            .pop())
    }

    /// Remember a small value (`meta` table).
    pub fn meta_put(&self, key: &str, value: &str) -> Result<(), StateError> {
        self.exec(
            "INSERT INTO meta (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            args![key, value],
        )?;
        Ok(())
    }
}
