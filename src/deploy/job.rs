//! The per-host pipeline the runner schedules: stage (make sure the closure
//! is on the host), then lock the host and take it through the activation
//! gates, reporting typed events on the way.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::activation::known_good::GateRecord;
use crate::activation::{ActivationRequest, HostSettings, RunId, activate_host};
use crate::fleet::Sessions;
use crate::gates::{Gate, Goal};
use crate::inventory::{Host, Inventory};
use crate::nix::StorePath;
use crate::report::{Detail, Event, EventSink, HostSummary, OutcomeKind};
use crate::runner::{HostJob, Interrupted};

use super::outcome;

/// What one host is deployed to.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub closure: StorePath,
    /// Evidence of the controller-side gates (build, diff, copy).
    pub earlier_gates: Vec<GateRecord>,
}

/// Staging: how the closure reaches the host before activation.
pub trait Stager: Send + Sync + 'static {
    /// Make `closure` present on `host`; `Err` fails the host at the copy gate.
    fn stage(
        &self,
        host: Arc<str>,
        closure: StorePath,
    ) -> impl std::future::Future<Output = anyhow::Result<serde_json::Value>> + Send;
}

/// Nothing to stage: the closure must already be on the host (rollbacks).
pub struct AlreadyThere;

impl Stager for AlreadyThere {
    async fn stage(&self, _: Arc<str>, _: StorePath) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::json!({"copied": false, "why": "already on the host"}))
    }
}

pub struct DeployJob<S: Stager> {
    pub inventory: Arc<Inventory>,
    pub sessions: Arc<Sessions>,
    pub goal: Goal,
    pub run_id: RunId,
    pub commit: Option<String>,
    pub candidates: HashMap<String, Candidate>,
    pub stager: S,
    pub sink: EventSink,
    pub cancel: CancellationToken,
    pub allow_reboot: bool,
}

/// The activation settings of an inventory host.
pub fn settings_for(h: &Host, allow_reboot: bool) -> HostSettings {
    let mut s = HostSettings::new(h.os);
    s.sudo = h.sudo;
    s.system_profile = h.profile.clone();
    s.activation_timeout = h.activation_timeout;
    s.require_signatures = h.require_signatures;
    s.health_checks = h
        .health_checks
        .iter()
        .map(|c| crate::activation::health::HealthCheck {
            command: c.command.clone(),
            timeout: c.timeout,
            retries: c.retries,
        })
        .collect();
    s.allow_reboot = allow_reboot;
    // Polls are one command on an open connection: poll often.
    s.poll_interval = std::time::Duration::from_millis(500);
    s
}

impl<S: Stager> DeployJob<S> {
    fn wave_of(&self, host: &str) -> String {
        self.inventory.wave_name(host)
    }

