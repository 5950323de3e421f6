#![forbid(unsafe_code)]

use clap::Parser;
use kcr_housekeeper::cli::{self, Cli, Command};
use kcr_housekeeper::config::LogFormat;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` and `demo` switch to their config's [log] settings; this covers the rest.
    if !matches!(cli.command, Command::Run | Command::Demo(_)) {
        cli::init_logging(LogFormat::Text, "warn");
    }
    let mut stdout = std::io::stdout();
    match cli::run(cli, &mut stdout).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
