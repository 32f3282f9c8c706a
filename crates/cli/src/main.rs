//! The `damocles` command line.

mod blockdev;
mod cmd;
mod config;
mod control;
mod hook;
mod logging;
mod members;
mod metrics;
mod notify;
mod progress;
mod scan;
mod tls;
mod units;

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

/// damocles: plain disks or files become one redundant virtual disk (RAID 0/1/5/6/10).
///
/// Members are block devices or regular files. Commands that take MEMBER... assemble the
/// array from the members given; leave out a member that is missing and the array runs
/// degraded, within what its level tolerates.
///
/// While `damocles serve` serves an array, status, fail, remove, add, replace, rebuild,
/// scrub, convert, balance, grow and plan reach it through its control socket: name it with --array NAME, or leave that out
/// when only one array is served. For an array that is not served, give its members instead
/// (after `--` for fail, remove, add and replace).
#[derive(Parser)]
#[command(name = "damocles", version, propagate_version = true)]
struct Cli {
    /// How log lines on stderr are written: text (level, fields such as array= and
    /// member=, no timestamp: journald adds one) or json (one object a line). DAMOCLES_LOG
    /// sets the level (default: info for `daemon`, warn otherwise).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        value_name = "FORMAT"
    )]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Create(cmd::create::Args),
    Status(cmd::status::Args),
    Read(cmd::rawio::ReadArgs),
    Write(cmd::rawio::WriteArgs),
    Serve(cmd::serve::Args),
    Fail(cmd::member::FailArgs),
    Remove(cmd::member::RemoveArgs),
    Add(cmd::member::AddArgs),
    Replace(cmd::member::ReplaceArgs),
    Rebuild(cmd::job::RebuildArgs),
    Scrub(cmd::job::ScrubArgs),
    Convert(cmd::reshape::ConvertArgs),
    Balance(cmd::reshape::BalanceArgs),
    Grow(cmd::grow::Args),
    Repair(cmd::repair::Args),
    #[command(subcommand)]
    Plan(cmd::reshape::PlanArgs),
    Demo(cmd::demo::Args),
    Scan(cmd::scan::Args),
    Daemon(cmd::daemon::Args),
    Completions(CompletionsArgs),
    Man(ManArgs),
    #[command(subcommand)]
    Config(cmd::config::ConfigCmd),
    #[command(subcommand)]
    Metadata(cmd::metadata::Metadata),
    #[command(subcommand)]
    Bench(cmd::bench::Bench),
    #[command(subcommand)]
    Volume(cmd::volume::VolumeCmd),
}

/// Print a shell completion script.
///
/// bash: `damocles completions bash > /usr/share/bash-completion/completions/damocles`;
/// zsh: into a directory of $fpath as `_damocles`; fish: into
/// ~/.config/fish/completions/damocles.fish. packaging/install.sh installs all three.
#[derive(clap::Args)]
struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// Write the man pages (damocles.1 and one per command, damocles-serve.1, ...) into DIR.
#[derive(clap::Args)]
struct ManArgs {
    /// The directory to write into (made if missing).
    #[arg(value_name = "DIR")]
    dir: std::path::PathBuf,
}

fn man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Daemon(_)) {
        "info"
    } else {
        "warn"
    };
    logging::init(cli.log_format, default_level);
    let result = match cli.command {
        Command::Create(a) => cmd::create::run(a),
        Command::Status(a) => cmd::status::run(a),
        Command::Read(a) => cmd::rawio::read(a),
        Command::Write(a) => cmd::rawio::write(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Fail(a) => cmd::member::fail(a),
        Command::Remove(a) => cmd::member::remove(a),
        Command::Add(a) => cmd::member::add(a),
        Command::Replace(a) => cmd::member::replace(a),
        Command::Rebuild(a) => cmd::job::rebuild(a),
        Command::Scrub(a) => cmd::job::scrub(a),
        Command::Convert(a) => cmd::reshape::convert(a),
        Command::Balance(a) => cmd::reshape::balance(a),
        Command::Grow(a) => cmd::grow::run(a),
        Command::Repair(a) => cmd::repair::run(a, false),
        Command::Plan(p) => cmd::reshape::plan(p),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Scan(a) => cmd::scan::run(a),
        Command::Daemon(a) => cmd::daemon::run(a),
        Command::Completions(a) => {
            clap_complete::generate(
                a.shell,
                &mut Cli::command(),
                "damocles",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man(a) => man_pages(&a.dir),
        Command::Config(c) => cmd::config::run(c),
        Command::Metadata(m) => cmd::metadata::run(m),
        Command::Bench(b) => cmd::bench::run(b),
        Command::Volume(v) => cmd::volume::run(v),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the outermost context and its causes.
            eprintln!("damocles: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
