//! `nixgate exec` for people: each host's output as it arrives, line by
//! line, prefixed with the host name (its stdout on nixgate's stdout, its
//! stderr on nixgate's stderr, so `nixgate exec ... > out` keeps only what
//! the hosts printed), or with `--group` each host's output whole when it
//! ends, under a header on the stream it goes to (so `> out` still says
//! which host printed what); then a table of every host's exit and
//! duration on stderr.
//!
//! Memory stays bounded whatever a host prints: a line is printed in
//! pieces of [`LINE_MAX`] (200 MB without a newline once took 126 s and
//! 262 MB, every chunk re-scanning the whole pending line), and `--group`
//! keeps the last [`GROUP_MAX`] of each host's output.

use std::collections::{HashMap, VecDeque};

use super::strip_controls;
use crate::exec::{ExecEnd, Stream};
use crate::report::{Event, Reporter, Table};
use crate::runner::RunnerEvent;

/// The longest piece of a line printed at once: a longer line is printed
/// in pieces, each but the last ending in [`CONTINUED`].
pub const LINE_MAX: usize = 64 * 1024;
/// Marks a piece of a line longer than [`LINE_MAX`]: the line goes on in
/// the next piece.
pub const CONTINUED: &str = " [line continues]";
/// `--group`: the most of one host's output held until it ends (its tail).
pub const GROUP_MAX: usize = 1024 * 1024;

/// Where the reporter's text goes: nixgate's stdout or stderr (tests
/// capture it).
type Print = Box<dyn FnMut(Stream, &str) + Send>;

/// `--group`: one host's lines until it ends, the oldest dropped past
/// [`GROUP_MAX`].
#[derive(Default)]
struct Held {
    lines: VecDeque<(Stream, String)>,
    bytes: usize,
    /// Lines and bytes dropped, per stream (stdout, stderr).
    dropped: [(usize, usize); 2],
}

impl Held {
    fn push(&mut self, stream: Stream, line: String) {
        self.bytes += line.len();
        self.lines.push_back((stream, line));
        while self.bytes > GROUP_MAX {
            let Some((s, old)) = self.lines.pop_front() else {
                break;
            };
            self.bytes -= old.len();
            let d = &mut self.dropped[s as usize];
            d.0 += 1;
            d.1 += old.len();
        }
    }
}

/// The exec reporter.
pub struct ExecView {
    group: bool,
    width: usize,
    hosts: Vec<String>,
    /// A line not yet ended (at most [`LINE_MAX`] bytes), per host and stream.
    partial: HashMap<(String, Stream), String>,
    held: HashMap<String, Held>,
    ends: HashMap<String, (String, String)>,
    print: Print,
}

impl ExecView {
    pub fn new(group: bool) -> ExecView {
        ExecView::printing_to(
            group,
            Box::new(|stream, text| match stream {
                Stream::Stdout => crate::report::stdout(format_args!("{text}")),
                Stream::Stderr => crate::report::stderr(format_args!("{text}")),
            }),
        )
    }

    fn printing_to(group: bool, print: Print) -> ExecView {
        ExecView {
            group,
            width: 0,
            hosts: Vec::new(),
            partial: HashMap::new(),
            held: HashMap::new(),
            ends: HashMap::new(),
            print,
        }
    }

    /// Only `text` is searched for a newline (the pending line was, when
    /// it came), and the pending line never grows past [`LINE_MAX`].
    fn output(&mut self, host: &str, stream: Stream, text: &str) {
        let key = (host.to_owned(), stream);
        let mut buf = self.partial.remove(&key).unwrap_or_default();
        let mut rest = text;
        loop {
            let room = LINE_MAX.saturating_sub(buf.len()).min(rest.len());
            let window = &rest.as_bytes()[..room];
            if let Some(n) = window.iter().position(|b| *b == b'\n') {
                buf.push_str(&rest[..n]);
                rest = &rest[n + 1..];
                self.line(host, stream, buf.trim_end_matches('\r'), false);
                buf.clear();
            } else if buf.len() + rest.len() > LINE_MAX {
                let cut = floor_char_boundary(rest, room);
                buf.push_str(&rest[..cut]);
                rest = &rest[cut..];
                self.line(host, stream, &buf, true);
                buf.clear();
            } else {
                buf.push_str(rest);
                break;
            }
        }
        if !buf.is_empty() {
            self.partial.insert(key, buf);
        }
    }

    fn line(&mut self, host: &str, stream: Stream, line: &str, cut: bool) {
        let mut line = strip_controls(line);
        if cut {
            line.push_str(CONTINUED);
        }
        if self.group {
            self.held
                .entry(host.to_owned())
                .or_default()
                .push(stream, line);
        } else {
            let prefix = format!("{host:w$} | ", w = self.width);
            (self.print)(stream, &format!("{prefix}{line}\n"));
        }
    }

