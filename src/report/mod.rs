//! Rendering: reporters turn typed events into human tables and lines or
//! into newline-delimited JSON. Reporters decide only how things look; what
//! happened (and so the exit code) is decided before an event is made.

pub mod event;
pub mod html;
pub mod human;
pub mod json;
pub mod metrics;
pub mod shared_json;
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
/// `-q` is plain lines without timestamps on a terminal (problems and the
/// summary); off a terminal every line is timestamped.
pub fn choose(g: &crate::cli::Global, command: CommandName) -> Box<dyn Reporter> {
    let level = human::Level::of(g.quiet, g.verbose);
    let terminal = std::io::stderr().is_terminal();
    if g.json {
        Box::new(json::Json)
    } else if terminal
        && level != human::Level::Quiet
        && std::env::var_os("TERM").is_some_and(|t| t != "dumb")
    {
        Box::new(human::Human::live(Some(command), level))
    } else {
        Box::new(human::Human::plain(Some(command), level, !terminal))
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

/// Set once a write to stdout failed: nothing more is written there.
static STDOUT_BROKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Human text on stdout (`print!` that cannot panic): none after a write
/// that failed. A reader that went away (`nixgate exec ... | head`) made
/// `print!` panic in the reporter task, which lost every later event of
/// the run's report while the deploy went on.
pub fn stdout(text: std::fmt::Arguments<'_>) {
    use std::sync::atomic::Ordering;
    if STDOUT_BROKEN.load(Ordering::SeqCst) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if out.write_fmt(text).and_then(|()| out.flush()).is_err() {
        STDOUT_BROKEN.store(true, Ordering::SeqCst);
    }
}

/// Human text on stderr (`eprint!` that cannot panic): a failed write is
/// dropped (there is nowhere left to say so).
pub fn stderr(text: std::fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(text);
}

/// Write one JSON value as a line on stdout (the `--json` stream).
pub fn json_line(value: &impl serde::Serialize) {
    json_line_to(&mut std::io::stdout().lock(), &STDOUT_BROKEN, value);
}

/// [`write_json_line`], and none after one that failed (`broken`): a write
/// cut short (a full disk, a closed pipe) may have left part of a line,
/// and the next line would be appended to it, which no strict parser
/// reads. The stream then stops where it broke, said once on stderr.
fn json_line_to(
    out: &mut impl Write,
    broken: &std::sync::atomic::AtomicBool,
    value: &impl serde::Serialize,
) {
    use std::sync::atomic::Ordering;
    if broken.load(Ordering::SeqCst) {
        return;
    }
    if let Err(e) = write_json_line(out, value)
        && !broken.swap(true, Ordering::SeqCst)
    {
        tracing::warn!("--json: a line could not be written ({e}); none is written after it");
    }
}

/// Write one JSON value as a line to `out`: made whole first, so a value
/// that fails to serialize writes nothing (and says so on stderr) instead
/// of half an object.
fn write_json_line(out: &mut impl Write, value: &impl serde::Serialize) -> std::io::Result<()> {
    let mut line = match serde_json::to_vec(value) {
        Ok(line) => line,
        Err(e) => {
            tracing::warn!("a --json line was left out: it could not be written as JSON: {e}");
            return Ok(());
        }
    };
    line.push(b'\n');
    out.write_all(&line)?;
    out.flush()
}

/// A plain-text table with left-aligned columns, no control characters.
/// Fitted to a width ([`Table::fit`]): the columns marked shrinkable (store
/// paths as `hash8-name`) give up the end of their names first, down to the
/// hash; then the last column (notes) wraps at spaces, its further lines
/// starting under it.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    shrinkable: Vec<usize>,
    width: Option<usize>,
}

/// The narrowest the last column is wrapped to.
const LAST_MIN: usize = 20;

/// The fewest characters of a store name shown after its hash (`-` and
/// `…` included); fewer, and the cell stops at the hash.
const NAME_MIN: usize = 10;

/// How short a shrinkable cell may get: up to the end of the store path's
/// hash (`#3 8d257f5 b9473480` of `#3 8d257f5 b9473480-nixos-system-...`).
fn shortest(cell: &str) -> usize {
    let start = cell.rfind(' ').map_or(0, |i| i + 1);
    let hash = cell[start..].find('-').unwrap_or(cell.len() - start);
    cell[..start + hash].chars().count().max(1)
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            ..Default::default()
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// These columns may be cut short to fit.
    pub fn shrinkable(mut self, columns: &[usize]) -> Self {
        self.shrinkable = columns.to_vec();
        self
    }

    /// Fit the table to `width` columns (`None`: as wide as it is).
    pub fn fit(mut self, width: Option<usize>) -> Self {
        self.width = width;
        self
    }

    /// Each column's width, after fitting.
    fn widths(&self) -> Vec<usize> {
        let cols = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(cols) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let Some(limit) = self.width else {
            return widths;
        };
        let total = |w: &[usize]| w.iter().sum::<usize>() + 2 * w.len().saturating_sub(1);
        let last = cols.saturating_sub(1);
        let floor: Vec<usize> = (0..cols)
            .map(|i| {
                let cells = std::iter::once(&self.header).chain(&self.rows);
                cells
                    .filter_map(|r| r.get(i))
                    .map(|c| shortest(c))
                    .max()
                    .unwrap_or(1)
            })
            .collect();
        // Shrink the store paths' names, widest first, one character at a time.
        while total(&widths) > limit {
            let widest = self
                .shrinkable
                .iter()
                .copied()
                .filter(|&i| i < cols && widths[i] > floor[i])
                .max_by_key(|&i| widths[i]);
            let Some(i) = widest else { break };
            widths[i] -= 1;
        }
        if total(&widths) > limit && !self.shrinkable.contains(&last) {
            let others = total(&widths) - widths[last];
            widths[last] = limit.saturating_sub(others).max(LAST_MIN.min(widths[last]));
        }
        widths
    }
}

/// `s` in at most `w` characters: cut, with `…` for what is missing, but
/// never shorter than its [`shortest`].
fn cut(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        return s.to_owned();
    }
    let keep = shortest(s);
    // A name cut to a few letters says nothing the hash does not.
    if w < keep + NAME_MIN {
        return s.chars().take(keep).collect();
    }
    let mut out: String = s.chars().take(w - 1).collect();
    out.push('…');
    out
}

/// `s` wrapped at spaces into lines of at most `w` characters (a word
/// longer than that stays whole on its own line).
pub fn wrap(s: &str, w: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in s.split(' ').filter(|w| !w.is_empty()) {
        let len = line.chars().count();
        if len > 0 && len + 1 + word.chars().count() > w {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cols = self.header.len();
        let widths = self.widths();
        let indent: usize = widths
            .iter()
            .take(cols.saturating_sub(1))
            .map(|w| w + 2)
            .sum();
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            let mut rest = Vec::new();
            for (i, c) in r.iter().enumerate().take(cols) {
                if i + 1 == cols && self.shrinkable.contains(&i) {
                    line.push_str(&cut(c, widths[i]));
                } else if i + 1 == cols {
                    let mut wrapped = wrap(c, widths[i]).into_iter();
                    line.push_str(&wrapped.next().unwrap_or_default());
                    rest.extend(wrapped);
                } else {
                    line.push_str(&format!("{:w$}  ", cut(c, widths[i]), w = widths[i]));
                }
            }
            writeln!(f, "{}", line.trim_end())?;
            for more in rest {
                writeln!(f, "{:indent$}{more}", "")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
