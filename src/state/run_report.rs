//! The run report: `runs/<run-id>.json` (and a copy as `latest.json`) in the
//! state directory, written when a run ends: what was deployed, every host's
//! typed end, and the events spooled while the run went on.

use serde::{Deserialize, Serialize};

use crate::deploy::HostSummary;
use crate::gates::Goal;
use crate::report::Ending;

/// The run record written to the state directory: first when the run
/// starts (`finished` and `exit_code` null, `hosts` empty), then whole when
/// it ends. A report left unfinished is a run that was killed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub run_id: String,
    pub command: String,
    pub goal: Goal,
    pub commit: Option<String>,
    pub dirty: bool,
    /// Who ran it: `user@host` of the controller, when known.
    #[serde(default)]
    pub user: Option<String>,
    pub started: String,
    pub finished: Option<String>,
    pub exit_code: Option<u8>,
    /// How the run ended, as its summary said (`None` until it ends, and in
    /// reports written before it was stored: see [`RunReport::ending`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ending: Option<Ending>,
    /// The hosts the run was started on.
    pub selected: Vec<String>,
    /// How each host ended.
    pub hosts: Vec<HostSummary>,
}

impl RunReport {
    /// How the run ended: as stored; for a report written before the ending
    /// was stored, what its exit code and hosts tell (exit 4 only ever came
    /// from a declined run, 2 from an invalid one, and a host with an
    /// outcome means the run went on to its end); else unknown.
    pub fn ending(&self) -> Ending {
        if let Some(ending) = self.ending {
            return ending;
        }
        match self.exit_code {
            Some(4) => Ending::Declined,
            Some(2) => Ending::Invalid,
            Some(_) if self.hosts.iter().any(|h| h.end.outcome().is_some()) => Ending::Completed,
            _ => Ending::Unknown,
        }
    }
}

/// Where the report of `run_id` is written.
pub fn path(state_dir: &std::path::Path, run_id: &str) -> std::path::PathBuf {
    state_dir.join("runs").join(format!("{run_id}.json"))
}

/// What of the run report could not be written: the caller keeps the
/// event spool only when the report itself failed (its copy failing loses
/// nothing).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// `runs/<run-id>.json`: what was there before (the stub written when
    /// the run started) stays, its events not in it.
    #[error("could not write the run report {path}: {error:#}")]
    Report {
        path: std::path::PathBuf,
        error: anyhow::Error,
    },
    /// Only its copy `latest.json`: the report is whole.
    #[error("the run report {report} is written, but not its copy {latest}: {error:#}")]
    Latest {
        report: std::path::PathBuf,
        latest: std::path::PathBuf,
        error: anyhow::Error,
    },
}

/// Write the run report, with the events spooled during the run, as
/// `runs/<run-id>.json` and `latest.json`.
pub fn write(
    state_dir: &std::path::Path,
    report: &RunReport,
    events: Option<&crate::report::spool::Spool>,
) -> Result<std::path::PathBuf, WriteError> {
    #[derive(Serialize)]
    struct Written<'a> {
        #[serde(flatten)]
        report: &'a RunReport,
        events: crate::report::spool::SpooledEvents<'a>,
    }
    let written = Written {
        report,
        events: crate::report::spool::SpooledEvents(events),
    };
    let path = path(state_dir, &report.run_id);
    // Streamed to the file: the report of a large change to many hosts
    // runs to hundreds of megabytes.
    let wrote = super::write_atomic_with(&path, |w| {
        serde_json::to_writer_pretty(&mut *w, &written)?;
        w.write_all(b"\n")?;
        Ok(())
    });
    if let Err(error) = wrote {
        return Err(WriteError::Report { path, error });
    }
    let latest = state_dir.join("latest.json");
    let copied = super::write_atomic_with(&latest, |w| {
        let mut f = std::fs::File::open(&path)?;
        std::io::copy(&mut f, w)?;
        Ok(())
    });
    match copied {
        Ok(()) => Ok(path),
        Err(error) => Err(WriteError::Latest {
            report: path,
            latest,
            error,
        }),
    }
}
