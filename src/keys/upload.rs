//! Writing a key on a host: one remote command per key, the content on its
//! stdin. The script creates a temporary file next to the destination with
//! its final mode (the umask: never more open than asked) and fills it
//! through that one open, checks the byte count against what was sent,
//! gives it its owner last and renames it over the destination: a reader
//! sees the old key or the new one, never a partial one. A missing
//! `dest_dir` is created `0755` (NixOS creates `/run/keys` itself,
//! `root:keys 0750`).
//!
//! As root, it writes only into a directory that is root's, as is every
//! one above it (none writable by others, or by a group but root's, unless
//! sticky), checked twice: the path as the inventory writes it, each
//! prefix that exists, links not followed (a link on the way is root's,
//! in a directory root's alone), before anything is made; then the path
//! it resolves to. Before, only the resolved path was checked, and after
//! a missing `dest_dir` was made and `chmod`ed: a link `secrets -> /etc`
//! that `app` put in its own `/var/lib/app` resolved to root's `/etc`,
//! and the key landed there; a user owning the parent of a missing
//! `dest_dir` swapped the new directory for a link to `/etc/shadow`, and
//! root's `chmod 0755` followed it (the mode now comes from the umask
//! alone). In a `dest_dir`
//! the key's owner may write to, every name root then uses could be
//! replaced under it (the owner given first and the mode and content by
//! name after: it swapped the file for a link, and root gave any file the
//! key's mode and content; a hard link swapped in before the owner is
//! given, on a host without `protected_hardlinks` as macOS; a link to a
//! directory put at the destination before the rename). Within such a
//! directory the file is also created exclusively (`set -C`: `O_EXCL`),
//! with its mode, and given its owner with `-h` last. A destination that
//! is a directory is refused (the key went inside it, reported written),
//! and a short write never replaces the key (its count was checked on the
//! controller, after the rename).

use crate::activation::settings::STEP_LIMIT;
use crate::remote::{Command, Remote, exec_input};

use super::{KeyReceipt, ResolvedKey};