    fn done(
        &self,
        host: &str,
        started: Instant,
        kind: OutcomeKind,
        closure: Option<StorePath>,
        reason: Option<String>,
        detail: Detail,
    ) -> HostSummary {
        HostSummary {
            host: host.to_owned(),
            wave: self.wave_of(host),
            outcome: kind,
            closure,
            reason,
            detail,
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    fn failed_before(
        &self,
        host: &str,
        started: Instant,
        gate: Gate,
        reason: String,
    ) -> HostSummary {
        self.sink.emit(Event::GateFailed {
            host: host.to_owned(),
            gate,
            reason: reason.clone(),
        });
        let closure = self.candidates.get(host).map(|c| c.closure.clone());
        self.done(
            host,
            started,
            OutcomeKind::Failed,
            closure,
            Some(format!("{gate}: {reason} (nothing changed)")),
            serde_json::json!({"kind": "failed", "gate": gate, "reason": reason}).into(),
        )
    }

    async fn activate(&self, host: &str, staged: anyhow::Result<serde_json::Value>) -> HostSummary {
        let started = Instant::now();
        let Some(cand) = self.candidates.get(host) else {
            return self.failed_before(
                host,
                started,
                Gate::Build,
                "no candidate closure for this host".into(),
            );
        };
        let staged = match staged {
            Ok(detail) => detail,
            Err(e) => return self.failed_before(host, started, Gate::Copy, format!("{e:#}")),
        };
        let Some(inv_host) = self.inventory.host(host) else {
            return self.failed_before(host, started, Gate::Copy, "not in the inventory".into());
        };
        let session = match self.sessions.get(host).await {
            Ok(s) => s,
            Err(e) => return self.failed_before(host, started, Gate::Copy, e.to_string()),
        };
        let settings = settings_for(inv_host, self.allow_reboot);
        let lock_path = format!("{}/host.lock", settings.paths.job_dir);
        let holder = format!(
            "run {} pid {} on {}",
            self.run_id,
            std::process::id(),
            controller_name()
        );
        let _lock = match super::hostlock::acquire(
            &session,
            inv_host.os,
            &lock_path,
            &holder,
            inv_host.sudo,
        )
        .await
        {
            Ok(l) => l,
            Err(e) => {
                return self.failed_before(
                    host,
                    started,
                    Gate::DryActivate.min(first_host_gate(self.goal)),
                    e.to_string(),
                );
            }
        };
        let mut earlier = cand.earlier_gates.clone();
        earlier.push(GateRecord::new(Gate::Copy, &staged));
        let req = ActivationRequest {
            settings,
            candidate: cand.closure.clone(),
            goal: self.goal,
            run_id: self.run_id.clone(),
            commit: self.commit.clone(),
            earlier_gates: earlier,
        };
        let sink = self.sink.clone();
        let name = host.to_owned();
        let emit = move |ev| {
            sink.emit(Event::Activation {
                host: name.clone(),
                activation: ev,
            })
        };
        let out = activate_host(&session, &req, &self.cancel, &emit).await;
        self.done(
            host,
            started,
            outcome::kind(&out),
            Some(cand.closure.clone()),
            outcome::reason(&out),
            Detail::Outcome(Arc::new(out)),
        )
    }
}

fn first_host_gate(goal: Goal) -> Gate {
    goal.host_gates().first().copied().unwrap_or(Gate::Copy)
}

fn controller_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "controller".into())
}

impl<S: Stager> HostJob for DeployJob<S> {
    type Staged = anyhow::Result<serde_json::Value>;
    type Done = HostSummary;

    async fn stage(self: Arc<Self>, host: Arc<str>) -> anyhow::Result<serde_json::Value> {
        let Some(c) = self.candidates.get(&*host) else {
            anyhow::bail!("no candidate closure for {host}");
        };
        self.sink.emit(Event::GateStarted {
            host: host.to_string(),
            gate: Gate::Copy,
        });
        let r = self.stager.stage(host.clone(), c.closure.clone()).await;
        if let Ok(detail) = &r {
            self.sink.emit(Event::GatePassed {
                host: host.to_string(),
                gate: Gate::Copy,
                detail: Some(detail.clone()),
            });
        }
        r
    }

    async fn run(self: Arc<Self>, host: Arc<str>, staged: Self::Staged) -> HostSummary {
        let done = self.activate(&host, staged).await;
        self.sink.emit(Event::HostFinished(done.clone()));
        done
    }

    fn interrupted(&self, host: &str, why: Interrupted) -> HostSummary {
        let kind = match why {
            Interrupted::Aborted => OutcomeKind::Aborted,
            Interrupted::StageLost | Interrupted::Panicked => OutcomeKind::Failed,
        };
        let reason = match why {
            Interrupted::Aborted => {
                "aborted by a second Ctrl-C; a detached switch may still finish: check `nixgate status`"
            }
            Interrupted::StageLost => "copy task ended without a result",
            Interrupted::Panicked => "nixgate bug: the host's task panicked",
        };
        let done = self.done(
            host,
            Instant::now(),
            kind,
            self.candidates.get(host).map(|c| c.closure.clone()),
            Some(reason.into()),
            serde_json::json!({"kind": "interrupted", "why": why}).into(),
        );
        self.sink.emit(Event::HostFinished(done.clone()));
        done
    }

    fn is_failure(&self, d: &HostSummary) -> bool {
        d.outcome.is_failure()
    }

    async fn recheck(self: Arc<Self>, host: Arc<str>) -> bool {
        let (Some(h), Ok(session)) = (self.inventory.host(&host), self.sessions.get(&host).await)
        else {
            return false;
        };
        let settings = settings_for(h, false);
        let reports =
            crate::activation::health::run_health_checks(&session, &settings.health_checks, h.os)
                .await;
        reports.iter().all(|r| r.passed())
    }
}
