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
}

impl Command {
    /// A command running `program`.
    pub fn new(program: impl Into<String>) -> Self {
        Command {
            argv: vec![program.into()],
            env: Vec::new(),
            sudo: false,
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
        let mut out: Vec<String> = Vec::with_capacity(self.argv.len() + self.env.len() + 4);
        if self.sudo {
            out.extend(["sudo", "-n", "--"].map(String::from));
        }
        if !self.env.is_empty() {
            out.push("env".into());
            out.extend(self.env.iter().map(|(k, v)| format!("{k}={}", quote(v))));
        }
        out.extend(self.argv.iter().map(|w| quote(w)));
        out.join(" ")
    }
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
