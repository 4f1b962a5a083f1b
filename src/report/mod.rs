//! Rendering: reporters turn typed events into human tables and lines or
//! into newline-delimited JSON. Reporters decide only how things look; what
//! happened (and so the exit code) is decided before an event is made.

pub mod event;
pub mod html;
pub mod human;
pub mod json;
pub mod metrics;
pub mod spool;
pub mod stored;
pub mod timeline;

use std::fmt;
use std::io::{IsTerminal, Write};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use event::{CommandName, Ending, Event, HostEnd, HostSummary, OutcomeKind};

/// Something that renders events. Reporters never decide anything.
pub trait Reporter: Send {
    fn event(&mut self, ev: &Event);
}

/// Pick the reporter for this invocation of `command`: JSON, a live
/// terminal view, or plain lines.
pub fn choose(g: &crate::cli::Global, command: CommandName) -> Box<dyn Reporter> {
    let quiet = g.quiet > 0;
    if g.json {
        Box::new(json::Json)
    } else if std::io::stderr().is_terminal()
        && !quiet
        && std::env::var_os("TERM").is_some_and(|t| t != "dumb")
    {
        Box::new(human::Human::live(Some(command)))
    } else {
        Box::new(human::Human::plain(Some(command), quiet))
    }
}

/// Where the runner sends events: cheap to clone; `emit` never blocks.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::UnboundedSender<Sent>,
}

/// An event on its way to the reporter: when it was emitted (Unix ms, kept
/// in the run report), and who waits for it to be handled.
type Sent = (Event, u64, Option<oneshot::Sender<()>>);

impl EventSink {
    pub fn emit(&self, ev: Event) {
        let _ = self.tx.send((ev, stored::now_ms(), None));
    }

    /// Emit and wait until the reporter has handled the event: for large
    /// events produced in bulk (every host's diff), so a slow reader of the
    /// output holds up the producer instead of the events piling up in
    /// memory (500 diffs of a 300-path change queued behind a slow `--json`
    /// reader were a third of the controller's peak).
    pub async fn emit_handled(&self, ev: Event) {
        let (done, handled) = oneshot::channel();
        if self.tx.send((ev, stored::now_ms(), Some(done))).is_ok() {
            let _ = handled.await;
        }
    }

    /// A sink whose events go nowhere (tests, library use).
    pub fn discard() -> EventSink {
        let (tx, _) = mpsc::unbounded_channel();
        EventSink { tx }
    }

    /// A sink whose events are kept for a test to read.
    #[cfg(test)]
    pub fn capture() -> (EventSink, Captured) {
        let (tx, rx) = mpsc::unbounded_channel();
        (EventSink { tx }, Captured(std::sync::Mutex::new(rx)))
    }
}

/// The events of a [`EventSink::capture`] sink.
#[cfg(test)]
pub struct Captured(std::sync::Mutex<mpsc::UnboundedReceiver<Sent>>);

#[cfg(test)]
impl Captured {
    /// Every event emitted since the last call (an `emit_handled` is
    /// answered as it is read).
    pub fn take(&self) -> Vec<Event> {
        let mut rx = self.0.lock().expect("captured events");
        let mut out = Vec::new();
        while let Ok((ev, _, handled)) = rx.try_recv() {
            if let Some(h) = handled {
                let _ = h.send(());
            }
            out.push(ev);
        }
        out
    }
}

/// Start the reporter task. It ends after handling [`Event::Summary`] (the
/// last event of every command: a sink still held somewhere cannot keep the
/// command from finishing), or when every sink is dropped; await the handle
/// to flush. With a spool path, every event but progress ticks and the summary is
/// written there as a JSON line as it arrives (for the run's report; a large
/// run's events never sit in memory); the handle yields the spool.
pub fn spawn(
    mut reporter: Box<dyn Reporter>,
    spool: Option<std::path::PathBuf>,
) -> (EventSink, JoinHandle<Option<spool::Spool>>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Sent>();
    let handle = tokio::spawn(async move {
        let mut spool = spool.and_then(|p| match spool::Spool::create(p) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("the run report will have no events: {e:#}");
                None
            }
        });
        while let Some((ev, at_ms, handled)) = rx.recv().await {
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
                s.push(&ev, at_ms);
            }
            if let Some(h) = handled {
                let _ = h.send(());
            }
            if matches!(ev, Event::Summary { .. }) {
                break;
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
#[derive(Debug, Clone, Default)]
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
mod tests;
