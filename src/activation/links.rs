//! Step 3 and friends: reading the store path a host's symlinks point at
//! (`/run/current-system`, `/run/booted-system`, profiles) and its boot id.
//!
//! Decision: links are read with `readlink -f`, i.e. fully canonicalised, so a
//! link to a profile (`-> system-42-link -> /nix/store/...`) and a direct link
//! to the store both yield the toplevel store path, which is what the
//! candidate is compared with. NixOS points `/run/current-system` straight at
//! the toplevel, so for it `readlink` and `readlink -f` agree; `-f` also copes
//! with the indirect forms. The result must parse as a [`StorePath`].

use anyhow::Context;

use crate::nix::StorePath;
use crate::remote::{Command, Remote};

/// Prints the canonical target of `$1` if it exists (as a link or a file),
/// nothing if it does not.
pub(crate) const READ_LINK: &str = "if [ -L \"$1\" ] || [ -e \"$1\" ]; then readlink -f \"$1\"; fi";

/// For each argument, its canonical target, or an empty line when absent.
pub(crate) const READ_LINKS: &str = "for l; do
  if [ -L \"$l\" ] || [ -e \"$l\" ]; then t=$(readlink -f \"$l\") || exit 1; printf '%s\\n' \"$t\"; else echo; fi
done";

/// The pipeline's first read ([`read_start_command`]): `$1` and `$2` as
/// [`READ_LINKS`] reads them, then the known-good profile `$3`'s target
/// only when its generation's mark finished (else an empty line), by the
/// rule `nixgate rollback` uses (`plan::rollback_target`): it has its tag
/// record in `$4` (a record of that closure: one of another, left by a
/// generation of that number deleted and the number used again, is not
/// its), or it has none while no older generation has one and no
/// mark was cut off (`.pending-<run>.replaced` naming an older generation
/// or none: hosts from before records, a records directory lost). A mark
/// cut off between `nix-env --set` and its record (the host went down as
/// it was marked) leaves the profile on a closure never proven, often the
/// candidate that just failed: a rollback must not go there (the fault
/// matrix left such a host; `status` flags it).
pub(crate) const READ_START: &str = r#"cur=$1; prof=$2; kg=$3; dir=$4
for l in "$cur" "$prof"; do
  if [ -L "$l" ] || [ -e "$l" ]; then t=$(readlink -f "$l") || exit 1; printf '%s\n' "$t"; else echo; fi
done
g=$(readlink "$kg" 2>/dev/null); n=${g%-link}; n=${n##*-}; ok=
case $n in ''|*[!0-9]*) n= ;; esac
if [ -n "$n" ] && [ -e "$kg" ]; then
  t=$(readlink -f "$kg") || exit 1; ok=1
  if ! grep -q -F "\"closure\":\"$t\"" "$dir/$n.json" 2>/dev/null; then
    for r in "$dir"/*.json; do
      m=${r##*/}; m=${m%.json}
      case $m in ''|*[!0-9]*) continue ;; esac
      [ "$m" -gt "$n" ] || ok=
    done
    for p in "$dir"/.pending-*.replaced; do
      [ -f "$p" ] || continue
      v=$(cat "$p" 2>/dev/null)
      { [ -n "$v" ] && [ "$v" -ge "$n" ] 2>/dev/null; } || ok=
    done
  fi
fi
if [ -n "$ok" ]; then printf '%s\n' "$t"; else echo; fi"#;

/// The command of [`READ_START`]: the running system, the system profile,
/// the known-good profile (recorded) and its records' directory.
pub(crate) fn read_start_command(
    current: &str,
    profile: &str,
    known_good: &str,
    records: &str,
) -> Command {
    Command::script(READ_START).args([current, profile, known_good, records])
}

/// The command reading the canonical target of `path`.
pub fn read_link_command(path: &str) -> Command {
    Command::script(READ_LINK).arg(path)
}

/// Parse the output of [`read_link_command`]: empty means the link is absent.
pub fn parse_link_target(stdout: &str, path: &str) -> anyhow::Result<Option<StorePath>> {
    let target = stdout.trim();
    if target.is_empty() {
        return Ok(None);
    }
    StorePath::parse(target)
        .map(Some)
        .with_context(|| format!("{path} does not point into the Nix store"))
}

