//! The terminal, as the global flags set it: colour (`--color`, `NO_COLOR`)
//! and verbosity (`-q`, `-v`). Set once by [`super::run`]; read by logging,
//! progress bars, warnings and the few styled words of the output.

use clap::ValueEnum;
use std::io::IsTerminal;
use std::sync::OnceLock;

/// When to colour output and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless NO_COLOR is set
    #[default]
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Term {
    pub color: ColorChoice,
    /// -1 quiet (errors only), 0 default, 1.. more logs.
    pub verbosity: i8,
}

static TERM: OnceLock<Term> = OnceLock::new();

pub(super) fn set(t: Term) {
    let _ = TERM.set(t);
}

fn get() -> Term {
    TERM.get().copied().unwrap_or_default()
}

/// Colour on a stream: `always` and `never` as said (a flag beats the
/// environment); `auto` on a terminal when `NO_COLOR` is unset or empty.
pub(super) fn colour(choice: ColorChoice, terminal: bool, no_color: Option<&str>) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => terminal && no_color.is_none_or(str::is_empty),
    }
}

fn colour_on(terminal: bool) -> bool {
    colour(
        get().color,
        terminal,
        std::env::var("NO_COLOR").ok().as_deref(),
    )
}

pub(super) fn stdout_colour() -> bool {
    colour_on(std::io::stdout().is_terminal())
}

pub(super) fn stderr_colour() -> bool {
    colour_on(std::io::stderr().is_terminal())
}

/// `-q`: errors only (no warnings, no progress bars).
pub(super) fn quiet() -> bool {
    get().verbosity < 0
}

/// The log filter `-q`/`-v` ask for, if they ask.
pub(super) fn log_level() -> Option<&'static str> {
    match get().verbosity {
        0 => None,
        ..0 => Some("error"),
        1 => Some("info"),
        2 => Some("debug"),
        _ => Some("trace"),
    }
}

/// `text` in `style` when `on`.
pub(super) fn paint(on: bool, style: anstyle::Style, text: &str) -> String {
    if on {
        format!("{style}{text}{style:#}")
    } else {
        text.to_owned()
    }
}

pub(super) fn red() -> anstyle::Style {
    anstyle::AnsiColor::Red.on_default().bold()
}

pub(super) fn green() -> anstyle::Style {
    anstyle::AnsiColor::Green.on_default()
}

pub(super) fn yellow() -> anstyle::Style {
    anstyle::AnsiColor::Yellow.on_default().bold()
}

/// A warning on standard error, unless `-q`.
pub(super) fn warn(text: &str) {
    if !quiet() {
        eprintln_safe(&format!(
            "{} {text}",
            paint(stderr_colour(), yellow(), "warning:")
        ));
    }
}

/// Write a line to standard error; a closed stderr is not worth a panic.
pub(super) fn eprintln_safe(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Set up logging once; `KCR_HOUSEKEEPER_LOG` overrides the level, and
/// `-q`/`-v` override both.
pub fn init_logging(format: crate::config::LogFormat, level: &str) {
    let mut level = match log_level() {
        Some(l) => l.to_owned(),
        None => std::env::var("KCR_HOUSEKEEPER_LOG").unwrap_or_else(|_| level.to_owned()),
    };
    // The scheduler crate narrates its own start-up at info; keep it quiet unless asked for.
    if !level.contains("tokio_cron_scheduler") {
        level.push_str(",tokio_cron_scheduler=warn");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&level).unwrap_or_else(|_| "info".into());
    let ansi = stderr_colour();
    // A log line that cannot be written (stderr a closed pipe: the journal or
    // the terminal went away) is dropped. tracing-subscriber would otherwise
    // report it with `eprintln!`, which panics on that same closed stderr and
    // took the daemon down with exit 101.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    let _ = match format {
        crate::config::LogFormat::Text => builder.try_init(),
        crate::config::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_follows_flag_then_no_color_then_terminal() {
        use ColorChoice::*;
        let cases = [
            (Always, false, Some("1"), true),
            (Never, true, None, false),
            (Auto, true, None, true),
            (Auto, false, None, false),
            (Auto, true, Some("1"), false),
            // An empty NO_COLOR does not count (no-color.org).
            (Auto, true, Some(""), true),
        ];
        for (choice, terminal, env, want) in cases {
            assert_eq!(
                colour(choice, terminal, env),
                want,
                "{choice:?} terminal={terminal} NO_COLOR={env:?}"
            );
        }
    }
}
