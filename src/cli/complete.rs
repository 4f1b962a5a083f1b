//! Shell completion that knows the inventory: host, tag and wave names and
//! `--goal` values are offered from the inventory the command line names
//! (`-i PATH`, else `$NIXGATE_INVENTORY`, else `./inventory.toml`), read
//! when Tab is pressed (clap_complete's dynamic completion: the shell calls
//! `nixgate` with `NIXGATE_COMPLETE=<shell>` and the words typed so far).
//! `nixgate completions SHELL` prints the script that does that; it calls
//! `nixgate` from `PATH`, so it keeps working across upgrades.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use clap::CommandFactory;
use clap_complete::engine::{ArgValueCandidates, ArgValueCompleter, CompletionCandidate};
use clap_complete::env::Shells;

use super::Cli;
use crate::gates::Goal;
use crate::inventory::Inventory;

/// The environment variable the completion script sets.
pub const VAR: &str = "NIXGATE_COMPLETE";

/// Answer a completion request and exit, when the shell asked for one.
pub fn answer_if_asked() {
    clap_complete::CompleteEnv::with_factory(Cli::command)
        .var(VAR)
        .complete();
}

/// Write the completion script for `shell`.
pub fn script(shell: clap_complete::Shell, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let name = match shell {
        clap_complete::Shell::Bash => "bash",
        clap_complete::Shell::Elvish => "elvish",
        clap_complete::Shell::Fish => "fish",
        clap_complete::Shell::PowerShell => "powershell",
        _ => "zsh",
    };
    match Shells::builtins().completer(name) {
        Some(c) => c.write_registration(VAR, "nixgate", "nixgate", "nixgate", out),
        None => Err(std::io::Error::other(format!("no completion for {name}"))),
    }
}

/// The inventory the words typed so far name (the completing process
/// gets them as its own arguments, after `--`).
fn inventory_path(args: &[OsString]) -> PathBuf {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "-i" || a == "--inventory" {
            if let Some(p) = it.next() {
                return PathBuf::from(p);
            }
        } else if let Some(p) = a.strip_prefix("--inventory=") {
            return PathBuf::from(p);
        } else if let Some(p) = a.strip_prefix("-i").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
    }
    std::env::var_os("NIXGATE_INVENTORY").map_or_else(|| "inventory.toml".into(), PathBuf::from)
}

fn inventory() -> Option<Inventory> {
    let args: Vec<OsString> = std::env::args_os().collect();
    Inventory::load(&inventory_path(&args)).ok()
}

fn matching(current: &OsStr, names: impl Iterator<Item = String>) -> Vec<CompletionCandidate> {
    let prefix = current.to_string_lossy();
    names
        .filter(|n| n.starts_with(prefix.as_ref()))
        .map(CompletionCandidate::new)
        .collect()
}

fn hosts(current: &OsStr) -> Vec<CompletionCandidate> {
    inventory().map_or_else(Vec::new, |inv| {
        matching(current, inv.hosts.into_iter().map(|h| h.name))
    })
}

fn tags(current: &OsStr) -> Vec<CompletionCandidate> {
    inventory().map_or_else(Vec::new, |inv| {
        let tags: Vec<String> = inv.tags().into_iter().map(str::to_owned).collect();
        matching(current, tags.into_iter())
    })
}

fn waves(current: &OsStr) -> Vec<CompletionCandidate> {
    inventory().map_or_else(Vec::new, |inv| {
        matching(current, inv.waves.into_iter().map(|w| w.name))
    })
}

pub fn host_names() -> ArgValueCompleter {
    ArgValueCompleter::new(hosts)
}

pub fn tag_names() -> ArgValueCompleter {
    ArgValueCompleter::new(tags)
}

pub fn wave_names() -> ArgValueCompleter {
    ArgValueCompleter::new(waves)
}

pub fn goals() -> ArgValueCandidates {
    ArgValueCandidates::new(|| {
        Goal::ALL
            .iter()
            .map(|g| CompletionCandidate::new(g.as_str()))
            .collect::<Vec<_>>()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inventory_is_the_one_the_command_line_names() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let p = inventory_path(&args(&["nixgate", "--", "nixgate", "-i", "x.toml", "push"]));
        assert_eq!(p, PathBuf::from("x.toml"));
        let p = inventory_path(&args(&["nixgate", "--inventory=y.toml", "status"]));
        assert_eq!(p, PathBuf::from("y.toml"));
        let p = inventory_path(&args(&["nixgate", "-iz.toml"]));
        assert_eq!(p, PathBuf::from("z.toml"));
    }
}
