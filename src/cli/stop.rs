//! Stop signals during an apply.

use super::{CliError, failed};

/// SIGINT or SIGTERM during an apply: the first stops at the next action
/// boundary (`soft`), a second abandons the current action (`hard`); the
/// runner closes the run and its audit records either way. `code()` is the
/// exit code of the first signal: 130 (SIGINT) or 143 (SIGTERM).
pub(super) struct StopSignals {
    code: std::sync::Arc<std::sync::atomic::AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

impl StopSignals {
    pub(super) fn install(
        soft: &tokio_util::sync::CancellationToken,
        hard: &tokio_util::sync::CancellationToken,
    ) -> Result<StopSignals, CliError> {
        use std::sync::atomic::{AtomicU8, Ordering};
        let (soft, hard) = (soft.clone(), hard.clone());
        let code = std::sync::Arc::new(AtomicU8::new(130));
        #[cfg(unix)]
        let (mut int, mut term) = {
            use tokio::signal::unix::{SignalKind, signal};
            let install = |k| signal(k).map_err(|e| failed(e, "installing signal handlers"));
            (
                install(SignalKind::interrupt())?,
                install(SignalKind::terminate())?,
            )
        };
        let task = {
            let code = code.clone();
            tokio::spawn(async move {
                #[cfg(unix)]
                let mut next = async || {
                    tokio::select! {
                        _ = int.recv() => 130u8,
                        _ = term.recv() => 143u8,
                    }
                };
                #[cfg(not(unix))]
                let next = async || {
                    let _ = tokio::signal::ctrl_c().await;
                    130u8
                };
                code.store(next().await, Ordering::SeqCst);
                super::term::eprintln_safe(
                    "stopping after the current action (Ctrl-C or SIGTERM again to stop now)",
                );
                soft.cancel();
                next().await;
                super::term::eprintln_safe("stopping now: the current action's outcome is unknown");
                hard.cancel();
            })
        };
        Ok(StopSignals { code, task })
    }

    fn code(&self) -> u8 {
        self.code.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(super) fn error(&self, text: String) -> CliError {
        match self.code() {
            143 => CliError::Terminated(text),
            _ => CliError::Interrupted(text),
        }
    }
}

impl Drop for StopSignals {
    fn drop(&mut self) {
        self.task.abort();
    }
}
