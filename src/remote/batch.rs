//! Several quick commands in one round trip.
//!
//! At a distance a host's quick reads are bound by round trips, not work:
//! after the copy, a push realised the closure, listed earlier runs' units
//! and read three links, three commands with nothing for the controller to
//! decide in between when no earlier run left anything (3 round trips,
//! about 200 ms at 50 ms). [`prefetch`] sends such commands together, in
//! one exec ([`Remote::exec_batch`]) that runs them one after another and
//! frames each one's exit code, stdout and stderr apart; the code that
//! wants their answers then runs unchanged against [`Prefetched`], which
//! answers each command from the batch when it is the next one expected.
//!
//! Anything else run through [`Prefetched`] (a revert an earlier run left
//! armed, a signature check) may change what the later answers read, so it
//! drops them all: those commands run again, on the host, after it. So a
//! prefetched answer is only ever used where running the command at that
//! moment would have given the same answer. Only commands that change
//! nothing, or change it the same whenever they run (realising a closure
//! that is already there), belong in a batch.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::{Command, Exit, Output, Remote, Streaming, unpoisoned};

/// Runs each argument as a shell command, stdin empty, one after another,
/// and prints for each `@nixgate-batch EXIT OUT_BYTES ERR_BYTES`, then its
/// stdout and stderr. Without a temporary directory it prints nothing, and
/// every command runs on its own after all. Per command the host starts the
/// command's shell, one `wc` in one subshell, and `cat` only when there is
/// output (was six processes: two `wc`s in two subshells and `cat` always).
pub(crate) const RUN_BATCH: &str = r#"t=$(mktemp -d 2>/dev/null) || exit 0
trap 'rm -rf "$t"' EXIT
for c; do
  sh -c "$c" </dev/null >"$t/o" 2>"$t/e"
  rc=$?
  set -- $(cd "$t" && wc -c o e)
  printf '@nixgate-batch %s %s %s\n' "$rc" "$1" "$3"
  [ "$1$3" = 00 ] || cat "$t/o" "$t/e"
done"#;

/// [`Remote::exec_batch`] for remotes that run shell text: one exec of
/// [`RUN_BATCH`] with each command rendered.
pub(crate) async fn run_framed<R: Remote>(remote: &R, cmds: &[Command]) -> Vec<Output> {
    let batch = Command::script(RUN_BATCH).args(cmds.iter().map(Command::render));
    match remote.exec(&batch).await {
        Ok(out) => parse_frames(&out.stdout),
        Err(_) => Vec::new(),
    }
}

/// The outputs framed in `stdout`, in order; a frame cut short (a lost
/// connection) and everything after it are left out.
pub(crate) fn parse_frames(stdout: &[u8]) -> Vec<Output> {
    let mut outs = Vec::new();
    let mut rest = stdout;
    while let Some((out, after)) = one_frame(rest) {
        outs.push(out);
        rest = after;
    }
    outs
}

fn one_frame(b: &[u8]) -> Option<(Output, &[u8])> {
    let nl = b.iter().position(|&c| c == b'\n')?;
    let header = std::str::from_utf8(&b[..nl]).ok()?;
    let mut w = header.strip_prefix("@nixgate-batch ")?.split_whitespace();
    let code: u32 = w.next()?.parse().ok()?;
    let out_len: usize = w.next()?.parse().ok()?;
    let err_len: usize = w.next()?.parse().ok()?;
    let body = &b[nl + 1..];
    let end = out_len.checked_add(err_len)?;
    if body.len() < end {
        return None;
    }
    let out = Output::new(
        Exit::Code { code },
        body[..out_len].to_vec(),
        body[out_len..end].to_vec(),
    );
    Some((out, &body[end..]))
}

/// A remote whose next commands were answered ahead ([`prefetch`]).
pub struct Prefetched<'a, R> {
    inner: &'a R,
    ready: Mutex<VecDeque<(Command, Output)>>,
}

/// Run `cmds` on `remote` in one round trip where it can
/// ([`Remote::exec_batch`]); the code that needs them then runs against
/// the returned [`Prefetched`]. A batch that could not run leaves every
/// command to run on its own, as before.
pub async fn prefetch<R: Remote>(remote: &R, cmds: Vec<Command>) -> Prefetched<'_, R> {
    let outs = if cmds.len() > 1 {
        remote.exec_batch(&cmds).await
    } else {
        Vec::new()
    };
    let ready = cmds.into_iter().zip(outs).collect();
    Prefetched {
        inner: remote,
        ready: Mutex::new(ready),
    }
}

