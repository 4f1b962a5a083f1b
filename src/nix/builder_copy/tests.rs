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

fn wrote(bytes: u64, paths: u64) -> Told {
    Told {
        wrote: Some(bytes),
        paths,
    }
}

#[test]
fn the_wrapper_lines() {
    assert_eq!(told("wrote 123 4\n"), Some(wrote(123, 4)));
    assert_eq!(told("wrote 123"), Some(wrote(123, 0)));
    let unknown = Told {
        wrote: None,
        paths: 2,
    };
    assert_eq!(told("wrote - 2"), Some(unknown));
    assert_eq!(told("wrote "), None);
    assert_eq!(told("wrote 1 x"), None);
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

/// What a watch reported, in order: (bytes, paths, idle seconds).
type Said = std::sync::Arc<std::sync::Mutex<Vec<(u64, u64, u64)>>>;

/// Watch `s` as the copy of 40 paths to light1, recording its progress.
async fn watched(s: Streaming) -> (anyhow::Result<Output>, Vec<(u64, u64, u64)>) {
    let said = Said::default();
    let keep = said.clone();
    let progress = move |p: CopyProgress| {
        assert_eq!(p.total_paths, 40);
        keep.lock().unwrap().push((p.bytes, p.paths, p.idle_secs));
    };
    let watching = Watching {
        host: "light1",
        stall: STALL,
        tick: TICK,
        total_paths: 40,
        progress: &progress,
    };
    let out = watching.watch(s).await;
    let said = said.lock().unwrap().clone();
    (out, said)
}

#[tokio::test(start_paused = true)]
async fn a_copy_that_moves_runs_to_its_end_however_long() {
    let (s, mut b) = far_stream();
    let builder = tokio::spawn(async move {
        // 100 s in all, far beyond the limit, but never 40 s standing.
        for (i, n) in [0, 0, 0, 10, 20, 20, 20, 30, 40, 50].iter().enumerate() {
            b.say(&format!("wrote {n} {i}")).await;
        }
        drop(b.output);
        b.exit.send(ok("")).unwrap();
    });
    let (out, said) = watched(s).await;
    assert!(out.unwrap().success());
    builder.await.unwrap();
    // Every count is a progress, standing still for as long as it stood.
    let idle: Vec<u64> = said.iter().map(|s| s.2).collect();
    assert_eq!(idle, [0, 10, 20, 0, 0, 10, 20, 0, 0, 0], "{said:?}");
    assert_eq!(said[9], (50, 9, 0));
}

#[tokio::test(start_paused = true)]
async fn a_copy_standing_still_is_stopped_at_the_hosts_limit() {
    let (s, mut b) = far_stream();
    let started = tokio::time::Instant::now();
    let builder = tokio::spawn(async move {
        let mut n = 5;
        while !b.say_until_stopped(&format!("wrote {n} 41")).await {
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
    let (out, said) = watched(s).await;
    let took = started.elapsed();
    builder.await.unwrap();
    let e = format!("{:#}", out.unwrap_err());
    // Named every tick it stood still; never more paths than it lacked.
    let want: Vec<(u64, u64, u64)> = [
        (5, 0),
        (4096, 0),
        (4096, 10),
        (4096, 20),
        (4096, 30),
        (4096, 40),
    ]
    .into_iter()
    .map(|(b, i)| (b, 40, i))
    .collect();
    assert_eq!(said, want);
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
    let (out, said) = watched(s).await;
    assert_eq!(started.elapsed(), STALL + TICK);
    assert_eq!(said, []);
    let e = format!("{:#}", out.unwrap_err());
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
        for i in 0..12 {
            b.say(&format!("wrote - {i}")).await;
        }
        drop(b.output);
        b.exit.send(ok("")).unwrap();
    });
    let (out, said) = watched(s).await;
    assert!(out.unwrap().success());
    builder.await.unwrap();
    // Paths only, never idle.
    assert_eq!(said.len(), 12);
    assert_eq!(said[11], (0, 11, 0));
    assert!(said.iter().all(|s| s.2 == 0), "{said:?}");
}

/// The wrapper itself, by `sh` here: the count it tells follows what the
/// command wrote, the paths it started are counted from what it says, the
/// command's exit is the wrapper's, and its output (stdout too) goes to
/// stderr, whole, not among the counts; its temporary file goes.
#[tokio::test]
async fn the_wrapper_tells_what_its_command_wrote_and_ends_with_it() {
    let path = "copying path '/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-a' to 'ssh://h'...";
    let script = format!(
        "printf '%2941s\\n' '' >&2; echo \"{path}\" >&2; sleep 1.5; \
         echo \"{path}\" >&2; printf '%2000s' ''; sleep 1.5; exit 3"
    );
    let tmp = tempfile::tempdir().unwrap();
    let cmd = Command::new("sh")
        .env("TMPDIR", tmp.path().to_str().unwrap())
        .args(["-c", &script]);
    let (out, said) = run_wrapped(&cmd, Duration::from_secs(1)).await;
    assert_eq!(out.exit, Exit::Code { code: 3 }, "{said}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches(path).count(), 2, "{stderr}");
    let counts: Vec<Told> = said.lines().filter_map(told).collect();
    assert_eq!(counts.len(), said.lines().count(), "{said}");
    let first = 2942 + path.len() as u64 + 1;
    assert!(counts.contains(&wrote(first, 1)), "{said}");
    let second = first + path.len() as u64 + 1 + 2000;
    assert!(counts.contains(&wrote(second, 2)), "{said}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
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
