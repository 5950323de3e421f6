#![forbid(unsafe_code)]

use kcr_housekeeper::cli;
use std::process::ExitCode;

/// `--version`: the version, the commit and the build date (build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("KCR_HOUSEKEEPER_COMMIT"),
    ", built ",
    env!("KCR_HOUSEKEEPER_BUILD_DATE"),
    ")"
);

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cli::parse(VERSION);
    let mut stdout = std::io::stdout();
    match cli::run(cli, &mut stdout).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            cli::print_error(&e);
            ExitCode::from(e.exit_code())
        }
    }
}
