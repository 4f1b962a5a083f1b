//! The per-host lock: two controllers never work on the same host at once.
//!
//! The lock is an `flock` held by a command on the host for as long as its
//! stdin stays open: when the controller finishes, drops the lock, or dies
//! (and its SSH connection with it), the command sees EOF and the kernel
//! releases the lock. A dead holder can never leave it stale.

use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::activation::Os;
use crate::remote::{Command, Exit, Remote, Streaming};

/// Exit code of the lock command when another holder has the lock.
const HELD: u32 = 75;

const LINUX: &str = r#"mkdir -p "$(dirname "$1")" && exec flock --nonblock --conflict-exit-code 75 "$1" sh -c 'printf "%s\n" "$2" > "$1.holder"; echo locked; exec cat >/dev/null' nixgate-lock "$1" "$2""#;

const DARWIN: &str = r#"mkdir -p "$(dirname "$1")" && exec perl -MFcntl=:flock -e 'open(my $f, ">>", $ARGV[0]) or exit 1; flock($f, LOCK_EX|LOCK_NB) or exit 75; open(my $h, ">", "$ARGV[0].holder"); print $h "$ARGV[1]\n"; close $h; $|=1; print "locked\n"; 1 while <STDIN>;' "$1" "$2""#;

/// Where the lock lives on a host.
pub fn path(paths: &crate::activation::HostPaths) -> String {
    format!("{}/host.lock", paths.job_dir)
}

/// Who holds a lock this run takes: the run, this process, this controller.
pub fn holder(run_id: &crate::activation::RunId) -> String {
    let controller = std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "controller".into());
    format!("run {run_id} pid {} on {controller}", std::process::id())
}

/// Held until dropped.
pub struct HostLock {
    _stream: Streaming,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum HostLockError {
    #[error(
        "another nixgate run holds the lock on this host ({holder}); wait for it or check `nixgate status`"
    )]
    Held { holder: String },
    #[error("could not take the host lock: {0:#}")]
    Failed(anyhow::Error),
}

/// Take the lock at `path` on the host, naming this run as the holder.
pub async fn acquire<R: Remote>(
    remote: &R,
    os: Os,
    path: &str,
    holder: &str,
    sudo: bool,
) -> Result<HostLock, HostLockError> {
    let script = match os {
        Os::Linux => LINUX,
        Os::Darwin => DARWIN,
    };
    let cmd = Command::script(script).arg(path).arg(holder).sudo(sudo);
    let mut stream = remote
        .exec_piped(&cmd)
        .await
        .map_err(HostLockError::Failed)?;
    let mut first = [0u8; 7];
    let read = tokio::time::timeout(
        Duration::from_secs(30),
        stream.stdout.read_exact(&mut first),
    )
    .await;
    match read {
        Ok(Ok(_)) if &first == b"locked\n" => Ok(HostLock { _stream: stream }),
        _ => {
            drop(stream.stdin);
            let out = stream.finish.await.map_err(HostLockError::Failed)?;
            if out.exit == (Exit::Code { code: HELD }) {
                let who = remote
                    .exec(&Command::new("cat").arg(format!("{path}.holder")))
                    .await
                    .ok()
                    .filter(|o| o.success())
                    .map(|o| o.stdout_str().trim().to_owned())
                    .unwrap_or_else(|| "holder unknown".into());
                return Err(HostLockError::Held { holder: who });
            }
            let err = match out.check("taking the host lock") {
                Ok(_) => anyhow::anyhow!("the host lock command ended without taking the lock"),
                Err(e) => e,
            };
            Err(HostLockError::Failed(err))
        }
    }
}
