//! Rendering: reporters turn typed data into human tables and lines or into
//! newline-delimited JSON. Nothing here decides anything.

pub mod event;
pub mod human;
pub mod json;
pub mod spool;

use std::fmt;
use std::io::{IsTerminal, Write};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use event::{Detail, Event, HostSummary, OutcomeKind};

/// Something that renders events. Reporters never decide anything.
pub trait Reporter: Send {
    fn event(&mut self, ev: &Event);
}

/// Pick the reporter for this invocation: JSON, live terminal, or plain lines.
pub fn choose(json: bool, quiet: bool) -> Box<dyn Reporter> {
    if json {
        Box::new(json::Json)
    } else if std::io::stderr().is_terminal()
        && !quiet
        && std::env::var_os("TERM").is_some_and(|t| t != "dumb")
    {
        Box::new(human::Tty::new())
    } else {
        Box::new(human::Plain { quiet })
    }
}

/// Where the runner sends events: cheap to clone; `emit` never blocks.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::UnboundedSender<(Event, Option<oneshot::Sender<()>>)>,
}

impl EventSink {
    pub fn emit(&self, ev: Event) {
        let _ = self.tx.send((ev, None));
    }

    /// Emit and wait until the reporter has handled the event: for large
    /// events produced in bulk (every host's diff), so a slow reader of the
    /// output holds up the producer instead of the events piling up in
    /// memory (500 diffs of a 300-path change queued behind a slow `--json`
    /// reader were a third of the controller's peak).
    pub async fn emit_handled(&self, ev: Event) {
        let (done, handled) = oneshot::channel();
        if self.tx.send((ev, Some(done))).is_ok() {
            let _ = handled.await;
        }
    }

    /// A sink whose events go nowhere (tests, library use).
    pub fn discard() -> EventSink {
        let (tx, _) = mpsc::unbounded_channel();
        EventSink { tx }
    }
}

/// Start the reporter task; drop every sink, then await the handle, to flush.
/// With a spool path, every event but progress ticks and the summary is
/// written there as a JSON line as it arrives (for the run's report; a large
/// run's events never sit in memory); the handle yields the spool.
pub fn spawn(
    mut reporter: Box<dyn Reporter>,
    spool: Option<std::path::PathBuf>,
) -> (EventSink, JoinHandle<Option<spool::Spool>>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Event, Option<oneshot::Sender<()>>)>();
    let handle = tokio::spawn(async move {
        let mut spool = spool.and_then(|p| match spool::Spool::create(p) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("the run report will have no events: {e:#}");
                None
            }
        });
        while let Some((ev, handled)) = rx.recv().await {
            reporter.event(&ev);
            // Progress ticks are for the live view, and the summary is the
            // run record's `hosts`; the record keeps the rest.
            let skip = matches!(
                ev,
                Event::BuildProgress { .. }
                    | Event::CopyProgress { .. }
                    | Event::Summary { .. }
                    | Event::Activation {
                        activation: crate::activation::ActivationEvent::Polling { .. },
                        ..
                    }
            );
            if !skip && let Some(s) = spool.as_mut() {
                s.push(&ev);
            }
            if let Some(h) = handled {
                let _ = h.send(());
            }
        }
        spool.and_then(|s| s.finish())
    });
    (EventSink { tx }, handle)
}

/// Write one JSON value as a line on stdout (the `--json` stream).
pub fn json_line(value: &impl serde::Serialize) {
    let mut out = std::io::stdout().lock();
    if serde_json::to_writer(&mut out, value).is_ok() {
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
}

/// A plain-text table with left-aligned columns, no control characters.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cols = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(cols) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate().take(cols) {
                if i + 1 == cols {
                    line.push_str(c);
                } else {
                    line.push_str(&format!("{:w$}  ", c, w = widths[i]));
                }
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::RunnerEvent;

    fn sample() -> Vec<Event> {
        vec![
            Event::Runner(RunnerEvent::WaveStarted {
                wave: "canary".into(),
                hosts: vec!["web1".into()],
                max_parallel: 1,
            }),
            Event::GateStarted {
                host: "web1".into(),
                gate: crate::gates::Gate::DryActivate,
            },
            Event::GateFailed {
                host: "web1".into(),
                gate: crate::gates::Gate::LiveActivate,
                reason: "exit 4\nunit failed".into(),
            },
            Event::HostFinished(HostSummary {
                host: "web1".into(),
                wave: "canary".into(),
                outcome: OutcomeKind::RolledBack,
                closure: None,
                reason: Some("switch exited 4".into()),
                detail: serde_json::Value::Null.into(),
                seconds: 1.5,
            }),
        ]
    }

    #[test]
    fn json_events_are_tagged_flat_objects() {
        for ev in sample() {
            let v = serde_json::to_value(&ev).unwrap();
            assert!(v["event"].is_string(), "{v}");
        }
        let v = serde_json::to_value(&sample()[0]).unwrap();
        assert_eq!(v["event"], "wave_started");
        assert_eq!(v["wave"], "canary");
        let v = serde_json::to_value(&sample()[3]).unwrap();
        assert_eq!(v["event"], "host_finished");
        assert_eq!(v["outcome"], "rolled_back");
    }

    #[test]
    fn descriptions_have_no_control_characters_after_stripping() {
        for ev in sample() {
            if let Some(line) = human::describe(&ev) {
                assert!(!line.is_empty());
            }
        }
        let t = human::summary_table(&[HostSummary {
            host: "web1".into(),
            wave: "canary".into(),
            outcome: OutcomeKind::KnownGood,
            closure: None,
            reason: None,
            detail: serde_json::Value::Null.into(),
            seconds: 2.0,
        }]);
        assert!(t.to_string().contains("web1  canary  known-good"));
    }
}
