//! Copying every table from one store to another (`state copy`, e.g. an
//! installation moving from SQLite to PostgreSQL): into an empty target
//! only, in one transaction, then every table's row count is compared.

use super::{Param, StateError, Stmt, Store, Value};

/// A column's type, so that a NULL is sent with the right one.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Int,
    Text,
    Blob,
}

use Kind::{Blob, Int, Text};

/// Every table and its columns, parents before children (foreign keys).
const TABLES: &[(&str, &[(&str, Kind)])] = &[
    (
        "runs",
        &[
            ("id", Int),
            ("job", Text),
            ("trigger", Text),
            ("started_at", Text),
            ("finished_at", Text),
            ("result", Text),
            ("summary", Text),
            ("error", Text),
        ],
    ),
    (
        "audit",
        &[
            ("id", Int),
            ("at", Text),
            ("job", Text),
            ("run_id", Int),
            ("instance", Text),
            ("action", Text),
            ("target", Text),
            ("detail", Text),
            ("outcome", Text),
            ("error", Text),
            ("epoch", Int),
        ],
    ),
    (
        "rotation_journal",
        &[
            ("rotation_id", Text),
            ("token_name", Text),
            ("instance", Text),
            ("token_id", Text),
            ("previous_token_id", Text),
            ("step", Text),
            ("expires_at", Text),
            ("created_at", Text),
            ("updated_at", Text),
            ("error", Text),
            ("absent_since", Text),
        ],
    ),
    (
        "grace_marks",
        &[
            ("key", Text),
            ("first_planned_at", Text),
            ("last_planned_at", Text),
        ],
    ),
    (
        "reports",
        &[
            ("id", Int),
            ("job", Text),
            ("run_id", Int),
            ("generated_at", Text),
            ("format", Text),
            ("body", Blob),
        ],
    ),
    ("meta", &[("key", Text), ("value", Text)]),
    (
        "token_backoff",
        &[
            ("token_name", Text),
            ("instance", Text),
            ("failures", Int),
            ("last_failure_at", Text),
            ("error", Text),
            ("config", Text),
        ],
    ),
    (
        "token_delivery",
        &[
            ("rotation_id", Text),
            ("delivery_group", Text),
            ("token_name", Text),
            ("token_id", Text),
            ("began_at", Text),
            ("delivered_at", Text),
        ],
    ),
];

/// The tables `state copy` copies, in order.
pub const COPIED_TABLES: [&str; 8] = [
    "runs",
    "audit",
    "rotation_journal",
    "grace_marks",
    "reports",
    "meta",
    "token_backoff",
    "token_delivery",
];

/// Tables whose ids come from an identity sequence on PostgreSQL.
const WITH_IDS: [&str; 3] = ["runs", "audit", "reports"];

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(
        "the target {at} is not empty ({table} has {rows} rows); copy only into a new, empty database"
    )]
    NotEmpty {
        at: String,
        table: &'static str,
        rows: i64,
    },
    #[error("copy of {table}: {source_rows} rows read but {target_rows} rows in the target")]
    Count {
        table: &'static str,
        source_rows: i64,
        target_rows: i64,
    },
}

fn param(kind: Kind, v: Value) -> Param {
    match (kind, v) {
        (Int, Value::Null) => Param::Int(None),
        (Text, Value::Null) => Param::Text(None),
        (Blob, Value::Null) => Param::Blob(Vec::new()),
        (_, v) => v.into_param(),
    }
}

impl Store {
    /// Rows in `table` (one of [`COPIED_TABLES`]).
    pub fn count_rows(&self, table: &str) -> Result<i64, StateError> {
        assert!(COPIED_TABLES.contains(&table), "a known table");
        let n = self.query(&format!("SELECT count(*) FROM {table}"), vec![], |r| {
            r.int(0, "count")
        })?;
        Ok(n.first().copied().unwrap_or(0))
    }

    /// Copy every table into `target`, which must be empty; one
    /// transaction, then the row counts of both are compared. Returns the
    /// rows copied per table. Stop the daemon writing `self` first.
    pub fn copy_to(&self, target: &Store) -> Result<Vec<(&'static str, i64)>, CopyError> {
        for table in COPIED_TABLES {
            let rows = target.count_rows(table)?;
            if rows > 0 {
                return Err(CopyError::NotEmpty {
                    at: target.location().to_owned(),
                    table,
                    rows,
                });
            }
        }
        let mut stmts = Vec::new();
        let mut counts = Vec::new();
        for (table, columns) in TABLES {
            let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
            let list = names.join(", ");
            let rows = self
                .one(&format!("SELECT {list} FROM {table} ORDER BY 1"), vec![])?
                .rows;
            let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
            let insert = format!(
                "INSERT INTO {table} ({list}) VALUES ({})",
                placeholders.join(", ")
            );
            counts.push((*table, rows.len() as i64));
            for row in rows {
                let args = columns
                    .iter()
                    .zip(row.0)
                    .map(|((_, kind), v)| param(*kind, v))
                    .collect();
                stmts.push(Stmt::new(insert.clone(), args));
            }
        }
        if target.backend_name() == "postgresql" {
            // Explicit ids were inserted: the identity sequences continue after them.
            for table in WITH_IDS {
                stmts.push(Stmt::new(
                    format!(
                        "SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table} HAVING max(id) IS NOT NULL"
                    ),
                    vec![],
                ));
            }
        }
        target.tx(stmts)?;
        for (table, source_rows) in &counts {
            let target_rows = target.count_rows(table)?;
            if target_rows != *source_rows {
                return Err(CopyError::Count {
                    table,
                    source_rows: *source_rows,
                    target_rows,
                });
            }
        }
        Ok(counts)
    }
}
