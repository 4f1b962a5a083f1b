//! `nixgate check`: the inventory is valid; then (unless `--offline`) the
//! builder and every selected host answer over SSH: reachability, auth
//! method, host key, Nix version, current system, free space on /nix.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use tokio::task::JoinSet;

use crate::fleet::{BUILDER, Sessions};
use crate::inventory::{Inventory, Selection};
use crate::remote::{Command, Remote};
use crate::report::{Table, json_line};
use crate::ssh::HostKeyStatus;

use super::{Global, Outcome};

/// Things worth saying about an inventory that is valid but may not work.
fn warnings(inv: &Inventory) -> Vec<String> {
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

/// What one machine answered.
#[derive(Debug, Clone, Serialize)]
struct Probe {
    event: &'static str,
    host: String,
    address: String,
    ok: bool,
    auth: Option<String>,
    host_key: Option<String>,
    nix_version: Option<String>,
    current_system: Option<String>,
    free_nix_bytes: Option<u64>,
    error: Option<String>,
}

const PROBE: &str = "nix-store --version 2>/dev/null | head -n 1; echo '--'; \
readlink -e /run/current-system 2>/dev/null; echo '--'; df -Pk /nix 2>/dev/null | tail -n 1";

async fn probe(sessions: Arc<Sessions>, name: String) -> Probe {
    let address = sessions
        .target(&name)
        .map(|t| format!("{}:{}", t.host, t.port()))
        .unwrap_or_default();
    let mut p = Probe {
        event: "check",
        host: name.clone(),
        address,
        ok: false,
        auth: None,
        host_key: None,
        nix_version: None,
        current_system: None,
        free_nix_bytes: None,
        error: None,
    };
    let session = match sessions.get(&name).await {
        Ok(s) => s,
        Err(e) => {
            p.error = Some(e.to_string());
            return p;
        }
    };
    let info = session.info();
    p.auth = Some(info.auth.to_string());
    p.host_key = Some(match info.host_key {
        HostKeyStatus::Known { .. } => "known".into(),
        HostKeyStatus::CertAuthority { .. } => "cert-authority".into(),
        HostKeyStatus::LearnedNew { file } => format!("learned into {}", file.display()),
    });
    match session.exec(&Command::script(PROBE)).await {
        Ok(out) if out.success() => {
            let text = out.stdout_str();
            let mut parts = text.split("--\n");
            let nix = parts.next().unwrap_or("").trim();
            let current = parts.next().unwrap_or("").trim();
            let df = parts.next().unwrap_or("").trim();
            p.nix_version =
                (!nix.is_empty()).then(|| nix.trim_start_matches("nix-store (Nix) ").to_owned());
            p.current_system = (!current.is_empty()).then(|| current.to_owned());
            p.free_nix_bytes = df
                .split_whitespace()
                .nth(3)
                .and_then(|k| k.parse::<u64>().ok())
                .map(|k| k * 1024);
            if p.nix_version.is_none() {
                p.error = Some("no nix-store on the PATH of the SSH user".into());
            } else {
                p.ok = true;
            }
        }
        Ok(out) => {
            p.error = Some(format!(
                "probe failed ({}): {}",
                out.exit,
                out.tail(3).join(" / ")
            ))
        }
        Err(e) => p.error = Some(format!("{e:#}")),
    }
    p
}

fn human_free(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || "-".into(),
        |b| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
    )
}

pub fn run(g: &Global, inv: &Inventory, sel: &Selection, offline: bool) -> anyhow::Result<Outcome> {
    let warns = warnings(inv);
    if g.json {
        json_line(&serde_json::json!({
            "event": "inventory_ok",
            "file": inv.path,
            "hosts": inv.hosts.len(),
            "selected": sel.len(),
            "waves": inv.waves.iter().map(|w| serde_json::json!({"name": w.name, "hosts": w.hosts.len()})).collect::<Vec<_>>(),
            "warnings": warns,
        }));
    } else if g.quiet == 0 {
        let waves: Vec<String> = inv
            .waves
            .iter()
            .map(|w| format!("{} {}", w.name, w.hosts.len()))
            .collect();
        println!(
            "{}: valid: {} hosts in {} waves ({}), builder {}",
            inv.path.display(),
            inv.hosts.len(),
            inv.waves.len(),
            waves.join(", "),
            inv.builder.connection.address
        );
        for w in &warns {
            println!("warning: {w}");
        }
    }
    if offline {
        return Ok(Outcome::Success);
    }
    let policy = g.host_key_policy();
    let sessions = Sessions::new(inv, policy);
    let mut names = vec![BUILDER.to_owned()];
    names.extend(sel.hosts().map(str::to_owned));
    let rt = tokio::runtime::Runtime::new()?;
    let probes = rt.block_on(async {
        let mut set = JoinSet::new();
        for (i, n) in names.iter().enumerate() {
            let (sessions, n) = (sessions.clone(), n.clone());
            set.spawn(async move { (i, probe(sessions, n).await) });
        }
        let mut probes: Vec<(usize, Probe)> = Vec::new();
        while let Some(Ok(p)) = set.join_next().await {
            probes.push(p);
        }
        sessions.close_all().await;
        probes.sort_by_key(|(i, _)| *i);
        probes.into_iter().map(|(_, p)| p).collect::<Vec<_>>()
    });
    let failed = probes.iter().filter(|p| !p.ok).count();
    if g.json {
        for p in &probes {
            json_line(p);
        }
    } else {
        let mut t = Table::new(&[
            "HOST",
            "ADDRESS",
            "OK",
            "AUTH",
            "HOST KEY",
            "NIX",
            "FREE /nix",
            "CURRENT SYSTEM",
        ]);
        for p in &probes {
            t.row(vec![
                p.host.clone(),
                p.address.clone(),
                if p.ok { "yes".into() } else { "NO".into() },
                p.auth.clone().unwrap_or_else(|| "-".into()),
                p.host_key.clone().unwrap_or_else(|| "-".into()),
                p.nix_version.clone().unwrap_or_else(|| "-".into()),
                human_free(p.free_nix_bytes),
                p.current_system.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        print!("{t}");
        for p in probes.iter().filter(|p| !p.ok) {
            eprintln!("\n{}: {}", p.host, p.error.as_deref().unwrap_or("failed"));
        }
    }
    Ok(if failed > 0 {
        Outcome::HostsFailed
    } else {
        Outcome::Success
    })
}
