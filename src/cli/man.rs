//! `completions` and `man`: the shell completion scripts and the man pages,
//! generated from the command definition.

use super::{CliError, io};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write kcr-housekeeper.1 and a page per command (kcr-housekeeper-plan.1, …) into DIR
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    pub shell: clap_complete::Shell,
}

/// `completions SHELL`: the script on `out`.
pub(super) fn completions(
    args: CompletionsArgs,
    cli: &mut clap::Command,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, cli, "kcr-housekeeper", &mut buf);
    out.write_all(&buf).map_err(io)
}

/// `man`: the page on `out`, or with `--dir` one page per command.
pub(super) fn run(
    args: ManArgs,
    mut cli: clap::Command,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match args.dir {
        None => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(cli).render(&mut buf).map_err(io)?;
            out.write_all(&buf).map_err(io)
        }
        Some(dir) => {
            // Built, so the generated `help` commands the pages list are there too.
            cli.build();
            man_pages(&cli, "kcr-housekeeper", &dir)
        }
    }
}

/// One page for `cmd` and each command below it, named as the pages'
/// SUBCOMMANDS sections refer to them (`kcr-housekeeper-plan-retention.1`).
fn man_pages(cmd: &clap::Command, name: &str, dir: &Path) -> Result<(), CliError> {
    let page = cmd.clone().name(name.to_owned());
    let mut buf = Vec::new();
    clap_mangen::Man::new(page).render(&mut buf).map_err(io)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, buf)
        .map_err(|e| CliError::Usage(format!("{}: cannot write: {e}", path.display())))?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}
