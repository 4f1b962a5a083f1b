//! The run's sudo passwords, obtained before any host is touched: with
//! `--ask-sudo-password`, one prompt on the terminal (`/dev/tty`, echo off)
//! for every selected `sudo = true` host; otherwise each distinct
//! `sudo_password_command` of those hosts runs once (argv, no shell; its
//! stdout without the trailing newline is the password). The password is
//! a [`Secret`]: wiped when the run drops it, never in an argument, a log,
//! an event or a report. A command that fails, or is still running after
//! [`COMMAND_LIMIT`], ends the run before it starts (exit 2, like an
//! inventory error: nothing was touched), saying which command and why,
//! never what it printed on stdout.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fleet::SudoPasswords;
use crate::inventory::Inventory;
use crate::keys::Secret;
use crate::keys::source::COMMAND_LIMIT;

use super::{Fatal, Global};

/// The passwords of the selected hosts that have a way to get one.
pub fn obtain(g: &Global, inv: &Inventory, hosts: &[String]) -> anyhow::Result<SudoPasswords> {
    let sudo_hosts: Vec<&crate::inventory::Host> = hosts
        .iter()
        .filter_map(|h| inv.host(h))
        .filter(|h| h.sudo)
        .collect();
    let mut out = HashMap::new();
    if g.ask_sudo_password {
        if sudo_hosts.is_empty() {
            tracing::warn!("--ask-sudo-password: no selected host has `sudo = true`; not asking");
            return Ok(out);
        }
        let pw = Arc::new(prompt()?);
        for h in sudo_hosts {
            out.insert(h.name.clone(), pw.clone());
        }
        return Ok(out);
    }
    let mut ran: Vec<(&[String], Arc<Secret>)> = Vec::new();
    for h in sudo_hosts {
        let Some(argv) = h.sudo_password_command.as_deref() else {
            continue;
        };
        let pw = match ran.iter().find(|(a, _)| *a == argv) {
            Some((_, pw)) => pw.clone(),
            None => {
                let pw = Arc::new(run_command(argv)?);
                ran.push((argv, pw.clone()));
                pw
            }
        };
        out.insert(h.name.clone(), pw);
    }
    Ok(out)
}

/// Run `sudo_password_command`, bounded like a key's command
/// ([`COMMAND_LIMIT`]): it runs before the controller lock and before
/// Ctrl-C or SIGTERM are handled, so a cron run whose password manager
/// waits for an unlock no one will give would otherwise hang forever.
fn run_command(argv: &[String]) -> anyhow::Result<Secret> {
    run_within(argv, COMMAND_LIMIT)
}

