//! Writes drover's man pages and shell completions, generated from the same clap definitions
//! the binary parses with, into a directory the package builds take them from.
//!
//! Usage: `cargo run -p drover-assets -- <out dir>`. Kept out of the drover binary so that
//! every host doesn't carry a man page renderer.

#[path = "../../../src/cli.rs"]
#[allow(dead_code)]
mod cli;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

/// Sections of drover(1) that clap knows nothing of: configuration, environment, files,
/// exit status, signals. Hand-written roff; `src/config.rs` tests that every key is here.
const MANUAL: &str = include_str!("manual.roff");
/// Sections of drover-status(1) beyond clap's: its exit status and every field of its JSON.
/// `src/commands/status` tests that the JSON has exactly these fields.
const STATUS_MANUAL: &str = include_str!("status.roff");

/// The hand-written sections of a subcommand's page, when it has some.
fn manual_of(subcommand: &str) -> Option<&'static str> {
    match subcommand {
        "status" => Some(STATUS_MANUAL),
        _ => None,
    }
}

fn main() -> ExitCode {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: drover-assets <out dir>");
        return ExitCode::from(2);
    };
    match write_all(&out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drover-assets: {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}

fn command() -> clap::Command {
    // The binary's own version, not this crate's (both come from the workspace).
    cli::Cli::command().version(env!("CARGO_PKG_VERSION"))
}

fn write_all(out: &Path) -> io::Result<()> {
    let man = out.join("man");
    let completions = out.join("completions");
    fs::create_dir_all(&man)?;
    fs::create_dir_all(&completions)?;

    // `drover help` has no page of its own; the man pages don't list it.
    let cmd = command().disable_help_subcommand(true);
    fs::write(man.join("drover.1"), main_page(&cmd)?)?;
    for sub in cmd.get_subcommands() {
        // clap wants 'static names; this program runs once and exits.
        let name: &'static str = Box::leak(format!("drover-{}", sub.get_name()).into_boxed_str());
        let manual = manual_of(sub.get_name());
        let sub = sub.clone().name(name).version(env!("CARGO_PKG_VERSION"));
        let mut buf = Vec::new();
        let page = clap_mangen::Man::new(sub)
            .title(name.to_uppercase())
            .section("1")
            .source(format!("drover {}", env!("CARGO_PKG_VERSION")))
            .manual("drover manual");
        match manual {
            None => page.render(&mut buf)?,
            Some(sections) => {
                page.render_title(&mut buf)?;
                page.render_name_section(&mut buf)?;
                page.render_synopsis_section(&mut buf)?;
                page.render_description_section(&mut buf)?;
                page.render_options_section(&mut buf)?;
                buf.write_all(sections.as_bytes())?;
                page.render_version_section(&mut buf)?;
            }
        }
        buf.write_all(b".SH \"SEE ALSO\"\n\\fBdrover\\fR(1)\n")?;
        fs::write(man.join(format!("{name}.1")), buf)?;
    }

    for (shell, file) in [
        (Shell::Bash, "drover"),
        (Shell::Zsh, "_drover"),
        (Shell::Fish, "drover.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut command(), "drover", &mut buf);
        fs::write(completions.join(file), buf)?;
    }
    Ok(())
}

/// drover(1): clap's name, synopsis, description, options and subcommands, then the manual's
/// own sections.
fn main_page(cmd: &clap::Command) -> io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(cmd.clone())
        .section("1")
        .source(format!("drover {}", env!("CARGO_PKG_VERSION")))
        .manual("drover manual");
    let mut buf = Vec::new();
    man.render_title(&mut buf)?;
    man.render_name_section(&mut buf)?;
    man.render_synopsis_section(&mut buf)?;
    man.render_description_section(&mut buf)?;
    man.render_options_section(&mut buf)?;
    man.render_subcommands_section(&mut buf)?;
    buf.write_all(MANUAL.as_bytes())?;
    man.render_version_section(&mut buf)?;
    Ok(buf)
}
