//! How a command ended: [`CliError`] and its exit code, and the error line
//! printed once on standard error.

use super::term;
use crate::config::{self, Config, ConfigErrors};

/// How a command ended, and so the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Exit 2: bad usage or config.
    #[error("{0}")]
    Config(ConfigErrors),
    /// Exit 2.
    #[error("{0}")]
    Usage(String),
    /// Exit 1: the work failed.
    #[error("{}", chain(.0))]
    Failed(anyhow::Error),
    /// Exit 3: a safety limit blocked the whole run.
    #[error("{0}")]
    Blocked(String),
    /// Exit 130: stopped by Ctrl-C (SIGINT) between two actions.
    #[error("{0}")]
    Interrupted(String),
    /// Exit 143: stopped by SIGTERM (as by Ctrl-C, with SIGTERM's code).
    #[error("{0}")]
    Terminated(String),
    /// Exit 0, silently: the reader of standard output went away
    /// (`plan … | head`), as other command-line tools do.
    #[error("standard output closed")]
    BrokenPipe,
}

/// An error and its causes, each said once: a cause whose text its
/// wrapper already holds (`#[error("…: {0}")]`, `transparent`) is left out.
fn chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if parts.iter().any(|p| p.contains(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Failed(_) => 1,
            CliError::Config(_) | CliError::Usage(_) => 2,
            CliError::Blocked(_) => 3,
            CliError::Interrupted(_) => 130,
            CliError::Terminated(_) => 143,
            CliError::BrokenPipe => 0,
        }
    }

    /// Say what an API error was talking to: the KCR endpoint's host (the
    /// client writes `<endpoint>` where a request URL would carry its
    /// signature; the host alone is safe to show).
    pub(super) fn with_endpoint(self, c: &Config) -> CliError {
        let CliError::Failed(e) = self else {
            return self;
        };
        let text = chain(&e);
        let api = text.contains("<endpoint>")
            || e.chain()
                .any(|c| c.downcast_ref::<crate::kcr::Error>().is_some());
        if !api {
            return CliError::Failed(e);
        }
        let host = endpoint_host(c);
        let text = text.replace("<endpoint>", &host);
        if text.contains(&host) {
            CliError::Failed(anyhow::anyhow!(text))
        } else {
            CliError::Failed(anyhow::anyhow!("{text} (endpoint {host})"))
        }
    }
}

/// The KCR endpoint's host and port, or `sim:demo`.
fn endpoint_host(c: &Config) -> String {
    match &c.kcr.endpoint {
        config::Endpoint::Url(u) => reqwest::Url::parse(u)
            .ok()
            .and_then(|u| {
                u.host_str()
                    .map(|h| u.port().map_or(h.to_owned(), |p| format!("{h}:{p}")))
            })
            .unwrap_or_else(|| u.clone()),
        config::Endpoint::SimDemo => "sim:demo".to_owned(),
    }
}

/// Print a failed command's error on standard error, once (nothing for a
/// closed standard output).
pub fn print_error(e: &CliError) {
    if matches!(e, CliError::BrokenPipe) {
        return;
    }
    term::eprintln_safe(&format!(
        "{} {e}",
        term::paint(term::stderr_colour(), term::red(), "error:")
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("invalid client configuration: {0}")]
    struct Inner(String);

    /// A wrapper that says its source's text and also returns it as the source.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot build the KCR client: {0}")]
    struct Outer(#[source] Inner);

    #[test]
    fn each_cause_is_said_once() {
        let e = anyhow::Error::new(Outer(Inner("bad region".into()))).context("connecting");
        // What `{:#}` prints: the inner text twice.
        assert_eq!(
            format!("{e:#}"),
            "connecting: cannot build the KCR client: invalid client configuration: bad region: invalid client configuration: bad region"
        );
        assert_eq!(
            CliError::Failed(e).to_string(),
            "connecting: cannot build the KCR client: invalid client configuration: bad region"
        );
    }
}
