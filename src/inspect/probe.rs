//! `check`: warnings about a valid inventory that may not work, then every
//! machine's answer over SSH: reachability, authentication, host key, Nix
//! version, current system, free space on `/nix`. A probe task that panics
//! is a failed probe, never a missing row.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::activation::host_state;
use crate::activation::privilege::{self, SudoCheck};
use crate::fleet::{Machine, Sessions};
use crate::inspect::bound;
use crate::inventory::{CopyMode, Host, Inventory, MaxFailures, Selection};
use crate::nix::StorePath;
use crate::remote::Remote;
use crate::ssh::HostKeyStatus;

/// A wave and its size, for `check`'s inventory line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveCount {
    pub name: String,
    pub hosts: usize,
}

/// What one machine answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// The host's name, or `builder`.
    pub host: String,
    pub builder: bool,
    pub address: String,
    pub ok: bool,
    pub auth: Option<String>,
    pub host_key: Option<HostKeyStatus>,
    pub nix_version: Option<String>,
    pub current_system: Option<StorePath>,
    pub free_nix_bytes: Option<u64>,
    /// A `sudo = true` host: what `sudo -n -- true` answered (push checks
    /// the same before anything changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sudo: Option<SudoCheck>,
    pub error: Option<String>,
}

/// How a host's sudo is checked: not at all, or expecting it to work
/// without a password, or with the one `sudo_password_command` gives a
/// push (not run by `check`: a password sudo asks for is then expected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SudoUse {
    None,
    NoPassword,
    Password,
}

impl SudoUse {
    fn of(host: &Host) -> SudoUse {
        match (host.sudo, &host.sudo_password_command) {
            (false, _) => SudoUse::None,
            (true, None) => SudoUse::NoPassword,
            (true, Some(_)) => SudoUse::Password,
        }
    }

    /// Whether `check` is what a push would find usable. A host that asks
    /// for a password when none is configured passed `check` and was then
    /// refused by every push.
    fn accepts(self, check: &SudoCheck) -> bool {
        match check {
            SudoCheck::Ready => true,
            SudoCheck::PasswordRequired => self == SudoUse::Password,
            _ => false,
        }
    }
}

/// Things worth saying about an inventory that is valid but may not work.
pub fn warnings(inv: &Inventory) -> Vec<String> {
    let mut out = Vec::new();
    let src = &inv.builder.source;
    if !src.join(".git").exists() && !Path::new(src).join("HEAD").exists() {
        out.push(format!(
            "[builder] source {} is not a git repository: nixgate ships the configuration from its HEAD commit",
            src.display()
        ));
    }
    let mut files: Vec<(String, &Path)> = Vec::new();
    if let Some(id) = &inv.builder.connection.identity_file {
        files.push(("builder identity_file".into(), id));
    }
    for h in &inv.hosts {
        if let Some(id) = &h.connection.identity_file {
            files.push((format!("{} identity_file", h.name), id));
        }
    }
    files.sort_by(|a, b| a.1.cmp(b.1));
    files.dedup_by(|a, b| a.1 == b.1);
    for (what, path) in files {
        if !path.exists() {
            out.push(format!(
                "{what} {} does not exist (ssh-agent will be tried)",
                path.display()
            ));
        }
    }
    out.extend(signature_warnings(inv));
    for wave in inv.waves.iter().filter(|w| w.hosts.is_empty()) {
        out.push(format!(
            "{}. It deploys nothing, and `--wave {}` is refused",
            wave.why_empty(),
            wave.name
        ));
    }
    out.extend(budget_warnings(inv));
    out
}

/// A wave before others whose `max_failures` count is its size or more:
/// every one of its hosts may fail and the next wave still starts, so a
/// canary so configured protects nothing (`max_failures = 1` on a
/// one-host canary). A percentage says so on purpose ("100%"): not warned.
fn budget_warnings(inv: &Inventory) -> Vec<String> {
    let last = inv.waves.iter().rposition(|w| !w.hosts.is_empty());
    inv.waves
        .iter()
        .enumerate()
        .filter(|&(i, w)| {
            let size = w.hosts.len();
            Some(i) < last
                && size > 0
                && matches!(w.max_failures, MaxFailures::Count(n) if n >= size)
        })
        .map(|(_, w)| {
            format!(
                "wave `{}` tolerates {} failed host(s) of its {}: even all of them failing does not stop the waves after it (for a canary, max_failures = 0)",
                w.name,
                w.max_failures.allowed(w.hosts.len()),
                w.hosts.len()
            )
        })
        .collect()
}

