//! A `Remote` over the OpenSSH client, for end-to-end tests of logic that runs
//! on hosts (activation) independently of nixgate's own SSH transport. The
//! command text sent is exactly `Command::render()`, as in production.

use std::process::Stdio;

use anyhow::Context;
use nixgate::remote::{Command, Exit, Output, Remote, Streaming};
use tokio::io::AsyncReadExt;

use super::fleet::Fleet;

#[derive(Clone)]
pub struct OpenSsh {
    name: String,
    base: Vec<String>,
}

impl OpenSsh {
    pub fn new(fleet: &Fleet, host: &str) -> Self {
        let cmd = fleet.ssh_command(host);
        let mut base = vec![cmd.get_program().to_string_lossy().into_owned()];
        base.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
        OpenSsh {
            name: host.to_owned(),
            base,
        }
    }

    fn command(&self, cmd: &Command) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.base[0]);
        c.args(&self.base[1..]).arg(cmd.render()).kill_on_drop(true);
        c
    }
}

/// Every command is an `ssh` process of its own (no connection sharing),
/// so a copy is a NEW connection, as the live gate's proof asks.
impl nixgate::activation::Reconnect<OpenSsh> for OpenSsh {
    fn fresh(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<OpenSsh>> + Send + '_>>
    {
        Box::pin(async { Ok(self.clone()) })
    }
}

fn exit_of(status: std::process::ExitStatus) -> Exit {
    match status.code() {
        // OpenSSH exits 255 when the connection failed or dropped.
        Some(255) => Exit::ConnectionLost,
        Some(code) => Exit::Code { code: code as u32 },
        None => Exit::ConnectionLost,
    }
}

impl Remote for OpenSsh {
    fn name(&self) -> &str {
        &self.name
    }

    async fn exec(&self, cmd: &Command) -> anyhow::Result<Output> {
        let out = self
            .command(cmd)
            .stdin(Stdio::null())
            .output()
            .await
            .context("running ssh")?;
        Ok(Output::new(exit_of(out.status), out.stdout, out.stderr))
    }

    async fn exec_stream(&self, cmd: &Command) -> anyhow::Result<Streaming> {
        let mut child = self
            .command(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running ssh")?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut stderr = child.stderr.take().context("stderr")?;
        Ok(Streaming {
            stdin: Box::pin(nixgate::remote::local::ClosingStdin::new(stdin)),
            stdout: Box::pin(stdout),
            finish: Box::pin(async move {
                let mut err = Vec::new();
                stderr.read_to_end(&mut err).await?;
                let status = child.wait().await?;
                Ok(Output::new(exit_of(status), Vec::new(), err))
            }),
            stop: nixgate::remote::Stop::none(),
        })
    }
}