/// The store path `path` resolves to on the host, or `None` if it is absent.
pub async fn read_store_link<R: Remote>(
    remote: &R,
    path: &str,
) -> anyhow::Result<Option<StorePath>> {
    let out = remote
        .exec(&read_link_command(path))
        .await
        .with_context(|| format!("reading {path} on {}", remote.name()))?
        .check(&format!("readlink -f {path}"))?;
    parse_link_target(&out.stdout_str(), path)
}

/// The store paths several links resolve to (`None`: absent), with one command.
/// The command [`read_store_links`] runs.
pub(crate) fn read_links_command(paths: &[&str]) -> Command {
    Command::script(READ_LINKS).args(paths.iter().copied())
}

pub async fn read_store_links<R: Remote>(
    remote: &R,
    paths: &[&str],
) -> anyhow::Result<Vec<Option<StorePath>>> {
    read_store_links_by(remote, &read_links_command(paths), paths).await
}

/// The store paths `cmd` prints for `paths`, a line each (empty: absent).
pub(crate) async fn read_store_links_by<R: Remote>(
    remote: &R,
    cmd: &Command,
    paths: &[&str],
) -> anyhow::Result<Vec<Option<StorePath>>> {
    let out = remote
        .exec(cmd)
        .await
        .with_context(|| format!("reading {} on {}", paths.join(", "), remote.name()))?
        .check(&format!("readlink -f {}", paths.join(" ")))?;
    let text = out.stdout_str();
    let lines: Vec<&str> = text.lines().collect();
    anyhow::ensure!(
        lines.len() == paths.len(),
        "reading {} links on {} gave {} lines: {text:?}",
        paths.len(),
        remote.name(),
        lines.len()
    );
    lines
        .iter()
        .zip(paths)
        .map(|(l, p)| parse_link_target(l, p))
        .collect()
}

/// The error for a host without `link` (`/run/current-system`).
pub fn no_current_system(link: &str, host: &str) -> anyhow::Error {
    anyhow::anyhow!("{link} does not exist on {host}: is it a NixOS / nix-darwin host?")
}

/// Step 3: the system running now (`/run/current-system`), read before the
/// switch fires and kept for the flip-to-unexpected check.
pub async fn current_system<R: Remote>(remote: &R, link: &str) -> anyhow::Result<StorePath> {
    read_store_link(remote, link)
        .await?
        .ok_or_else(|| no_current_system(link, remote.name()))
}

