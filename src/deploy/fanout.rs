//! Groups relay copies that start together so shared paths leave the builder
//! once: the first host to arrive opens a batch, which stays open while
//! hosts keep arriving (each arrival extends it by the quiet period, up to a
//! cap); then the paths all of them lack are broadcast to all (see
//! [`crate::nix::fanout`]). Each host then relays only its own remainder.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::fleet::{BUILDER, Sessions};
use crate::nix::StorePath;
use crate::nix::closure::PathInfo;
use crate::nix::copy::CopyProgress;
use crate::nix::fanout::{self, Shared};
use crate::ssh::SshSession;

type Progress = Arc<dyn Fn(CopyProgress) + Send + Sync>;

struct Member {
    target: SshSession,
    closure: Arc<Vec<PathInfo>>,
    lacking: HashSet<StorePath>,
    progress: Progress,
    reply: oneshot::Sender<anyhow::Result<Shared>>,
}

/// The batches of one run's relay copies.
pub struct RelayHub {
    sessions: Arc<Sessions>,
    quiet: Duration,
    cap: Duration,
    open: Mutex<Option<Arc<Mutex<Vec<Member>>>>>,
}

impl RelayHub {
    /// A batch closes once no host joined for `quiet`, or `cap` after it opened.
    pub fn new(sessions: Arc<Sessions>, quiet: Duration, cap: Duration) -> Arc<RelayHub> {
        Arc::new(RelayHub {
            sessions,
            quiet,
            cap,
            open: Mutex::new(None),
        })
    }

    /// Join the current batch (or open one) and wait for its shared stream.
    /// `lacking` is what the host lacks of `closure`.
    pub async fn share(
        self: &Arc<Self>,
        target: SshSession,
        closure: Arc<Vec<PathInfo>>,
        lacking: HashSet<StorePath>,
        progress: Progress,
    ) -> anyhow::Result<Shared> {
        let (tx, rx) = oneshot::channel();
        let member = Member {
            target,
            closure,
            lacking,
            progress,
            reply: tx,
        };
        {
            let mut open = self
                .open
                .lock()
                .map_err(|_| anyhow::anyhow!("relay hub poisoned"))?;
            match open.as_ref() {
                Some(batch) => batch
                    .lock()
                    .map_err(|_| anyhow::anyhow!("relay batch poisoned"))?
                    .push(member),
                None => {
                    let batch = Arc::new(Mutex::new(vec![member]));
                    *open = Some(batch.clone());
                    let hub = self.clone();
                    tokio::spawn(async move {
                        let opened = tokio::time::Instant::now();
                        let mut seen = 0;
                        loop {
                            tokio::time::sleep(hub.quiet).await;
                            let now = batch.lock().map(|m| m.len()).unwrap_or(seen);
                            if now == seen || opened.elapsed() >= hub.cap {
                                break;
                            }
                            seen = now;
                        }
                        // Close the batch: later arrivals open the next one.
                        if let Ok(mut open) = hub.open.lock() {
                            *open = None;
                        }
                        let members: Option<Vec<Member>> =
                            batch.lock().ok().map(|mut m| std::mem::take(&mut *m));
                        if let Some(members) = members {
                            hub.run(members).await;
                        }
                    });
                }
            }
        }
        rx.await
            .map_err(|_| anyhow::anyhow!("the shared copy stopped before it finished"))?
    }

    async fn run(&self, members: Vec<Member>) {
        let none = Shared {
            hosts: 1,
            ..Shared::default()
        };
        if members.len() < 2 {
            for m in members {
                let _ = m.reply.send(Ok(none));
            }
            return;
        }
        let closures: Vec<&[PathInfo]> = members.iter().map(|m| m.closure.as_slice()).collect();
        let order = match fanout::union(&closures) {
            Ok(o) => o,
            Err(e) => {
                let msg = format!("{e:#}");
                for m in members {
                    let _ = m
                        .reply
                        .send(Err(anyhow::anyhow!("combining closures: {msg}")));
                }
                return;
            }
        };
        let lacking: Vec<&HashSet<StorePath>> = members.iter().map(|m| &m.lacking).collect();
        let shared = fanout::shared_paths(&order, &lacking);
        if shared.is_empty() {
            for m in members {
                let _ = m.reply.send(Ok(none));
            }
            return;
        }
        let paths = shared.len() as u64;
        let targets: Vec<(&SshSession, &(dyn Fn(CopyProgress) + Send + Sync))> = members
            .iter()
            .map(|m| (&m.target, m.progress.as_ref()))
            .collect();
        let builder = match self.sessions.get(BUILDER).await {
            Ok(b) => b,
            Err(e) => {
                let msg = format!("{e:#}");
                drop(targets);
                for m in members {
                    let _ = m
                        .reply
                        .send(Err(anyhow::anyhow!("connecting to the builder: {msg}")));
                }
                return;
            }
        };
        let results = fanout::broadcast(&builder, &targets, &shared).await;
        let hosts = members.len();
        for (m, r) in members.into_iter().zip(results) {
            let _ = m.reply.send(r.map(|bytes| Shared {
                hosts,
                paths,
                bytes,
            }));
        }
    }
}