    fn finished(&mut self, host: &str, end: &ExecEnd, seconds: f64) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            if let Some(rest) = self.partial.remove(&(host.to_owned(), stream)) {
                self.line(host, stream, &rest, false);
            }
        }
        let status = end_words(end);
        if self.group {
            let header = format!("=== {host}: {status} ({seconds:.1} s)");
            let held = self.held.remove(host).unwrap_or_default();
            self.print_group(&header, held);
        } else if !end.ok() {
            let text = format!("{host:w$} : {status}\n", w = self.width);
            (self.print)(Stream::Stderr, &text);
        }
        self.ends
            .insert(host.to_owned(), (status, format!("{seconds:.1} s")));
    }

    /// A host's `--group` block: the header and its stdout lines on
    /// stdout, then (if it wrote any) the header and its stderr lines on
    /// stderr. Each stream names the host above its lines: before, the
    /// header went to stderr only, and `> out` held every host's stdout
    /// unlabelled.
    fn print_group(&mut self, header: &str, held: Held) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let lines = held.lines.iter().filter(|(s, _)| *s == stream);
            let (n, bytes) = held.dropped[stream as usize];
            if stream == Stream::Stderr && n == 0 && lines.clone().next().is_none() {
                continue;
            }
            let mut block = match stream {
                Stream::Stdout => format!("{header}\n"),
                Stream::Stderr => format!("{header}, stderr:\n"),
            };
            if n > 0 {
                block.push_str(&format!(
                    "[{n} earlier line(s), {bytes} bytes, dropped: --group keeps the last {} MiB of a host's output]\n",
                    GROUP_MAX / (1024 * 1024)
                ));
            }
            (self.print)(stream, &block);
            for (_, line) in lines {
                (self.print)(stream, &format!("{line}\n"));
            }
        }
    }

    fn table(&self) -> Table {
        let mut t = Table::new(&["HOST", "RESULT", "TIME"]);
        for h in &self.hosts {
            let (status, time) = self
                .ends
                .get(h)
                .cloned()
                .unwrap_or_else(|| ("not started (Ctrl-C)".into(), "-".into()));
            t.row(vec![h.clone(), status, time]);
        }
        t
    }
}

/// The largest char boundary of `s` at or below `at` (`str::floor_char_boundary`
/// is not stable in rust 1.89).
fn floor_char_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// A host's end in a few words.
pub fn end_words(end: &ExecEnd) -> String {
    match end {
        ExecEnd::Exited { code } => format!("exit {code}"),
        ExecEnd::Signalled { signal } => format!("killed by SIG{signal}"),
        ExecEnd::TimedOut {
            after_seconds,
            ended,
        } => format!(
            "timed out after {after_seconds} s: hung up{}",
            still_running(*ended)
        ),
        ExecEnd::HungUp { ended } => format!("hung up (Ctrl-C){}", still_running(*ended)),
        ExecEnd::Cancelled => "not started (Ctrl-C while connecting)".into(),
        ExecEnd::ConnectionLost => "connection lost before the command ended".into(),
        ExecEnd::Unreachable { error } => format!("unreachable: {}", first_line(error)),
        ExecEnd::NotStarted { error } => format!("not started: {}", first_line(error)),
        ExecEnd::Interrupted { why } => format!("interrupted ({why:?})"),
    }
}

