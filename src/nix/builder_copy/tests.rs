//! The watch over pipes in paused time, and the builder-side wrapper run for
//! real by `sh` on this machine (Linux: `/proc/PID/io` counts its writes).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::nix::fanout_stall_tests::{Far, far_stream};
use crate::remote::Exit;
use crate::remote::local::LocalRemote;
use crate::remote::scripted::ok;

const STALL: Duration = Duration::from_secs(40);
const TICK: Duration = Duration::from_secs(10);

/// The builder's side of a watched copy, played by the test: `input` is
/// what nixgate's stdin sends, `output` where the wrapper's lines go.
impl Far {
    async fn tell(&mut self, line: &str) {
        self.output
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
    }

    /// Say `line`, then wait a tick.
    async fn say(&mut self, line: &str) {
        self.tell(line).await;
        tokio::time::sleep(TICK).await;
    }

    /// Say `line`, then wait a tick or until nixgate closes the wrapper's
    /// stdin (its cue to stop the copy): `true` when it did.
    async fn say_until_stopped(&mut self, line: &str) -> bool {
        self.tell(line).await;
        tokio::select! {
            () = tokio::time::sleep(TICK) => false,
            stopped = self.told_to_stop() => stopped,
        }
    }

    /// Did nixgate close the wrapper's stdin (its cue to stop the copy)?
    async fn told_to_stop(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.input.read(&mut b).await, Ok(0))
    }
}

#[test]
fn the_wrapper_lines() {
    assert_eq!(told("wrote 123\n"), Some(Told::Wrote(123)));
    assert_eq!(told("wrote -"), Some(Told::Unknown));
    assert_eq!(told("wrote "), None);
    assert_eq!(told("copying path"), None);
    assert_eq!(tick_for(Duration::from_secs(300)), TICK);
    assert_eq!(tick_for(Duration::from_secs(12)), Duration::from_secs(3));
    assert_eq!(tick_for(Duration::from_secs(2)), Duration::from_secs(1));
}

#[test]
fn the_copy_runs_under_the_wrapper_with_its_ssh_options() {
    let t = StorePath::parse("/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-a").unwrap();
    let copy = copy_closure_command("root@10.0.0.1", 2222, Duration::from_secs(10), &t);
    assert_eq!(
        copy.render(),
        format!(
            "env NIX_SSHOPTS='-p 2222 -o ConnectTimeout=10 -o ServerAliveInterval=15 \
             -o ServerAliveCountMax=3 -o BatchMode=yes' nix-copy-closure --to root@10.0.0.1 {t}"
        )
    );
    let w = watched_command(&copy, Duration::from_secs(3));
    assert_eq!(w.env_vars(), copy.env_vars());
    assert_eq!(&w.argv()[..2], ["sh", "-c"]);
    assert_eq!(&w.argv()[3..5], ["nixgate", "3"]);
    assert_eq!(&w.argv()[5..], copy.argv());
}

