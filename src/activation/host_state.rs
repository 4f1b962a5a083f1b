//! What a host runs, what it will boot, and the facts `check` reports, each
//! read with one command. `status`, `check`, the rollback plan and the
//! pipeline's own first read share these instead of each carrying a script.

use serde::{Deserialize, Serialize};

use super::links::read_store_links;
use super::settings::HostPaths;
use crate::nix::StorePath;
use crate::remote::{Command, Remote};

/// The links that say where a host stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Links {
    /// `/run/current-system`: what runs.
    pub current: Option<StorePath>,
    /// `/run/booted-system`: what it booted.
    pub booted: Option<StorePath>,
    /// The system profile: what it boots next (the boot default).
    pub boot_default: Option<StorePath>,
}

/// Read the three links with one command.
pub async fn read_links<R: Remote>(
    remote: &R,
    paths: &HostPaths,
    system_profile: &str,
) -> anyhow::Result<Links> {
    let read = read_store_links(
        remote,
        &[&paths.current_system, &paths.booted_system, system_profile],
    )
    .await?;
    let [current, booted, boot_default]: [Option<StorePath>; 3] = read
        .try_into()
        .map_err(|_| anyhow::anyhow!("reading three links gave another count"))?;
    Ok(Links {
        current,
        booted,
        boot_default,
    })
}

/// What nixgate has going on a host right now: its transient units (a
/// switch still running, an armed dead-man timer) and who holds the host
/// lock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    /// `unit active sub`, for every loaded unit of nixgate's own: a switch
    /// (`nixgate-switch-*`), a dead-man revert (`nixgate-confirm-*`), a
    /// reboot (`nixgate-reboot-*`). Not any unit whose name starts with
    /// `nixgate-` (a host may run its own `nixgate-exporter.service`).
    pub units: Vec<String>,
    /// The holder the lock file names, when the lock is held now.
    pub lock_holder: Option<String>,
}

/// The lock is looked up in `/proc/locks` by its file's device and inode,
/// never taken: the `flock --nonblock` this did held it for a moment, and
/// a push taking it then was refused as locked by another run (a `status`
/// from cron could stop a rollout); a lock file `status` could not open
/// (root's, 0600, when the lock was taken through sudo under a umask of
/// 077) read as held at every `status` until a reboot. Without
/// `/proc/locks` or GNU `stat` (nix-darwin) no holder is said.
pub(crate) const ACTIVITY: &str = r#"lock=$1
if command -v systemctl >/dev/null 2>&1; then
  systemctl list-units --all --plain --no-legend --no-pager \
    'nixgate-switch-*' 'nixgate-confirm-*' 'nixgate-reboot-*' 2>/dev/null |
  while read -r unit load active sub rest; do echo "NixgateUnit=$unit $active $sub"; done
fi
if [ -e "$lock" ] && [ -r /proc/locks ] && st=$(stat -c '%d %i' "$lock" 2>/dev/null); then
  dev=${st% *} ino=${st#* }
  id=$(printf '%02x:%02x:%s' $(((dev >> 8) & 0xfff)) $(((dev & 0xff) | ((dev >> 12) & 0xfff00))) "$ino")
  if grep -q " $id " /proc/locks; then echo "NixgateHolder=$(cat "$lock.holder" 2>/dev/null)"; fi
fi
exit 0"#;

/// Read the host's nixgate activity with one command.
pub async fn activity<R: Remote>(remote: &R, lock: &str) -> anyhow::Result<Activity> {
    let out = remote
        .exec(&Command::script(ACTIVITY).arg(lock))
        .await?
        .check("listing nixgate units")?;
    let mut a = Activity::default();
    for line in out.stdout_str().lines() {
        if let Some(u) = line.strip_prefix("NixgateUnit=") {
            a.units.push(u.trim().to_owned());
        } else if let Some(h) = line.strip_prefix("NixgateHolder=") {
            a.lock_holder = Some(h.trim().to_owned()).filter(|h| !h.is_empty());
        }
    }
    Ok(a)
}

/// What `check` reports of a host besides its connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Facts {
    /// `nix-store --version` (the version only); `None`: no Nix on the PATH.
    pub nix_version: Option<String>,
    pub current_system: Option<StorePath>,
    /// Free bytes on the file system holding `/nix`.
    pub free_nix_bytes: Option<u64>,
}

/// `readlink -f`, not `-e`: macOS's `readlink` has no `-e`, and `check`
/// showed every nix-darwin host with no current system.
pub(crate) const FACTS: &str = "nix-store --version 2>/dev/null | head -n 1; echo '--'; \
readlink -f /run/current-system 2>/dev/null; echo '--'; df -Pk /nix 2>/dev/null | tail -n 1";

/// Parse the output of [`FACTS`].
pub fn parse_facts(text: &str) -> Facts {
    let mut parts = text.split("--\n");
    let nix = parts.next().unwrap_or("").trim();
    let current = parts.next().unwrap_or("").trim();
    let df = parts.next().unwrap_or("").trim();
    Facts {
        nix_version: (!nix.is_empty()).then(|| {
            nix.rsplit(' ')
                .next()
                .unwrap_or(nix)
                .trim_start_matches("nix-store (Nix) ")
                .to_owned()
        }),
        current_system: StorePath::parse(current).ok(),
        free_nix_bytes: crate::nix::space::parse_df("/nix", df).map(|s| s.free_bytes),
    }
}

