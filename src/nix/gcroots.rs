//! GC roots on the builder, so a garbage collection between build, diff and
//! copy (or long after, for structural diffs) cannot lose a built system.

use anyhow::Context;

use super::StorePath;
use crate::remote::{Command, Remote};

/// Roots live under the system gcroots directory as root, else per user.
const ROOTS: &str = r#"set -e
if [ "$(id -u)" = 0 ]; then base=/nix/var/nix/gcroots/nixgate; else base="/nix/var/nix/gcroots/per-user/$(id -un)/nixgate"; fi
d="$base/$1"; mkdir -p "$d/by-hash"
ln -sfn "$2" "$d/system"; ln -sfn "$3" "$d/drv"
ln -sfn "$2" "$d/by-hash/$4"; ln -sfn "$3" "$d/by-hash/$4.drv""#;

/// Root `toplevel` and `drv` for `host` (replacing the host's current roots,
/// keeping one per toplevel under `by-hash/`).
pub async fn add_roots<R: Remote>(
    builder: &R,
    host: &str,
    toplevel: &StorePath,
    drv: &StorePath,
) -> anyhow::Result<()> {
    root(
        builder,
        ROOTS,
        &[host, toplevel.as_str(), drv.as_str(), toplevel.hash()],
    )
    .await
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

    #[tokio::test]
    async fn one_command_with_typed_args() {
        let r = ScriptedRemote::new("builder", |_| ok(""));
        let t = StorePath::parse("/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web1")
            .unwrap();
        let d =
            StorePath::parse("/nix/store/1c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web1.drv")
                .unwrap();
        add_roots(&r, "web1", &t, &d).await.unwrap();
        let argv = &r.argvs()[0];
        assert_eq!(argv[..2], ["sh", "-c"]);
        assert_eq!(
            argv[3..],
            ["nixgate", "web1", t.as_str(), d.as_str(), t.hash()]
        );
    }
}
