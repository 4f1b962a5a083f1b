//! The command-line contract: global options, selectors, commands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::complete;
use crate::inventory::Selector;

pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  everything selected ended well
  1  at least one host failed, was refused, rolled back or not started
  2  usage or inventory error
  3  another nixgate run holds the lock
  4  declined at the prompt (or Ctrl-C there): nothing changed";

/// Deploy NixOS systems to a fleet over SSH, gate by gate.
///
/// nixgate builds every selected host's system on a builder, explains what
/// changed, copies closures over SSH and activates them host by host in
/// waves. Only a closure proven live on its host is marked known-good.
#[derive(Debug, Parser)]
#[command(name = "nixgate", version, after_long_help = EXIT_CODES_HELP, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args, Clone)]
pub struct Global {
    /// The inventory file.
    #[arg(
        short,
        long,
        global = true,
        value_name = "PATH",
        env = "NIXGATE_INVENTORY",
        default_value = "inventory.toml"
    )]
    pub inventory: PathBuf,
    /// Newline-delimited JSON events on stdout instead of human output.
    #[arg(long, global = true)]
    pub json: bool,
    /// Never prompt: assume yes (for cron and CI).
    #[arg(short, long, global = true)]
    pub yes: bool,
    /// More detail (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Less output: only problems and the summary.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,
    /// Learn the host keys of hosts not in known_hosts (like OpenSSH's
    /// StrictHostKeyChecking=accept-new); a changed key is still refused.
    #[arg(long, global = true)]
    pub accept_new: bool,
    /// Where runs, reports, locks and known-good records are kept
    /// [default: $XDG_STATE_HOME/nixgate, or ~/.local/state/nixgate].
    #[arg(long, global = true, value_name = "DIR", env = "NIXGATE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Ask once, before any host is touched, for the sudo password of hosts
    /// with `sudo = true` (fed to `sudo -S` on stdin, never an argument).
    #[arg(long, global = true)]
    pub ask_sudo_password: bool,
}

impl Global {
    /// How unknown host keys are treated (`--accept-new`).
    pub fn host_key_policy(&self) -> crate::ssh::HostKeyPolicy {
        if self.accept_new {
            crate::ssh::HostKeyPolicy::AcceptNew
        } else {
            crate::ssh::HostKeyPolicy::Strict
        }
    }
}

/// Which hosts a fleet command works on. None: the whole fleet, wave by wave.
#[derive(Debug, Args, Clone, Default)]
pub struct SelectorArgs {
    /// Hosts by name or glob (same as --host).
    #[arg(value_name = "HOST", add = complete::host_names())]
    pub names: Vec<String>,
    /// A host by name or shell-style glob (`web*`, `db[12]`; repeatable);
    /// ignores waves.
    #[arg(long = "host", value_name = "NAME|GLOB", add = complete::host_names())]
    pub hosts: Vec<String>,
    /// A comma list of names, globs and `@tag`s, as colmena takes it
    /// (`--on 'web*,@db'`; repeatable); ignores waves.
    #[arg(long = "on", value_name = "LIST", value_parser = non_empty_list)]
    pub on: Vec<String>,
    /// Every host with this tag (repeatable); ignores waves.
    #[arg(long = "tag", value_name = "TAG", add = complete::tag_names())]
    pub tags: Vec<String>,
    /// The hosts of this wave (repeatable).
    #[arg(long = "wave", value_name = "NAME", add = complete::wave_names())]
    pub waves: Vec<String>,
}

/// An `--on` list names something: an empty one (an unset variable in
/// `--on "$HOSTS"`) selected the whole fleet.
fn non_empty_list(s: &str) -> Result<String, String> {
    if crate::inventory::glob::parse_list(s).is_empty() {
        return Err("names no host or tag (an empty list would select the whole fleet)".into());
    }
    Ok(s.to_owned())
}

