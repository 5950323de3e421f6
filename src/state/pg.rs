//! The PostgreSQL backend: tokio-postgres over rustls, driven on a
//! dedicated thread with its own single-threaded runtime (see `mod.rs` for
//! why). [`Pg::run`] sends a batch of statements to that thread and waits
//! for the answer; the thread owns the one connection.
//!
//! # Safe behind PgBouncer's transaction pooling
//!
//! Every statement is sent with `query_typed`: Parse/Bind/Execute of the
//! *unnamed* statement with the parameter types given, in one round trip,
//! so no named prepared statement outlives its transaction (plain
//! `Client::query` would prepare a named `s0`, `s1`… statement and close it
//! later, possibly on another server connection). Transactions are plain
//! `BEGIN`…`COMMIT` on one client; no `SET`, no temporary table, no
//! advisory lock, no `LISTEN`: nothing is kept in the session. The schema
//! migration takes a transaction-scoped `LOCK TABLE schema_version`.
//!
//! # TLS
//!
//! `sslmode` in the URL: `disable`, `prefer` (the default: TLS when the
//! server offers it) or `require`. The server certificate is always
//! verified (stricter than libpq's `require`), against the system's trust
//! store and the Mozilla roots.
//!
//! # A lost connection
//!
//! A statement that fails because the connection broke (PostgreSQL
//! restarted, the backend was terminated) is an error the caller sees: a
//! write that fails so may or may not have been applied, and it is never
//! retried blindly (the Step 7 rule: never pretend a write happened). The
//! connection is dropped and the next call connects again, before sending
//! anything. A statement without an answer within [`ANSWER_TIMEOUT`] is the
//! same error. While idle, the thread reconnects a broken connection every
//! [`IDLE_CHECK`], so that [`Pg::is_up`] tells the truth between jobs.

use super::schema::{MIGRATIONS, SCHEMA_VERSION};
use super::{Fence, Outcome, Param, Row, StateError, Stmt, Value};
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How long a batch of statements may take before the connection is dropped.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// The connect timeout when the URL gives none (`connect_timeout=`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an idle worker checks (and re-establishes) its connection.
const IDLE_CHECK: Duration = Duration::from_secs(5);

type Answer = Result<Vec<Outcome>, StateError>;

struct Request {
    stmts: Vec<Stmt>,
    tx: bool,
    /// Checked first, in the same transaction (which it makes one).
    fence: Option<Fence>,
    reply: std::sync::mpsc::SyncSender<Answer>,
}

/// A handle on the connection thread; it stops when the handle is dropped.
pub(super) struct Pg {
    requests: tokio::sync::mpsc::UnboundedSender<Request>,
    location: String,
    up: Arc<AtomicBool>,
}

