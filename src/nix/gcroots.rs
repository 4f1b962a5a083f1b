//! GC roots on the builder, so a garbage collection between evaluation and
//! build ([`hold_evaluated`]), or between build, diff and copy (or long
//! after, for structural diffs) cannot lose a built system; and on a host,
//! for a closure copied to it ahead of its wave. (Not yet: a flake build's
//! outputs between the end of its `nix-store --realise` and the roots the
//! plan adds next, about one round trip; a classic build roots its own.)
//!
//! A wave's closures are copied while the wave before it runs and soaks
//! (30 minutes, a day): nothing on the host refers to them until the
//! activation sets its profile, and NixOS's `nix.gc.automatic` (daily at
//! 03:15 by default, the hour cron runs start) deleted them in between:
//! the activation's realise then failed at the copy gate, a whole wave of
//! it. So a host copied ahead gets a root, one link in
//! `HostPaths::staged_roots` named for the run ([`hold_staged_command`]),
//! removed when the run lets the host go ([`release_staged_command`]): its
//! profile holds the closure by then, or the run is done with it; so does
//! one copied as its wave runs with every slot taken (it waits its turn,
//! up to the wave's whole length). A host that starts as its copy ends
//! gets none (its activation follows at once; a root was one more command
//! on its way).
//!
//! A killed run leaves its roots. The next run to root a closure on the
//! host removes them ([`HOLD_STAGED`]'s `clean`): it holds the host's lock
//! (taken by its plan), so no other live run is working on the host, and
//! every other run's root there is a dead run's.

use anyhow::Context;

use super::StorePath;
use crate::remote::{Command, Remote};

/// Where the roots live, as `$base`; `link LINK PATH`, which makes one;
/// and `hold LINK DRV...`, which roots derivations that nothing else
/// keeps. As root: under the system gcroots directory; else per user,
/// under `per-user/USER`, when the user can make it there. Nix 2.14 and
/// later (and Lix) no longer make that directory for a user, and
/// `per-user` is root's, 0755: every non-root builder failed to root, and
/// every push refused every host. Then the links live in the user's own
/// state directory and the daemon registers each as an indirect root
/// (`nix-store --add-root --indirect`, which any user may ask; `--realise`
/// of a path already valid builds nothing). A derivation's `link` there is
/// no root of its own: Nix keeps the derivations of live outputs
/// (`keep-derivations`, true unless set otherwise), and `link` is only
/// used for a derivation whose output it roots too.
///
/// A derivation with no live output (just evaluated, or re-instantiated
/// for an old system) needs `hold`: `nix-store --realise` would build it,
/// so there `nix-instantiate --add-root` roots it, given an expression
/// whose "derivation" is the existing `.drv` (Nix 2.8: it registers the
/// link as an indirect root, building nothing). One process for all the
/// derivations given: its links are `LINK`, `LINK-2`, ... `LINK-n`
/// (Nix's numbering; a larger earlier batch's rest removed), as `ln`
/// makes them when the directory is a root itself. Rooted one
/// `nix-instantiate` per host, 500 hosts would have been 500 processes
/// (75 ms each here) on the plan's way.
macro_rules! root_base {
    () => {
        r#"if [ "$(id -u)" = 0 ]; then base=/nix/var/nix/gcroots/nixgate; else base="/nix/var/nix/gcroots/per-user/$(id -un)/nixgate"; fi
unhold() { n=$2; while [ -L "$1-$n" ]; do rm -f "$1-$n"; n=$((n+1)); done; }
if mkdir -p "$base" 2>/dev/null; then
  link() { ln -sfn "$2" "$1"; }
  hold() {
    l=$1; shift; mkdir -p "${l%/*}" || return 1; n=0
    for p in "$@"; do
      n=$((n+1)); if [ "$n" = 1 ]; then ln -sfn "$p" "$l" || return 1; else ln -sfn "$p" "$l-$n" || return 1; fi
    done
    unhold "$l" $((n+1))
  }
else
  base="${XDG_STATE_HOME:-$HOME/.local/state}/nixgate/gcroots"
  link() { case $2 in *.drv) ln -sfn "$2" "$1" ;; *) nix-store --add-root "$1" --indirect --realise "$2" >/dev/null ;; esac; }
  hold() {
    l=$1; shift; mkdir -p "${l%/*}" || return 1
    nix-instantiate --add-root "$l" --argstr ps "$*" --expr '{ ps }: map (p: { type = "derivation"; name = "nixgate-root"; outputName = "out"; drvPath = builtins.storePath p; }) (builtins.filter (p: builtins.isString p && p != "") (builtins.split " " ps))' >/dev/null || return 1
    unhold "$l" $(($# + 1))
  }
fi
"#
    };
}
pub(crate) use root_base;

