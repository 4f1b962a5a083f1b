//! A [`Remote`] that runs commands on this machine through `sh -c`, exactly
//! as sshd would run them for a user whose shell is `sh`. Tests use it to
//! drive real Nix stores without SSH; the rendered text is the same one SSH
//! would send, so quoting is exercised too.

use std::process::Stdio;

use anyhow::Context;
use tokio::io::AsyncReadExt;

use super::{Command, Exit, Output, Remote, Streaming};

/// Runs commands locally.
#[derive(Debug, Clone)]
pub struct LocalRemote {
    name: String,
}

impl LocalRemote {
    pub fn new(name: &str) -> Self {
        LocalRemote {
            name: name.to_owned(),
        }
    }

    fn spawn(&self, cmd: &Command) -> anyhow::Result<tokio::process::Child> {
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd.render())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting `{}` locally", cmd.program()))
    }
}

fn exit_of(status: std::process::ExitStatus) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Code { code: code as u32 },
        (None, Some(sig)) => Exit::Signal {
            signal: sig.to_string(),
        },
        (None, None) => Exit::ConnectionLost,
    }
}

impl Remote for LocalRemote {
    fn name(&self) -> &str {
        &self.name
    }

    async fn exec(&self, cmd: &Command) -> anyhow::Result<Output> {
        let mut child = self.spawn(cmd)?;
        drop(child.stdin.take());
        let out = child
            .wait_with_output()
            .await
            .context("waiting for a local command")?;
        Ok(Output::new(exit_of(out.status), out.stdout, out.stderr))
    }

    async fn exec_batch(&self, cmds: &[Command]) -> Vec<super::Output> {
        super::batch::run_framed(self, cmds).await
    }

    async fn exec_stream(&self, cmd: &Command) -> anyhow::Result<Streaming> {
        let mut child = self.spawn(cmd)?;
        let stdin = child.stdin.take().context("local child has no stdin")?;
        let stdout = child.stdout.take().context("local child has no stdout")?;
        let mut stderr = child.stderr.take().context("local child has no stderr")?;
        let finish = async move {
            let mut err = Vec::new();
            stderr
                .read_to_end(&mut err)
                .await
                .context("reading stderr")?;
            let status = child.wait().await.context("waiting for a local command")?;
            Ok(Output::new(exit_of(status), Vec::new(), err))
        };
        Ok(Streaming {
            stdin: Box::pin(ClosingStdin::new(stdin)),
            stdout: Box::pin(stdout),
            finish: Box::pin(finish),
            stop: super::Stop::none(),
        })
    }
}

/// Child stdin whose `shutdown` really closes the pipe (tokio's own
/// `ChildStdin::poll_shutdown` does not), so the child sees EOF, as the
/// [`super::RemoteStdin`] contract says. For any `Remote` over a child process.
pub struct ClosingStdin(Option<tokio::process::ChildStdin>);

impl ClosingStdin {
    pub fn new(stdin: tokio::process::ChildStdin) -> Self {
        ClosingStdin(Some(stdin))
    }
}

impl tokio::io::AsyncWrite for ClosingStdin {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.0.as_mut() {
            Some(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            None => std::task::Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.0.as_mut() {
            Some(s) => std::pin::Pin::new(s).poll_flush(cx),
            None => std::task::Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if let Some(s) = self.0.as_mut() {
            std::task::ready!(std::pin::Pin::new(s).poll_flush(cx))?;
        }
        self.0 = None;
        std::task::Poll::Ready(Ok(()))
    }
}

/// Tests: `body` written to `path`, executable (a stand-in tool, a played
/// host's script).
#[cfg(test)]
pub(crate) fn executable(path: impl AsRef<std::path::Path>, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = path.as_ref();
    std::fs::write(path, body).expect("written");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Tests: a stand-in for `tool` in `bin` (made if missing), a shell
/// script running `body` with `$real` the tool's own path; returns a
/// `PATH` that finds it first.
#[cfg(test)]
pub(crate) fn stand_in(bin: &std::path::Path, tool: &str, body: &str) -> String {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .expect("sh runs");
    let real = String::from_utf8_lossy(&found.stdout).trim().to_owned();
    assert!(!real.is_empty(), "no {tool} on PATH");
    std::fs::create_dir_all(bin).expect("the stand-ins' directory");
    executable(
        bin.join(tool),
        &format!("#!/bin/sh\nreal='{real}'\n{body}\n"),
    );
    let path = std::env::var("PATH").unwrap_or_default();
    format!("{}:{path}", bin.display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn exec_and_stream() {
        let r = LocalRemote::new("local");
        let out = r
            .exec(&Command::new("printf").arg("%s|").arg("a b"))
            .await
            .unwrap();
        assert_eq!(out.stdout, b"a b|");
        assert!(out.success());
        let out = r.exec(&Command::script("exit 4")).await.unwrap();
        assert_eq!(out.exit, Exit::Code { code: 4 });

        let mut s = r
            .exec_stream(&Command::new("tr").args(["a-z", "A-Z"]))
            .await
            .unwrap();
        s.stdin.write_all(b"hello").await.unwrap();
        s.stdin.shutdown().await.unwrap();
        let mut buf = Vec::new();
        s.stdout.read_to_end(&mut buf).await.unwrap();
        assert_eq!(buf, b"HELLO");
        assert!(s.finish.await.unwrap().success());
    }
}
