//! The health-checks gate: a host's checks, each a shell snippet written by
//! the inventory's author, run on the host as ONE argument of `sh -c` under
//! `timeout`, with retries. Results are typed, attempt by attempt.

use std::time::Duration;

use super::settings::Os;
use crate::remote::patient::Patient;
use crate::remote::{Command, Exit, Remote};

/// One health check from the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// A shell snippet, run by `sh -c` as the login user.
    pub command: String,
    /// Limit for one attempt.
    pub timeout: Duration,
    /// Extra attempts after a failure.
    pub retries: u32,
}

/// Pause between two attempts of a check.
pub const RETRY_DELAY: Duration = Duration::from_secs(2);

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Attempt {
    Passed,
    Failed {
        exit: Exit,
        tail: Vec<String>,
    },
    TimedOut {
        after: Duration,
    },
    /// The command could not be run (no connection).
    Unreachable {
        error: String,
    },
}

/// All attempts of one check.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HealthReport {
    pub command: String,
    pub attempts: Vec<Attempt>,
}

impl HealthReport {
    pub fn passed(&self) -> bool {
        matches!(self.attempts.last(), Some(Attempt::Passed))
    }
}

/// The remote command of one attempt: `timeout --kill-after=5 <secs> sh -c
/// <snippet>` (Linux); macOS has no `timeout`, so perl's `alarm` stands in.
pub fn check_command(check: &HealthCheck, os: Os) -> Command {
    let secs = check.timeout.as_secs().max(1).to_string();
    let prefix = match os {
        Os::Linux => Command::new("timeout").arg("--kill-after=5").arg(secs),
        Os::Darwin => Command::new("perl")
            .args(["-e", "alarm shift; exec @ARGV or die"])
            .arg(secs),
    };
    prefix.arg("sh").arg("-c").arg(&check.command)
}

fn timed_out(exit: &Exit, os: Os) -> bool {
    match os {
        // timeout(1): 124 on timeout, 137 when it had to SIGKILL.
        Os::Linux => matches!(exit.code(), Some(124 | 137)),
        // SIGALRM: 128 + 14, or a signal exit.
        Os::Darwin => {
            exit.code() == Some(142) || matches!(exit, Exit::Signal { signal } if signal == "ALRM")
        }
    }
}

/// Run one check with its retries. An attempt whose connection was lost
/// (no exit status came back: the SSH session dropped, sshd restarted) is
/// run again once a new connection answers, for up to the check's timeout
/// ([`Patient`]); it does not use up a retry. Before, the fault matrix's
/// dropped SSH session during the health checks rolled back a host whose
/// check passed on the next connection. A host that stays unreachable
/// still fails the check.
pub async fn run_check<R: Remote>(remote: &R, check: &HealthCheck, os: Os) -> HealthReport {
    let cmd = check_command(check, os);
    // Guard against a transport that hangs: the time lost connections may
    // take (the timeout), the last try's own timeout, and slack.
    let guard = check
        .timeout
        .saturating_mul(2)
        .saturating_add(Duration::from_secs(15));
    let mut attempts = Vec::new();
    for attempt in 0..=check.retries {
        if attempt > 0 {
            tokio::time::sleep(RETRY_DELAY).await;
        }
        let patient = Patient::new(remote, check.timeout);
        let result = match tokio::time::timeout(guard, patient.exec(&cmd)).await {
            Err(_) => Attempt::TimedOut { after: guard },
            Ok(Err(e)) => Attempt::Unreachable {
                error: format!("{e:#}"),
            },
            Ok(Ok(out)) if out.success() => Attempt::Passed,
            Ok(Ok(out)) if timed_out(&out.exit, os) => Attempt::TimedOut {
                after: check.timeout,
            },
            Ok(Ok(out)) => Attempt::Failed {
                exit: out.exit.clone(),
                tail: out.tail(10),
            },
        };
        let done = result == Attempt::Passed;
        attempts.push(result);
        if done {
            break;
        }
    }
    HealthReport {
        command: check.command.clone(),
        attempts,
    }
}

