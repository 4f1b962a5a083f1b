//! After a run: every host that reached known-good from a clean commit gets
//! its release tag (`release/<host>/<UTC>-<shortrev>`) and its release
//! branch fast-forwarded; with `[release] remote`, both are published. A
//! refused or failed release is reported, never fatal: the host is
//! known-good either way. A host whose known-good was revoked after its
//! soak has no known-good end, so it gets no tag. A host that already ran
//! the candidate and was marked by this run is released too.
//!
//! Releases come at the end of the run, hours after an early wave's hosts
//! were let go (their locks released after their soak): meanwhile another
//! run may have moved a host's known-good (`nixgate rollback` from another
//! state directory, another push). So each host's known-good profile is
//! read again first ([`confirm`]: a new connection, the run's own was
//! closed when it let the host go, and one command), and a host whose
//! known-good is no longer this run's mark gets no release
//! ([`NotReleased::MovedSince`]): before, the release certified, and its
//! branch fast-forwarded to, a closure the host had been rolled back from.
//! The reads run at once (up to [`CONFIRMS_AT_ONCE`]), before the first
//! release: one handshake and one round trip of wall-clock for a fleet
//! that answers, bounded by [`CONFIRM_WITHIN`] for one that does not. A
//! host moved between its read and its tag (milliseconds, without its
//! lock) is not caught.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::activation::HostOutcome;
use crate::activation::known_good::{self, KnownGoodMark};
use crate::fleet::Fleet;
use crate::inventory::Inventory;
use crate::plan::Source;
use crate::release::{self, Evidence, GateEvidence, ReleaseOutcome, ReleaseRequest};
use crate::report::{Event, EventSink};
use crate::runner::cancel::{self, CancelLevel, CancelWatch};

use super::HostSummary;

/// Why a known-good host got no release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NotReleased {
    /// The release rules refused it (dirty tree, not a fast-forward, a
    /// branch or tag in the way of the release refs).
    Refused { refusal: release::Refusal },
    /// The repository could not be written.
    Failed { error: String },
    /// The run was stopped (second Ctrl-C: exit at once) before its
    /// releases: a push of the same commit releases the host.
    Stopped,
    /// The host's known-good is no longer this run's mark (generation
    /// `marked`): it moved after the run let the host go (a rollback,
    /// another run's mark). `now`: the generation its profile is on
    /// (`None`: no profile).
    MovedSince { marked: u64, now: Option<u64> },
    /// Whether the host's known-good is still this run's mark could not be
    /// read at release time: not released unconfirmed; a push of the same
    /// commit releases it.
    Unconfirmed { error: String },
    /// The host's known-good is this run's mark (generation `marked`), but
    /// still soak pending: its soak was cut short, or its pass could not be
    /// recorded. A release certifies a proven closure: a push of the same
    /// commit whose soak passes releases it.
    SoakPending { marked: u64 },
}

/// Why a release was not published to the remote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NotPublished {
    Rejected {
        outcome: release::PushOutcome,
    },
    Failed {
        error: String,
    },
    /// A forced release was not pushed: the remote's `branch` is on
    /// `remote_at`, which is neither the commit this repository's branch
    /// moved from (`from`) nor one it descends from: someone else
    /// published a release there, which a push would overwrite.
    Overtaken {
        branch: String,
        remote_at: String,
        from: String,
    },
}

/// Everything releasing needs.
pub struct Releasing<'a> {
    pub inventory: &'a Inventory,
    pub source: &'a Source,
    pub run_id: &'a str,
    pub force: bool,
    pub sink: &'a EventSink,
    /// The run's cancel: stopped at once (second Ctrl-C), no host is
    /// released after (asked before each host: releasing is a git push
    /// per host), and a push under way is stopped.
    pub cancel: &'a CancelWatch,
}

impl Releasing<'_> {
    fn stopped(&self) -> bool {
        *self.cancel.borrow() >= CancelLevel::Abort
    }
}

