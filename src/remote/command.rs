//! Typed remote command lines.
//!
//! A [`Command`] is an argv (plus environment and privilege) built from typed
//! values. It becomes shell text only in [`Command::render`], which quotes
//! every word; nothing from the inventory ever reaches a shell unquoted.

use std::fmt;

use super::quote::{join, quote};

/// One command to run on a remote machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    sudo: bool,
    /// Killed on the host after this long (`timeout(1)`, where the host has it).
    limit: Option<std::time::Duration>,
}

/// Runs `"$@"` under `timeout` for `$0` seconds (SIGTERM, then SIGKILL 5 s
/// later) where the host has coreutils' `timeout`; as it is elsewhere.
const WITHIN: &str =
    "if command -v timeout >/dev/null 2>&1; then exec timeout -k 5 \"$0\" \"$@\"; fi; exec \"$@\"";

impl Command {
    /// A command running `program`.
    pub fn new(program: impl Into<String>) -> Self {
        Command {
            argv: vec![program.into()],
            env: Vec::new(),
            sudo: false,
            limit: None,
        }
    }

    /// A fixed shell script from nixgate's own source, run by `sh -c`; the
    /// arguments given with [`Command::arg`] become its `$1`, `$2`, ... and are
    /// quoted like any other word. The script text itself must never contain
    /// inventory data: that is why it is `&'static str`.
    pub fn script(body: &'static str) -> Self {
        Command::new("sh").arg("-c").arg(body).arg("nixgate")
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.argv.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.argv.extend(args.into_iter().map(Into::into));
        self
    }

    /// Set an environment variable for the command (passed through `env`, so
    /// it works whatever the login shell and through `sudo`).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Run through `sudo -n` (never prompting) when `yes`.
    pub fn sudo(mut self, yes: bool) -> Self {
        self.sudo = yes;
        self
    }

    /// End the command on the host itself after `limit`: for commands that
    /// change state (a profile, a record) and may wait behind a lock (Nix's
    /// GC lock), so one the controller gave up on cannot finish later.
    pub fn within(mut self, limit: std::time::Duration) -> Self {
        self.limit = Some(limit);
        self
    }

    pub fn limit(&self) -> Option<std::time::Duration> {
        self.limit
    }

    /// The same command without its limit (for descriptions).
    pub fn unlimited(&self) -> Command {
        Command {
            limit: None,
            ..self.clone()
        }
    }

    pub fn program(&self) -> &str {
        &self.argv[0]
    }

    /// The full argv, program first, as it will run on the far side.
    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    pub fn env_vars(&self) -> &[(String, String)] {
        &self.env
    }

    pub fn is_sudo(&self) -> bool {
        self.sudo
    }

    /// The shell text sent over SSH: every word quoted. Environment values
    /// are quoted after their `KEY=`; keys come from nixgate's own source.
    pub fn render(&self) -> String {
        self.render_as(SudoAuth::NoPassword)
    }

    /// The shell text for a host whose sudo takes a password on stdin:
    /// `sudo -S -k -p '' --`, so sudo always asks (`-k`: a cached
    /// credential would leave the password line to the command), prompts
    /// nothing, and reads exactly one line before the command's own stdin.
    pub fn render_as(&self, auth: SudoAuth) -> String {
        let mut out: Vec<String> = Vec::with_capacity(self.argv.len() + self.env.len() + 6);
        match (self.sudo, auth) {
            (false, _) => {}
            (true, SudoAuth::NoPassword) => out.extend(["sudo", "-n", "--"].map(String::from)),
            (true, SudoAuth::PasswordOnStdin) => {
                out.extend(["sudo", "-S", "-k", "-p", "''", "--"].map(String::from))
            }
        }
        if !self.env.is_empty() {
            out.push("env".into());
            out.extend(self.env.iter().map(|(k, v)| format!("{k}={}", quote(v))));
        }
        if let Some(limit) = self.limit {
            out.extend(["sh".into(), "-c".into(), quote(WITHIN)]);
            out.push(limit.as_secs().max(1).to_string());
        }
        out.extend(self.argv.iter().map(|w| quote(w)));
        out.join(" ")
    }
}

/// The longest command line that carries its input ([`Command::render_with_input`]):
/// sshd hands the line to the login shell as one argument, and Linux takes
/// at most 128 KiB in one.
const INLINE_MAX: usize = 64 * 1024;

/// `args` in runs short enough for one command line each: every run's
/// quoted words stay within [`INLINE_MAX`], half of what Linux takes in the
/// one argument the line becomes, leaving room for the command itself. A
/// word longer than that alone is a run of its own. For commands given
/// many paths.
pub fn arg_batches<S: AsRef<str>>(args: &[S]) -> Vec<&[S]> {
    batches_by(args, |a| quote(a.as_ref()).len() + 1)
}

/// `items` in runs as [`arg_batches`] makes them, `line` the length one
/// item takes of the command line (items that are several words each).
pub fn batches_by<T>(items: &[T], line: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut runs = Vec::new();
    let (mut start, mut len) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        let l = line(item);
        if i > start && len + l > INLINE_MAX {
            runs.push(&items[start..i]);
            (start, len) = (i, 0);
        }
        len += l;
    }
    if start < items.len() {
        runs.push(&items[start..]);
    }
    runs
}