impl<R: Remote> Prefetched<'_, R> {
    /// The prefetched answer to `cmd` if it is the next one; anything else
    /// drops every answer left (it may change what they read).
    fn take(&self, cmd: &Command) -> Option<Output> {
        let mut ready = unpoisoned(&self.ready);
        if ready.front().is_some_and(|(c, _)| c == cmd) {
            return ready.pop_front().map(|(_, out)| out);
        }
        ready.clear();
        None
    }

    fn forget(&self) {
        unpoisoned(&self.ready).clear();
    }
}

impl<R: Remote> Remote for Prefetched<'_, R> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn exec(&self, cmd: &Command) -> anyhow::Result<Output> {
        match self.take(cmd) {
            Some(out) => Ok(out),
            None => self.inner.exec(cmd).await,
        }
    }

    async fn exec_stream(&self, cmd: &Command) -> anyhow::Result<Streaming> {
        self.forget();
        self.inner.exec_stream(cmd).await
    }

    async fn exec_piped(&self, cmd: &Command) -> anyhow::Result<Streaming> {
        self.forget();
        self.inner.exec_piped(cmd).await
    }

    async fn exec_small_input(&self, cmd: &Command, input: &[u8]) -> anyhow::Result<Output> {
        self.forget();
        self.inner.exec_small_input(cmd, input).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::local::LocalRemote;
    use crate::remote::scripted::{ScriptedRemote, ok};

    #[test]
    fn frames_keep_exit_stdout_and_stderr_apart() {
        let raw =
            b"@nixgate-batch 0 4 0\nabc\n@nixgate-batch 3 0 5\nerr!\n@nixgate-batch 0 2 2\n\n\nx\n";
        let outs = parse_frames(raw);
        assert_eq!(outs.len(), 3);
        assert_eq!(outs[0].stdout, b"abc\n");
        assert_eq!(outs[1].exit, Exit::Code { code: 3 });
        assert_eq!(outs[1].stderr, b"err!\n");
        assert_eq!(
            (&outs[2].stdout[..], &outs[2].stderr[..]),
            (&b"\n\n"[..], &b"x\n"[..])
        );
        // Cut short: only the whole frames count.
        assert_eq!(parse_frames(&raw[..30]).len(), 1);
        assert!(parse_frames(b"garbage\n").is_empty());
    }

    #[tokio::test]
    async fn a_real_shell_runs_the_batch_in_order() {
        let local = LocalRemote::new("local");
        let cmds = vec![
            Command::script("printf 'a b\\n'; echo oops >&2; exit 2"),
            Command::new("cat"),
            Command::script("printf '%s' \"$1\"").arg("it's \"quoted\"\n\n"),
        ];
        // Every command framed by the one script (a batch that printed no
        // frames would still pass below: each command would run alone).
        let framed = run_framed(&local, &cmds).await;
        assert_eq!(framed.len(), 3);
        assert_eq!(framed[1].stdout, b"");
        let p = prefetch(&local, cmds.clone()).await;
        let first = p.exec(&cmds[0]).await.unwrap();
        assert_eq!(first.exit, Exit::Code { code: 2 });
        assert_eq!(
            (first.stdout_str(), first.stderr_str()),
            ("a b\n".into(), "oops\n".into())
        );
        // Stdin is empty, like exec's.
        assert_eq!(p.exec(&cmds[1]).await.unwrap().stdout, b"");
        assert_eq!(
            p.exec(&cmds[2]).await.unwrap().stdout_str(),
            "it's \"quoted\"\n\n"
        );
    }

    #[tokio::test]
    async fn anything_else_run_in_between_drops_what_is_left() {
        let r = ScriptedRemote::new("web1", |_| ok("fresh\n"));
        let (a, b, c) = (Command::new("a"), Command::new("b"), Command::new("c"));
        let p = Prefetched {
            inner: &r,
            ready: Mutex::new(VecDeque::from([
                (a.clone(), ok("early a\n")),
                (b.clone(), ok("early b\n")),
            ])),
        };
        assert_eq!(p.exec(&a).await.unwrap().stdout_str(), "early a\n");
        // `c` acts on the host: `b` runs again after it.
        assert_eq!(p.exec(&c).await.unwrap().stdout_str(), "fresh\n");
        assert_eq!(p.exec(&b).await.unwrap().stdout_str(), "fresh\n");
        assert_eq!(r.argvs(), vec![vec!["c"], vec!["b"]]);
    }
}