/// Release every host of `hosts` this run marked known-good: those it
/// took through every gate, and those that already ran the candidate and
/// passed the gates left to them (a push after `--goal test`, or the
/// retry a refused release asks for), unless their release branch is on
/// the commit already (a scheduled push of an unchanged commit would tag
/// every host again at every run), or their known-good moved since
/// ([`confirm`], over `fleet`).
pub async fn release_known_good<F: Fleet>(r: &Releasing<'_>, fleet: &F, hosts: &[HostSummary]) {
    let due: Vec<&HostSummary> = (hosts.iter())
        .filter(|h| h.closure.is_some())
        .filter(|h| marked(h).is_some_and(|(_, changed)| changed || !released_already(r, &h.host)))
        .collect();
    // Told to exit at once: no tag, no branch, no push (its soak's
    // re-check may have been cut off, the known-good end kept).
    let mut confirmed = if r.stopped() {
        HashMap::new()
    } else {
        confirm(r, fleet, &due).await
    };
    // Once a push to the remote did not finish (unreachable, bounded out,
    // stopped), the rest are not tried: each would wait out its own bound
    // (40 hosts on a black-holed remote: 40 minutes).
    let mut remote_down: Option<String> = None;
    // The remote's release branches, read once, at the first forced
    // release: its lease is what the remote has.
    let mut remote_heads: Option<release::RemoteBranches> = None;
    for h in due {
        let (Some(closure), Some((mark, _))) = (h.closure.clone(), marked(h)) else {
            continue;
        };
        let why = match confirmed.remove(&h.host) {
            _ if r.stopped() => Some(NotReleased::Stopped),
            Some(Err(why)) => Some(why),
            Some(Ok(())) => None,
            None => Some(NotReleased::Stopped),
        };
        if let Some(why) = why {
            r.sink.emit(Event::NotReleased {
                host: h.host.clone(),
                why,
            });
            continue;
        }
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
            commit: r.source.commit.clone(),
            dirty: r.source.dirty,
            closure,
            builder: r.inventory.builder.connection.address.clone(),
            run_id: r.run_id.to_owned(),
            evidence,
            force: r.force,
            at: None,
        };
        let remote = (remote_down.as_deref(), &mut remote_heads);
        if let Err(e) = release_one(r, &h.host, &req, remote).await {
            remote_down.get_or_insert(e);
        }
    }
}

/// How many hosts' known-good are read again at once before releasing:
/// each read is a new SSH connection (the run closed its own).
pub const CONFIRMS_AT_ONCE: usize = 32;

/// How long one host's read before releasing may take, its connection
/// included.
pub const CONFIRM_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// Is each host's known-good still this run's mark (its profile on the
/// generation marked, whose record names this run)? Read over a new
/// connection, for every host at once (up to [`CONFIRMS_AT_ONCE`]); the
/// second Ctrl-C stops the reads (the hosts not read are not released).
async fn confirm<F: Fleet>(
    r: &Releasing<'_>,
    fleet: &F,
    hosts: &[&HostSummary],
) -> HashMap<String, Result<(), NotReleased>> {
    use futures_util::StreamExt;
    let reads = futures_util::stream::iter(hosts.iter().filter_map(|h| {
        let (mark, _) = marked(h)?;
        let os = r.inventory.host(&h.host)?.os;
        Some(async move {
            let read = still_marked(fleet, &h.host, os, mark, r.run_id);
            let read = match tokio::time::timeout(CONFIRM_WITHIN, read).await {
                Ok(read) => read,
                Err(_) => Err(NotReleased::Unconfirmed {
                    error: format!(
                        "its known-good was not read within {} s",
                        CONFIRM_WITHIN.as_secs()
                    ),
                }),
            };
            (h.host.clone(), read)
        })
    }))
    .buffer_unordered(CONFIRMS_AT_ONCE)
    .collect::<HashMap<_, _>>();
    let mut cancel = r.cancel.clone();
    tokio::select! {
        read = reads => read,
        _ = cancel::reached(&mut cancel, CancelLevel::Abort) => HashMap::new(),
    }
}

