//! A daemon replica: the real binary (`run`) with a config in a directory of
//! its own, its log collected, its admin server on 127.0.0.1:0. Killed
//! (SIGKILL) when dropped. Blocking: call from a thread of its own.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Replica {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    logs: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Replica {
    /// Start `run --config` on `config` (written to a fresh directory) with
    /// `envs`; waits until it is ready (at most 30s).
    pub fn start(config: &str, envs: &[(&str, &str)]) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(super::BIN);
        cmd.args(["run", "--config", path.to_str().unwrap()])
            .env_remove("KCR_HOUSEKEEPER_LOG")
            .env_remove("KCR_HOUSEKEEPER_FAILPOINT")
            .env_remove("KCR_HOUSEKEEPER_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let keep = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("kcr-housekeeper ready") {
                    let _ = tx.send(line.clone());
                }
                let mut l = keep.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("replica not ready:\n{}", logs.lock().unwrap()));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let listen = v["fields"]["listen"]
            .as_str()
            .or(v["listen"].as_str())
            .unwrap_or_else(|| panic!("no listen address in {line}"))
            .to_owned();
        Replica {
            child,
            base: format!("http://{listen}"),
            logs,
            _dir: dir,
        }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `GET path` within 1s: status and body (`None`: no answer).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let r = client.get(format!("{}{path}", self.base)).send().ok()?;
        let status = r.status().as_u16();
        Some((status, r.text().ok()?))
    }

    /// `POST path` with a bearer token: status and JSON body.
    pub fn post(&self, path: &str, token: &str) -> (u16, serde_json::Value) {
        let r = reqwest::blocking::Client::new()
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .timeout(Duration::from_secs(5))
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or_default())
    }

    /// `/jobs` as JSON (`None`: no answer: stopped, killed or paused).
    pub fn jobs(&self) -> Option<serde_json::Value> {
        let (status, body) = self.get("/jobs")?;
        (status == 200).then(|| serde_json::from_str(&body).unwrap())
    }

    /// Whether it says it leads (`None`: no answer).
    pub fn leads(&self) -> Option<bool> {
        self.jobs().map(|j| j["leader"] == true)
    }

    /// The value of an unlabelled metric.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics")?;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait up to `within` for the exit code.
    pub fn stop(&mut self, within: Duration) -> Option<i32> {
        self.signal("TERM");
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        // A paused one must be resumed to die promptly.
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        self.kill();
    }
}
