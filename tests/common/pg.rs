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

/// A PostgreSQL cluster of its own (Debian's binaries, `initdb` in a
/// temporary directory, run as the `postgres` user as `.ci/postgres.sh`
/// does), for a test that restarts the server: restarting the shared one
/// would cut every other test's connections. Stopped when dropped. `None`
/// (skip) locally without the binaries or root; under `CI` it must work.
pub struct Cluster {
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
    /// `postgresql://kcr@127.0.0.1:PORT/postgres` (trust on loopback: a
    /// throw-away cluster).
    pub url: String,
}

impl Cluster {
    pub fn start() -> Option<Cluster> {
        let bin = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
            let mut v: Vec<_> = d
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect();
            v.sort();
            v.pop()
        });
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.trim_ascii() == b"0")
            .unwrap_or(false);
        let Some(bin) = bin.filter(|_| root) else {
            if std::env::var_os("CI").is_some() {
                panic!("CI is set but PostgreSQL's binaries or root are missing");
            }
            eprintln!("skipped: no PostgreSQL binaries under /usr/lib/postgresql, or not root");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("chown")
            .args(["postgres", dir.path().to_str().unwrap()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "chown postgres {:?}", dir.path());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = Cluster {
            url: format!("postgresql://kcr@127.0.0.1:{port}/postgres"),
            bin,
            dir,
            port,
        };
        let data = c.dir.path().join("data");
        c.as_postgres(&[
            "initdb",
            "-D",
            data.to_str().unwrap(),
            "-U",
            "kcr",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        ]);
        c.pg_ctl("start");
        Some(c)
    }

    fn as_postgres(&self, args: &[&str]) {
        let out = std::process::Command::new("timeout")
            .arg("60")
            .args(["runuser", "-u", "postgres", "--"])
            .arg(self.bin.join(args[0]))
            .args(&args[1..])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `pg_ctl start|stop|restart`, waiting for it (fast shutdown: open
    /// connections are cut, as in a real restart).
    pub fn pg_ctl(&self, what: &str) {
        let d = self.dir.path();
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off",
            self.port,
            d.display()
        );
        self.as_postgres(&[
            "pg_ctl",
            "-D",
            d.join("data").to_str().unwrap(),
            "-l",
            d.join("postgres.log").to_str().unwrap(),
            "-m",
            "fast",
            "-w",
            "-t",
            "30",
            "-o",
            &opts,
            what,
        ]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let d = self.dir.path();
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args([
                "-D",
                d.join("data").to_str().unwrap(),
                "-m",
                "immediate",
                "stop",
            ])
            .output();
    }
}