/// Is `host`'s known-good profile still on `mark`, with this run's record,
/// and final (the host's record, not the run's end: a mark made pending
/// stays so when its soak was cut short or its pass not recorded)?
async fn still_marked<F: Fleet>(
    fleet: &F,
    host: &str,
    os: crate::inventory::Os,
    mark: &KnownGoodMark,
    run_id: &str,
) -> Result<(), NotReleased> {
    let unconfirmed = |error: String| NotReleased::Unconfirmed { error };
    let remote = (fleet.fresh(host, None).await).map_err(|e| unconfirmed(format!("{e:#}")))?;
    let paths = crate::activation::HostPaths::for_os(os);
    let history = known_good::history_of(&remote, &paths, &mark.record.closure)
        .await
        .map_err(|e| unconfirmed(format!("{e:#}")))?;
    let now = history.iter().find(|g| g.current);
    let ours = now.is_some_and(|g| {
        g.generation == mark.generation
            && g.record
                .as_ref()
                .is_some_and(|rec| rec.run_id.as_str() == run_id)
    });
    if ours && now.is_some_and(|g| g.soak_pending()) {
        return Err(NotReleased::SoakPending {
            marked: mark.generation,
        });
    }
    if ours {
        return Ok(());
    }
    Err(NotReleased::MovedSince {
        marked: mark.generation,
        now: now.map(|g| g.generation),
    })
}

/// The known-good mark this run made for the host, if it made one, and
/// whether the run switched the host to it (`false`: it ran it already).
fn marked(h: &HostSummary) -> Option<(&KnownGoodMark, bool)> {
    match h.end.outcome()? {
        HostOutcome::KnownGood { mark } => Some((mark, true)),
        HostOutcome::AlreadyCurrent {
            mark: Some(mark), ..
        } => Some((mark, false)),
        _ => None,
    }
}

/// Is `release/<host>` on the run's commit already? Unreadable: no (the
/// release then says what is wrong).
fn released_already(r: &Releasing<'_>, host: &str) -> bool {
    let repo = &r.inventory.builder.source;
    match release::branch_commit(repo, host) {
        Ok(Some(at)) => at == r.source.commit,
        _ => false,
    }
}

/// Release `host`; `Err`: its push to the remote did not finish (why),
/// and later pushes are not tried (`remote_down`: an earlier one's why;
/// `heads`: the remote's release branches, once read).
async fn release_one(
    r: &Releasing<'_>,
    host: &str,
    req: &ReleaseRequest,
    (remote_down, heads): (Option<&str>, &mut Option<release::RemoteBranches>),
) -> Result<(), String> {
    let repo = &r.inventory.builder.source;
    let why = match release::create(repo, req) {
        Ok(ReleaseOutcome::Released {
            tag,
            branch,
            update,
            ..
        }) => {
            r.sink.emit(Event::Released {
                host: host.to_owned(),
                tag: tag.clone(),
                branch: branch.clone(),
                update: Some(update.clone()),
            });
            if let Some(remote) = &r.inventory.release.remote {
                let forced_from = match &update {
                    release::BranchUpdate::Forced { from } => Some(from.as_str()),
                    _ => None,
                };
                let names = (tag.as_str(), branch.as_str());
                return publish(r, host, remote, names, forced_from, (remote_down, heads)).await;
            }
            return Ok(());
        }
        Ok(ReleaseOutcome::Refused { reason }) => NotReleased::Refused { refusal: reason },
        Err(e) => NotReleased::Failed {
            error: format!("{e:#}"),
        },
    };
    r.sink.emit(Event::NotReleased {
        host: host.to_owned(),
        why,
    });
    Ok(())
}

