//! `keyraft-chaos`: run fault-injection experiments against real Keyraft nodes, re-check
//! saved runs, and render their reports. Exit status: 0 pass, 1 violation, 2 unknown or
//! aborted (also interrupted by SIGINT or SIGTERM, after stopping the nodes the run
//! started), 3 the tool itself failed (bad file, no binary).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use keyraft_chaos::attach::AttachSpec;
use keyraft_chaos::experiment::Experiment;
use keyraft_chaos::history::History;
use keyraft_chaos::results::RunResults;
use keyraft_chaos::run::{self, RunOptions};

#[derive(Parser)]
#[command(
    name = "keyraft-chaos",
    version,
    about = "Fault injection for Keyraft clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an experiment file (see chaos-tests/experiments/).
    Run {
        /// The experiment (TOML).
        file: PathBuf,
        /// The run directory (default: chaos-runs/<name>-<time>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the resolved plan and exit without starting anything.
        #[arg(long)]
        dry_run: bool,
        /// The `keyraft` binary the nodes run (default: $KEYRAFT_BIN, then `keyraft`
        /// next to this program, then on PATH).
        #[arg(long)]
        keyraft_bin: Option<PathBuf>,
        /// No progress lines.
        #[arg(long)]
        quiet: bool,
        /// Run against a cluster that runs elsewhere, described by this file (its
        /// members' endpoints and the commands that act on a node); credentials come from
        /// the environment or the credentials profile.
        #[arg(long, value_name = "CLUSTER_FILE")]
        attach: Option<PathBuf>,
    },
    /// Re-run the checkers on a saved run directory (rewrites results.json and report.html).
    Check {
        /// The run directory.
        dir: PathBuf,
        /// The experiment file, for its checks and minimum rate (default: those of the
        /// saved results).
        #[arg(long)]
        experiment: Option<PathBuf>,
    },
    /// Render report.html of a saved run again.
    Report {
        /// The run directory.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("keyraft-chaos: {e}");
            ExitCode::from(3)
        }
    }
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM and names it. Dying by the signal's default
/// action would leave the run's nodes running and its disks mounted; returning lets
/// the run be dropped, which releases them.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without handlers the signals keep their default action.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

fn dispatch(command: Command) -> Result<u8, String> {
    match command {
        Command::Run {
            file,
            out,
            dry_run,
            keyraft_bin,
            quiet,
            attach,
        } => {
            let exp = Experiment::load(&file).map_err(|e| e.to_string())?;
            let attach = attach.map(|f| AttachSpec::load(&f)).transpose()?;
            if dry_run {
                let plan = serde_json::json!({
                    "experiment": exp.name,
                    "description": exp.description,
                    "seed": exp.seed,
                    "nodes": exp.cluster.nodes,
                    "duration": humantime::format_duration(exp.duration).to_string(),
                    "checks": exp.checkers(),
                    "faults": exp.plan(),
                });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&plan).map_err(|e| e.to_string())?
                );
                return Ok(0);
            }
            let binary = match &attach {
                Some(_) => PathBuf::new(),
                None => find_binary(keyraft_bin)?,
            };
            let out = out.unwrap_or_else(|| {
                let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                    .to_string()
                    .replace(':', "");
                PathBuf::from("chaos-runs").join(format!("{}-{stamp}", exp.name))
            });
            let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            let options = RunOptions {
                out: out.clone(),
                binary,
                progress: !quiet,
                attach,
            };
            let finished = runtime.block_on(async {
                tokio::select! {
                    results = run::run(&exp, &options) => Some(results),
                    signal = interrupted() => {
                        eprintln!("keyraft-chaos: {signal}: stopping the run");
                        None
                    }
                }
            });
            // Whatever the run still held (its nodes, proxies, mounted disks) is released
            // here, in spawned tasks too, before the verdict or the exit.
            drop(runtime);
            let Some(results) = finished else {
                eprintln!(
                    "keyraft-chaos: interrupted; the nodes it started are stopped; {} holds an incomplete run",
                    out.display()
                );
                return Ok(2);
            };
            let results = results?;
            print_results(&results, &out);
            Ok(results.exit_code() as u8)
        }
        Command::Check { dir, experiment } => {
            let exp = match experiment {
                Some(f) => Some(Experiment::load(&f).map_err(|e| e.to_string())?),
                None => None,
            };
            let results = run::recheck(&dir, exp.as_ref())?;
            print_results(&results, &dir);
            Ok(results.exit_code() as u8)
        }
        Command::Report { dir } => {
            let history = History::read(&dir.join("history.jsonl")).map_err(|e| e.to_string())?;
            let results = RunResults::read(&dir)?;
            let path = keyraft_chaos::report::write(&dir, &results, &history)
                .map_err(|e| e.to_string())?;
            println!("{}", path.display());
            Ok(0)
        }
    }
}

fn print_results(results: &RunResults, dir: &Path) {
    for c in &results.checks {
        println!("{:<14} {:?}", c.checker, c.verdict);
        for d in c.details.iter().take(5) {
            println!("    {d}");
        }
    }
    if let Some(a) = &results.aborted {
        println!("aborted: {a}");
    }
    println!(
        "verdict: {:?} ({})",
        results.verdict,
        dir.join("report.html").display()
    );
}

/// The `keyraft` binary: the flag, $KEYRAFT_BIN, a sibling of this program, or PATH.
fn find_binary(flag: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(p) = flag.or_else(|| std::env::var_os("KEYRAFT_BIN").map(PathBuf::from)) {
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("{} is not a file", p.display()))
        };
    }
    if let Some(sibling) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("keyraft")))
        .filter(|p| p.is_file())
    {
        return Ok(sibling);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("keyraft"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "no keyraft binary: pass --keyraft-bin, set KEYRAFT_BIN, or build it \
             (cargo build -p keyraft-cli --features failpoints)"
                .to_string()
        })
}
