//! GC roots on the builder, so a garbage collection between build, diff and
//! copy (or long after, for structural diffs) cannot lose a built system.

use anyhow::Context;

use super::StorePath;
use crate::remote::{Command, Remote};

/// Roots live under the system gcroots directory as root, else per user.
/// Arguments: `HOST TOPLEVEL DRV HASH` for each host, one after another.
const ROOTS: &str = r#"set -e
if [ "$(id -u)" = 0 ]; then base=/nix/var/nix/gcroots/nixgate; else base="/nix/var/nix/gcroots/per-user/$(id -un)/nixgate"; fi
while [ $# -ge 4 ]; do
d="$base/$1"; mkdir -p "$d/by-hash"
ln -sfn "$2" "$d/system"; ln -sfn "$3" "$d/drv"
ln -sfn "$2" "$d/by-hash/$4"; ln -sfn "$3" "$d/by-hash/$4.drv"
shift 4
done"#;

/// Hosts rooted per command: their arguments stay far below the 128 KiB
/// Linux allows one argument (`sh -c` gets the whole command as one).
const ROOTS_PER_COMMAND: usize = 100;

/// What to root for one host: its built system and derivation.
pub struct Roots<'a> {
    pub host: &'a str,
    pub toplevel: &'a StorePath,
    pub drv: &'a StorePath,
}

/// Root each host's toplevel and derivation (replacing the host's current
/// roots, keeping one per toplevel under `by-hash/`), in one command per
/// 100 hosts: rooted one command per host, 20 hosts at 50 ms spent 1.2 s
/// of the plan on round trips (BENCHMARKS.md).
pub async fn add_roots<R: Remote>(builder: &R, hosts: &[Roots<'_>]) -> anyhow::Result<()> {
    for chunk in hosts.chunks(ROOTS_PER_COMMAND) {
        let args: Vec<&str> = chunk
            .iter()
            .flat_map(|r| {
                [
                    r.host,
                    r.toplevel.as_str(),
                    r.drv.as_str(),
                    r.toplevel.hash(),
                ]
            })
            .collect();
        root(builder, ROOTS, &args).await?;
    }
    Ok(())
}

async fn root<R: Remote>(builder: &R, script: &'static str, args: &[&str]) -> anyhow::Result<()> {
    builder
        .exec(&Command::script(script).args(args.iter().copied()))
        .await
        .context("adding GC roots on the builder")?
        .check("adding GC roots on the builder")?;
    Ok(())
}

/// Root a re-instantiated derivation of an earlier system (under
/// `by-hash/`, leaving the host's current roots alone).
pub async fn add_old_drv_root<R: Remote>(
    builder: &R,
    host: &str,
    toplevel: &StorePath,
    drv: &StorePath,
) -> anyhow::Result<()> {
    root(
        builder,
        OLD_DRV_ROOT,
        &[host, drv.as_str(), toplevel.hash()],
    )
    .await
}

const OLD_DRV_ROOT: &str = r#"set -e
if [ "$(id -u)" = 0 ]; then base=/nix/var/nix/gcroots/nixgate; else base="/nix/var/nix/gcroots/per-user/$(id -un)/nixgate"; fi
d="$base/$1/by-hash"; mkdir -p "$d"; ln -sfn "$2" "$d/$3.drv""#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::scripted::{ScriptedRemote, ok};

    fn paths(i: usize) -> (StorePath, StorePath) {
        let h = format!("{i:0>32}");
        (
            StorePath::parse(&format!("/nix/store/{h}-nixos-system-web{i}")).unwrap(),
            StorePath::parse(&format!("/nix/store/{h}-nixos-system-web{i}.drv")).unwrap(),
        )
    }

    /// The arguments for web1 and web2, in the script's order.
    fn two_hosts_args(
        t1: &StorePath,
        d1: &StorePath,
        t2: &StorePath,
        d2: &StorePath,
    ) -> Vec<String> {
        [("web1", t1, d1), ("web2", t2, d2)]
            .into_iter()
            .flat_map(|(h, t, d)| [h, t.as_str(), d.as_str(), t.hash()].map(str::to_owned))
            .collect()
    }

    #[tokio::test]
    async fn one_command_with_typed_args_for_many_hosts() {
        let r = ScriptedRemote::new("builder", |_| ok(""));
        let (t1, d1) = paths(1);
        let (t2, d2) = paths(2);
        let hosts = [
            Roots {
                host: "web1",
                toplevel: &t1,
                drv: &d1,
            },
            Roots {
                host: "web2",
                toplevel: &t2,
                drv: &d2,
            },
        ];
        add_roots(&r, &hosts).await.unwrap();
        let argvs = r.argvs();
        assert_eq!(argvs.len(), 1);
        let argv = &argvs[0];
        assert_eq!(argv[..2], ["sh", "-c"]);
        assert_eq!(argv[3], "nixgate");
        assert_eq!(argv[4..], two_hosts_args(&t1, &d1, &t2, &d2));
        // 250 hosts: three commands.
        let r = ScriptedRemote::new("builder", |_| ok(""));
        let all: Vec<(String, StorePath, StorePath)> = (0..250)
            .map(|i| (format!("h{i}"), paths(i).0, paths(i).1))
            .collect();
        let hosts: Vec<Roots> = all
            .iter()
            .map(|(h, t, d)| Roots {
                host: h,
                toplevel: t,
                drv: d,
            })
            .collect();
        add_roots(&r, &hosts).await.unwrap();
        let sizes: Vec<usize> = r.argvs().iter().map(|a| (a.len() - 4) / 4).collect();
        assert_eq!(sizes, [100, 100, 50]);
    }

    #[tokio::test]
    async fn the_script_roots_every_host_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().display().to_string();
        // The real script, its gcroots directory moved into the temp dir.
        let script = ROOTS.replace("/nix/var/nix/gcroots/", &format!("{base}/"));
        let (t1, d1) = paths(1);
        let (t2, d2) = paths(2);
        let out = crate::remote::local::LocalRemote::new("builder")
            .exec(&Command::script(script.leak()).args(two_hosts_args(&t1, &d1, &t2, &d2)))
            .await
            .unwrap();
        assert!(out.success(), "{}", out.stderr_str());
        for (h, t, d) in [("web1", &t1, &d1), ("web2", &t2, &d2)] {
            // As root under nixgate/, else under per-user/USER/nixgate/.
            let root = dir.path().join("nixgate").join(h);
            let at = if root.exists() {
                root
            } else {
                let users = std::fs::read_dir(dir.path().join("per-user")).unwrap();
                let user = users.into_iter().next().unwrap().unwrap().path();
                user.join("nixgate").join(h)
            };
            let link = |name: &str| std::fs::read_link(at.join(name)).unwrap();
            assert_eq!(link("system").to_str().unwrap(), t.as_str());
            assert_eq!(link("drv").to_str().unwrap(), d.as_str());
            let by_hash = format!("by-hash/{}", t.hash());
            assert_eq!(link(&by_hash).to_str().unwrap(), t.as_str());
            assert_eq!(
                link(&format!("{by_hash}.drv")).to_str().unwrap(),
                d.as_str()
            );
        }
    }
}
