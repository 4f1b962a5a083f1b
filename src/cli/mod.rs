//! The command line: parses arguments, loads the inventory, resolves the
//! selection and hands off to the command; maps every ending to the exit-code
//! contract (0 ok, 1 hosts failed, 2 usage/inventory/environment, 3 locked,
//! 4 declined).

pub mod args;
mod check;
pub mod complete;
mod exec;
pub mod exit;
mod hosts;
mod open_files;
mod prompt;
mod push;
mod release;
mod rollback;
mod run_session;
mod runs;
mod status;
mod sudo_password;
mod upload_keys;

use std::future::Future;
use std::process::ExitCode;

use clap::Parser;

use crate::inventory::{Inventory, InventoryError, Selection};
use crate::report::{self, CommandName, Ending, Event, EventSink, json_line};
pub use args::{Cli, Command, Global, RunOutputs, SelectorArgs};
pub use exit::{Fatal, Outcome};

/// Run nixgate with the process's arguments.
pub fn main() -> ExitCode {
    complete::answer_if_asked();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap exits 2 on usage errors and 0 for --help/--version.
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    init_tracing(&cli.global);
    // Hundreds of hosts' connections pass the default soft limit (1024).
    open_files::raise();
    let json = cli.global.json;
    let command = command_name(&cli.command);
    match run(cli) {
        Ok(outcome) => outcome.into(),
        Err(e) => {
            let outcome = e
                .downcast_ref::<Fatal>()
                .map_or(Outcome::HostsFailed, |f| f.outcome);
            crate::report::stderr(format_args!("nixgate: {e:#}\n"));
            if json && let Some(command) = command {
                // The --json stream ends with a summary, whatever ended it.
                json_line(&Event::Summary {
                    command,
                    run_id: None,
                    ending: Ending::Invalid,
                    exit_code: outcome as u8,
                    ok: 0,
                    failed: 0,
                    hosts: Vec::new(),
                });
            }
            outcome.into()
        }
    }
}

fn command_name(c: &Command) -> Option<CommandName> {
    Some(match c {
        Command::Check { .. } => CommandName::Check,
        Command::Hosts { .. } => CommandName::Hosts,
        Command::Build { .. } => CommandName::Build,
        Command::Plan { .. } => CommandName::Plan,
        Command::Push { .. } => CommandName::Push,
        Command::Rollback { .. } => CommandName::Rollback,
        Command::Status { .. } => CommandName::Status,
        Command::Release(_) => CommandName::Release,
        Command::UploadKeys { .. } => CommandName::UploadKeys,
        Command::Exec { .. } => CommandName::Exec,
        Command::Completions { .. }
        | Command::Runs { .. }
        | Command::Show { .. }
        | Command::Report { .. } => return None,
    })
}

/// Run a command that reports events and ends with a summary: `f` gets the
/// sink and returns how many machines ended well and not.
fn reporting<F, Fut>(g: &Global, command: CommandName, f: F) -> anyhow::Result<Outcome>
where
    F: FnOnce(EventSink) -> Fut,
    Fut: Future<Output = anyhow::Result<(usize, usize)>>,
{
    reporting_to(report::choose(g, command), command, f)
}

/// [`reporting`], to the given reporter.
fn reporting_to<F, Fut>(
    reporter: Box<dyn report::Reporter>,
    command: CommandName,
    f: F,
) -> anyhow::Result<Outcome>
where
    F: FnOnce(EventSink) -> Fut,
    Fut: Future<Output = anyhow::Result<(usize, usize)>>,
{
    tokio::runtime::Runtime::new()?.block_on(async {
        let (sink, reporter) = report::spawn(reporter, None);
        let counted = f(sink.clone()).await;
        let outcome = match &counted {
            Ok((_, 0)) => Outcome::Success,
            Ok(_) => Outcome::HostsFailed,
            Err(_) => Outcome::Usage,
        };
        if let Ok((ok, failed)) = counted {
            sink.emit(Event::Summary {
                command,
                run_id: None,
                ending: Ending::Completed,
                exit_code: outcome as u8,
                ok,
                failed,
                hosts: Vec::new(),
            });
        }
        drop(sink);
        let _ = reporter.await;
        counted.map(|_| outcome)
    })
}

