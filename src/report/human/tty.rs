//! The live view on stderr: one indicatif bar whose text is the whole view,
//! drawn from the [`Live`] model at every tick (4 a second), so each host's
//! clock moves on its own and nothing shown is older than a quarter second.
//! Lines for the scrollback are printed above it. The bar exists only while
//! there is something to show: it is taken off the screen (not left frozen)
//! when the plan is shown and the prompt waits, and at the summary.
//!
//! indicatif pads each line to the terminal's width and leaves the cursor
//! at the right margin; the terminal's echo of Ctrl-C (`^C`) there wraps to
//! a new line, the view's next redraw starts one line low and its first
//! line stays behind in the scrollback. So while the view is drawn, the
//! terminal does not echo control characters (`ECHOCTL` off, restored when
//! the view goes).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use super::live::Live;
use crate::report::event::Event;

/// How often the view is redrawn: its clocks are in whole seconds.
const TICK: Duration = Duration::from_millis(250);

/// The live view.
pub struct Tty {
    model: Arc<Mutex<Live>>,
    bar: Option<ProgressBar>,
    /// The terminal's settings before `ECHOCTL` was turned off.
    saved: Option<rustix::termios::Termios>,
}

/// Turn the echo of control characters off; the settings to restore.
fn quiet_echo() -> Option<rustix::termios::Termios> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let stderr = std::io::stderr();
    let saved = tcgetattr(&stderr).ok()?;
    if !saved.local_modes.contains(LocalModes::ECHOCTL) {
        return None;
    }
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHOCTL);
    tcsetattr(&stderr, OptionalActions::Now, &quiet).ok()?;
    Some(saved)
}

impl Drop for Tty {
    fn drop(&mut self) {
        self.clear();
    }
}

impl Default for Tty {
    fn default() -> Self {
        Tty::new()
    }
}

fn lock(m: &Mutex<Live>) -> MutexGuard<'_, Live> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The terminal's columns and rows (stderr), 80x24 when unknown.
pub fn size() -> (usize, usize) {
    terminal_size::terminal_size_of(std::io::stderr())
        .map_or((80, 24), |(w, h)| (w.0 as usize, h.0 as usize))
}

impl Tty {
    pub fn new() -> Self {
        Tty {
            model: Arc::new(Mutex::new(Live::new())),
            bar: None,
            saved: None,
        }
    }

    fn show(&mut self) {
        if self.bar.is_some() {
            return;
        }
        let model = self.model.clone();
        let view = move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
            let (cols, rows) = size();
            // Room for the line the cursor rests on and one of scrollback.
            let lines = lock(&model).render(Instant::now(), cols, rows.saturating_sub(2));
            let _ = w.write_str(&lines.join("\n"));
        };
        let style = ProgressStyle::with_template("{view}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner())
            .with_key("view", view);
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(style);
        bar.enable_steady_tick(TICK);
        self.bar = Some(bar);
        self.saved = quiet_echo();
    }

    /// Take the live view off the screen.
    pub fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if let Some(saved) = self.saved.take() {
            let stderr = std::io::stderr();
            let now = rustix::termios::OptionalActions::Now;
            let _ = rustix::termios::tcsetattr(&stderr, now, &saved);
        }
    }

    /// Print text above the live view, without the control characters a
    /// host's text may carry ([`super::for_terminal`]).
    pub fn print(&self, text: &str) {
        let text = super::for_terminal(text);
        match &self.bar {
            Some(bar) => bar.suspend(|| crate::report::stderr(format_args!("{text}"))),
            None => crate::report::stderr(format_args!("{text}")),
        }
    }

    /// Update the view with an event (its lines are printed by the caller).
    pub fn event(&mut self, ev: &Event) {
        let empty = {
            let mut m = lock(&self.model);
            m.apply(ev, Instant::now());
            m.is_empty()
        };
        if empty {
            self.clear();
        } else {
            self.show();
            if let Some(bar) = &self.bar {
                bar.tick();
            }
        }
    }
}
