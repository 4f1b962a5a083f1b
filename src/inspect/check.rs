//! `check`: warnings about a valid inventory that may not work, then every
//! machine's answer over SSH: reachability, authentication, host key, Nix
//! version, current system, free space on `/nix`. A probe task that panics
//! is a failed probe, never a missing row.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::activation::host_state;
use crate::fleet::{Machine, Sessions};
use crate::inventory::{Inventory, Selection};
use crate::nix::StorePath;
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
    pub error: Option<String>,
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
    out
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

async fn probe(sessions: Arc<Sessions>, machine: Machine<'_>) -> Probe {
    let mut p = Probe {
        host: machine.to_string(),
        builder: machine == Machine::Builder,
        address: sessions
            .target(machine)
            .map(|t| format!("{}:{}", t.host, t.port()))
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
    match host_state::facts(&session).await {
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
    p
}

/// Probe the builder and every selected host, at once; results in that
/// order. A probe whose task panicked is reported as failed.
pub async fn probe_all(sessions: &Arc<Sessions>, sel: &Selection) -> Vec<Probe> {
    let names: Vec<Option<String>> = std::iter::once(None)
        .chain(sel.hosts().map(|h| Some(h.to_owned())))
        .collect();
    let mut set = JoinSet::new();
    let mut ids = std::collections::HashMap::new();
    for (i, n) in names.iter().enumerate() {
        let (sessions, n) = (sessions.clone(), n.clone());
        let h = set.spawn(async move {
            let m = n.as_deref().map_or(Machine::Builder, Machine::Host);
            (i, probe(sessions, m).await)
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