/// Push the release to `remote` (bounded: [`release::PUSH_WITHIN`]); the
/// second Ctrl-C stops it (git is killed).
async fn publish(
    r: &Releasing<'_>,
    host: &str,
    remote: &str,
    (tag, branch): (&str, &str),
    forced_from: Option<&str>,
    (remote_down, heads): (Option<&str>, &mut Option<release::RemoteBranches>),
) -> Result<(), String> {
    let repo = &r.inventory.builder.source;
    let lease = match forced_from {
        None => None,
        Some(from) => match leased(r, remote, (branch, from), remote_down, heads).await {
            Ok(lease) => Some(lease),
            Err((why, down)) => {
                r.sink.emit(Event::NotPublished {
                    host: host.to_owned(),
                    remote: remote.to_owned(),
                    tag: tag.to_owned(),
                    why,
                });
                return down.map_or(Ok(()), Err);
            }
        },
    };
    let by_hand = release::push_by_hand(repo, remote, tag, branch, lease.as_ref());
    let mut cancel = r.cancel.clone();
    let pushed = match remote_down {
        Some(why) => Err(anyhow::anyhow!(
            "not tried: an earlier push to {remote} in this run did not finish ({why}); \
             `{by_hand}` publishes it"
        )),
        None => tokio::select! {
            pushed = release::push(repo, remote, tag, branch, lease.as_ref()) => pushed,
            _ = cancel::reached(&mut cancel, CancelLevel::Abort) => Err(anyhow::anyhow!(
                "stopped by the second Ctrl-C (the remote may have the release or not): \
                 `{by_hand}` publishes it"
            )),
        },
    };
    let (why, down) = match pushed {
        Ok(release::PushOutcome::Pushed { .. }) => return Ok(()),
        Ok(outcome) => (NotPublished::Rejected { outcome }, None),
        Err(e) => {
            let error = format!("{e:#}");
            let down = remote_down.map_or_else(|| error.clone(), str::to_owned);
            (NotPublished::Failed { error }, Some(down))
        }
    };
    r.sink.emit(Event::NotPublished {
        host: host.to_owned(),
        remote: remote.to_owned(),
        tag: tag.to_owned(),
        why,
    });
    down.map_or(Ok(()), Err)
}

