//! Which hosts hold a root of the closure this run copied to them ahead of
//! their wave, so the run's let-go removes exactly those (the host-side
//! commands, and why the root is there, are in [`crate::nix::gcroots`]).
//!
//! A host's root and its release never cross: each host's state sits
//! behind a lock of its own, held across the command. A release that comes
//! while the root is being made (a run stopping just as a copy ahead ends)
//! waits for it, then removes it: run one after the other at random, the
//! root could land after its release and stay on the host. A root asked
//! for whose answer never came (its task stopped, its connection lost) is
//! released all the same: removing a link that is not there costs nothing.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use crate::remote::unpoisoned;

/// Where one host's root stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    /// Its copy delivered the closure; no root asked for.
    Copied,
    /// A root was asked for (made, or perhaps: its answer lost).
    Asked,
    /// The run let the host go: no root from now on.
    Gone,
}

/// Every staged host's root, by host.
#[derive(Default)]
pub struct StagedRoots {
    hosts: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Root>>>>,
}

impl StagedRoots {
    /// `host`'s copy delivered its closure (a host let go already stays so).
    pub fn copied(&self, host: &str) {
        let fresh = || Arc::new(tokio::sync::Mutex::new(Root::Copied));
        unpoisoned(&self.hosts)
            .entry(host.to_owned())
            .or_insert_with(fresh);
    }

    /// Root `host`'s closure by `root`, once, if its copy delivered it and
    /// the run has not let it go. `None`: nothing asked.
    pub async fn hold<T>(&self, host: &str, root: impl Future<Output = T>) -> Option<T> {
        let cell = unpoisoned(&self.hosts).get(host).cloned()?;
        let mut state = cell.lock().await;
        if *state != Root::Copied {
            return None;
        }
        *state = Root::Asked;
        Some(root.await)
    }

    /// The run lets `host` go: its root is removed by `unroot` if one was
    /// asked for (after a root under way ends). `None`: nothing to remove.
    pub async fn release<T>(&self, host: &str, unroot: impl Future<Output = T>) -> Option<T> {
        let cell = unpoisoned(&self.hosts)
            .entry(host.to_owned())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Root::Gone)))
            .clone();
        let was = std::mem::replace(&mut *cell.lock().await, Root::Gone);
        match was {
            Root::Asked => Some(unroot.await),
            Root::Copied | Root::Gone => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn only_a_copied_host_is_rooted_and_only_a_rooted_one_released() {
        let roots = StagedRoots::default();
        // Not copied (its copy failed, or the stager copies nothing).
        assert_eq!(roots.hold("web1", async { "rooted" }).await, None);
        assert_eq!(roots.release("web1", async { "released" }).await, None);
        // Copied, not rooted (copied as its wave ran): nothing to remove.
        roots.copied("web2");
        assert_eq!(roots.release("web2", async { "released" }).await, None);
        // Copied and rooted: released once.
        roots.copied("web3");
        assert_eq!(roots.hold("web3", async { "rooted" }).await, Some("rooted"));
        assert_eq!(roots.hold("web3", async { "rooted" }).await, None);
        assert_eq!(
            roots.release("web3", async { "released" }).await,
            Some("released")
        );
        assert_eq!(roots.release("web3", async { "released" }).await, None);
    }

    /// A host let go before its copy ended (its wave skipped while it
    /// copied) gets no root afterwards.
    #[tokio::test]
    async fn a_host_let_go_is_not_rooted_after() {
        let roots = StagedRoots::default();
        assert_eq!(roots.release("web1", async {}).await, None);
        roots.copied("web1");
        assert_eq!(roots.hold("web1", async { "rooted" }).await, None);
    }

    /// A release while the root is being made waits for it, then removes
    /// it: the root never lands after its release.
    #[tokio::test(start_paused = true)]
    async fn a_release_waits_for_a_root_under_way() {
        let roots = Arc::new(StagedRoots::default());
        let log = Arc::new(Mutex::new(Vec::new()));
        roots.copied("web1");
        let (r, l) = (roots.clone(), log.clone());
        let holding = tokio::spawn(async move {
            r.hold("web1", async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                l.lock().unwrap().push("rooted");
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let l = log.clone();
        let released = roots
            .release("web1", async move { l.lock().unwrap().push("released") })
            .await;
        assert_eq!(released, Some(()));
        assert_eq!(holding.await.unwrap(), Some(()));
        assert_eq!(*log.lock().unwrap(), ["rooted", "released"]);
    }

    /// A root whose task was stopped mid-command may have landed: it is
    /// released all the same.
    #[tokio::test(start_paused = true)]
    async fn a_root_cut_off_is_released() {
        let roots = Arc::new(StagedRoots::default());
        roots.copied("web1");
        let r = roots.clone();
        let holding = tokio::spawn(async move {
            r.hold("web1", std::future::pending::<()>()).await;
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        holding.abort();
        let _ = holding.await;
        assert_eq!(
            roots.release("web1", async { "released" }).await,
            Some("released")
        );
    }
}