/// A hung-up command that never reported its end (it ignored SIGHUP, and
/// its channel was closed after the grace) is not claimed to be over.
fn still_running(ended: bool) -> &'static str {
    if ended {
        ""
    } else {
        ", may still be running on the host"
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

impl Reporter for ExecView {
    fn event(&mut self, ev: &Event) {
        match ev {
            Event::ExecStarted { hosts, .. } => {
                self.width = hosts.iter().map(|h| h.chars().count()).max().unwrap_or(0);
                self.hosts = hosts.clone();
            }
            Event::ExecOutput { host, stream, text } => self.output(host, *stream, text),
            Event::ExecFinished { host, end, seconds } => self.finished(host, end, *seconds),
            Event::CancelRequested { level } => crate::report::stderr(format_args!(
                "nixgate: {}\n",
                match level {
                    crate::runner::cancel::CancelLevel::Abort =>
                        "second Ctrl-C: abandoning the commands in flight",
                    _ =>
                        "Ctrl-C: starting no new host; hanging up the commands in flight (Ctrl-C again to abandon them)",
                }
            )),
            Event::Runner(RunnerEvent::HostNotStarted { .. }) => {}
            Event::Summary { ok, failed, .. } => {
                if !self.hosts.is_empty() {
                    crate::report::stderr(format_args!("{}", self.table()));
                }
                crate::report::stderr(format_args!("{ok} host(s) exited 0, {failed} did not\n"));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    type Printed = Arc<Mutex<Vec<(Stream, String)>>>;

    /// An exec view for web1 and db1 whose text is captured.
    fn view(group: bool) -> (ExecView, Printed) {
        let printed: Printed = Arc::default();
        let to = printed.clone();
        let print: Print = Box::new(move |s, t| to.lock().unwrap().push((s, t.to_owned())));
        let mut v = ExecView::printing_to(group, print);
        v.event(&Event::ExecStarted {
            hosts: vec!["web1".into(), "db1".into()],
            parallel: 2,
        });
        (v, printed)
    }

    fn out(v: &mut ExecView, host: &str, stream: Stream, text: &str) {
        v.event(&Event::ExecOutput {
            host: host.into(),
            stream,
            text: text.into(),
        });
    }

    fn end(v: &mut ExecView, host: &str) {
        v.event(&Event::ExecFinished {
            host: host.into(),
            end: ExecEnd::Exited { code: 0 },
            seconds: 0.3,
        });
    }

    /// 1 MB without a newline, in 8 KiB chunks: printed as it comes, in
    /// pieces of at most LINE_MAX, each but the last marked as going on;
    /// nothing of it lost. Before, the whole line was held (and re-scanned
    /// on every chunk) until its end.
    #[test]
    fn a_long_line_without_newline_is_printed_in_bounded_pieces() {
        let (mut v, printed) = view(false);
        let chunk = "é".repeat(4096);
        for _ in 0..128 {
            out(&mut v, "web1", Stream::Stdout, &chunk);
        }
        let pieces = printed.lock().unwrap().len();
        assert!(pieces >= 15, "{pieces} pieces before the end");
        assert!(v.partial.values().all(|p| p.len() <= LINE_MAX));
        end(&mut v, "web1");
        let printed = printed.lock().unwrap();
        let mut whole = String::new();
        for (i, (s, t)) in printed.iter().enumerate() {
            assert_eq!(*s, Stream::Stdout);
            let body = t
                .strip_prefix("web1 | ")
                .unwrap()
                .strip_suffix('\n')
                .unwrap();
            let last = i + 1 == printed.len();
            let body = if last {
                body
            } else {
                body.strip_suffix(CONTINUED).expect("a piece is marked")
            };
            assert!(body.len() <= LINE_MAX);
            whole.push_str(body);
        }
        assert_eq!(whole, chunk.repeat(128));
    }

    /// `--group`: a host's 3 MB of output keeps its last 1 MiB and says
    /// how much went before it.
    #[test]
    fn group_keeps_the_tail_of_a_host_s_output() {
        let (mut v, printed) = view(true);
        let line = format!("{}\n", "x".repeat(1023));
        for _ in 0..3 * 1024 {
            out(&mut v, "web1", Stream::Stdout, &line);
        }
        out(&mut v, "web1", Stream::Stdout, "last\n");
        assert!(v.held["web1"].bytes <= GROUP_MAX);
        end(&mut v, "web1");
        let printed = printed.lock().unwrap();
        let (stream, head) = &printed[0];
        assert_eq!(*stream, Stream::Stdout);
        assert!(head.starts_with("=== web1: exit 0 (0.3 s)\n"), "{head}");
        assert!(head.contains("[2048 earlier line(s), 2095104 bytes, dropped"));
        let kept: usize = printed.iter().filter(|(_, t)| t.starts_with('x')).count();
        assert!((1000..=1024).contains(&kept), "{kept} lines kept");
        assert_eq!(printed.last().unwrap().1, "last\n");
    }

    /// `exec --group ... > out`: each host's stdout lines follow a header
    /// naming it on stdout; its stderr lines follow one on stderr. Before,
    /// the header went to stderr only and `out` had no host names.
    #[test]
    fn group_names_the_host_on_the_stream_its_lines_go_to() {
        let (mut v, printed) = view(true);
        out(&mut v, "web1", Stream::Stdout, "up 3 days\n");
        out(&mut v, "db1", Stream::Stdout, "up 9 days\n");
        out(&mut v, "db1", Stream::Stderr, "warning\n");
        end(&mut v, "web1");
        end(&mut v, "db1");
        let on = |stream: Stream| -> String {
            let printed = printed.lock().unwrap();
            (printed.iter().filter(|(s, _)| *s == stream))
                .map(|(_, t)| t.as_str())
                .collect()
        };
        assert_eq!(
            on(Stream::Stdout),
            "=== web1: exit 0 (0.3 s)\nup 3 days\n=== db1: exit 0 (0.3 s)\nup 9 days\n"
        );
        assert_eq!(
            on(Stream::Stderr),
            "=== db1: exit 0 (0.3 s), stderr:\nwarning\n"
        );
    }
}