/// The lease of a release that moved `branch` by force from `from`: where
/// the remote's branch is (read once a run into `heads`), if that
/// overwrites no one else's release ([`release::lease`]). Not read (the
/// remote did not answer an earlier push): `from`, as before, for the
/// command that publishes it by hand. `Err`: not pushed, why, and the
/// remote's failure when it did not answer (later pushes not tried).
async fn leased(
    r: &Releasing<'_>,
    remote: &str,
    (branch, from): (&str, &str),
    remote_down: Option<&str>,
    heads: &mut Option<release::RemoteBranches>,
) -> Result<release::Lease, (NotPublished, Option<String>)> {
    let repo = &r.inventory.builder.source;
    if heads.is_none() && remote_down.is_none() {
        let mut cancel = r.cancel.clone();
        let read = tokio::select! {
            read = release::remote_branches(repo, remote) => read,
            _ = cancel::reached(&mut cancel, CancelLevel::Abort) => Err(anyhow::anyhow!(
                "stopped by the second Ctrl-C while reading {remote}'s release branches"
            )),
        };
        match read {
            Ok(read) => *heads = Some(read),
            Err(e) => {
                let error = format!("{e:#}");
                return Err((
                    NotPublished::Failed {
                        error: error.clone(),
                    },
                    Some(error),
                ));
            }
        }
    }
    let Some(heads) = heads else {
        return Ok(release::Lease::At(from.to_owned()));
    };
    let remote_at = heads.get(branch).map(String::as_str);
    match release::lease(repo, (from, &r.source.commit), remote_at) {
        Ok(Some(lease)) => Ok(lease),
        Ok(None) => Err((
            NotPublished::Overtaken {
                branch: branch.to_owned(),
                remote_at: remote_at.unwrap_or_default().to_owned(),
                from: from.to_owned(),
            },
            None,
        )),
        Err(e) => Err((
            NotPublished::Failed {
                error: format!("{e:#}"),
            },
            None,
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// An inventory releasing to a remote that never answers (its
    /// pre-receive hook sleeps 15 s), with its event capture and Ctrl-C.
    struct Fixture {
        tmp: tempfile::TempDir,
        inv: Inventory,
        source: Source,
        sink: EventSink,
        events: crate::report::Captured,
        canceller: cancel::Canceller,
        watch: CancelWatch,
    }

    impl Fixture {
        fn new() -> Fixture {
            let tmp = tempfile::tempdir().unwrap();
            let repo = release::unanswering_remote(tmp.path());
            let src = format!(
                "[builder]\naddress = \"b\"\nsource = {:?}\n[release]\nremote = \"origin\"\n\
                 [hosts.web1]\naddress = \"10.0.0.1\"\n",
                repo.display().to_string()
            );
            let inv = Inventory::parse(&tmp.path().join("inventory.toml"), &src).unwrap();
            let (sink, events) = EventSink::capture();
            let (canceller, watch) = cancel::channel();
            let source = Source {
                commit: "0".repeat(40),
                dirty: false,
            };
            Fixture {
                tmp,
                inv,
                source,
                sink,
                events,
                canceller,
                watch,
            }
        }

        fn releasing(&self) -> Releasing<'_> {
            Releasing {
                inventory: &self.inv,
                source: &self.source,
                run_id: "r1",
                force: false,
                sink: &self.sink,
                cancel: &self.watch,
            }
        }
    }

    /// Once a push to the remote did not finish, the next host's is not
    /// tried (each would wait out its own bound): said, with the command
    /// that publishes it, and the remote left untouched.
    #[tokio::test]
    async fn a_remote_that_did_not_answer_is_not_tried_again() {
        let f = Fixture::new();
        let r = f.releasing();
        let (tmp, events) = (&f.tmp, &f.events);
        let names = ("release/web1/t1", "release/web1");
        let down = publish(
            &r,
            "web1",
            "origin",
            names,
            None,
            (Some("timed out"), &mut None),
        )
        .await;
        assert_eq!(down, Err("timed out".to_owned()));
        assert!(!tmp.path().join("remote.git/hook.pid").exists(), "pushed");
        let said = format!("{:?}", events.take());
        assert!(
            said.contains("not tried") && said.contains("push --atomic origin"),
            "{said}"
        );
    }

    /// The second Ctrl-C stops a release push under way (git is killed)
    /// and says how to publish it by hand (the run waited for the remote,
    /// up to the push's bound, though told to exit at once).
    #[tokio::test]
    async fn the_second_ctrl_c_stops_a_push_under_way() {
        let f = Fixture::new();
        let r = f.releasing();
        let (events, canceller) = (&f.events, f.canceller.clone());
        let ctrl_c = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            canceller.escalate();
            canceller.escalate();
        });
        let started = std::time::Instant::now();
        let names = ("release/web1/t1", "release/web1");
        let _ = publish(&r, "web1", "origin", names, None, (None, &mut None)).await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        ctrl_c.await.unwrap();
        let told = events.take().into_iter().any(|e| {
            matches!(&e,
            Event::NotPublished { why: NotPublished::Failed { error }, .. }
                if error.contains("second Ctrl-C") && error.contains("push --atomic origin"))
        });
        assert!(told);
    }

    /// A forced release whose remote branch is on a commit this repository
    /// never had (someone else published a release there) is not pushed:
    /// said as that, with the remote's commit and the one the local branch
    /// moved from; the remote is not written to (its hook never ran) nor
    /// taken for down.
    #[tokio::test]
    async fn a_forced_release_never_overwrites_anothers_release() {
        let f = Fixture::new();
        let r = f.releasing();
        let (tmp, events) = (&f.tmp, &f.events);
        let bare = tmp.path().join("remote.git");
        let empty_tree = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";
        let theirs = release::test_git(&bare, &["commit-tree", empty_tree, "-m", "theirs"]);
        release::test_git(&bare, &["update-ref", "refs/heads/release/web1", &theirs]);
        let from = release::test_git(&tmp.path().join("repo"), &["rev-parse", "HEAD"]);
        let names = ("release/web1/t1", "release/web1");
        let mut heads = None;
        let done = publish(&r, "web1", "origin", names, Some(&from), (None, &mut heads)).await;
        assert_eq!(done, Ok(()));
        assert!(!bare.join("hook.pid").exists(), "pushed");
        let said = events.take();
        let overtaken = said.iter().any(|e| {
            matches!(e, Event::NotPublished { why: NotPublished::Overtaken { remote_at, from: f, .. }, .. }
                if *remote_at == theirs && *f == from)
        });
        assert!(overtaken, "{said:?}");
        let read = heads.map(|h| h.get("release/web1").cloned());
        assert_eq!(read, Some(Some(theirs)));
    }
}
