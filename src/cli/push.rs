//! `nixgate push` and `nixgate build`: build on the builder, then (push)
//! copy and take every selected host through the goal's gates, wave by wave;
//! known-good hosts from a clean commit get a release tag.

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use crate::activation::HostOutcome;
use crate::deploy::build::{self, Source};
use crate::deploy::diffgate;
use crate::deploy::fanout::RelayHub;
use crate::deploy::stage::CopyStager;
use crate::deploy::{self, Candidate, RunContext};
use crate::diff::HostDiff;
use crate::fleet::{BUILDER, Sessions};
use crate::gates::Goal;
use crate::inventory::{CopyMode, Inventory, Selection};
use crate::release::{self, Evidence, GateEvidence, ReleaseOutcome, ReleaseRequest};
use crate::report::{Event, EventSink, HostSummary, OutcomeKind, json_line};

use super::session::RunSession;
use super::{Fatal, Global, Outcome};

/// Options of `push`.
#[derive(Debug, Clone)]
pub struct PushOptions {
    pub goal: Goal,
    pub allow_dirty: bool,
    pub reboot: bool,
    pub release: Option<String>,
    pub force_release: bool,
    /// Packages the change is meant to touch; any other change is drift.
    pub expect: Option<Vec<String>>,
}

/// Refuse early when a prompt would be needed but nobody can answer it.
fn can_confirm(g: &Global) -> anyhow::Result<()> {
    if !g.yes && !std::io::stdin().is_terminal() {
        return Err(Fatal::usage(
            "not a terminal, so nothing can be confirmed: pass --yes to deploy without a prompt",
        ));
    }
    Ok(())
}

fn confirm(g: &Global, hosts: usize, goal: Goal) -> anyhow::Result<()> {
    if g.yes {
        return Ok(());
    }
    can_confirm(g)?;
    eprint!("Deploy (goal {goal}) to {hosts} host(s)? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if matches!(line.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Fatal::usage("not confirmed; nothing was changed"))
    }
}

/// Release every known-good host of a clean build; refusals are warnings.
fn releases(
    inv: &Inventory,
    src: &Source,
    run_id: &str,
    hosts: &[HostSummary],
    force: bool,
    sink: &EventSink,
) {
    for h in hosts.iter().filter(|h| h.outcome == OutcomeKind::KnownGood) {
        let (Some(closure), Some(HostOutcome::KnownGood { mark })) =
            (h.closure.clone(), h.detail.outcome())
        else {
            continue;
        };
        let evidence = Evidence {
            gates: mark
                .record
                .gates
                .iter()
                .map(|g| GateEvidence {
                    gate: g.gate,
                    detail: g.value(),
                })
                .collect(),
        };
        let req = ReleaseRequest {
            target: h.host.clone(),
            commit: src.commit.clone(),
            dirty: src.dirty,
            closure,
            builder: inv.builder.connection.address.clone(),
            run_id: run_id.to_owned(),
            evidence,
            force,
            at: None,
        };
        match release::create(&inv.builder.source, &req) {
            Ok(ReleaseOutcome::Released { tag, branch, .. }) => {
                sink.emit(Event::Released {
                    host: h.host.clone(),
                    tag: tag.clone(),
                    branch: branch.clone(),
                });
                if let Some(remote) = &inv.release.remote {
                    match release::push(&inv.builder.source, remote, &tag, &branch, force) {
                        Ok(release::PushOutcome::Pushed { .. }) => {}
                        Ok(other) => sink.emit(Event::Warning {
                            host: Some(h.host.clone()),
                            message: format!(
                                "pushing {tag} to {remote} failed: {}",
                                serde_json::to_string(&other).unwrap_or_default()
                            ),
                        }),
                        Err(e) => sink.emit(Event::Warning {
                            host: Some(h.host.clone()),
                            message: format!("pushing {tag} to {remote}: {e:#}"),
                        }),
                    }
                }
            }
            Ok(ReleaseOutcome::Refused { reason }) => sink.emit(Event::NotReleased {
                host: h.host.clone(),
                reason: reason.to_string(),
            }),
            Err(e) => sink.emit(Event::NotReleased {
                host: h.host.clone(),
                reason: format!("{e:#}"),
            }),
        }
    }
}