/// Run the checks in order, stopping at the first that fails all attempts.
pub async fn run_health_checks<R: Remote>(
    remote: &R,
    checks: &[HealthCheck],
    os: Os,
) -> Vec<HealthReport> {
    let mut reports = Vec::new();
    for check in checks {
        let report = run_check(remote, check, os).await;
        let passed = report.passed();
        reports.push(report);
        if !passed {
            break;
        }
    }
    reports
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::remote::local::LocalRemote;
    use crate::remote::scripted::{ScriptedRemote, fail, ok};

    fn check(cmd: &str, secs: u64, retries: u32) -> HealthCheck {
        HealthCheck {
            command: cmd.into(),
            timeout: Duration::from_secs(secs),
            retries,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_pass() {
        let n = AtomicU32::new(0);
        let r = ScriptedRemote::new("web1", move |_| {
            if n.fetch_add(1, Ordering::SeqCst) < 2 {
                fail(7, "curl: (7) Failed to connect to localhost port 80")
            } else {
                ok("")
            }
        });
        let c = check("curl -fsS http://localhost/ | grep -q 'It works'", 10, 3);
        let reports = run_health_checks(&r, std::slice::from_ref(&c), Os::Linux).await;
        assert_eq!(reports.len(), 1);
        assert!(reports[0].passed());
        assert_eq!(reports[0].attempts.len(), 3);
        // The snippet is ONE argument of sh -c.
        assert_eq!(
            r.argvs()[0],
            vec![
                "timeout",
                "--kill-after=5",
                "10",
                "sh",
                "-c",
                "curl -fsS http://localhost/ | grep -q 'It works'"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_connection_is_not_a_failed_check() {
        let n = AtomicU32::new(0);
        let r = ScriptedRemote::new("web1", move |_| {
            if n.fetch_add(1, Ordering::SeqCst) < 2 {
                crate::remote::Output::new(Exit::ConnectionLost, "", "")
            } else {
                ok("")
            }
        });
        let reports = run_health_checks(&r, &[check("true", 30, 0)], Os::Linux).await;
        assert!(reports[0].passed(), "{reports:?}");
        assert_eq!(reports[0].attempts, [Attempt::Passed]);
        assert_eq!(r.argvs().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_host_that_stays_unreachable_fails_the_check() {
        let r = ScriptedRemote::new("web1", |_| {
            crate::remote::Output::new(Exit::ConnectionLost, "", "")
        });
        let started = tokio::time::Instant::now();
        let reports = run_health_checks(&r, &[check("true", 10, 0)], Os::Linux).await;
        assert!(!reports[0].passed());
        // 1 + 2 + 4 s waited; the next wait (8 s) would pass 10 s.
        assert_eq!(started.elapsed(), Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_first_failing_check() {
        let r = ScriptedRemote::new("web1", |c| {
            if c.argv().last().unwrap() == "false" {
                fail(1, "")
            } else {
                ok("")
            }
        });
        let reports = run_health_checks(
            &r,
            &[
                check("true", 5, 0),
                check("false", 5, 1),
                check("true", 5, 0),
            ],
            Os::Linux,
        )
        .await;
        assert_eq!(reports.len(), 2);
        assert!(reports[0].passed());
        assert!(!reports[1].passed());
        assert_eq!(reports[1].attempts.len(), 2);
    }

    /// Real `timeout` and `sh -c` on this machine: a hostile-looking snippet
    /// is passed intact, a slow one times out.
    #[tokio::test]
    async fn real_timeout_and_quoting() {
        let r = LocalRemote::new("local");
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("it's ok");
        let snippet = format!(
            "test \"$(echo a b)\" = 'a b' && touch \"{}\"",
            marker.display()
        );
        let rep = run_check(&r, &check(&snippet, 5, 0), Os::Linux).await;
        assert!(rep.passed(), "{rep:?}");
        assert!(marker.exists());
        let rep = run_check(&r, &check("sleep 10", 1, 0), Os::Linux).await;
        assert_eq!(
            rep.attempts,
            vec![Attempt::TimedOut {
                after: Duration::from_secs(1)
            }]
        );
    }
}