impl Command {
    /// The shell text running this command with `input` as its stdin,
    /// carried in the line itself (`printf '%s' INPUT | COMMAND`), or `None`
    /// when the input is not text without NUL bytes or the line would be
    /// over 64 KiB. Only for input that may be seen in the host's process
    /// list: never a secret.
    pub fn render_with_input(&self, input: &[u8]) -> Option<String> {
        let text = std::str::from_utf8(input).ok()?;
        if text.contains('\0') {
            return None;
        }
        let line = format!("printf '%s' {} | {}", quote(text), self.render());
        (line.len() <= INLINE_MAX).then_some(line)
    }
}

/// How `sudo` is told the user's password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SudoAuth {
    /// `sudo -n`: never asks (NOPASSWD, or root).
    NoPassword,
    /// `sudo -S`: the password is the first line of stdin.
    PasswordOnStdin,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

/// Shell text for a list of words, for messages that show a command.
pub fn render_words(words: &[String]) -> String {
    join(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arg_batches_keep_every_word_in_order_and_each_run_short() {
        let words: Vec<String> = (0..3000)
            .map(|i| format!("/nix/store/{i:0>32}-x.drv"))
            .collect();
        let runs = arg_batches(&words);
        assert!(runs.len() > 1, "{}", runs.len());
        let joined: Vec<&String> = runs.iter().flat_map(|r| r.iter()).collect();
        assert_eq!(joined, words.iter().collect::<Vec<_>>());
        for r in &runs {
            let len: usize = r.iter().map(|w| quote(w).len() + 1).sum();
            assert!(len <= INLINE_MAX, "{len}");
        }
        // Full runs: the next word would not have fit.
        for w in runs.windows(2) {
            let len: usize = w[0].iter().map(|w| quote(w).len() + 1).sum();
            assert!(len + quote(&w[1][0]).len() + 1 > INLINE_MAX);
        }
        // A word over the limit is a run of its own; no words, no runs.
        let long = ["a".repeat(INLINE_MAX + 1), "b".into()];
        assert_eq!(arg_batches(&long).len(), 2);
        assert!(arg_batches::<String>(&[]).is_empty());
    }

    #[test]
    fn a_limited_command_runs_under_timeout_on_the_host() {
        let c = Command::new("nix-env")
            .args(["-p", "/p", "--set", "/nix/store/x"])
            .within(std::time::Duration::from_secs(120))
            .sudo(true);
        let r = c.render();
        assert!(r.starts_with("sudo -n -- sh -c "), "{r}");
        assert!(r.ends_with(" 120 nix-env -p /p --set /nix/store/x"), "{r}");
        // The argv (what fakes and tests look at) is the command itself.
        assert_eq!(c.argv()[0], "nix-env");
        // Really run: a limited command that outlives its limit is ended.
        let out = std::process::Command::new("sh")
            .args([
                "-c",
                &Command::new("sleep")
                    .arg("30")
                    .within(std::time::Duration::from_secs(1))
                    .render(),
            ])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(124),
            "timeout(1)'s exit for a command it ended"
        );
    }

    #[test]
    fn input_in_the_line_reaches_stdin_byte_for_byte() {
        let input = "a 'quoted' line\n%s \\n $HOME `x` \"y\"\n-n\ttab\n\n";
        let line = Command::script("cat; echo \"|$1\"")
            .arg("arg")
            .render_with_input(input.as_bytes())
            .unwrap();
        let out = std::process::Command::new("sh")
            .args(["-c", &line])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("{input}|arg\n")
        );
        assert_eq!(out.status.code(), Some(0));
        // The command's exit is the line's.
        let line = Command::script("cat >/dev/null; exit 7")
            .render_with_input(b"x")
            .unwrap();
        let out = std::process::Command::new("sh")
            .args(["-c", &line])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(7));
    }

    #[test]
    fn input_that_cannot_ride_in_the_line_is_refused() {
        let c = Command::new("cat");
        assert!(c.render_with_input(b"a\0b").is_none());
        assert!(c.render_with_input(&[0xff, 0xfe]).is_none());
        assert!(c.render_with_input(&vec![b'x'; 70 * 1024]).is_none());
        assert!(c.render_with_input(&vec![b'x'; 60 * 1024]).is_some());
        assert!(c.render_with_input(b"").is_some());
    }

    #[test]
    fn renders_quoted_argv() {
        let c = Command::new("nix-env")
            .args(["-p", "/nix/var/nix/profiles/system", "--set"])
            .arg("/nix/store/x y");
        assert_eq!(
            c.render(),
            "nix-env -p /nix/var/nix/profiles/system --set '/nix/store/x y'"
        );
    }

    #[test]
    fn env_and_sudo() {
        let c = Command::new("switch-to-configuration")
            .arg("test")
            .env("NIXOS_NO_CHECK", "1")
            .env("X", "a b")
            .sudo(true);
        assert_eq!(
            c.render(),
            "sudo -n -- env NIXOS_NO_CHECK=1 X='a b' switch-to-configuration test"
        );
    }

    #[test]
    fn sudo_with_a_password_reads_it_from_stdin() {
        let c = Command::new("true").sudo(true);
        assert_eq!(
            c.render_as(SudoAuth::PasswordOnStdin),
            "sudo -S -k -p '' -- true"
        );
        assert_eq!(
            Command::new("true").render_as(SudoAuth::PasswordOnStdin),
            "true"
        );
    }

    #[test]
    fn script_args_are_positional() {
        let c = Command::script("readlink \"$1\"").arg("/run/current-system; reboot");
        assert_eq!(
            c.argv(),
            &[
                "sh",
                "-c",
                "readlink \"$1\"",
                "nixgate",
                "/run/current-system; reboot"
            ]
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(Command::script("printf %s \"$1\"").arg("a'b $x").render())
            .output()
            .expect("sh");
        assert_eq!(out.stdout, b"a'b $x");
    }
}