/// `postgresql://host:port/database`: where, without user or password.
fn location(config: &Config) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            };
            let port = config
                .get_ports()
                .get(i)
                .or(config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    format!(
        "postgresql://{}/{}",
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

/// TLS with verified certificates: the system's trust store and the Mozilla roots.
fn tls() -> MakeRustlsConnect {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    MakeRustlsConnect::new(config)
}

impl Pg {
    /// Parse `url`, start the connection thread, connect and migrate.
    pub fn connect(url: &SecretString) -> Result<Pg, StateError> {
        let mut config: Config = url.expose_secret().parse().map_err(|_| StateError::Url)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("kcr-housekeeper");
        let at = location(&config);
        let up = Arc::new(AtomicBool::new(false));
        let (requests, rx) = tokio::sync::mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let worker = Worker {
            config,
            tls: tls(),
            client: None,
            at: at.clone(),
            up: up.clone(),
            generation: Arc::new(AtomicU64::new(0)),
        };
        let gone = || StateError::WorkerGone { at: at.clone() };
        std::thread::Builder::new()
            .name("kcr-state-pg".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match rt {
                    Ok(rt) => rt.block_on(worker.run(rx, ready_tx)),
                    Err(_) => {
                        let _ = ready_tx.send(Err(StateError::WorkerGone { at: worker.at }));
                    }
                }
            })
            .map_err(|_| gone())?;
        ready_rx.recv().map_err(|_| gone())??;
        Ok(Pg {
            requests,
            location: at,
            up,
        })
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Run `stmts` (in one transaction if `tx` or `fence`; behind the
    /// fence if given) and wait for the answer.
    pub fn run(&self, stmts: Vec<Stmt>, tx: bool, fence: Option<Fence>) -> Answer {
        let gone = || StateError::WorkerGone {
            at: self.location.clone(),
        };
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.requests
            .send(Request {
                stmts,
                tx: tx || fence.is_some(),
                fence,
                reply,
            })
            .map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}

struct Worker {
    config: Config,
    tls: MakeRustlsConnect,
    client: Option<Client>,
    at: String,
    up: Arc<AtomicBool>,
    /// Which connection is current: a connection task that ends marks the
    /// backend down only if it is still the current one.
    generation: Arc<AtomicU64>,
}

impl Worker {
    async fn run(
        mut self,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<Request>,
        ready: std::sync::mpsc::SyncSender<Result<(), StateError>>,
    ) {
        let first = self.ensure().await.map(|_| ());
        let ok = first.is_ok();
        let _ = ready.send(first);
        if !ok {
            return;
        }
        let mut tick = tokio::time::interval(IDLE_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                req = rx.recv() => {
                    let Some(req) = req else { break };
                    let answer = self.serve(&req).await;
                    let _ = req.reply.send(answer);
                }
                _ = tick.tick() => {
                    if self.client.as_ref().is_none_or(Client::is_closed)
                        && let Err(e) = self.ensure().await
                    {
                        tracing::debug!(at = %self.at, error = %e, "state database still unreachable");
                    }
                }
            }
        }
    }

    fn pg_error(&self, source: tokio_postgres::Error) -> StateError {
        StateError::Postgres {
            at: self.at.clone(),
            source,
        }
    }

    /// The connection, made (and the schema checked) if there is none.
    async fn ensure(&mut self) -> Result<&Client, StateError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.up.store(false, Ordering::Relaxed);
            let connected =
                tokio::time::timeout(ANSWER_TIMEOUT, self.config.connect(self.tls.clone())).await;
            let (client, connection) = match connected {
                Ok(r) => r.map_err(|e| self.pg_error(e))?,
                Err(_) => {
                    return Err(StateError::Timeout {
                        at: self.at.clone(),
                        secs: ANSWER_TIMEOUT.as_secs(),
                    });
                }
            };
            let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
            let (current, up, at) = (self.generation.clone(), self.up.clone(), self.at.clone());
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(at = %at, error = %e, "state database connection lost");
                }
                if current.load(Ordering::SeqCst) == generation {
                    up.store(false, Ordering::Relaxed);
                }
            });
            match tokio::time::timeout(ANSWER_TIMEOUT, migrate(&client, &self.at)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(StateError::Timeout {
                        at: self.at.clone(),
                        secs: ANSWER_TIMEOUT.as_secs(),
                    });
                }
            }
            self.client = Some(client);
            self.up.store(true, Ordering::Relaxed);
        }
        Ok(self.client.as_ref().expect("connected above"))
    }

    async fn serve(&mut self, req: &Request) -> Answer {
        let answer = self.serve_inner(req).await;
        match &answer {
            Ok(_) => self.up.store(true, Ordering::Relaxed),
            // The database refused one statement (a constraint, a syntax
            // error): it is up and the connection is fine.
            Err(StateError::Postgres { source, .. })
                if source
                    .as_db_error()
                    .is_some_and(|d| d.severity() == "ERROR") => {}
            // The lease was not ours: the database answered.
            Err(StateError::Fenced { .. }) => self.up.store(true, Ordering::Relaxed),
            // No answer, a broken connection, or the server ending the
            // session (FATAL: terminated, shutting down): drop it (the fate
            // of its last statement is unknown); the next call reconnects.
            Err(_) => {
                self.up.store(false, Ordering::Relaxed);
                self.client = None;
            }
        }
        answer
    }

    async fn serve_inner(&mut self, req: &Request) -> Answer {
        let at = self.at.clone();
        let client = self.ensure().await?;
        if !req.tx {
            let mut out = Vec::with_capacity(req.stmts.len());
            for s in &req.stmts {
                out.push(statement(client, s, &at).await?);
            }
            return Ok(out);
        }
        simple(client, "BEGIN", &at).await?;
        if let Some(f) = &req.fence {
            // FOR SHARE: a takeover (an UPDATE of the row) waits for this
            // transaction, so nothing commits behind a lost lease.
            let check = Stmt::new(
                "SELECT 1 FROM leader_lease WHERE name = $1 AND holder = $2 AND epoch = $3
                 AND valid_until > clock_timestamp() + ($4::float8 * interval '1 millisecond') FOR SHARE",
                vec![
                    Param::Text(Some(f.name.clone())),
                    Param::Text(Some(f.holder.clone())),
                    Param::Int(Some(f.epoch)),
                    Param::Int(Some(f.margin.as_millis() as i64)),
                ],
            );
            match statement(client, &check, &at).await {
                Ok(o) if !o.rows.is_empty() => {}
                Ok(_) => {
                    let _ = simple(client, "ROLLBACK", &at).await;
                    return Err(StateError::Fenced {
                        at,
                        name: f.name.clone(),
                        epoch: f.epoch,
                    });
                }
                Err(e) => {
                    let _ = simple(client, "ROLLBACK", &at).await;
                    return Err(e);
                }
            }
        }
        let mut out = Vec::with_capacity(req.stmts.len());
        for s in &req.stmts {
            match statement(client, s, &at).await {
                Ok(o) => out.push(o),
                Err(e) => {
                    // Best effort: a broken connection rolls back by itself.
                    let _ = simple(client, "ROLLBACK", &at).await;
                    return Err(e);
                }
            }
        }
        simple(client, "COMMIT", &at).await?;
        Ok(out)
    }
}

