//! The run's sudo passwords, obtained before any host is touched: with
//! `--ask-sudo-password`, one prompt on the terminal (`/dev/tty`, echo off)
//! for every selected `sudo = true` host; otherwise each distinct
//! `sudo_password_command` of those hosts runs once (argv, no shell; its
//! stdout without the trailing newline is the password). The password is
//! a [`Secret`]: wiped when the run drops it, never in an argument, a log,
//! an event or a report. A command that fails ends the run before it
//! starts (exit 2), saying which command and why, never what it printed
//! on stdout.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;

use crate::fleet::SudoPasswords;
use crate::inventory::Inventory;
use crate::keys::Secret;

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

/// Run `sudo_password_command`.
fn run_command(argv: &[String]) -> anyhow::Result<Secret> {
    let program = argv.first().map(String::as_str).unwrap_or_default();
    let out = std::process::Command::new(program)
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|e| {
            Fatal::usage(format!(
                "sudo_password_command: cannot run `{program}`: {e}"
            ))
        })?;
    let stdout = Secret::new(out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(Fatal::usage(format!(
            "sudo_password_command `{program}` failed ({}): {}",
            out.status,
            err.trim()
        )));
    }
    Ok(first_line(&stdout))
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
}