/// [`run_command`] within `limit`. The command runs in its own process
/// group, so that when it is past its bound everything it started (a
/// shell's children holding its stdout) is killed with it.
fn run_within(argv: &[String], limit: Duration) -> anyhow::Result<Secret> {
    let program = argv.first().map(String::as_str).unwrap_or_default();
    let mut child = std::process::Command::new(program)
        .args(argv.get(1..).unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| {
            Fatal::usage(format!(
                "sudo_password_command: cannot run `{program}`: {e}"
            ))
        })?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let mut status = None;
    while status.is_none() || !stdout.is_finished() || !stderr.is_finished() {
        if status.is_none() {
            status = child
                .try_wait()
                .map_err(|e| Fatal::usage(format!("sudo_password_command `{program}`: {e}")))?;
        }
        if Instant::now() >= deadline {
            crate::process_group::kill(child.id());
            let _ = child.wait();
            return Err(Fatal::usage(format!(
                "sudo_password_command `{program}` did not finish within {}s and was stopped \
                 (with everything it started); nothing was touched. Run it by hand: a password \
                 manager that waits for an unlock or a hardware token must not need one in an \
                 unattended run (or use --ask-sudo-password on a terminal)",
                limit.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let joined = |h: std::thread::JoinHandle<Vec<u8>>| h.join().unwrap_or_default();
    // Wiped whatever happens next.
    let out = Secret::new(joined(stdout));
    let err = joined(stderr);
    let status = status.unwrap_or_else(|| unreachable!("the loop ends with a status"));
    if !status.success() {
        let err = String::from_utf8_lossy(&err);
        return Err(Fatal::usage(format!(
            "sudo_password_command `{program}` failed ({status}): {}",
            err.trim()
        )));
    }
    Ok(first_line(&out))
}

/// Read a pipe to its end on a thread of its own (a full pipe would
/// otherwise stop the command before it exits).
fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// The password is the first line (`pass show` prints more lines after it).
fn first_line(s: &Secret) -> Secret {
    let bytes = s.expose();
    let end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len());
    let line = &bytes[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Secret::new(line.to_vec())
}

/// Puts the terminal back as it was, however the prompt ends.
struct Restore<'a> {
    tty: &'a std::fs::File,
    saved: rustix::termios::Termios,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            self.tty,
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

/// Ask on the terminal, echo off. Ctrl-C (signals are off while asking,
/// so the terminal is always restored) or Ctrl-D ends the run: nothing
/// was touched.
fn prompt() -> anyhow::Result<Secret> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let no_tty = |e: &dyn std::fmt::Display| {
        Fatal::usage(format!(
            "--ask-sudo-password needs a terminal to ask on (/dev/tty: {e}); for unattended runs set `sudo_password_command` in the inventory"
        ))
    };
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|e| no_tty(&e))?;
    let saved = tcgetattr(&tty).map_err(|e| no_tty(&e))?;
    let mut quiet = saved.clone();
    quiet
        .local_modes
        .remove(LocalModes::ECHO | LocalModes::ISIG);
    quiet.local_modes.insert(LocalModes::ECHONL);
    tcsetattr(&tty, OptionalActions::Flush, &quiet).map_err(|e| no_tty(&e))?;
    let reader = tty.try_clone()?;
    let _restore = Restore {
        tty: &reader,
        saved,
    };
    tty.write_all(b"sudo password for the selected hosts: ")?;
    tty.flush()?;
    // Wiped on every way out; large enough that a password never makes it
    // grow (which would leave a copy behind).
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(1024));
    let mut byte = [0u8; 1];
    loop {
        let n = (&reader).read(&mut byte)?;
        match (n, byte[0]) {
            (0, _) | (_, 0x04) if buf.is_empty() => {
                return Err(Fatal::declined(
                    "no sudo password given: nothing was touched",
                ));
            }
            (0, _) | (_, b'\n') | (_, b'\r') | (_, 0x04) => break,
            (_, 0x03) => {
                let _ = tty.write_all(b"\n");
                return Err(Fatal::declined(
                    "interrupted at the sudo password prompt: nothing was touched",
                ));
            }
            (_, b) => buf.push(b),
        }
    }
    Ok(Secret::new(std::mem::take(&mut *buf)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_the_first_line() {
        let s = Secret::new(b"pw\nuser: x\n".to_vec());
        assert_eq!(first_line(&s).expose(), b"pw");
        assert_eq!(first_line(&Secret::new(b"pw\r\n".to_vec())).expose(), b"pw");
        let out = run_command(&["printf".into(), "s3cr3t\\nmore".into()]).unwrap();
        assert_eq!(out.expose(), b"s3cr3t");
        let e = run_command(&[
            "sh".into(),
            "-c".into(),
            "echo leaked; echo locked >&2; exit 2".into(),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("locked") && !e.contains("leaked"), "{e}");
    }

    /// A password command that never ends is stopped at its bound, with
    /// what it started, instead of hanging the run (cron: forever).
    #[test]
    fn a_hanging_command_is_stopped_at_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child");
        let script = format!("sleep 1000 & echo $! > '{}'; wait", pidfile.display());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = run_within(
                &["sh".into(), "-c".into(), script],
                Duration::from_millis(300),
            );
            let _ = tx.send(r.map(|_| ()).map_err(|e| {
                let outcome = e.downcast_ref::<Fatal>().map(|f| f.outcome);
                (outcome, e.to_string())
            }));
        });
        let ended = rx.recv_timeout(Duration::from_secs(20));
        let (outcome, msg) = ended.expect("the command hung the run").unwrap_err();
        assert_eq!(outcome, Some(super::super::Outcome::Usage));
        assert!(msg.contains("did not finish within"), "{msg}");
        let child: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Killed with its group: gone, or a zombie its new parent has not
        // reaped yet.
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let state = stat.rsplit(')').next().unwrap_or_default().trim_start();
            stat.is_empty() || state.starts_with('Z')
        });
        assert!(gone, "the command's child {child} was left running");
    }
}