/// Combinations of signing and copying that cannot work, or only with
/// settings on the machines nixgate cannot see.
fn signature_warnings(inv: &Inventory) -> Vec<String> {
    let mut out = Vec::new();
    // Relay and builder copies carry the builder's signatures (the relay
    // since it reads them with each path); substitute copies carry the
    // substituter's.
    let from_builder = |h: &&Host| matches!(h.copy, CopyMode::Relay | CopyMode::Builder);
    let non_root = |user: &Option<String>| user.as_deref().is_some_and(|u| u != "root");
    if inv.builder.signing_key.is_none() {
        let requiring = names(
            inv.hosts
                .iter()
                .filter(from_builder)
                .filter(|h| h.require_signatures),
        );
        if let Some((requiring, one)) = requiring {
            let verb = if one { "requires" } else { "require" };
            out.push(format!(
                "{requiring} {verb} signatures, but [builder] has no signing_key: the closures \
                 the builder builds reach them unsigned and are refused before activation; set \
                 [builder] signing_key (and its public key in the hosts' trusted-public-keys), \
                 unless the builder's nix.conf signs what it builds (secret-key-files)"
            ));
        }
        let daemon = names(
            inv.hosts
                .iter()
                .filter(from_builder)
                .filter(|h| non_root(&h.connection.user)),
        );
        if let Some((daemon, one)) = daemon {
            let verb = if one { "logs" } else { "log" };
            out.push(format!(
                "{daemon} {verb} in as a user other than root and nothing signs their closures: \
                 their nix-daemon refuses unsigned paths (require-sigs is on by default) unless \
                 that user is in its trusted-users; set [builder] signing_key"
            ));
        }
    } else if non_root(&inv.builder.connection.user) {
        out.push(format!(
            "[builder] signing_key: signing as {} goes through the builder's nix-daemon, which \
             before Nix 2.17 refuses it (\"you are not privileged to add signatures\") unless \
             that user is in its trusted-users (Nix 2.17 and later, and Lix, let any user sign: \
             no need to trust the user there)",
            inv.builder.connection.user()
        ));
    }
    out
}

/// Host names for a warning (all of them up to five, then a count) and
/// whether there is only one; `None` for no host.
fn names<'a>(hosts: impl Iterator<Item = &'a Host>) -> Option<(String, bool)> {
    let all: Vec<&str> = hosts.map(|h| h.name.as_str()).collect();
    let text = match all.len() {
        0 => return None,
        1 => format!("host {}", all[0]),
        n if n <= 5 => format!("hosts {}", all.join(", ")),
        n => format!("hosts {} and {} more", all[..5].join(", "), n - 5),
    };
    Some((text, all.len() == 1))
}

/// The waves of the inventory with their sizes.
pub fn wave_counts(inv: &Inventory) -> Vec<WaveCount> {
    inv.waves
        .iter()
        .map(|w| WaveCount {
            name: w.name.clone(),
            hosts: w.hosts.len(),
        })
        .collect()
}

async fn probe(sessions: Arc<Sessions>, machine: Machine<'_>, sudo: SudoUse) -> Probe {
    let mut p = Probe {
        host: machine.to_string(),
        builder: machine == Machine::Builder,
        address: sessions
            .target(machine)
            .map(|t| t.address())
            .unwrap_or_default(),
        ..Default::default()
    };
    let session = match sessions.get(machine).await {
        Ok(s) => s,
        Err(e) => {
            p.error = Some(e.to_string());
            return p;
        }
    };
    let info = session.info();
    p.auth = Some(info.auth.to_string());
    p.host_key = Some(info.host_key);
    let by = bound::deadline();
    read_facts(&mut p, &session, by).await;
    if p.ok && sudo != SudoUse::None {
        read_sudo(&mut p, &session, sudo, by).await;
    }
    p
}

/// Whether the host's sudo is usable as a push would use it, within the
/// same bound as the facts.
async fn read_sudo<R: Remote>(p: &mut Probe, remote: &R, sudo: SudoUse, by: tokio::time::Instant) {
    let what = "checking sudo (sudo -n -- true)";
    match bound::bounded(by, what, privilege::sudo_preflight(remote)).await {
        Ok(check) => {
            p.ok = sudo.accepts(&check);
            p.sudo = Some(check);
        }
        Err(e) => {
            p.ok = false;
            p.error = Some(format!("{e:#}"));
        }
    }
}

/// What the machine says of itself (Nix version, running system, free
/// space on `/nix`), within the bound every looking command gives a host's
/// reads: a wedged `/nix` hung `df` and `readlink`, and with them all of
/// `check`, with no row for any machine.
async fn read_facts<R: Remote>(p: &mut Probe, remote: &R, by: tokio::time::Instant) {
    let what = "reading its Nix version, running system and free space on /nix";
    match bound::bounded(by, what, host_state::facts(remote)).await {
        Ok(f) => {
            p.ok = f.nix_version.is_some();
            if !p.ok {
                p.error = Some("no nix-store on the PATH of the SSH user".into());
            }
            (p.nix_version, p.current_system, p.free_nix_bytes) =
                (f.nix_version, f.current_system, f.free_nix_bytes);
        }
        Err(e) => p.error = Some(format!("{e:#}")),
    }
}