pub async fn push(
    g: &Global,
    inv: Inventory,
    mut sel: Selection,
    opts: PushOptions,
) -> anyhow::Result<Outcome> {
    let inv = Arc::new(inv);
    // A release redeploys exactly what its tag records: no build.
    let (src, from_release) = match &opts.release {
        Some(spec) => {
            let detail = release::resolve(&inv.builder.source, spec)
                .map_err(|e| Fatal::usage(format!("{e:#}")))?;
            let info = detail.info;
            if !sel.hosts().any(|h| h == info.target) {
                for g in &mut sel.groups {
                    g.hosts.retain(|h| *h == info.target);
                }
                sel.groups.retain(|g| !g.hosts.is_empty());
                if sel.is_empty() {
                    sel = inv.select(&crate::inventory::Selector {
                        hosts: vec![info.target.clone()],
                        ..Default::default()
                    })?;
                }
            }
            (
                Source {
                    commit: info.commit.clone(),
                    dirty: false,
                },
                Some((info.target, info.closure)),
            )
        }
        None => (
            build::source_state(&inv, opts.allow_dirty)
                .map_err(|e| Fatal::usage(format!("{e:#}")))?,
            None,
        ),
    };
    let hosts: Vec<String> = sel.hosts().map(str::to_owned).collect();
    can_confirm(g)?;
    let run = RunSession::start(g, &inv, "push")?;
    run.sink.emit(Event::RunStarted {
        run_id: run.run_id.to_string(),
        command: "push".into(),
        goal: opts.goal,
        commit: Some(src.commit.clone()),
        dirty: src.dirty,
        hosts: hosts.clone(),
        at: deploy::now(),
    });
    let (mut candidates, mut failed, drvs) = match from_release {
        Some((target, closure)) => {
            let mut c = HashMap::new();
            c.insert(
                target,
                Candidate {
                    closure,
                    earlier_gates: Vec::new(),
                },
            );
            (c, Vec::new(), HashMap::new())
        }
        None => match build::build(&inv, &run.sessions, &src, &hosts, &run.sink).await {
            Ok(b) => (b.candidates, b.failed, b.drvs),
            Err(e) => {
                run.sink.emit(Event::Warning {
                    host: None,
                    message: format!("build failed: {e:#}"),
                });
                let failed = hosts
                    .iter()
                    .map(|h| {
                        deploy::failed_before_run(
                            &inv,
                            h,
                            None,
                            format!("build: {}", format!("{e:#}").lines().next().unwrap_or("")),
                            serde_json::json!({"kind": "build_failed", "error": format!("{e:#}")}),
                        )
                    })
                    .collect();
                (HashMap::new(), failed, HashMap::new())
            }
        },
    };
    // Gate 2: every change explained before anything switches.
    let mut closures = HashMap::new();
    if !drvs.is_empty() {
        // Of each diff, only its record (or why the host is refused) is kept.
        let verdicts = diffgate::diff_all(
            &inv,
            &run.sessions,
            &candidates,
            &drvs,
            opts.expect.as_deref(),
            Some(src.commit.as_str()),
            &run.sink,
            |_, d| {
                let closure = match d {
                    Ok(HostDiff {
                        candidate,
                        candidate_closure: Some(c),
                        ..
                    }) => Some((candidate.clone(), c.clone())),
                    _ => None,
                };
                let verdict = match d {
                    Ok(d) if d.drift.is_empty() => Ok(diffgate::record(d)),
                    Ok(d) => Err((
                        format!(
                            "drift: {}",
                            d.drift
                                .iter()
                                .map(|x| x.package.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        serde_json::json!({"kind": "diff_gate", "diff": d}),
                    )),
                    Err(e) => Err((
                        e.lines().next().unwrap_or("diff failed").to_owned(),
                        serde_json::json!({"kind": "diff_gate", "error": e}),
                    )),
                };
                (closure, verdict)
            },
        )
        .await;
        for (host, (closure, verdict)) in verdicts {
            if let Some((candidate, c)) = closure {
                closures.insert(candidate, c);
            }
            match verdict {
                Ok(record) => {
                    if let Some(c) = candidates.get_mut(&host) {
                        c.earlier_gates.push(record);
                    }
                }
                Err((reason, detail)) => {
                    let closure = candidates.remove(&host).map(|c| c.closure);
                    let s = deploy::failed_before_run(
                        &inv,
                        &host,
                        closure,
                        format!("diff: {reason} (nothing changed)"),
                        detail,
                    );
                    run.sink.emit(Event::HostFinished(s.clone()));
                    failed.push(s);
                }
            }
        }
    }
    if !candidates.is_empty() {
        confirm(g, candidates.len(), opts.goal)?;
    }
    for g in &mut sel.groups {
        g.hosts.retain(|h| candidates.contains_key(h));
    }
    let ctx = RunContext {
        inventory: inv.clone(),
        sessions: run.sessions.clone(),
        goal: opts.goal,
        run_id: run.run_id.clone(),
        commit: Some(src.commit.clone()),
        allow_reboot: opts.reboot,
        sink: run.sink.clone(),
    };
    let relaying = candidates
        .keys()
        .filter(|h| inv.host(h).is_some_and(|x| x.copy == CopyMode::Relay))
        .count();
    let stager = CopyStager {
        inventory: inv.clone(),
        sessions: run.sessions.clone(),
        sink: run.sink.clone(),
        closures,
        hub: (relaying > 1).then(|| {
            RelayHub::new(
                run.sessions.clone(),
                Duration::from_millis(80),
                Duration::from_secs(3),
            )
        }),
    };
    let mut summaries = deploy::run(ctx, &sel, candidates, stager, run.cancel.clone()).await;
    if opts.goal.marks_known_good() {
        releases(
            &inv,
            &src,
            run.run_id.as_str(),
            &summaries,
            opts.force_release,
            &run.sink,
        );
    }
    summaries.extend(failed);
    run.finish(opts.goal, Some(src.commit), src.dirty, summaries)
        .await
}

/// `nixgate build`: build every selected host on the builder; print `HOST STOREPATH`.
pub async fn build_only(
    g: &Global,
    inv: Inventory,
    sel: Selection,
    allow_dirty: bool,
) -> anyhow::Result<Outcome> {
    let src = build::source_state(&inv, allow_dirty).map_err(|e| Fatal::usage(format!("{e:#}")))?;
    let policy = g.host_key_policy();
    let sessions = Sessions::new(&inv, policy);
    let hosts: Vec<String> = sel.hosts().map(str::to_owned).collect();
    let (sink, reporter) = crate::report::spawn(crate::report::choose(g.json, true), None);
    let result = build::build(&inv, &sessions, &src, &hosts, &sink).await;
    sessions.close_all().await;
    drop(sink);
    let _ = reporter.await;
    let built = result.map_err(|e| {
        e.context(format!(
            "building on {BUILDER} {}",
            inv.builder.connection.address
        ))
    })?;
    for h in &hosts {
        if let Some(c) = built.candidates.get(h) {
            if g.json {
                json_line(
                    &serde_json::json!({"event": "built", "host": h, "toplevel": c.closure, "drv": built.drvs.get(h)}),
                );
            } else {
                println!("{h} {}", c.closure);
            }
        }
    }
    for f in &built.failed {
        if !g.json {
            eprintln!(
                "{}: {}",
                f.host,
                f.reason.as_deref().unwrap_or("build failed")
            );
        }
    }
    Ok(if built.failed.is_empty() {
        Outcome::Success
    } else {
        Outcome::HostsFailed
    })
}

/// `nixgate plan`: build and diff every selected host; change nothing on any host.
pub async fn plan(
    g: &Global,
    inv: Inventory,
    sel: Selection,
    allow_dirty: bool,
    expect: Option<Vec<String>>,
) -> anyhow::Result<Outcome> {
    let src = build::source_state(&inv, allow_dirty).map_err(|e| Fatal::usage(format!("{e:#}")))?;
    let policy = g.host_key_policy();
    let sessions = Sessions::new(&inv, policy);
    let hosts: Vec<String> = sel.hosts().map(str::to_owned).collect();
    let (sink, reporter) = if g.json {
        crate::report::spawn(crate::report::choose(true, false), None)
    } else {
        crate::report::spawn(Box::new(crate::report::human::Plain { quiet: true }), None)
    };
    let built = build::build(&inv, &sessions, &src, &hosts, &sink).await;
    let result = match built {
        Ok(b) => {
            let diffs = diffgate::diff_all(
                &inv,
                &sessions,
                &b.candidates,
                &b.drvs,
                expect.as_deref(),
                Some(src.commit.as_str()),
                &sink,
                // Of each diff, its rendering and whether it refuses the host.
                |_, d| match d {
                    Ok(d) => (d.render(), !d.drift.is_empty()),
                    Err(e) => (vec![format!("diff failed: {e}")], true),
                },
            )
            .await;
            Ok((b, diffs))
        }
        Err(e) => Err(e),
    };
    sessions.close_all().await;
    drop(sink);
    let _ = reporter.await;
    let (built, mut diffs) = result?;
    let mut bad = built.failed.len();
    // Hosts with identical diffs are shown together.
    let mut groups: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    for h in &hosts {
        let Some((lines, refused)) = diffs.remove(h) else {
            continue;
        };
        bad += usize::from(refused);
        match groups.iter_mut().find(|(_, l)| *l == lines) {
            Some((names, _)) => names.push(h.clone()),
            None => groups.push((vec![h.clone()], lines)),
        }
    }
    if !g.json {
        for (names, lines) in &groups {
            println!("{}:", names.join(", "));
            for l in lines {
                println!("  {l}");
            }
        }
        for f in &built.failed {
            println!(
                "{}: {}",
                f.host,
                f.reason.as_deref().unwrap_or("build failed")
            );
        }
        println!("plan changed nothing on any host");
    }
    Ok(if bad == 0 {
        Outcome::Success
    } else {
        Outcome::HostsFailed
    })
}
