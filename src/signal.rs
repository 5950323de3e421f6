//! The process's signals, in one place.
//!
//! The streams are created once, when the daemon starts, and live as long as
//! it: a signal that arrives while the daemon is busy (say a SIGTERM during a
//! SIGHUP reload) waits in its stream instead of being lost, which is what
//! happened when each wait created fresh streams.

use std::io;

/// What a signal asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT or SIGTERM: stop scheduling, drain, exit.
    Stop,
    /// SIGHUP: re-read the configuration.
    Reload,
}

/// The daemon's signal streams, installed once.
pub struct Signals {
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers. Call before anything that takes time, so a
    /// signal sent during start-up is seen too.
    pub fn install() -> io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                hup: signal(SignalKind::hangup())?,
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// The next signal; a stop wins over a reload that arrived with it.
    pub async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            tokio::select! {
                biased;
                _ = self.term.recv() => Signal::Stop,
                _ = self.int.recv() => Signal::Stop,
                _ = self.hup.recv() => Signal::Reload,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop
        }
    }

    /// Waits for SIGINT or SIGTERM, ignoring SIGHUP.
    pub async fn stop(&mut self) {
        while self.next().await != Signal::Stop {}
    }
}

/// Resolves on SIGINT or SIGTERM (for commands that only need to stop).
pub async fn shutdown() -> io::Result<()> {
    Signals::install()?.stop().await;
    Ok(())
}