/// Read the facts with one command.
pub async fn facts<R: Remote>(remote: &R) -> anyhow::Result<Facts> {
    let out = remote
        .exec(&Command::script(FACTS))
        .await?
        .check("probing the host")?;
    Ok(parse_facts(&out.stdout_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_from_nix_2_8_and_lix() {
        let sys = "/nix/store/9xcpw0snbkyrmd8lwazw9k4dn5iislil-nixos-system-web1-24.11";
        let f = parse_facts(&format!(
            "nix-store (Nix) 2.8.0\n--\n{sys}\n--\n/dev/vda 264091588 11000000 83000000 12% /\n"
        ));
        assert_eq!(f.nix_version.as_deref(), Some("2.8.0"));
        assert_eq!(f.current_system.unwrap().as_str(), sys);
        assert_eq!(f.free_nix_bytes, Some(83_000_000 * 1024));
        let f = parse_facts("nix-store (Lix, like Nix) 2.91.1\n--\n\n--\n");
        assert_eq!(f.nix_version.as_deref(), Some("2.91.1"));
        assert_eq!(f.current_system, None);
        assert_eq!(f.free_nix_bytes, None);
        assert_eq!(parse_facts("--\n--\n").nix_version, None);
    }

    /// macOS's `readlink` (BSD's, `-f` since macOS 12.3, no `-e`): the
    /// current system is read all the same.
    #[test]
    fn facts_read_the_current_system_with_a_bsd_readlink() {
        let dir = tempfile::tempdir().unwrap();
        let sys = "/nix/store/9xcpw0snbkyrmd8lwazw9k4dn5iislil-darwin-system-25.11";
        let bsd = format!(
            "case $1 in -f) [ \"$2\" = /run/current-system ] && echo {sys} ;; \
             *) echo \"readlink: illegal option -- ${{1#-}}\" >&2; exit 1 ;; esac"
        );
        let path = crate::remote::local::stand_in(&dir.path().join("bin"), "readlink", &bsd);
        let out = std::process::Command::new("sh")
            .args(["-c", FACTS])
            .env("PATH", &path)
            .output()
            .unwrap();
        let facts = parse_facts(&String::from_utf8(out.stdout).unwrap());
        assert_eq!(
            facts
                .current_system
                .map(|p| p.as_str().to_owned())
                .as_deref(),
            Some(sys)
        );
    }

    /// The lock's holder is said while another process holds it, and
    /// `status` never takes it (a `flock` on `PATH` that would is never
    /// run): a push starting meanwhile was refused as locked.
    #[tokio::test]
    async fn a_held_lock_is_read_not_taken() {
        if !crate::activation::deadman::tests::have("flock") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("host.lock");
        std::fs::write(&lock, "").unwrap();
        std::fs::write(dir.path().join("host.lock.holder"), "run r7 pid 1 on ctl\n").unwrap();
        let calls = dir.path().join("flock-calls");
        let spy = format!("echo called >> {}\nexec \"$real\" \"$@\"", calls.display());
        let path = crate::remote::local::stand_in(&dir.path().join("bin"), "flock", &spy);
        let holder = || {
            let out = std::process::Command::new("sh")
                .args(["-c", ACTIVITY, "activity", &lock.display().to_string()])
                .env("PATH", &path)
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        assert_eq!(holder(), "");
        let mut held = std::process::Command::new("flock")
            .arg(&lock)
            .args(["sleep", "30"])
            .spawn()
            .unwrap();
        // Until the child has it (bounded).
        let t0 = std::time::Instant::now();
        let mut said = holder();
        while said.is_empty() && t0.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(20));
            said = holder();
        }
        held.kill().unwrap();
        held.wait().unwrap();
        assert_eq!(said, "NixgateHolder=run r7 pid 1 on ctl\n");
        assert!(!calls.exists(), "status ran flock");
    }

    /// Seen on the test fleet: `status` listed the host's own
    /// `nixgate-test-hello.service` as nixgate activity. Only nixgate's
    /// switch, revert and reboot units are.
    #[tokio::test]
    async fn activity_is_nixgates_own_units_only() {
        let dir = tempfile::tempdir().unwrap();
        // A systemctl that lists these units, filtered by its glob patterns.
        let fake = dir.path().join("systemctl");
        std::fs::write(
            &fake,
            "#!/bin/sh\nfor u in nixgate-test-hello.service nixgate-exporter.service \\
             nixgate-switch-r1.service nixgate-confirm-r1.timer nixgate-reboot-r1.timer ssh.service; do\n\
               for pat; do case \"$pat\" in -*) continue ;; esac\n\
                 case \"$u\" in $pat) echo \"$u loaded active running x\" ;; esac\n\
               done\n\
             done\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = std::process::Command::new("sh")
            .args(["-c", ACTIVITY, "activity", "/nonexistent/host.lock"])
            .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
            .output()
            .unwrap();
        let units: Vec<&str> = std::str::from_utf8(&out.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("NixgateUnit="))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        assert_eq!(
            units,
            [
                "nixgate-switch-r1.service",
                "nixgate-confirm-r1.timer",
                "nixgate-reboot-r1.timer"
            ]
        );
    }
}
