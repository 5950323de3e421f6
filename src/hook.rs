//! Running an operator's program (a token `exec` sink, an in-use `exec`
//! source): a cleared environment (only [`PASSED_ENV`] and what the caller
//! sets), its own process group, killed as a whole on timeout or when the
//! caller gives up, and the tail of its error output kept for the error.
//!
//! Its success is decided by its own exit status within the timeout, not by
//! its standard error reaching its end. Processes it leaves running in the
//! background after it exited are left alone (as a `docker`/systemd
//! `ExecStartPost` hook may start a daemon); once it is reaped its
//! process-group id may be reused, so killing that group could hit someone
//! else.

use crate::failpoint;
use std::process::ExitStatus;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Variables a program inherits from the daemon; nothing else does.
pub const PASSED_ENV: [&str; 3] = ["PATH", "HOME", "LANG"];

/// At most this much of a program's error output is kept: the last bytes it
/// wrote (the end of its output is where its error usually is).
pub const STDERR_LIMIT: usize = 64 * 1024;
/// How long a failed program's error output is still read after it exited:
/// a background process it left behind may hold the pipe open indefinitely.
const STDERR_GRACE: Duration = Duration::from_secs(1);

/// The failpoints a run passes, named by the caller's subsystem.
pub struct Points {
    pub spawn: &'static str,
    pub stdin: &'static str,
    pub wait: &'static str,
}

/// One run of a program.
pub struct Hook<'a> {
    /// Program and arguments (not empty).
    pub command: &'a [String],
    /// Set on top of [`PASSED_ENV`].
    pub env: Vec<(&'a str, &'a str)>,
    pub timeout: Duration,
    /// Written to its standard input, which is then closed.
    pub stdin: &'a [u8],
    /// Keep its standard output, up to this many bytes (more is an error);
    /// `None`: standard output goes to `/dev/null`.
    pub stdout_limit: Option<usize>,
    pub points: Points,
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("cannot start: {0}")]
    Start(std::io::Error),
    #[error("{0}")]
    Wait(std::io::Error),
    #[error("did not finish within {}; its process group was killed", crate::duration::format(*.0))]
    Timeout(Duration),
    #[error("printed more than {0} bytes")]
    TooMuchOutput(usize),
    /// It exited unsuccessfully; the tail of its error output, raw (the
    /// caller decides what of it may be shown).
    #[error("exited with {status}")]
    Failed { status: ExitStatus, stderr: ErrTail },
    /// A test asked for a fault here (`failpoints` feature only).
    #[error("{0}")]
    Injected(String),
}

/// Kills a program's whole process group (it and everything it started)
/// when dropped while armed: on timeout, on an error, and when the caller is
/// cancelled.
struct GroupKill {
    pgid: Option<i32>,
}

impl GroupKill {
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // The group leader is our unreaped child, so the id is still ours.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last [`STDERR_LIMIT`] bytes of a program's error output.
#[derive(Debug, Default)]
pub struct ErrTail {
    pub buf: Vec<u8>,
    /// Its beginning was dropped: the buffer starts at a cut.
    pub cut: bool,
}

impl ErrTail {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
        if self.buf.len() > STDERR_LIMIT {
            let excess = self.buf.len() - STDERR_LIMIT;
            self.buf.drain(..excess);
            self.cut = true;
        }
    }
}

/// Read `stderr` to its end, keeping its tail. The pipe is drained rather
/// than closed when the limit is reached, so a verbose program never blocks
/// or dies on a write.
async fn read_tail(mut stderr: tokio::process::ChildStderr, tail: &mut ErrTail) {
    let mut chunk = vec![0u8; 8192];
    loop {
        match stderr.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => tail.push(&chunk[..n]),
        }
    }
}

/// Read `stdout` to its end, at most `limit` bytes.
async fn read_out(
    stdout: Option<tokio::process::ChildStdout>,
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), HookError> {
    let Some(mut stdout) = stdout else {
        return Ok(());
    };
    let mut chunk = vec![0u8; 8192];
    loop {
        match stdout.read(&mut chunk).await {
            Ok(0) => return Ok(()),
            Ok(n) if out.len() + n > limit => return Err(HookError::TooMuchOutput(limit)),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(HookError::Wait(e)),
        }
    }
}

/// Run `h`: its standard output (empty unless `stdout_limit`) when it exits
/// 0 within the timeout (having closed its standard output, when kept).
pub async fn run(h: &Hook<'_>) -> Result<Vec<u8>, HookError> {
    let fp = |name: &'static str| failpoint::hit(name, HookError::Injected);
    let mut cmd = tokio::process::Command::new(&h.command[0]);
    cmd.args(&h.command[1..]).env_clear();
    for key in PASSED_ENV {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    cmd.envs(h.env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(match h.stdout_limit {
            Some(_) => std::process::Stdio::piped(),
            None => std::process::Stdio::null(),
        })
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        // Its own process group (id = its pid), so that a timeout ends
        // everything it started, not only itself.
        .process_group(0);
    fp(h.points.spawn)?;
    let mut child = cmd.spawn().map_err(HookError::Start)?;
    // Declared after `child`: dropped (the group killed) before it.
    let mut group = GroupKill {
        pgid: child.id().and_then(|id| i32::try_from(id).ok()),
    };
    let mut stdin = child.stdin.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let stdout = child.stdout.take();
    let mut tail = ErrTail::default();
    let mut out = Vec::new();
    let status = {
        let read_err = read_tail(stderr, &mut tail);
        tokio::pin!(read_err);
        let mut err_done = false;
        let read_stdout = read_out(stdout, h.stdout_limit.unwrap_or(0), &mut out);
        tokio::pin!(read_stdout);
        let mut out_done = h.stdout_limit.is_none();
        let run = async {
            fp(h.points.stdin)?;
            // A program that exits without reading its input is its own
            // failure; keep going to collect the status.
            let _ = stdin.write_all(h.stdin).await;
            drop(stdin);
            fp(h.points.wait)?;
            // Drain its error output while waiting, so that it never blocks
            // on a full pipe; but only its exit (and the end of a kept
            // standard output) ends the wait.
            let mut status = None;
            loop {
                tokio::select! {
                    s = child.wait(), if status.is_none() => status = Some(s.map_err(HookError::Wait)?),
                    () = &mut read_err, if !err_done => err_done = true,
                    r = &mut read_stdout, if !out_done => { r?; out_done = true; }
                }
                if let Some(s) = status
                    && (out_done || !s.success())
                {
                    return Ok::<ExitStatus, HookError>(s);
                }
            }
        };
        let status = match tokio::time::timeout(h.timeout, run).await {
            Ok(r) => r?,
            Err(_) => {
                group.kill();
                // Reap it; bounded, should the group kill have failed somehow.
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                return Err(HookError::Timeout(h.timeout));
            }
        };
        // It exited and was reaped: its process group id may be reused now.
        group.pgid = None;
        if !status.success() && !err_done {
            // What it wrote before exiting is in the pipe already; a
            // background process may keep it open, so do not wait for its end.
            let _ = tokio::time::timeout(STDERR_GRACE, &mut read_err).await;
        }
        status
    };
    if status.success() {
        return Ok(out);
    }
    Err(HookError::Failed {
        status,
        stderr: tail,
    })
}
