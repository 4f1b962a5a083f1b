//! A host's known-good history as people read it (`status --history`, the
//! rollback preview): each generation's closure, the commit it was built
//! from and when it was marked, from the host's own records. And what a
//! rollback would change: the package diff between what a host runs and the
//! generation it would go back to, both closures read from the host in one
//! query.

use serde::{Deserialize, Serialize};

use crate::activation::known_good::{self, KnownGoodGeneration};
use crate::activation::{HostPaths, links};
use crate::diff::PackageDiff;
use crate::fleet::Fleet;
use crate::inspect::bound;
use crate::inventory::Inventory;
use crate::nix::StorePath;

/// One known-good generation of a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    pub generation: u64,
    pub closure: Option<StorePath>,
    /// The configuration's commit it was built from, when recorded.
    pub commit: Option<String>,
    /// When it was marked known-good (RFC 3339, UTC).
    pub marked_at: Option<String>,
    pub run_id: Option<String>,
    /// Its closure is still in the host's store (a rollback target).
    pub present: bool,
    /// The known-good profile's current generation: where the host stands.
    pub current: bool,
}

/// The history as shown, oldest first (the gate evidence of each record is
/// left out: it is the run report's business).
pub fn generations(hist: &[KnownGoodGeneration]) -> Vec<Generation> {
    hist.iter()
        .map(|g| Generation {
            generation: g.generation,
            closure: g.closure.clone(),
            commit: g.record.as_ref().and_then(|r| r.commit.clone()),
            marked_at: g.record.as_ref().map(|r| r.marked_at.clone()),
            run_id: g.record.as_ref().map(|r| r.run_id.to_string()),
            present: g.present,
            current: g.current,
        })
        .collect()
}

/// Why a host's history was not read: `status --history` says
/// UNREACHABLE for the one, UNREADABLE for the other, as plain `status`
/// does (a host that answered SSH was said unreachable).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No session to it (or it is not in the inventory).
    #[error(transparent)]
    Unreachable(anyhow::Error),
    /// Reached, but its history could not be read, or did not come in time.
    #[error(transparent)]
    Unreadable(anyhow::Error),
}

/// Read a host's history over its session; once the host is reached, the
/// read is bounded as every looking command's are ([`bound`]): one host
/// whose commands hang held `status --history` of the whole fleet.
pub async fn read<F: Fleet>(
    fleet: &F,
    inv: &Inventory,
    host: &str,
) -> Result<Vec<Generation>, ReadError> {
    let h = inv
        .host(host)
        .ok_or_else(|| ReadError::Unreachable(anyhow::anyhow!("{host} is not in the inventory")))?;
    let remote = fleet
        .host(host)
        .await
        .map_err(|e| ReadError::Unreachable(e.into()))?;
    let paths = HostPaths::for_os(h.os);
    let hist = known_good::history(&remote, &paths);
    let hist = bound::bounded(bound::deadline(), "reading its known-good history", hist)
        .await
        .map_err(ReadError::Unreadable)?;
    Ok(generations(&hist))
}

/// What a rollback of `host` from what it runs to `target` changes: its
/// history (to name both ends) and the package diff (`None` when the host
/// runs no known system).
pub struct RollbackView {
    pub history: Vec<Generation>,
    pub running: Option<StorePath>,
    pub packages: Option<PackageDiff>,
}

