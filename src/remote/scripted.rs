//! A [`Remote`] for tests: records every command it is asked to run and
//! answers from a caller-supplied responder, so unit tests can assert the exact
//! argv nixgate sends and feed back the outputs real machines give.

use std::sync::{Arc, Mutex};

use super::{Command, Exit, Output, Remote, Streaming};

type Responder = dyn Fn(&Command) -> Output + Send + Sync;

/// Records commands; answers through the responder.
#[derive(Clone)]
pub struct ScriptedRemote {
    name: String,
    log: Arc<Mutex<Vec<Command>>>,
    respond: Arc<Responder>,
}

impl ScriptedRemote {
    pub fn new(name: &str, respond: impl Fn(&Command) -> Output + Send + Sync + 'static) -> Self {
        ScriptedRemote {
            name: name.to_owned(),
            log: Arc::default(),
            respond: Arc::new(respond),
        }
    }

    /// Every command run so far, in order.
    pub fn commands(&self) -> Vec<Command> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Every argv run so far, in order.
    pub fn argvs(&self) -> Vec<Vec<String>> {
        self.commands().iter().map(|c| c.argv().to_vec()).collect()
    }
}

/// A successful output with this stdout.
pub fn ok(stdout: &str) -> Output {
    Output::new(Exit::Code { code: 0 }, stdout, "")
}

/// A failed output with this exit code and stderr.
pub fn fail(code: u32, stderr: &str) -> Output {
    Output::new(Exit::Code { code }, "", stderr)
}

impl Remote for ScriptedRemote {
    fn name(&self) -> &str {
        &self.name
    }

    async fn exec(&self, cmd: &Command) -> anyhow::Result<Output> {
        if let Ok(mut log) = self.log.lock() {
            log.push(cmd.clone());
        }
        Ok((self.respond)(cmd))
    }

    async fn exec_stream(&self, cmd: &Command) -> anyhow::Result<Streaming> {
        if let Ok(mut log) = self.log.lock() {
            log.push(cmd.clone());
        }
        let out = (self.respond)(cmd);
        let stdout = std::io::Cursor::new(out.stdout.clone());
        let finish = Output::new(out.exit, Vec::new(), out.stderr);
        Ok(Streaming {
            stdin: Box::pin(tokio::io::sink()),
            stdout: Box::pin(stdout),
            finish: Box::pin(async move { Ok(finish) }),
        })
    }
}