/// `f` within [`ANSWER_TIMEOUT`].
async fn bounded<T>(
    at: &str,
    f: impl std::future::Future<Output = Result<T, StateError>>,
) -> Result<T, StateError> {
    tokio::time::timeout(ANSWER_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| {
            Err(StateError::Timeout {
                at: at.to_owned(),
                secs: ANSWER_TIMEOUT.as_secs(),
            })
        })
}

/// A statement without parameters, as a simple query (`BEGIN`, `COMMIT`).
async fn simple(client: &Client, sql: &str, at: &str) -> Result<(), StateError> {
    bounded(at, async {
        client
            .batch_execute(sql)
            .await
            .map_err(|source| StateError::Postgres {
                at: at.to_owned(),
                source,
            })
    })
    .await
}

/// One statement: the unnamed statement, parameters typed, one round trip.
async fn statement(client: &Client, s: &Stmt, at: &str) -> Result<Outcome, StateError> {
    bounded(at, statement_unbounded(client, s, at)).await
}

async fn statement_unbounded(client: &Client, s: &Stmt, at: &str) -> Result<Outcome, StateError> {
    use futures::TryStreamExt;
    let params: Vec<(&(dyn ToSql + Sync), Type)> = s
        .args
        .iter()
        .map(|p| match p {
            Param::Int(v) => (v as &(dyn ToSql + Sync), Type::INT8),
            Param::Text(v) => (v as &(dyn ToSql + Sync), Type::TEXT),
            Param::Blob(v) => (v as &(dyn ToSql + Sync), Type::BYTEA),
        })
        .collect();
    let err = |source| StateError::Postgres {
        at: at.to_owned(),
        source,
    };
    let stream = client
        .query_typed_raw(&s.sql, params.iter().map(|(v, t)| (*v, t.clone())))
        .await
        .map_err(err)?;
    let mut stream = Box::pin(stream);
    let mut rows = Vec::new();
    while let Some(row) = stream.try_next().await.map_err(err)? {
        let mut values = Vec::with_capacity(row.len());
        for i in 0..row.len() {
            values.push(value(&row, i, at)?);
        }
        rows.push(Row(values));
    }
    let changed = stream.rows_affected().unwrap_or(0);
    Ok(Outcome { rows, changed })
}

