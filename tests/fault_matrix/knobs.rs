//! Making one step of a push slow on purpose, so a fault lands while that
//! step runs, and knowing when it does.
//!
//! A knob is a file: `/nix/var/nixgate-test/slow/<knob>` on the host (its
//! `/nix` is a directory of the fleet, so the test reads and writes it from
//! outside), holding seconds. While it exists, the step sleeps that long and
//! first creates `<knob>.hit`: the fault is injected when `.hit` appears.
//! Host tools are slowed by one wrapper installed in the container's
//! `/usr/local/bin` (ahead of `/usr/bin` on the SSH session's PATH; gone
//! at a reboot, so installed again after one); the test configuration's
//! `switch-to-configuration` reads `switch-<action>` itself (see
//! testconfig/README.md); the health check reads `health`; the release's
//! `git push` runs on the controller, through a `git` wrapper on nixgate's
//! PATH.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::fleet::Fleet;

/// The wrapper, installed as `nix-store`, `nix-env` and `systemd-run`:
/// `before` sleeps before the tool runs, `after` once it ran (its answer
/// is late), `stream` lets the copy's question through (what the host
/// lacks: one read, a few KiB for the matrix's closures, which nixgate
/// writes at once and then waits for the answer), then 4 KiB of the paths,
/// and then stalls: the fault lands while paths stream. (A plain 4 KiB
/// first held the question itself, which is smaller, and nixgate waited
/// for its answer for good.)
const WRAPPER: &str = r#"#!/bin/sh
# nixgate fault matrix: this tool, slowed while a knob says so.
tool=${0##*/}
knob= mode=
case "$tool:$*" in
  nix-store:*--write*) knob=copy mode=stream ;;
  nix-store:*--realise*) knob=realise mode=before ;;
  nix-env:*nixgate-known-good*) knob=mark mode=after ;;
  systemd-run:*--unit=nixgate-switch-*) knob=fire mode=after ;;
esac
f=/nix/var/nixgate-test/slow/$knob
if [ -z "$knob" ] || [ ! -f "$f" ]; then exec "/usr/bin/$tool" "$@"; fi
secs=$(cat "$f")
case $mode in
  before) : >"$f.hit"; sleep "$secs"; exec "/usr/bin/$tool" "$@" ;;
  after) "/usr/bin/$tool" "$@"; rc=$?; : >"$f.hit"; sleep "$secs"; exit "$rc" ;;
  *) { dd bs=1M count=1 status=none; dd bs=4096 count=1 iflag=fullblock status=none; : >"$f.hit"; sleep "$secs"; exec cat; } | "/usr/bin/$tool" "$@" ;;
esac
"#;

/// The health check every host of the matrix has: instant, unless the
/// `health` knob is set.
pub const HEALTH_CHECK: &str = "k=/nix/var/nixgate-test/slow/health; \
if [ -f $k ]; then : > $k.hit; sleep $(cat $k); fi; true";

/// Install the wrapper on a host (again after a reboot).
pub fn install(fleet: &Fleet, host: &str) {
    let script = format!(
        "set -e; mkdir -p /nix/var/nixgate-test/slow /usr/local/bin
cat > /usr/local/bin/nixgate-test-knob <<'WRAPPER'
{WRAPPER}WRAPPER
chmod 755 /usr/local/bin/nixgate-test-knob
for t in nix-store nix-env systemd-run; do
  test -x /usr/bin/$t
  ln -sfn nixgate-test-knob /usr/local/bin/$t
done
command -v nix-store"
    );
    let found = fleet.in_host_ok(host, &script);
    assert_eq!(
        found, "/usr/local/bin/nix-store",
        "{host}: the wrapper is first"
    );
}

/// Where a knob lives: on a host (seen from the machine), or in a
/// directory of the controller.
#[derive(Debug, Clone)]
pub struct Knob {
    file: PathBuf,
}

impl Knob {
    /// A knob on `host`.
    pub fn on_host(fleet: &Fleet, host: &str, name: &str) -> Knob {
        let dir = fleet
            .dir()
            .join("hosts")
            .join(host)
            .join("nix/var/nixgate-test/slow");
        Knob {
            file: dir.join(name),
        }
    }

    /// A knob in a controller directory.
    pub fn in_dir(dir: &Path, name: &str) -> Knob {
        Knob {
            file: dir.join(name),
        }
    }

    fn hit_file(&self) -> PathBuf {
        let mut s = self.file.clone().into_os_string();
        s.push(".hit");
        PathBuf::from(s)
    }

    /// Slow the step down by `secs` from now on.
    pub fn set(&self, secs: u64) {
        let _ = std::fs::remove_file(self.hit_file());
        std::fs::create_dir_all(self.file.parent().unwrap()).unwrap();
        std::fs::write(&self.file, format!("{secs}\n")).unwrap();
    }

    /// Back to full speed (a step already asleep sleeps on).
    pub fn clear(&self) {
        let _ = std::fs::remove_file(&self.file);
        let _ = std::fs::remove_file(self.hit_file());
    }

    /// Wait until the step is in its slow part; false at `deadline`, or
    /// when `gone()` says the push ended first.
    pub fn wait_hit(&self, deadline: Instant, mut gone: impl FnMut() -> bool) -> bool {
        while Instant::now() < deadline {
            if self.hit_file().exists() {
                return true;
            }
            if gone() {
                return self.hit_file().exists();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

/// The controller-side knob of the release step: a `git` that sleeps
/// before `git push` while `<dir>/slow/release` exists. Returns the
/// directory to put first on nixgate's PATH.
pub fn controller_git(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let real = ["/usr/bin/git", "/bin/git"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("git is installed");
    let knob = dir.join("slow/release");
    let script = format!(
        "#!/bin/sh\n# nixgate fault matrix: `git push` slowed while {k} exists\n\
         case \" $* \" in *' push '*) if [ -f '{k}' ]; then : > '{k}.hit'; sleep \"$(cat '{k}')\"; fi ;; esac\n\
         exec {real} \"$@\"\n",
        k = knob.display()
    );
    let git = bin.join("git");
    std::fs::write(&git, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&git, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}