/// One `--expect` package, spaces around it dropped: `--expect "openssl,
/// curl"` expected a package named " curl", matched nothing, and refused
/// the host for curl's change as drift.
fn package_name(s: &str) -> Result<String, String> {
    match s.trim() {
        "" => Err("an empty package name".into()),
        name => Ok(name.to_owned()),
    }
}

/// `exec --parallel`: as the inventory's `max_parallel` allows.
fn parallel(s: &str) -> Result<usize, String> {
    let max = crate::inventory::limits::MAX_PARALLEL;
    match s.parse::<i64>() {
        Ok(n) if (1..=max).contains(&n) => usize::try_from(n).map_err(|e| e.to_string()),
        _ => Err(format!("not a number of hosts from 1 to {max}")),
    }
}

impl SelectorArgs {
    pub fn selector(&self) -> Selector {
        use crate::inventory::glob::{Item, parse_list};
        let mut hosts = self.names.clone();
        hosts.extend(self.hosts.iter().cloned());
        let mut tags = self.tags.clone();
        for item in self.on.iter().flat_map(|l| parse_list(l)) {
            match item {
                Item::Host(h) => hosts.push(h),
                Item::Tag(t) => tags.push(t),
            }
        }
        Selector {
            hosts,
            tags,
            waves: self.waves.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the inventory, then connect to the builder and every selected
    /// host and report reachability, authentication, host key, Nix version,
    /// current system and free space.
    #[command(after_help = EXIT_CODES_HELP)]
    Check {
        /// Validate the inventory only; touch no network.
        #[arg(long)]
        offline: bool,
        #[command(flatten)]
        select: SelectorArgs,
    },
    /// Print the resolved selection: wave, host, address, tags.
    #[command(after_help = EXIT_CODES_HELP)]
    Hosts {
        #[command(flatten)]
        select: SelectorArgs,
    },
    /// Build every selected host's system on the builder; print `HOST STOREPATH`.
    #[command(after_help = EXIT_CODES_HELP)]
    Build {
        /// Build from a work tree with uncommitted changes (recorded; never released).
        #[arg(long)]
        allow_dirty: bool,
        #[command(flatten)]
        select: SelectorArgs,
    },
    /// Build, copy and take every selected host through the goal's gates,
    /// wave by wave. The default goal is gated: dry-activate, live test,
    /// health checks, persist, mark known-good; then a release tag.
    #[command(after_help = EXIT_CODES_HELP)]
    Push {
        /// copy | dry-activate | test | boot | switch | gated
        #[arg(long, default_value = "gated", add = complete::goals())]
        goal: crate::gates::Goal,
        /// Build from a work tree with uncommitted changes (recorded; never released).
        #[arg(long)]
        allow_dirty: bool,
        /// Reboot hosts whose change needs it (systemd, dbus or kernel) and verify them.
        #[arg(long)]
        reboot: bool,
        /// Let a change deferred to the next boot (systemd, dbus or kernel;
        /// without --reboot) pass its wave. By default it counts as a
        /// failure: it was never proven live, so it stops later waves.
        #[arg(long)]
        allow_pending_reboot: bool,
        /// Do not arm the hosts' dead-man revert before live switches for
        /// this run (magic rollback: see README).
        #[arg(long)]
        no_magic_rollback: bool,
        /// Redeploy the exact closure a release tag recorded (a tag, or `release/<host>`), through every gate.
        #[arg(long, value_name = "TAG")]
        release: Option<String>,
        /// Move release/<host> even when that is not a fast-forward (logged in the tag).
        #[arg(long)]
        force_release: bool,
        /// The packages this change is meant to touch (comma-separated); any
        /// other package that changes version or is rebuilt fails the diff gate.
        #[arg(long, value_delimiter = ',', value_name = "PKG,...", value_parser = package_name)]
        expect: Option<Vec<String>>,
        /// Push a host's candidate even when it is the system a `nixgate
        /// rollback` took that host away from (refused by default while
        /// the host stands where the rollback left it).
        #[arg(long)]
        allow_rolled_back: bool,
        #[command(flatten)]
        outputs: RunOutputs,
        #[command(flatten)]
        select: SelectorArgs,
    },
    /// Build every selected host and show what would change on it (package
    /// versions, rebuilds and their causes, drift); change nothing on any host.
    #[command(after_help = EXIT_CODES_HELP)]
    Plan {
        /// Build from a work tree with uncommitted changes.
        #[arg(long)]
        allow_dirty: bool,
        /// The packages this change is meant to touch (comma-separated); any
        /// other package that changes version or is rebuilt is drift (exit 1).
        #[arg(long, value_delimiter = ',', value_name = "PKG,...", value_parser = package_name)]
        expect: Option<Vec<String>>,
        /// Show a candidate a `nixgate rollback` took its host away from as
        /// push --allow-rolled-back would push it, not refused.
        #[arg(long)]
        allow_rolled_back: bool,
        #[command(flatten)]
        select: SelectorArgs,
    },
    /// Release tags recorded in the configuration repository.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Redeploy, through every gate, the known-good closure a host's
    /// known-good profile was on before the one it runs now was marked (by
    /// number, the one before it, when its record does not say), or its
    /// last known-good when it runs an unvalidated closure, or a named
    /// known-good generation.
    #[command(after_help = EXIT_CODES_HELP)]
    Rollback {
        /// The known-good generation to go back to (see `nixgate status`).
        #[arg(long, value_name = "GENERATION")]
        to: Option<u64>,
        /// Reboot hosts whose rollback target needs it (systemd, dbus or kernel changed).
        #[arg(long)]
        reboot: bool,
        /// Let a rollback deferred to the next boot (systemd, dbus or kernel;
        /// without --reboot) pass its wave: the host boots into the target
        /// when it next reboots. By default it counts as a failure: the host
        /// still runs the system it is rolled back from.
        #[arg(long)]
        allow_pending_reboot: bool,
        /// Do not arm the hosts' dead-man revert before live switches.
        #[arg(long)]
        no_magic_rollback: bool,
        #[command(flatten)]
        outputs: RunOutputs,
        #[command(flatten)]
        select: SelectorArgs,
    },
    /// Per host: the known-good (generation, commit), the running system,
    /// the boot default, a pending reboot, whether it is behind the
    /// configuration's HEAD, its last run.
    #[command(after_help = EXIT_CODES_HELP)]
    Status {
        /// List each selected host's known-good generations (commit, date)
        /// instead: the targets of `rollback --to`.
        #[arg(long)]
        history: bool,
        #[command(flatten)]
        select: SelectorArgs,
    },
    /// Past runs recorded in the state directory, newest first: id, start,
    /// command, goal, selection, hosts by outcome, exit code. A run whose
    /// report was never finished (killed) is listed as interrupted.
    Runs {
        /// How many runs to list.
        #[arg(long, value_name = "N", default_value_t = 20)]
        limit: usize,
    },
    /// A past run as `push` printed it, from the events its report stored;
    /// with --json, the stored events (each with `at_ms`, when it happened).
    Show {
        /// A run id, a unique prefix of one, or `latest`.
        #[arg(value_name = "RUN", default_value = "latest")]
        run: String,
    },
    /// Write a past run's report as one self-contained HTML file (timeline,
    /// summary, diffs, every gate's evidence), and/or the metrics file.
    #[command(group(clap::ArgGroup::new("output").required(true).multiple(true).args(["html", "metrics_file"])))]
    Report {
        /// A run id, a unique prefix of one, or `latest`.
        #[arg(value_name = "RUN", default_value = "latest")]
        run: String,
        /// The HTML file to write.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// The Prometheus text-format file to write (as --metrics-file of push).
        #[arg(long, value_name = "PATH")]
        metrics_file: Option<PathBuf>,
    },
    /// Run a command on every selected host, in parallel, over each host's
    /// one SSH connection: its output prefixed with the host name as it
    /// arrives, then a table of exits. Exit 0 only if every host exited 0.
    /// The command is not run through a shell on its own: write
    /// `-- sh -c '...'` for pipes and globs on the host.
    #[command(after_help = EXIT_CODES_HELP)]
    Exec {
        /// Hosts at once, 1 to 10000 [default: the inventory's max_parallel].
        #[arg(long, value_name = "N", value_parser = parallel)]
        parallel: Option<usize>,
        /// Hang up a host's command after this long (e.g. `30s`, `5m`).
        #[arg(long, value_name = "DURATION", value_parser = exec_timeout)]
        timeout: Option<std::time::Duration>,
        /// Print each host's output whole when it ends instead of line by line.
        #[arg(long)]
        group: bool,
        #[command(flatten)]
        select: SelectorArgs,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        argv: Vec<String>,
    },
    /// Write the selected hosts' keys ([[hosts.X.keys]]) without deploying:
    /// after a reboot emptied /run/keys, or to rotate a secret. Reports each
    /// key's destination and SHA-256, never its content.
    #[command(after_help = EXIT_CODES_HELP)]
    UploadKeys {
        #[command(flatten)]
        select: SelectorArgs,
    },
    /// Print a shell completion script that completes host, tag and wave
    /// names from the inventory (e.g. `source <(nixgate completions bash)`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// What a deploying run writes when it ends, besides its run report.
#[derive(Debug, Args, Clone, PartialEq, Eq)]
pub struct RunOutputs {
    /// When the run ends, write its report as one self-contained HTML file
    /// here (see `nixgate report`).
    #[arg(long, value_name = "FILE")]
    pub html_report: Option<PathBuf>,
    /// When the run ends, replace this file (atomically) with Prometheus
    /// metrics for node_exporter's textfile collector: each host's last
    /// outcome, known-good, pending reboot, gate durations; the run's
    /// duration and exit code. Name it `*.prom` in the collector's directory.
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
    /// Keep the newest N run reports in the state directory; older ones
    /// are removed when the run ends.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub keep: u64,
}

impl Default for RunOutputs {
    fn default() -> Self {
        RunOutputs {
            html_report: None,
            metrics_file: None,
            keep: 100,
        }
    }
}

/// `exec --timeout`: longer than zero, as the inventory's timeouts must be.
/// `--timeout 0s` was accepted and hung up every host's command at once.
fn exec_timeout(s: &str) -> Result<std::time::Duration, String> {
    let d = crate::inventory::duration::parse(s)?;
    if d.is_zero() {
        return Err("must be longer than zero (e.g. `30s`); leave --timeout out for none".into());
    }
    Ok(d)
}

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// List releases, newest first per host.
    List {
        #[command(flatten)]
        select: SelectorArgs,
    },
    /// Show one release: a tag name, or `release/<host>` for its newest.
    Show { tag: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_timeout_must_be_longer_than_zero() {
        for zero in ["0s", "0", "0ms"] {
            let e = Cli::try_parse_from(["nixgate", "exec", "--timeout", zero, "--", "true"])
                .unwrap_err();
            assert!(e.to_string().contains("longer than zero"), "{zero}: {e}");
        }
        let cli =
            Cli::try_parse_from(["nixgate", "exec", "--timeout", "5s", "--", "true"]).unwrap();
        let Command::Exec { timeout, .. } = cli.command else {
            panic!("{:?}", cli.command);
        };
        assert_eq!(timeout, Some(std::time::Duration::from_secs(5)));
    }

    #[test]
    fn expected_packages_are_trimmed() {
        let cli = Cli::try_parse_from(["nixgate", "plan", "--expect", "openssl, curl "]).unwrap();
        let Command::Plan { expect, .. } = cli.command else {
            panic!("{:?}", cli.command);
        };
        assert_eq!(expect, Some(vec!["openssl".into(), "curl".into()]));
        assert!(Cli::try_parse_from(["nixgate", "plan", "--expect", "openssl,,curl"]).is_err());
    }
}