/// The kernel's boot id: changes on every boot, so a reboot can be proven.
pub async fn boot_id<R: Remote>(remote: &R, path: &str) -> anyhow::Result<String> {
    let out = remote
        .exec(&Command::new("cat").arg(path))
        .await
        .with_context(|| format!("reading the boot id of {}", remote.name()))?
        .check("reading the boot id")?;
    let id = out.stdout_str().trim().to_owned();
    anyhow::ensure!(!id.is_empty(), "{path} is empty on {}", remote.name());
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::local::LocalRemote;
    use crate::remote::scripted::{ScriptedRemote, fail, ok};

    const SYS: &str = "/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web1-24.05";

    /// [`READ_START`] for real: the known-good profile's target only while
    /// its generation has its record (its mark finished).
    #[tokio::test]
    async fn the_start_read_gives_the_known_good_only_with_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let d = |f: &str| dir.path().join(f).display().to_string();
        for c in ["cur", "good", "cut-off"] {
            std::fs::create_dir(d(c)).unwrap();
        }
        std::fs::create_dir(d("records")).unwrap();
        std::os::unix::fs::symlink(d("cur"), d("current")).unwrap();
        std::os::unix::fs::symlink(d("good"), d("kg-1-link")).unwrap();
        std::os::unix::fs::symlink(d("cut-off"), d("kg-2-link")).unwrap();
        let record = |c: &str| format!(r#"{{"generation":1,"closure":"{}"}}"#, d(c));
        std::fs::write(d("records/1.json"), record("good")).unwrap();
        let read = |generation: &str| {
            let _ = std::fs::remove_file(d("kg"));
            std::os::unix::fs::symlink(format!("kg-{generation}-link"), d("kg")).unwrap();
            let cmd = read_start_command(&d("current"), &d("absent"), &d("kg"), &d("records"));
            async move {
                let out = LocalRemote::new("local").exec(&cmd).await.unwrap();
                assert!(out.success(), "{out:?}");
                out.stdout_str()
            }
        };
        let given = |c: &str| format!("{}\n\n{}\n", d("cur"), d(c));
        let none = format!("{}\n\n\n", d("cur"));
        assert_eq!(read("1").await, given("good"));
        // Generation 2's mark never wrote its record.
        assert_eq!(read("2").await, none);
        // No record older than it (records lost, or from before records):
        // known-good, as `nixgate rollback` counts it.
        std::fs::rename(d("records/1.json"), d("records/3.json")).unwrap();
        assert_eq!(read("2").await, given("cut-off"));
        std::fs::remove_file(d("records/3.json")).unwrap();
        assert_eq!(read("2").await, given("cut-off"));
        // A mark cut off after the profile moved from generation 1.
        std::fs::write(d("records/.pending-r9.replaced"), "1\n").unwrap();
        assert_eq!(read("2").await, none);
        // Generation 2's number was used before (that generation deleted,
        // its record left): a record of another closure is not its own.
        std::fs::write(d("records/2.json"), record("good")).unwrap();
        assert_eq!(read("2").await, none);
        std::fs::write(d("records/2.json"), record("cut-off")).unwrap();
        assert_eq!(read("2").await, given("cut-off"));
    }

    #[tokio::test]
    async fn reads_current_system() {
        let r = ScriptedRemote::new("web1", |_| ok(&format!("{SYS}\n")));
        let got = current_system(&r, "/run/current-system").await.unwrap();
        assert_eq!(got.as_str(), SYS);
        assert_eq!(
            r.argvs(),
            vec![vec![
                "sh".to_string(),
                "-c".into(),
                READ_LINK.into(),
                "nixgate".into(),
                "/run/current-system".into()
            ]]
        );
    }

    #[tokio::test]
    async fn absent_and_garbage() {
        let r = ScriptedRemote::new("h", |_| ok(""));
        assert_eq!(read_store_link(&r, "/x").await.unwrap(), None);
        assert!(current_system(&r, "/x").await.is_err());
        let r = ScriptedRemote::new("h", |_| ok("/etc/static\n"));
        assert!(read_store_link(&r, "/x").await.is_err());
        let r = ScriptedRemote::new("h", |_| fail(1, "readlink: Permission denied"));
        let err = read_store_link(&r, "/x").await.unwrap_err();
        assert!(format!("{err:#}").contains("Permission denied"));
    }

    /// The script against real links: a profile-style chain resolves to the
    /// store path, a missing link prints nothing.
    #[tokio::test]
    async fn real_readlink_semantics() {
        let dir = tempfile::tempdir().unwrap();
        let gen1 = dir.path().join("system-1-link");
        let prof = dir.path().join("system");
        std::os::unix::fs::symlink(SYS, &gen1).unwrap();
        std::os::unix::fs::symlink("system-1-link", &prof).unwrap();
        let r = LocalRemote::new("local");
        let got = read_store_link(&r, prof.to_str().unwrap()).await.unwrap();
        assert_eq!(got.unwrap().as_str(), SYS);
        let missing = dir.path().join("nope");
        assert_eq!(
            read_store_link(&r, missing.to_str().unwrap())
                .await
                .unwrap(),
            None
        );
        // Several at once, one line each, absent ones empty, order kept.
        let got = read_store_links(
            &r,
            &[
                missing.to_str().unwrap(),
                prof.to_str().unwrap(),
                gen1.to_str().unwrap(),
            ],
        )
        .await
        .unwrap();
        assert_eq!(got, vec![None, Some(sp(SYS)), Some(sp(SYS))]);
        // A link out of the store is an error naming it.
        let odd = dir.path().join("odd");
        std::os::unix::fs::symlink("/etc", &odd).unwrap();
        let err = read_store_links(&r, &[prof.to_str().unwrap(), odd.to_str().unwrap()])
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("odd"), "{err:#}");
    }

    fn sp(s: &str) -> StorePath {
        StorePath::parse(s).unwrap()
    }
}