fn value(row: &tokio_postgres::Row, i: usize, at: &str) -> Result<Value, StateError> {
    let unreadable = |what: String| StateError::Unreadable {
        at: at.to_owned(),
        what,
    };
    let column = &row.columns()[i];
    let bad = |e: tokio_postgres::Error| unreadable(format!("column {}: {e}", column.name()));
    let t = column.type_();
    Ok(if *t == Type::INT8 {
        row.try_get::<_, Option<i64>>(i)
            .map_err(bad)?
            .map_or(Value::Null, Value::Int)
    } else if *t == Type::INT4 {
        row.try_get::<_, Option<i32>>(i)
            .map_err(bad)?
            .map_or(Value::Null, |v| Value::Int(v.into()))
    } else if *t == Type::INT2 {
        row.try_get::<_, Option<i16>>(i)
            .map_err(bad)?
            .map_or(Value::Null, |v| Value::Int(v.into()))
    } else if *t == Type::BOOL {
        row.try_get::<_, Option<bool>>(i)
            .map_err(bad)?
            .map_or(Value::Null, |v| Value::Int(v.into()))
    } else if *t == Type::BYTEA {
        row.try_get::<_, Option<Vec<u8>>>(i)
            .map_err(bad)?
            .map_or(Value::Null, Value::Blob)
    } else if [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME].contains(t) {
        row.try_get::<_, Option<String>>(i)
            .map_err(bad)?
            .map_or(Value::Null, Value::Text)
    } else {
        return Err(unreadable(format!(
            "column {} of type {t} (not supported)",
            column.name()
        )));
    })
}

/// Bring the schema up to date in one transaction, under a
/// transaction-scoped lock (replicas starting together migrate once);
/// refuse a newer schema.
async fn migrate(client: &Client, at: &str) -> Result<(), StateError> {
    let err = |source| StateError::Postgres {
        at: at.to_owned(),
        source,
    };
    client
        .batch_execute(
            "BEGIN;
             CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL);
             LOCK TABLE schema_version IN EXCLUSIVE MODE;",
        )
        .await
        .map_err(err)?;
    let result = async {
        let found = statement(
            client,
            &Stmt::new("SELECT max(version) FROM schema_version", vec![]),
            at,
        )
        .await?
        .rows
        .first()
        .and_then(|r| match r.0.first() {
            Some(Value::Int(v)) => Some(*v),
            _ => None,
        })
        .unwrap_or(0);
        if found > SCHEMA_VERSION {
            return Err(StateError::NewerSchema {
                at: at.to_owned(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        for m in MIGRATIONS.iter().skip(found.max(0) as usize) {
            if !m.postgres.is_empty() {
                client.batch_execute(m.postgres).await.map_err(err)?;
            }
        }
        if found < SCHEMA_VERSION {
            client
                .batch_execute("DELETE FROM schema_version")
                .await
                .map_err(err)?;
            statement(
                client,
                &Stmt::new(
                    "INSERT INTO schema_version (version) VALUES ($1)",
                    vec![Param::Int(Some(SCHEMA_VERSION))],
                ),
                at,
            )
            .await?;
            tracing::info!(at, version = SCHEMA_VERSION, "state schema migrated");
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => client.batch_execute("COMMIT").await.map_err(err),
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}