/// Root the derivations an evaluation just wrote, in the evaluation's own
/// command (no round trip more): `$leader`, the first host evaluated,
/// names the batch (`$base/LEADER/evaluated`, `-2`, ...). Before, nothing
/// rooted them between the evaluation and their realisation, and a
/// garbage collection in between (NixOS's `nix.gc.automatic`, 03:15, the
/// hour cron runs start) deleted them: the build failed, reported as the
/// configuration's. The batch stays until its leader leads the next (one
/// per host at most, as the host's `drv` root; `by-hash/` keeps every
/// derivation a host was deployed from anyway). Two runs evaluating for
/// the same first host at once (its lock is taken after the build) may
/// replace each other's batch: the earlier's derivations are then held by
/// its build's own temporary roots once it started, as before. The
/// derivations are `hold_evaluated`'s arguments; a failure to root is a
/// warning (the roots after the build fail the same way, and say so as
/// the builder's failure).
macro_rules! hold_evaluated {
    () => {
        concat!(
            $crate::nix::gcroots::root_base!(),
            r#"hold_evaluated() {
  [ $# -gt 0 ] || return 0
  hold "$base/$leader/evaluated" "$@" || echo "nixgate: could not root the evaluated derivations on the builder (a garbage collection before their build deletes them)" >&2
}
"#
        )
    };
}
pub(crate) use hold_evaluated;

/// Arguments: `HOST TOPLEVEL DRV HASH` for each host, one after another.
const ROOTS: &str = concat!(
    "set -e\n",
    root_base!(),
    r#"while [ $# -ge 4 ]; do
d="$base/$1"; mkdir -p "$d/by-hash"
link "$d/system" "$2"; link "$d/drv" "$3"
link "$d/by-hash/$4" "$2"; link "$d/by-hash/$4.drv" "$3"
shift 4
done"#
);

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
/// `by-hash/`, leaving the host's current roots alone), as a root of its
/// own (`hold`): its system is the one the host runs, which the builder
/// may have lost, so no output keeps it.
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

const OLD_DRV_ROOT: &str = concat!(
    "set -e\n",
    root_base!(),
    r#"d="$base/$1/by-hash"; mkdir -p "$d"; hold "$d/$3.drv" "$2""#
);

/// Root a closure staged ahead on a host: `$1` the roots' directory, `$2`
/// the run (the link's name), `$3` the closure; `$4` = `clean`: other
/// runs' links there are removed first (see the module's doc: only while
/// the run holds the host's lock). POSIX sh and busybox.
pub(crate) const HOLD_STAGED: &str = r#"d=$1; run=$2
mkdir -p "$d" || exit 1
if [ "$4" = clean ]; then
  for f in "$d"/*; do
    [ -L "$f" ] || continue
    [ "${f##*/}" = "$run" ] || rm -f "$f"
  done
fi
ln -sfn "$3" "$d/$run""#;

/// The command rooting `closure` on a host for `run` under `dir`
/// ([`HOLD_STAGED`]); `clean`: other runs' roots there are a dead run's.
pub fn hold_staged_command(
    dir: &str,
    run: &crate::activation::RunId,
    closure: &StorePath,
    clean: bool,
    sudo: bool,
) -> Command {
    Command::script(HOLD_STAGED)
        .args([dir, run.as_str(), closure.as_str()])
        .arg(if clean { "clean" } else { "" })
        .sudo(sudo)
        .within(crate::activation::settings::STEP_LIMIT)
}

