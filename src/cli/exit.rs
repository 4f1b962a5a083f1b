//! Process exit codes: the contract scripts and cron rely on.

use std::process::ExitCode;

/// How a nixgate invocation ended, as its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything selected ended well.
    Success = 0,
    /// At least one host failed or was rolled back.
    HostsFailed = 1,
    /// A usage or inventory error.
    Usage = 2,
    /// Another nixgate run holds the lock.
    Locked = 3,
    /// Declined at the prompt (or Ctrl-C there): nothing changed.
    Declined = 4,
}

impl From<Outcome> for ExitCode {
    fn from(o: Outcome) -> ExitCode {
        ExitCode::from(o as u8)
    }
}

/// An error that ends the command with a specific exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Fatal {
    pub outcome: Outcome,
    pub message: String,
}

impl Fatal {
    pub fn usage(message: impl Into<String>) -> anyhow::Error {
        Fatal {
            outcome: Outcome::Usage,
            message: message.into(),
        }
        .into()
    }

    /// Ended at a prompt: nothing changed (exit 4).
    pub fn declined(message: impl Into<String>) -> anyhow::Error {
        Fatal {
            outcome: Outcome::Declined,
            message: message.into(),
        }
        .into()
    }
}