/// Probe the builder and every selected host, at once; results in that
/// order. A probe whose task panicked is reported as failed.
pub async fn probe_all(sessions: &Arc<Sessions>, inv: &Inventory, sel: &Selection) -> Vec<Probe> {
    let names: Vec<Option<String>> = std::iter::once(None)
        .chain(sel.hosts().map(|h| Some(h.to_owned())))
        .collect();
    let mut set = JoinSet::new();
    let mut ids = std::collections::HashMap::new();
    for (i, n) in names.iter().enumerate() {
        let (sessions, n) = (sessions.clone(), n.clone());
        let sudo = (n.as_deref().and_then(|h| inv.host(h))).map_or(SudoUse::None, SudoUse::of);
        let h = set.spawn(async move {
            let m = n.as_deref().map_or(Machine::Builder, Machine::Host);
            (i, probe(sessions, m, sudo).await)
        });
        ids.insert(h.id(), i);
    }
    let mut probes: Vec<Option<Probe>> = vec![None; names.len()];
    while let Some(joined) = set.join_next_with_id().await {
        match joined {
            Ok((_, (i, p))) => probes[i] = Some(p),
            Err(e) => {
                if let Some(&i) = ids.get(&e.id()) {
                    probes[i] = Some(panicked(&names[i]));
                }
            }
        }
    }
    probes
        .into_iter()
        .zip(&names)
        .map(|(p, n)| p.unwrap_or_else(|| panicked(n)))
        .collect()
}

fn panicked(name: &Option<String>) -> Probe {
    Probe {
        host: name.clone().unwrap_or_else(|| crate::fleet::BUILDER.into()),
        builder: name.is_none(),
        error: Some("nixgate bug: the probe panicked (run with -v and report it)".into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::fake::FakeRemote;
    use crate::remote::scripted::{ScriptedRemote, ok};

    /// A machine whose commands never return (a wedged `/nix`) is given up
    /// when the bound passes, failed, saying what did not answer: `check`
    /// waited for it for ever, with no row for any machine.
    #[tokio::test(start_paused = true)]
    async fn a_machine_whose_commands_hang_is_given_up_and_said() {
        let started = tokio::time::Instant::now();
        let mut p = Probe::default();
        let wedged = FakeRemote::Wedged("web2".into());
        let hour = std::time::Duration::from_secs(3600);
        tokio::time::timeout(hour, read_facts(&mut p, &wedged, bound::deadline()))
            .await
            .expect("still waiting after an hour: the read is not bounded");
        assert_eq!(started.elapsed(), bound::READS_WITHIN);
        assert!(!p.ok);
        let e = p.error.unwrap_or_default();
        assert!(
            e.contains("reading its Nix version, running system and free space on /nix: no answer within 30 s"),
            "{e}"
        );
        let answers = ScriptedRemote::new("web1", |_| ok("nix-store (Nix) 2.18.1\n--\n--\n"));
        let mut p = Probe::default();
        read_facts(&mut p, &answers, bound::deadline()).await;
        assert!(p.ok && p.error.is_none(), "{p:?}");
        assert_eq!(p.nix_version.as_deref(), Some("2.18.1"));
    }

    /// A `sudo = true` host whose sudo asks for a password, with none
    /// configured, fails `check` (it passed, and every push then refused
    /// it); with `sudo_password_command` a push has one, and it passes. A
    /// user sudo refuses fails either way.
    #[tokio::test]
    async fn sudo_is_checked_as_a_push_would_use_it() {
        let answering = |stderr: &'static str| {
            ScriptedRemote::new("web1", move |c| {
                assert_eq!(
                    c.argv(),
                    crate::activation::privilege::preflight_command().argv()
                );
                match stderr {
                    "" => ok(""),
                    e => crate::remote::scripted::fail(1, e),
                }
            })
        };
        let asks = "sudo: a password is required\n";
        let refuses = "deploy is not in the sudoers file.  This incident will be reported.\n";
        for (stderr, sudo, ok, check) in [
            ("", SudoUse::NoPassword, true, SudoCheck::Ready),
            (
                asks,
                SudoUse::NoPassword,
                false,
                SudoCheck::PasswordRequired,
            ),
            (asks, SudoUse::Password, true, SudoCheck::PasswordRequired),
            (refuses, SudoUse::Password, false, SudoCheck::NotInSudoers),
        ] {
            let mut p = Probe {
                ok: true,
                ..Default::default()
            };
            read_sudo(&mut p, &answering(stderr), sudo, bound::deadline()).await;
            assert_eq!((p.ok, p.sudo), (ok, Some(check)), "{stderr} {sudo:?}");
        }
    }
}