/// `$1` dir, `$2` name, `$3` owner (`user`, its login group then, or
/// `user:group`), `$4` mode (no setuid, setgid or sticky bit, and no
/// execute bit is given: a umask cannot give them), `$5` the byte count
/// sent; the content on stdin; prints the byte count written.
pub(crate) const WRITE: &str = r#"set -eu
dir=$1 owner=$3 mode=$4 len=$5
case $owner in *:*) ;; *) owner=$owner:$(id -gn "$owner") ;; esac
umask 077
# Root writes only where nobody else can replace a name: every directory on
# the way root's, none writable by others (or by a group other than root's)
# unless sticky, and every link on the way root's. `find` does not follow
# the name it is given; a name it cannot read counts as not root's.
alone() {
  [ "$(find "$1" -prune ! \( ! -user 0 -o \( ! -type l \( \( -perm -0002 ! -perm -1000 \) -o \( -perm -0020 ! -group 0 ! -perm -1000 \) \) \) \) -print 2>/dev/null)" = "$1" ] && return
  echo "$1 is not root's alone (its owner, or anyone, could replace the key's file): keys are written where only root can (the key still gets its own owner)" >&2
  exit 1
}
root=; [ "$(id -u)" != 0 ] || root=1
# The path as written, each prefix that exists, before anything is made.
if [ -n "$root" ]; then
  p=/ rest=${dir#/}
  while [ -e "$p" ] || [ -L "$p" ]; do
    alone "$p"
    [ -n "$rest" ] || break
    c=${rest%%/*}
    case $rest in */*) rest=${rest#*/} ;; *) rest= ;; esac
    p=${p%/}/$c
  done
fi
[ -d "$dir" ] || (umask 022 && mkdir -p "$dir")
written=${dir%/}
dir=$(cd "$dir" && pwd -P) dest=$dir/$2
# And the path it resolves to, up to /, when a link made it another (the
# same path was walked above, and what mkdir made is root's, in it).
if [ -n "$root" ] && [ "$dir" != "$written" ]; then
  d=$dir
  while :; do
    alone "$d"
    [ "$d" != / ] || break
    d=${d%/*}; d=${d:-/}
  done
fi
if [ -d "$dest" ]; then echo "$dest is a directory" >&2; exit 1; fi
tmp=$(mktemp -u "$dir/.nixgate-key.XXXXXX")
trap 'rm -f "$tmp"' EXIT
umask "$(printf '%o' $((0777 & ~0$mode)))"
set -C
cat >"$tmp"
set +C
n=$(wc -c <"$tmp" | tr -d ' ')
if [ "$n" != "$len" ]; then echo "$n bytes arrived of $len" >&2; exit 1; fi
chown -h "$owner" "$tmp"
echo "$n"
mv -f "$tmp" "$dest"
trap - EXIT"#;

/// Why a key could not be written.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[error("key {key} ({dest}): {error}")]
pub struct KeyUploadError {
    pub key: String,
    pub dest: String,
    pub error: String,
    /// The keys written before it in the same list ([`upload_all`]): they
    /// replaced what the host had. Before, they were dropped with the
    /// error, and the host was reported as failed with nothing changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub written: Vec<KeyReceipt>,
}

/// The remote command writing `key` (its content goes on stdin).
pub fn write_command(key: &ResolvedKey, sudo: bool) -> Command {
    let s = &key.spec;
    Command::script(WRITE)
        .arg(s.dest_dir.trim_end_matches('/'))
        .arg(&s.name)
        .arg(s.owner())
        .arg(&s.permissions)
        .arg(key.content.len().to_string())
        .sudo(sudo)
        .within(STEP_LIMIT)
}

/// Write one key on the host.
pub async fn upload<R: Remote>(
    remote: &R,
    key: &ResolvedKey,
    sudo: bool,
) -> Result<KeyReceipt, KeyUploadError> {
    let fail = |error: String| KeyUploadError {
        key: key.spec.name.clone(),
        dest: key.spec.dest(),
        error,
        written: Vec::new(),
    };
    let cmd = write_command(key, sudo);
    let run = exec_input(remote, &cmd, key.content.expose());
    let limit = STEP_LIMIT + std::time::Duration::from_secs(15);
    let out = match tokio::time::timeout(limit, run).await {
        Err(_) => return Err(fail(format!("no answer within {}s", limit.as_secs()))),
        Ok(Err(e)) => return Err(fail(format!("{e:#}"))),
        Ok(Ok(out)) => out,
    };
    let out = out
        .check("writing the key")
        .map_err(|e| fail(format!("{e:#}")))?;
    let written = out.stdout_str().trim().to_owned();
    if written != key.content.len().to_string() {
        return Err(fail(format!(
            "{written:?} bytes arrived of {}",
            key.content.len()
        )));
    }
    Ok(key.receipt())
}

/// Write `keys` in order; the first failure stops it, carrying the
/// receipts of the keys written before it (`written`).
pub async fn upload_all<R: Remote>(
    remote: &R,
    keys: &[&ResolvedKey],
    sudo: bool,
) -> Result<Vec<KeyReceipt>, KeyUploadError> {
    let mut done = Vec::with_capacity(keys.len());
    for key in keys {
        match upload(remote, key, sudo).await {
            Ok(receipt) => done.push(receipt),
            Err(e) => return Err(KeyUploadError { written: done, ..e }),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::keys::{KeySource, KeySpec, Secret, UploadAt};
    use crate::remote::local::LocalRemote;

    fn key(dir: &str, content: &[u8]) -> ResolvedKey {
        let spec = KeySpec {
            name: "db-password".into(),
            source: KeySource::Text {
                text: Secret::new(content.to_vec()),
            },
            dest_dir: dir.into(),
            user: whoami(),
            group: None,
            permissions: "0640".into(),
            upload_at: UploadAt::PreActivation,
        };
        ResolvedKey::new(spec, Secret::new(content.to_vec()))
    }

    fn whoami() -> String {
        let out = std::process::Command::new("id")
            .arg("-un")
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    #[test]
    fn content_is_never_an_argument() {
        let k = key("/run/keys", b"s3cret-value");
        let cmd = write_command(&k, true);
        assert!(!cmd.render().contains("s3cret-value"), "{}", cmd.render());
        assert!(cmd.render().starts_with("sudo -n -- "));
    }

    #[tokio::test]
    async fn writes_atomically_with_owner_and_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let dir_s = dir.display().to_string();
        let remote = LocalRemote::new("local");
        let content = b"line one\n\x00binary\xff".to_vec();
        let r = upload(&remote, &key(&dir_s, &content), false)
            .await
            .unwrap();
        assert_eq!(r.dest, format!("{dir_s}/db-password"));
        let path = dir.join("db-password");
        assert_eq!(std::fs::read(&path).unwrap(), content);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
        // Replaced whole; no temporary file left behind.
        upload(&remote, &key(&dir_s, b"new"), false).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // An owner that does not exist: refused, nothing left behind.
        let mut bad = key(&dir_s, b"x");
        bad.spec.user = "no-such-user-nixgate".into();
        let e = upload(&remote, &bad, false).await.unwrap_err();
        assert!(e.error.contains("writing the key failed"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    }

    /// The key's owner, able to write to `dest_dir`, swaps the temporary
    /// file for a link to another file as soon as it is given the file (a
    /// `chown` that does so stands in for it): that file keeps its mode and
    /// content (before, root gave it the key's mode and wrote the key into
    /// it). A destination that is a directory is refused, and a key that
    /// arrives short replaces nothing.
    #[tokio::test]
    async fn root_follows_no_name_the_owner_could_replace() {
        let tmp = tempfile::tempdir().unwrap();
        let d = |f: &str| tmp.path().join(f);
        let (dir, victim) = (d("keys"), d("victim"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&victim, "not a key\n").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        // The real chown, then the swap of the file it was given.
        let swap = format!(
            "\"$real\" \"$@\" || exit\nfor f; do :; done\nrm -f \"$f\" && ln -s {} \"$f\"",
            victim.display()
        );
        let path = crate::remote::local::stand_in(&d("bin"), "chown", &swap);
        let remote = LocalRemote::new("local");
        let k = key(&dir.display().to_string(), b"s3cret");
        let cmd = write_command(&k, false).env("PATH", &path);
        let _ = exec_input(&remote, &cmd, k.content.expose()).await.unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"not a key\n");
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);

        // The destination a directory: refused, nothing written in it.
        let dest = dir.join("db-password");
        let _ = std::fs::remove_file(&dest);
        std::fs::create_dir(&dest).unwrap();
        let e = upload(&remote, &k, false).await.unwrap_err();
        assert!(e.error.contains("is a directory"), "{e}");
        assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
        std::fs::remove_dir(&dest).unwrap();

        // Short: the key in place stays.
        upload(&remote, &k, false).await.unwrap();
        let cut = exec_input(&remote, &write_command(&k, false), b"s3c")
            .await
            .unwrap();
        assert!(!cut.success(), "{cut:?}");
        assert_eq!(std::fs::read(&dest).unwrap(), b"s3cret");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );

        // As root: not into a directory another user owns, nor under one.
        let as_root = std::process::Command::new("id").arg("-u").output().unwrap();
        if String::from_utf8_lossy(&as_root.stdout).trim() != "0" {
            eprintln!("skipped: a directory of another user needs root to make");
            return;
        }
        // A user and no group: the user's login group (README), not the
        // group the file was made with (root's).
        let mut theirs = key(&dir.display().to_string(), b"s3cret");
        theirs.spec.user = "nobody".into();
        upload(&remote, &theirs, false).await.unwrap();
        let gid = |args: &[&str]| {
            let out = std::process::Command::new(args[0])
                .args(&args[1..])
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        let dest_s = dest.display().to_string();
        assert_eq!(
            gid(&["stat", "-c", "%g", &dest_s]),
            gid(&["id", "-g", "nobody"])
        );
        // A directory of another user, one under it, one a group other
        // than root's may write to.
        for (top, dir, how) in [
            ("own", "own", ["chown", "nobody"]),
            ("parent", "parent/keys", ["chown", "nobody"]),
            ("shared", "shared", ["chgrp", "nogroup"]),
        ] {
            std::fs::create_dir_all(d(dir)).unwrap();
            let top_s = d(top).display().to_string();
            let chown = std::process::Command::new(how[0])
                .args([how[1], &top_s])
                .status()
                .unwrap();
            assert!(chown.success());
            let mode = if top == "shared" { 0o770 } else { 0o755 };
            std::fs::set_permissions(d(top), std::fs::Permissions::from_mode(mode)).unwrap();
            let k = key(&d(dir).display().to_string(), b"s3cret");
            let e = upload(&remote, &k, false).await.unwrap_err();
            assert!(e.error.contains("is not root's alone"), "{dir}: {e}");
            assert_eq!(std::fs::read_dir(d(dir)).unwrap().count(), 0, "{dir}");
        }
    }

    /// A missing `dest_dir`, its new directory swapped for a link to a file
    /// as soon as it is made (a `mkdir` that does so stands in for the user
    /// owning its parent): that file keeps its mode (root's `chmod 0755`
    /// followed the link). As root, the path as written is checked before
    /// anything is made: under another user's directory nothing is made; a
    /// link that user put in its directory, or a link another user owns,
    /// both to a directory of root's, are refused (only the resolved path
    /// was checked: the key landed where the link pointed). A link of
    /// root's in root's directory (NixOS's `/var/run`) is followed.
    #[tokio::test]
    async fn root_checks_the_path_as_written_before_making_it() {
        let tmp = tempfile::tempdir().unwrap();
        let d = |f: &str| tmp.path().join(f);
        let victim = d("victim");
        std::fs::write(&victim, "not a key\n").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let swap = format!(
            "\"$real\" \"$@\" || exit\nfor f; do :; done\nrm -rf \"$f\" && ln -s {} \"$f\"",
            victim.display()
        );
        let path = crate::remote::local::stand_in(&d("swap"), "mkdir", &swap);
        let remote = LocalRemote::new("local");
        let k = key(&d("new").display().to_string(), b"s3cret");
        let cmd = write_command(&k, false).env("PATH", &path);
        let out = exec_input(&remote, &cmd, k.content.expose()).await.unwrap();
        assert!(!out.success(), "{out:?}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"not a key\n");
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);

        let as_root = std::process::Command::new("id").arg("-u").output().unwrap();
        if String::from_utf8_lossy(&as_root.stdout).trim() != "0" {
            eprintln!("skipped: a directory of another user needs root to make");
            return;
        }
        let run = |args: &[&str]| {
            let ok = std::process::Command::new(args[0])
                .args(&args[1..])
                .status()
                .unwrap();
            assert!(ok.success(), "{args:?}");
        };
        let s = |f: &str| d(f).display().to_string();
        std::fs::create_dir_all(d("theirs")).unwrap();
        std::fs::create_dir_all(d("roots")).unwrap();
        run(&["chown", "nobody", &s("theirs")]);
        // Under another user's directory: nothing made.
        let made = format!("touch {}\n\"$real\" \"$@\"", s("made"));
        let path = crate::remote::local::stand_in(&d("mark"), "mkdir", &made);
        let k = key(&s("theirs/new"), b"s3cret");
        let cmd = write_command(&k, false).env("PATH", &path);
        let out = exec_input(&remote, &cmd, k.content.expose()).await.unwrap();
        assert!(out.stderr_str().contains("is not root's alone"), "{out:?}");
        assert!(!d("made").exists() && !d("theirs/new").exists());
        // Links to root's directory: in another user's directory, and
        // another user's in root's.
        std::os::unix::fs::symlink(d("roots"), d("theirs/secrets")).unwrap();
        std::os::unix::fs::symlink(d("roots"), d("their-link")).unwrap();
        run(&["chown", "-h", "nobody", &s("their-link")]);
        for dir in ["theirs/secrets", "their-link"] {
            let e = upload(&remote, &key(&s(dir), b"s3cret"), false)
                .await
                .unwrap_err();
            assert!(e.error.contains("is not root's alone"), "{dir}: {e}");
            assert_eq!(std::fs::read_dir(d("roots")).unwrap().count(), 0, "{dir}");
        }
        // Root's link in root's directory: followed.
        std::os::unix::fs::symlink(d("roots"), d("root-link")).unwrap();
        upload(&remote, &key(&s("root-link"), b"s3cret"), false)
            .await
            .unwrap();
        assert_eq!(std::fs::read(d("roots/db-password")).unwrap(), b"s3cret");
    }
}