#[tokio::test(start_paused = true)]
async fn a_copy_that_moves_runs_to_its_end_however_long() {
    let (s, mut b) = far_stream();
    let builder = tokio::spawn(async move {
        // 100 s in all, far beyond the limit, but never 40 s standing.
        for n in [0, 0, 0, 10, 20, 20, 20, 30, 40, 50] {
            b.say(&format!("wrote {n}")).await;
        }
        drop(b.output);
        b.exit.send(ok("")).unwrap();
    });
    let out = watch(s, "light1", STALL, TICK).await.unwrap();
    assert!(out.success());
    builder.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_copy_standing_still_is_stopped_at_the_hosts_limit() {
    let (s, mut b) = far_stream();
    let started = tokio::time::Instant::now();
    let builder = tokio::spawn(async move {
        let mut n = 5;
        while !b.say_until_stopped(&format!("wrote {n}")).await {
            n = 4096;
        }
        let killed = Output::new(
            Exit::Signal {
                signal: "TERM".into(),
            },
            Vec::new(),
            Vec::new(),
        );
        let _ = b.exit.send(killed);
    });
    let e = watch(s, "light1", STALL, TICK).await.unwrap_err();
    let took = started.elapsed();
    builder.await.unwrap();
    let e = format!("{e:#}");
    assert!(
        e.contains("light1 took no bytes from the builder for 40 s")
            && e.contains("copy_stall_timeout")
            && e.contains(
                "its nix-store --serve --write is stuck (a lock another Nix process holds, \
                 a garbage collection, a disk that stopped answering: `ps -ef | grep nix` \
                 there tells); the builder's nix-copy-closure was stopped"
            ),
        "{e}"
    );
    // 4096 was first told at 10 s: standing since, for 40 s.
    assert_eq!(took, Duration::from_secs(50), "{e}");
}

#[tokio::test(start_paused = true)]
async fn a_silent_builder_is_stopped_after_the_limit_and_a_tick() {
    let (s, mut b) = far_stream();
    let started = tokio::time::Instant::now();
    let builder = tokio::spawn(async move {
        assert!(b.told_to_stop().await);
        drop(b.exit);
    });
    let e = watch(s, "light1", STALL, TICK).await.unwrap_err();
    assert_eq!(started.elapsed(), STALL + TICK);
    let e = format!("{e:#}");
    assert!(
        e.contains("the builder said nothing for 40 s while copying to light1"),
        "{e}"
    );
    builder.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_builder_that_cannot_count_keeps_no_bound() {
    let (s, mut b) = far_stream();
    let builder = tokio::spawn(async move {
        for _ in 0..12 {
            b.say("wrote -").await;
        }
        drop(b.output);
        b.exit.send(ok("")).unwrap();
    });
    assert!(watch(s, "light1", STALL, TICK).await.unwrap().success());
    builder.await.unwrap();
}

/// The wrapper itself, by `sh` here: the count it tells follows what the
/// command wrote, the command's exit is the wrapper's, and its output
/// (stdout too) goes to stderr, not among the counts.
#[tokio::test]
async fn the_wrapper_tells_what_its_command_wrote_and_ends_with_it() {
    let cmd = Command::new("sh").args([
        "-c",
        "printf '%3000s' ''; sleep 1.5; printf '%2000s' ''; sleep 1.5; exit 3",
    ]);
    let (out, said) = run_wrapped(&cmd, Duration::from_secs(1)).await;
    assert_eq!(out.exit, Exit::Code { code: 3 }, "{said}");
    assert_eq!(out.stderr.len(), 5000, "{said}");
    let counts: Vec<Told> = said.lines().filter_map(told).collect();
    assert_eq!(counts.len(), said.lines().count(), "{said}");
    assert!(counts.contains(&Told::Wrote(3000)), "{said}");
    assert!(counts.contains(&Told::Wrote(5000)), "{said}");
}

/// The ticker is killed when the command ends, but its `sleep` lives on
/// for up to a tick: holding the output, it held every copy's end that
/// long (here 60 s).
#[tokio::test]
async fn the_wrappers_last_tick_does_not_hold_its_end() {
    let started = std::time::Instant::now();
    let (out, said) = run_wrapped(&Command::new("sleep").arg("0.5"), Duration::from_secs(60)).await;
    assert!(out.success(), "{said}");
    assert_eq!(said, "");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

/// Run `cmd` under the wrapper here; its exit and the lines it told.
async fn run_wrapped(cmd: &Command, tick: Duration) -> (Output, String) {
    let s = LocalRemote::new("builder")
        .exec_piped(&watched_command(cmd, tick))
        .await
        .unwrap();
    let Streaming { stdout, finish, .. } = s;
    let mut said = String::new();
    tokio::io::BufReader::new(stdout)
        .read_to_string(&mut said)
        .await
        .unwrap();
    (finish.await.unwrap(), said)
}

/// Closing the wrapper's stdin stops its command (a stopped copy, a push
/// cancelled): a real `sh`, not the far side played.
#[tokio::test]
async fn closing_the_wrappers_stdin_stops_its_command() {
    let local = LocalRemote::new("builder");
    let cmd = Command::new("sleep").arg("60");
    let mut s = local
        .exec_piped(&watched_command(&cmd, Duration::from_secs(1)))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.stdin.shutdown().await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), s.finish)
        .await
        .expect("the wrapper ended")
        .unwrap();
    assert_ne!(out.exit, Exit::Code { code: 0 });
    assert!(started.elapsed() < Duration::from_secs(5));
}
