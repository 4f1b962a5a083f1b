//! `[notify] command`: after every push and rollback, the run's summary
//! (the same `summary` object `--json` ends with) is written to this
//! controller-side command's stdin, so a team can post it to chat or a
//! pager from a cron rollout, like comin's `postDeploymentCommand`. It runs
//! after the run report is written; its failure (cannot start, non-zero
//! exit, past its timeout) is a warning and never changes the exit code:
//! the deploy's outcome is what it is whether or not anyone was told.

use std::process::Stdio;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::inventory::Notify;

/// Stderr kept for the warning.
const STDERR_TAIL: usize = 2000;

/// Run the notify command with `summary` (one JSON line) on its stdin.
pub async fn send(notify: &Notify, summary: &[u8]) -> anyhow::Result<()> {
    let Some((program, args)) = notify.command.split_first() else {
        bail!("the notify command is empty");
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting `{program}`"))?;
    let mut stdin = child.stdin.take().context("the notify command's stdin")?;
    let mut stderr = child.stderr.take().context("the notify command's stderr")?;
    let run = async {
        // A command that ignores its input is still a success if it exits 0.
        let _ = stdin.write_all(summary).await;
        let _ = stdin.write_all(b"\n").await;
        drop(stdin);
        let mut err = Vec::new();
        let _ = stderr.read_to_end(&mut err).await;
        (child.wait().await, err)
    };
    let (status, err) = tokio::time::timeout(notify.timeout, run)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "`{program}` did not end within {} (killed)",
                crate::inventory::duration::format(notify.timeout)
            )
        })?;
    let status = status.with_context(|| format!("waiting for `{program}`"))?;
    if !status.success() {
        let err = String::from_utf8_lossy(&err);
        let tail = &err[err.len().saturating_sub(STDERR_TAIL)..];
        let tail = tail.trim();
        bail!(
            "`{program}` {status}{}",
            if tail.is_empty() {
                String::new()
            } else {
                format!(": {tail}")
            }
        );
    }
    Ok(())
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
}
