//! `nixgate exec` for people: each host's output as it arrives, line by
//! line, prefixed with the host name (its stdout on nixgate's stdout, its
//! stderr on nixgate's stderr, so `nixgate exec ... > out` keeps only what
//! the hosts printed), or with `--group` each host's output whole when it
//! ends; then a table of every host's exit and duration on stderr.

use std::collections::HashMap;

use super::strip_controls;
use crate::exec::{ExecEnd, Stream};
use crate::report::{Event, Reporter, Table};
use crate::runner::RunnerEvent;

/// The exec reporter.
pub struct ExecView {
    group: bool,
    width: usize,
    hosts: Vec<String>,
    /// A line not yet ended, per host and stream.
    partial: HashMap<(String, Stream), String>,
    /// `--group`: each host's lines until it ends.
    held: HashMap<String, Vec<(Stream, String)>>,
    ends: HashMap<String, (String, String)>,
}

impl ExecView {
    pub fn new(group: bool) -> ExecView {
        ExecView {
            group,
            width: 0,
            hosts: Vec::new(),
            partial: HashMap::new(),
            held: HashMap::new(),
            ends: HashMap::new(),
        }
    }

    fn output(&mut self, host: &str, stream: Stream, text: &str) {
        let key = (host.to_owned(), stream);
        let mut buf = self.partial.remove(&key).unwrap_or_default();
        buf.push_str(text);
        while let Some(n) = buf.find('\n') {
            let line: String = buf.drain(..=n).collect();
            self.line(host, stream, line.trim_end_matches(['\n', '\r']));
        }
        if !buf.is_empty() {
            self.partial.insert(key, buf);
        }
    }

    fn line(&mut self, host: &str, stream: Stream, line: &str) {
        let line = strip_controls(line);
        if self.group {
            self.held
                .entry(host.to_owned())
                .or_default()
                .push((stream, line));
        } else {
            print_line(&format!("{host:w$} | ", w = self.width), stream, &line);
        }
    }

    fn finished(&mut self, host: &str, end: &ExecEnd, seconds: f64) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            if let Some(rest) = self.partial.remove(&(host.to_owned(), stream)) {
                self.line(host, stream, &rest);
            }
        }
        let status = end_words(end);
        if self.group {
            crate::report::stderr(format_args!("=== {host}: {status} ({seconds:.1} s)\n"));
            for (stream, line) in self.held.remove(host).unwrap_or_default() {
                print_line("", stream, &line);
            }
        } else if !end.ok() {
            crate::report::stderr(format_args!("{host:w$} : {status}\n", w = self.width));
        }
        self.ends
            .insert(host.to_owned(), (status, format!("{seconds:.1} s")));
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

fn print_line(prefix: &str, stream: Stream, line: &str) {
    match stream {
        Stream::Stdout => crate::report::stdout(format_args!("{prefix}{line}\n")),
        Stream::Stderr => crate::report::stderr(format_args!("{prefix}{line}\n")),
    }
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