/// The command removing `run`'s root under `dir` on a host.
pub fn release_staged_command(dir: &str, run: &crate::activation::RunId, sudo: bool) -> Command {
    Command::new("rm")
        .arg("-f")
        .arg(format!("{}/{run}", dir.trim_end_matches('/')))
        .sudo(sudo)
        .within(crate::activation::settings::STEP_LIMIT)
}

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

    /// A non-root builder on Nix 2.14 or later, or Lix: no `per-user/USER`
    /// directory, and none can be made. The links go to the user's state
    /// directory, each system's registered as an indirect root by
    /// `nix-store` (played by a stub that logs and links).
    #[test]
    fn a_user_who_cannot_make_a_per_user_directory_roots_through_the_daemon() {
        use crate::remote::local::executable;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        // A file where the gcroots directory is: no directory under it.
        std::fs::write(format!("{d}/gcroots"), "").unwrap();
        let script = ROOTS.replace("/nix/var/nix/gcroots/", &format!("{d}/gcroots/"));
        std::fs::create_dir_all(format!("{d}/bin")).unwrap();
        let id = "#!/bin/sh\ncase $1 in -u) echo 1000 ;; *) echo deploy ;; esac\n";
        executable(format!("{d}/bin/id"), id);
        let nix_store =
            format!("#!/bin/sh\necho \"$*\" >> {d}/nix-store.log\nln -sfn \"$5\" \"$2\"\n");
        executable(format!("{d}/bin/nix-store"), &nix_store);
        let (t1, d1) = paths(1);
        let (t2, d2) = paths(2);
        let out = std::process::Command::new("sh")
            .args(["-c", &script, "nixgate"])
            .args(two_hosts_args(&t1, &d1, &t2, &d2))
            .env("PATH", format!("{d}/bin:/usr/bin:/bin"))
            .env("HOME", format!("{d}/home"))
            .env_remove("XDG_STATE_HOME")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let log = std::fs::read_to_string(format!("{d}/nix-store.log")).unwrap();
        let base = format!("{d}/home/.local/state/nixgate/gcroots");
        for (h, t, drv) in [("web1", &t1, &d1), ("web2", &t2, &d2)] {
            let system = format!("{base}/{h}/system");
            let by_hash = format!("{base}/{h}/by-hash/{}", t.hash());
            for link in [&system, &by_hash] {
                let asked = format!("--add-root {link} --indirect --realise {t}\n");
                assert!(log.contains(&asked), "{log}");
                assert_eq!(std::fs::read_link(link).unwrap().to_str(), Some(t.as_str()));
            }
            let drv_link = std::fs::read_link(format!("{base}/{h}/drv")).unwrap();
            assert_eq!(drv_link.to_str(), Some(drv.as_str()));
            assert!(
                !log.contains(drv.as_str()),
                "a derivation is not realised: {log}"
            );
        }
    }

    /// The same user re-instantiates the derivation of the system a host
    /// runs (the builder lost it): no output on the builder keeps it, so a
    /// plain link was no root and the next GC took it again. It is rooted
    /// through `nix-instantiate --add-root`, which builds nothing.
    #[test]
    fn a_recovered_old_derivation_is_a_root_of_its_own_without_a_gcroots_directory() {
        use crate::remote::local::executable;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        std::fs::write(format!("{d}/gcroots"), "").unwrap();
        let script = OLD_DRV_ROOT.replace("/nix/var/nix/gcroots/", &format!("{d}/gcroots/"));
        std::fs::create_dir_all(format!("{d}/bin")).unwrap();
        let log = format!("{d}/instantiate.log");
        executable(
            format!("{d}/bin/nix-instantiate"),
            &format!("#!/bin/sh\nprintf '%s\\n' \"$@\" >> {log}\n"),
        );
        let (t, drv) = paths(1);
        let out = std::process::Command::new("sh")
            .args(["-c", &script, "nixgate", "web1", drv.as_str(), t.hash()])
            .env("PATH", format!("{d}/bin:/usr/bin:/bin"))
            .env("HOME", format!("{d}/home"))
            .env_remove("XDG_STATE_HOME")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        let link = format!(
            "{d}/home/.local/state/nixgate/gcroots/web1/by-hash/{}.drv",
            t.hash()
        );
        let args: Vec<&str> = log.lines().collect();
        assert_eq!(args[..2], ["--add-root", link.as_str()], "{log}");
        assert_eq!(args[2..5], ["--argstr", "ps", drv.as_str()], "{log}");
    }

    /// The host's script, run by the local `sh` (dash here): it roots the
    /// closure under the run's name; with `clean`, other runs' links go
    /// (anything else there stays); the release removes this run's alone.
    #[tokio::test]
    async fn a_staged_root_replaces_dead_runs_and_its_release_only_its_own() {
        use crate::activation::RunId;
        let dir = tempfile::tempdir().unwrap();
        let roots = dir.path().join("gcroots/nixgate-staged");
        let d = roots.display().to_string();
        let (t1, _) = paths(1);
        let (t2, _) = paths(2);
        let local = crate::remote::local::LocalRemote::new("web1");
        let run = |c: Command| {
            let local = local.clone();
            async move {
                let out = local.exec(&c.unlimited()).await.unwrap();
                assert!(out.success(), "{}", out.stderr_str());
            }
        };
        let (r0, r1, r2) = (
            RunId::parse("r0").unwrap(),
            RunId::parse("r1").unwrap(),
            RunId::parse("r2").unwrap(),
        );
        // r0, killed, left its root; r1 roots without cleaning (its lock
        // lost): r0's stays.
        run(hold_staged_command(&d, &r0, &t1, true, false)).await;
        run(hold_staged_command(&d, &r1, &t2, false, false)).await;
        std::fs::write(roots.join("notes"), "not a link").unwrap();
        let link = |name: &str| std::fs::read_link(roots.join(name)).ok();
        assert_eq!(link("r0").unwrap().to_str().unwrap(), t1.as_str());
        assert_eq!(link("r1").unwrap().to_str().unwrap(), t2.as_str());
        // r2 holds the lock: r0's and r1's roots are a dead run's.
        run(hold_staged_command(&d, &r2, &t2, true, false)).await;
        assert_eq!(link("r0"), None);
        assert_eq!(link("r1"), None);
        assert_eq!(link("r2").unwrap().to_str().unwrap(), t2.as_str());
        assert!(roots.join("notes").exists());
        // The release removes r2's root alone.
        run(hold_staged_command(&d, &r1, &t1, false, false)).await;
        run(release_staged_command(&d, &r2, false)).await;
        assert_eq!(link("r2"), None);
        assert_eq!(link("r1").unwrap().to_str().unwrap(), t1.as_str());
        // Released twice: nothing there, no error.
        run(release_staged_command(&d, &r2, false)).await;
    }
}
