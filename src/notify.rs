//! `[notify] command`: after every push and rollback, the run's summary
//! (the same `summary` object `--json` ends with) is written to this
//! controller-side command's stdin, so a team can post it to chat or a
//! pager from a cron rollout, like comin's `postDeploymentCommand`. It runs
//! after the run report is written; its failure (cannot start, non-zero
//! exit, past its timeout) is a warning and never changes the exit code:
//! the deploy's outcome is what it is whether or not anyone was told.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::inventory::Notify;
use crate::process_group::GroupKill;

/// Stderr kept for the warning.
const STDERR_TAIL: usize = 2000;

/// How long the stderr of a command that has exited is still read: a
/// process it left in the background (`curl ... &`) holds the pipe open,
/// and the run waited for it, up to the timeout, then called it failed.
const STDERR_AFTER_EXIT: Duration = Duration::from_millis(200);

/// Run the notify command with `summary` (one JSON line) on its stdin. It
/// runs in a process group of its own: past its timeout, or when the
/// caller drops this future (a signal), the group is killed, not the
/// command alone (the README's `jq | curl` pipeline left a hung `curl`
/// running). Done is when the command exits, whatever it left behind.
pub async fn send(notify: &Notify, summary: &[u8]) -> anyhow::Result<()> {
    let Some((program, args)) = notify.command.split_first() else {
        bail!("the notify command is empty");
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting `{program}`"))?;
    let group = GroupKill::new(child.id());
    let mut stdin = child.stdin.take().context("the notify command's stdin")?;
    let stderr = child.stderr.take().context("the notify command's stderr")?;
    let mut input = summary.to_vec();
    input.push(b'\n');
    // A command that ignores its input is still a success if it exits 0;
    // one that exits without reading it all is not waited for.
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&input).await;
    });
    let tail = Arc::new(Mutex::new(Vec::new()));
    let reader = tokio::spawn(read_tail(stderr, tail.clone()));
    let status = tokio::time::timeout(notify.timeout, child.wait()).await;
    writer.abort();
    let Ok(status) = status else {
        reader.abort();
        bail!(
            "`{program}` did not end within {} (killed, with everything it started)",
            crate::inventory::duration::format(notify.timeout)
        );
    };
    group.done();
    let status = status.with_context(|| format!("waiting for `{program}`"))?;
    if status.success() {
        reader.abort();
        return Ok(());
    }
    let _ = tokio::time::timeout(STDERR_AFTER_EXIT, reader).await;
    let err = tail.lock().map(|t| t.clone()).unwrap_or_default();
    let err = String::from_utf8_lossy(&err);
    let tail = err.trim();
    bail!(
        "`{program}` {status}{}",
        if tail.is_empty() {
            String::new()
        } else {
            format!(": {tail}")
        }
    );
}

/// Read `pipe` to its end, keeping its last [`STDERR_TAIL`] bytes in
/// `tail` as they come (what was read is there when the read is given up).
async fn read_tail(mut pipe: impl AsyncReadExt + Unpin, tail: Arc<Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            return;
        }
        let Ok(mut t) = tail.lock() else { return };
        t.extend_from_slice(&buf[..n]);
        let over = t.len().saturating_sub(STDERR_TAIL);
        t.drain(..over);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn notify(argv: &[&str]) -> Notify {
        Notify {
            command: argv.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn the_summary_arrives_on_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("got");
        let script = format!("cat > '{}'", out.display());
        send(&notify(&["sh", "-c", &script]), br#"{"event":"summary"}"#)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(out).unwrap(),
            "{\"event\":\"summary\"}\n"
        );
    }

    #[tokio::test]
    async fn failures_say_why() {
        let e = send(
            &notify(&["sh", "-c", "echo no chat today >&2; exit 3"]),
            b"{}",
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string().contains("exit status: 3: no chat today"),
            "{e}"
        );
        let e = send(&notify(&["/nonexistent/notify"]), b"{}")
            .await
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("starting `/nonexistent/notify`"),
            "{e:#}"
        );
        let mut slow = notify(&["sleep", "10"]);
        slow.timeout = Duration::from_millis(200);
        let e = send(&slow, b"{}").await.unwrap_err();
        assert!(e.to_string().contains("did not end within"), "{e}");
    }

    /// 1,500 two-byte characters, then `a`, on stderr: the tail kept
    /// starts inside a character. It panicked (a `str` cut there), and the
    /// run exited 101 instead of its own code.
    #[tokio::test]
    async fn a_tail_cut_inside_a_character_is_no_panic() {
        let script = "i=0; while [ $i -lt 1500 ]; do printf '\\303\\251' >&2; i=$((i+1)); done; printf a >&2; exit 1";
        let e = send(&notify(&["sh", "-c", script]), b"{}")
            .await
            .unwrap_err();
        assert!(e.to_string().ends_with("\u{e9}a"), "{e}");
    }

    /// A command that leaves a process behind holding its stderr (`curl
    /// ... &`) is done when it exits: it was waited for to the timeout and
    /// called failed.
    #[tokio::test]
    async fn a_command_is_done_when_it_exits() {
        let mut n = notify(&["sh", "-c", "sleep 3 & exit 0"]);
        n.timeout = Duration::from_secs(2);
        let started = std::time::Instant::now();
        send(&n, b"{}").await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    /// Past its timeout the command is killed with what it started (a
    /// pipeline's hung `curl` was left running).
    #[tokio::test]
    async fn past_its_timeout_everything_it_started_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > '{}'; wait", pid_file.display());
        let mut n = notify(&["sh", "-c", &script]);
        n.timeout = Duration::from_millis(500);
        send(&n, b"{}").await.unwrap_err();
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let stat = format!("/proc/{}/stat", pid.trim());
        let alive = || {
            std::fs::read_to_string(&stat).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| !r.trim_start().starts_with('Z'))
            })
        };
        for _ in 0..50 {
            if !alive() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the background sleep {} outlived the timeout", pid.trim());
    }
}
