//! The prompt before a deploy changes anything. It talks to the terminal
//! itself (`/dev/tty`), so it is seen and answered even when stdout and
//! stderr are piped; with no terminal it refuses and says to pass `--yes`.
//! Ctrl-C at the prompt ends it at once: nothing changed.

use std::io::{BufRead, Write};

use crate::plan::Plan;
use crate::report::CommandName;
use crate::runner::cancel::{self, CancelLevel, CancelWatch};

use super::{Fatal, Global};

/// The user's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Yes,
    /// No, or Ctrl-C at the prompt.
    No,
}

/// The question: what is done (the goal, or a rollback), and the ready
/// hosts wave by wave.
pub fn question(command: CommandName, plan: &Plan) -> String {
    let mut waves = Vec::new();
    let mut total = 0;
    for w in &plan.waves {
        let ready: Vec<&str> = plan
            .ready()
            .filter(|(h, _)| w.planned.iter().any(|p| p.host == *h))
            .map(|(h, _)| h)
            .collect();
        if ready.is_empty() {
            continue;
        }
        total += ready.len();
        let shown: Vec<&str> = ready.iter().take(8).copied().collect();
        let more = ready.len() - shown.len();
        let mut names = shown.join(", ");
        if more > 0 {
            names.push_str(&format!(" and {more} more"));
        }
        waves.push(format!("{}: {names}", w.group.name));
    }
    let what = match command {
        CommandName::Rollback => format!("Roll back {total} host(s)"),
        _ => format!("Deploy (goal {}) to {total} host(s)", plan.goal),
    };
    format!("{what}? {}\n[y/N] ", waves.join("; "))
}

/// Before any work: a run that will need an answer and has no terminal to
/// ask on is refused now (exit 2), not after the build.
pub fn can_ask(g: &Global) -> anyhow::Result<()> {
    if g.yes {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map(drop)
        .map_err(|_| {
            Fatal::usage("no terminal to confirm on: pass --yes to deploy without a prompt")
        })
}

/// Ask on the terminal. `--yes` answers for the user.
pub async fn ask(
    g: &Global,
    command: CommandName,
    plan: &Plan,
    mut watch: CancelWatch,
) -> anyhow::Result<Answer> {
    if g.yes {
        return Ok(Answer::Yes);
    }
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|_| {
            Fatal::usage("no terminal to confirm on: pass --yes to deploy without a prompt")
        })?;
    let q = question(command, plan);
    // A thread of its own, not tokio's blocking pool: after a Ctrl-C its
    // read is left behind, and the runtime's end waits for every task of
    // that pool (a Ctrl-C at the prompt then waited for Enter); a plain
    // thread ends with the process.
    let mut after_ctrl_c = tty.try_clone()?;
    let (answered, answer) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let read = || -> std::io::Result<String> {
            let mut out = tty.try_clone()?;
            out.write_all(q.as_bytes())?;
            out.flush()?;
            let mut line = String::new();
            std::io::BufReader::new(tty).read_line(&mut line)?;
            Ok(line)
        };
        let _ = answered.send(read());
    });
    tokio::select! {
        line = answer => {
            let line = line.map_err(|_| anyhow::anyhow!("the prompt's reader ended without an answer"))??;
            Ok(if matches!(line.trim(), "y" | "Y" | "yes") { Answer::Yes } else { Answer::No })
        }
        _ = cancel::reached(&mut watch, CancelLevel::StopStarting) => {
            // The reporter's next line starts on a line of its own when it
            // writes to this terminal; elsewhere, end the prompt's line here.
            if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                let _ = after_ctrl_c.write_all(b"\n");
            }
            Ok(Answer::No)
        }
    }
}