/// Read what a rollback preview shows, from the host itself; once the host
/// is reached, bounded as [`read`] is: a host whose commands hang (a
/// requisites query stuck behind a wedged nix-daemon) held the rollback's
/// prompt for ever, every ready host's lock held by the run meanwhile.
/// Past the bound the preview shows the host without its diff.
pub async fn rollback_view<F: Fleet>(
    fleet: &F,
    inv: &Inventory,
    host: &str,
    running: Option<&StorePath>,
    target: &StorePath,
) -> anyhow::Result<RollbackView> {
    let h = inv
        .host(host)
        .ok_or_else(|| anyhow::anyhow!("{host} is not in the inventory"))?;
    let remote = fleet.host(host).await?;
    let paths = HostPaths::for_os(h.os);
    let by = bound::deadline();
    let history = known_good::history(&remote, &paths);
    let history = bound::bounded(by, "reading its known-good history", history).await?;
    let history = generations(&history);
    let running = match running {
        Some(r) => Some(r.clone()),
        None => {
            let link = links::read_store_link(&remote, &paths.current_system);
            bound::bounded(by, "reading what it runs", link).await?
        }
    };
    let packages = match &running {
        Some(cur) => {
            let roots = [cur.clone(), target.clone()];
            let all = crate::nix::closure::closures(&remote, &roots);
            let mut all = bound::bounded(by, "reading the closures' packages", all).await?;
            let old = all.remove(cur).unwrap_or_default();
            let new = match all.remove(target) {
                Some(n) => n,
                // The same closure twice: one entry.
                None if cur == target => old.clone(),
                None => Vec::new(),
            };
            Some(crate::diff::packages::package_diff(&old, cur, &new, target))
        }
        None => None,
    };
    Ok(RollbackView {
        history,
        running,
        packages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::fake_host::FakeHost;
    use crate::fleet::fake::{Build, FakeBuilder, FakeFleet};

    /// Two hosts reached, one whose commands never return (a wedged
    /// `/nix`): the other's history comes, the hung one is given up when
    /// the bound passes, saying what did not answer. `status --history`
    /// waited for it for ever, with nothing shown for any host.
    #[tokio::test(start_paused = true)]
    async fn a_host_whose_commands_hang_is_given_up_the_others_read() {
        let inv = Inventory::parse(
            std::path::Path::new("/inv/inventory.toml"),
            "[builder]\naddress = \"b\"\n[hosts.web1]\naddress = \"10.0.0.1\"\n\
             [hosts.web2]\naddress = \"10.0.0.2\"\n",
        )
        .unwrap();
        let system = "/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web-24.05";
        let host = FakeHost::new(&StorePath::parse(system).unwrap());
        let fleet = FakeFleet::new(
            &[("web1", &host), ("web2", &host)],
            FakeBuilder::new(Build::Hangs),
        );
        fleet.wedged.lock().unwrap().insert("web2".into());
        let started = tokio::time::Instant::now();
        let both = async { tokio::join!(read(&*fleet, &inv, "web1"), read(&*fleet, &inv, "web2")) };
        let hour = std::time::Duration::from_secs(3600);
        let (web1, web2) = tokio::time::timeout(hour, both)
            .await
            .expect("still waiting after an hour: the read is not bounded");
        assert_eq!(started.elapsed(), bound::READS_WITHIN);
        assert!(web1.is_ok(), "{web1:?}");
        let e = web2.unwrap_err();
        assert!(matches!(e, ReadError::Unreadable(_)), "reached: {e:?}");
        let e = format!("{e:#}");
        assert!(
            e.contains("reading its known-good history: no answer within 30 s"),
            "{e}"
        );
        fleet.unreachable.lock().unwrap().insert("web2".into());
        let e = read(&*fleet, &inv, "web2").await.unwrap_err();
        assert!(matches!(e, ReadError::Unreachable(_)), "{e:?}");
    }

    /// The rollback preview of a host whose commands never return (it
    /// wedged after the plan read its target): given up when the bound
    /// passes, saying what did not answer; the preview then shows it
    /// without its diff. The prompt waited for it for ever, every ready
    /// host locked by the run meanwhile.
    #[tokio::test(start_paused = true)]
    async fn a_preview_whose_host_hangs_is_given_up() {
        let inv = Inventory::parse(
            std::path::Path::new("/inv/inventory.toml"),
            "[builder]\naddress = \"b\"\n[hosts.web1]\naddress = \"10.0.0.1\"\n",
        )
        .unwrap();
        let system = "/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web-24.05";
        let system = StorePath::parse(system).unwrap();
        let host = FakeHost::new(&system);
        let fleet = FakeFleet::new(&[("web1", &host)], FakeBuilder::new(Build::Hangs));
        fleet.wedged.lock().unwrap().insert("web1".into());
        let started = tokio::time::Instant::now();
        let view = rollback_view(&*fleet, &inv, "web1", Some(&system), &system);
        let hour = std::time::Duration::from_secs(3600);
        let view = tokio::time::timeout(hour, view)
            .await
            .expect("still waiting after an hour: the preview is not bounded");
        assert_eq!(started.elapsed(), bound::READS_WITHIN);
        let e = format!("{:#}", view.err().expect("web1 hangs"));
        assert!(
            e.contains("reading its known-good history: no answer within 30 s"),
            "{e}"
        );
    }
}