fn init_tracing(g: &Global) {
    let level = match (g.quiet, g.verbose) {
        (q, _) if q > 0 => "error",
        (_, 0) => "warn",
        (_, 1) => "info",
        (_, 2) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("NIXGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("nixgate={level},warn")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let g = cli.global;
    match cli.command {
        Command::Completions { shell } => {
            complete::script(shell, &mut std::io::stdout())?;
            Ok(Outcome::Success)
        }
        Command::Hosts { select } => {
            let inv = load_inventory(&g)?;
            let sel = select_hosts(&inv, &select)?;
            hosts::print(&g, &inv, &sel)
        }
        Command::Build {
            allow_dirty,
            select,
        } => {
            let inv = load_inventory(&g)?;
            require_hosts(&g, &inv)?;
            let sel = select_hosts(&inv, &select)?;
            tokio::runtime::Runtime::new()?.block_on(push::build(&g, inv, sel, allow_dirty))
        }
        Command::Plan {
            allow_dirty,
            expect,
            allow_rolled_back,
            select,
        } => {
            let inv = load_inventory(&g)?;
            require_hosts(&g, &inv)?;
            let sel = select_hosts(&inv, &select)?;
            let judging = crate::plan::Judging {
                expect,
                allow_rolled_back,
            };
            tokio::runtime::Runtime::new()?.block_on(push::plan(&g, inv, sel, allow_dirty, judging))
        }
        Command::Push {
            goal,
            allow_dirty,
            reboot,
            allow_pending_reboot,
            no_magic_rollback,
            release,
            force_release,
            expect,
            allow_rolled_back,
            outputs,
            select,
        } => {
            let inv = load_inventory(&g)?;
            require_hosts(&g, &inv)?;
            let sel = select_hosts(&inv, &select)?;
            let opts = push::PushOptions {
                selected: !select.selector().is_empty(),
                goal,
                allow_dirty,
                flags: run_session::RunFlags {
                    reboot,
                    allow_pending_reboot,
                    no_magic_rollback,
                },
                release,
                force_release,
                judging: crate::plan::Judging {
                    expect,
                    allow_rolled_back,
                },
                outputs,
            };
            tokio::runtime::Runtime::new()?.block_on(push::push(&g, inv, sel, opts))
        }
        Command::Release(args::ReleaseCommand::List { select }) => {
            let inv = load_inventory(&g)?;
            let selected = !select.selector().is_empty();
            let sel = select_hosts(&inv, &select)?;
            release::list(&g, &inv, &sel, selected)
        }
        Command::Release(args::ReleaseCommand::Show { tag }) => {
            let inv = load_inventory(&g)?;
            release::show(&g, &inv, &tag)
        }
        Command::Status { history, select } => {
            let inv = load_inventory(&g)?;
            let sel = select_hosts(&inv, &select)?;
            status::run(&g, &inv, &sel, history)
        }
        Command::Rollback {
            to,
            reboot,
            allow_pending_reboot,
            no_magic_rollback,
            outputs,
            select,
        } => {
            let inv = load_inventory(&g)?;
            require_hosts(&g, &inv)?;
            let sel = select_hosts(&inv, &select)?;
            let flags = run_session::RunFlags {
                reboot,
                allow_pending_reboot,
                no_magic_rollback,
            };
            tokio::runtime::Runtime::new()?
                .block_on(rollback::run(&g, inv, sel, to, flags, outputs))
        }
        Command::Runs { limit } => runs::list(&g, limit),
        Command::Show { run } => runs::show(&g, &run),
        Command::Report {
            run,
            html,
            metrics_file,
        } => runs::report(&g, &run, html.as_deref(), metrics_file.as_deref()),
        Command::Exec {
            parallel,
            timeout,
            group,
            select,
            argv,
        } => {
            let inv = load_inventory(&g)?;
            let sel = select_hosts(&inv, &select)?;
            let req = crate::exec::ExecRequest {
                argv,
                parallel: parallel.unwrap_or(inv.max_parallel),
                timeout,
            };
            exec::run(&g, &inv, &sel, &req, group)
        }
        Command::UploadKeys { select } => {
            let inv = load_inventory(&g)?;
            let sel = select_hosts(&inv, &select)?;
            upload_keys::run(&g, &inv, &sel)
        }
        Command::Check { offline, select } => {
            let inv = load_inventory(&g)?;
            let sel = select_hosts(&inv, &select)?;
            check::run(&g, &inv, &sel, offline)
        }
    }
}

/// Load and validate the inventory; problems end the run with exit code 2,
/// printed for humans (stderr) and, with `--json`, as events on stdout.
pub fn load_inventory(g: &Global) -> anyhow::Result<Inventory> {
    match Inventory::load(&g.inventory) {
        Ok(inv) => Ok(inv),
        Err(InventoryError::Invalid(d)) => {
            if g.json {
                for p in crate::inspect::inventory_problems(&d) {
                    json_line(&Event::InventoryError(p));
                }
            }
            Err(Fatal::usage(format!("the inventory is invalid:\n\n{d}")))
        }
        Err(e @ InventoryError::Read { .. }) => Err(Fatal::usage(e.to_string())),
    }
}

/// For commands that build or change hosts (`push`, `rollback`, `plan`,
/// `build`): an inventory with no hosts is a usage error (exit 2). An
/// inventory emptied by mistake (only `[builder]` left) made a cron `push
/// --yes` print "nothing to do" and exit 0: green while nothing deploys.
/// `hosts`, `status`, `check` and `exec` still take it (nothing to judge).
pub fn require_hosts(g: &Global, inv: &Inventory) -> anyhow::Result<()> {
    if inv.hosts.is_empty() {
        return Err(Fatal::usage(format!(
            "the inventory {} has no hosts: nothing would be deployed (add [hosts.NAME] tables, \
             or pass the right file with -i/--inventory)",
            g.inventory.display()
        )));
    }
    Ok(())
}

/// Resolve the selector; an unknown name is a usage error (exit 2).
pub fn select_hosts(inv: &Inventory, select: &SelectorArgs) -> anyhow::Result<Selection> {
    inv.select(&select.selector())
        .map_err(|e| Fatal::usage(e.to_string()))
}
