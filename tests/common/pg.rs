//! A throw-away PostgreSQL database per test on the server of
//! `KCR_TEST_PG_URL` (`.ci/run` starts one). Without the variable a test
//! is skipped, except under `CI`, where it fails.

pub const PG_ENV: &str = "KCR_TEST_PG_URL";

/// The admin URL, or `None` (skip) locally without a server.
pub fn url() -> Option<String> {
    match std::env::var(PG_ENV) {
        Ok(u) if !u.is_empty() => Some(u),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{PG_ENV} is not set but CI is: .ci/run starts PostgreSQL and sets it")
        }
        _ => {
            eprintln!("skipped: {PG_ENV} is not set (no PostgreSQL to test against)");
            None
        }
    }
}

/// Run `sql` on the server of `url` (test set-up), on a thread of its own
/// (callable from async tests too).
pub fn admin(url: &str, sql: &str) -> Vec<tokio_postgres::SimpleQueryMessage> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect to the test PostgreSQL");
            let task = tokio::spawn(conn);
            let out = client.simple_query(&sql).await.expect(&sql);
            drop(client);
            let _ = task.await;
            out
        })
    })
    .join()
    .unwrap()
}

/// The first column of the first row of `sql`.
pub fn scalar(url: &str, sql: &str) -> Option<String> {
    admin(url, sql).into_iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    })
}

/// `url` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
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

/// A fresh database, dropped at the end.
pub struct Db {
    admin: String,
    pub name: String,
    /// Its URL (with the test server's credentials).
    pub url: String,
}

impl Db {
    pub fn create() -> Option<Db> {
        let admin = url()?;
        let name = format!(
            "kcr_it_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        self::admin(&admin, &format!("CREATE DATABASE {name}"));
        let url = with_database(&admin, &name);
        Some(Db { admin, name, url })
    }

    /// The first column of the first row of `sql`, run in this database.
    pub fn scalar(&self, sql: &str) -> Option<String> {
        scalar(&self.url, sql)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        admin(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

pub const PGBOUNCER_ENV: &str = "KCR_TEST_PGBOUNCER_URL";

/// The PgBouncer (transaction pooling) in front of the server of
/// [`url`], or `None` (skip) locally without one; under `CI` it must be set.
pub fn bouncer_url() -> Option<String> {
    match std::env::var(PGBOUNCER_ENV) {
        Ok(u) if !u.is_empty() => Some(u),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{PGBOUNCER_ENV} is not set but CI is: .ci/run starts PgBouncer and sets it")
        }
        _ => {
            eprintln!("skipped: {PGBOUNCER_ENV} is not set (no PgBouncer to test through)");
            None
        }
    }
}
