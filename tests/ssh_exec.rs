//! Commands on an open SSH session: outputs and exits, concurrency under
//! the channel cap, lost connections and transparent reconnects; prints
//! connect and round-trip timings.

mod support;

use std::time::{Duration, Instant};

use nixgate::remote::{Command, Exit, Remote};
use nixgate::ssh::SshSession;
use support::sshd::{Sshd, keygen};

async fn session(sshd: &Sshd) -> SshSession {
    let key = keygen(sshd.dir.path(), "id", "ed25519", "");
    sshd.authorize(&key);
    SshSession::connect(sshd.target(&key)).await.unwrap()
}

#[tokio::test]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
async fn stdout_stderr_and_exit_code() {
    let sshd = Sshd::start();
    let s = session(&sshd).await;
    let cmd = Command::script("printf '%s\\n' \"$1\"; echo oops >&2; exit 3")
        .arg("it's a \"quoted\" $arg");
    let out = s.exec(&cmd).await.unwrap();
    assert_eq!(out.stdout_str(), "it's a \"quoted\" $arg\n");
    assert_eq!(out.stderr_str(), "oops\n");
    assert_eq!(out.exit, Exit::Code { code: 3 });
    // stdin is closed: a command reading it ends.
    let out = s.exec(&Command::new("cat")).await.unwrap();
    assert_eq!(out.exit, Exit::Code { code: 0 });
    assert!(out.stdout.is_empty());
    let out = s.exec(&Command::new("true").env("A", "b")).await.unwrap();
    assert!(out.success());
}

#[tokio::test]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
async fn killed_by_signal() {
    let sshd = Sshd::start();
    let s = session(&sshd).await;
    let out = s.exec(&Command::script("kill -KILL $$")).await.unwrap();
    assert_eq!(
        out.exit,
        Exit::Signal {
            signal: "KILL".into()
        }
    );
    let out = s.exec(&Command::script("kill -TERM $$")).await.unwrap();
    assert_eq!(
        out.exit,
        Exit::Signal {
            signal: "TERM".into()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
async fn twenty_concurrent_execs_on_one_session() {
    // MaxSessions 10 on the server: without the cap, 20 at once would fail.
    let sshd = Sshd::start_with("MaxSessions 10");
    let s = session(&sshd).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20u32 {
        let s = s.clone();
        tasks.spawn(async move {
            let out = s
                .exec(&Command::script("sleep 0.3; echo \"$1\"").arg(i.to_string()))
                .await
                .unwrap();
            assert!(out.success(), "{out:?}");
            assert_eq!(out.stdout_str().trim(), i.to_string());
        });
    }
    let start = Instant::now();
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    // 20 x 0.3 s under a cap of 8: at least 3 waves.
    assert!(
        start.elapsed() >= Duration::from_millis(850),
        "{:?}",
        start.elapsed()
    );
    let log = sshd.log();
    assert_eq!(
        log.matches("Accepted publickey").count(),
        1,
        "one connection for all: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
async fn lost_connection_then_transparent_reconnect() {
    let mut sshd = Sshd::start();
    let s = session(&sshd).await;
    // What rides the connection (the host lock) watches it.
    let watch = s
        .connection_watch()
        .await
        .expect("a watch of its connection");
    assert!(watch.stands());
    let running = {
        let s = s.clone();
        tokio::spawn(async move { s.exec(&Command::new("sleep").arg("30")).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    sshd.kill();
    let out = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the lost connection must be noticed")
        .unwrap();
    match out {
        Ok(o) => assert_eq!(o.exit, Exit::ConnectionLost),
        Err(e) => panic!("the command had started, expected ConnectionLost: {e:#}"),
    }
    // While the host is down: an error, not a hang.
    let err = s.exec(&Command::new("true")).await.unwrap_err();
    assert!(format!("{err:#}").contains("reconnecting"), "{err:#}");
    assert!(!watch.stands(), "the connection it watched is gone");
    sshd.restart();
    let out = s.exec(&Command::new("echo").arg("back")).await.unwrap();
    assert_eq!(out.stdout_str(), "back\n");
    // Replaced: the old watch never stands again; a new one does.
    assert!(!watch.stands());
    assert!(s.connection_watch().await.unwrap().stands());
    // One login before the kill, exactly one more after the restart.
    assert_eq!(sshd.log().matches("Accepted publickey").count(), 2);
}

#[tokio::test]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
async fn timings() {
    let sshd = Sshd::start();
    let key = keygen(sshd.dir.path(), "id", "ed25519", "");
    sshd.authorize(&key);
    let mut connects = Vec::new();
    let mut s = None;
    for _ in 0..5 {
        let start = Instant::now();
        let sess = SshSession::connect(sshd.target(&key)).await.unwrap();
        connects.push(start.elapsed());
        if let Some(old) = s.replace(sess) {
            SshSession::close(&old).await;
        }
    }
    let s = s.unwrap();
    let mut rtts = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        let out = s.exec(&Command::new("true")).await.unwrap();
        rtts.push(start.elapsed());
        assert!(out.success());
    }
    connects.sort();
    rtts.sort();
    println!(
        "TIMING connect+auth median {:.1} ms (min {:.1}); exec round trip median {:.2} ms (min {:.2})",
        connects[2].as_secs_f64() * 1e3,
        connects[0].as_secs_f64() * 1e3,
        rtts[10].as_secs_f64() * 1e3,
        rtts[0].as_secs_f64() * 1e3
    );
    assert!(connects[2] < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
async fn frozen_host_is_noticed_by_keepalive() {
    // SIGSTOP every sshd process: TCP stays open but nothing answers, as
    // with a host that hung or vanished from the network.
    let sshd = Sshd::start();
    let key = keygen(sshd.dir.path(), "id", "ed25519", "");
    sshd.authorize(&key);
    let mut t = sshd.target(&key);
    t.keepalive_interval = Duration::from_millis(500);
    let s = SshSession::connect(t).await.unwrap();
    let running = {
        let s = s.clone();
        tokio::spawn(async move { s.exec(&Command::new("sleep").arg("60")).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    sshd.freeze();
    let start = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .expect("keepalive must notice the frozen host")
        .unwrap()
        .unwrap();
    assert_eq!(out.exit, Exit::ConnectionLost);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    sshd.thaw();
}

/// A stream stopped (`Stop::now`) ends its command's output at once, on
/// a connection of its own (`exec_stream`, the builder's relay stream) and
/// on a channel of the shared one (`exec_piped`, which keeps working):
/// what the command still sends is not drained to its end. Before, a
/// relay's builder sent the rest of a closure (GBs) to nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
async fn a_stopped_stream_ends_its_command() {
    use tokio::io::AsyncReadExt;
    let sshd = Sshd::start();
    let s = session(&sshd).await;
    let dir = tempfile::tempdir().unwrap();
    for (i, piped) in [false, true].into_iter().enumerate() {
        // 4 GB: minutes to drain through this SSH, a closed pipe ends it.
        let status = dir.path().join(format!("status{i}"));
        let cmd = Command::script("head -c 4000000000 /dev/zero; echo $? > \"$1\"")
            .arg(status.display().to_string());
        let stream = if piped {
            s.exec_piped(&cmd).await.unwrap()
        } else {
            s.exec_stream(&cmd).await.unwrap()
        };
        let mut stdout = stream.stdout;
        let mut first = vec![0u8; 64 * 1024];
        stdout.read_exact(&mut first).await.unwrap();
        // The relay lets go of the reader first; kept unread, the stream
        // is stopped in the middle of a write to it.
        let _unread = piped.then_some(stdout);
        let started = Instant::now();
        stream.stop.now();
        let out = tokio::time::timeout(Duration::from_secs(10), stream.finish)
            .await
            .unwrap_or_else(|_| panic!("piped: {piped}: a stopped stream ends"))
            .unwrap();
        assert_eq!(out.exit, Exit::ConnectionLost, "piped: {piped}");
        // head died of the closed pipe (SIGPIPE: 141), far from its end.
        let said = loop {
            match std::fs::read_to_string(&status) {
                Ok(t) if t.ends_with('\n') => break t,
                _ if started.elapsed() > Duration::from_secs(20) => {
                    panic!("piped: {piped}: head still running after 20 s")
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        assert_eq!(said, "141\n", "piped: {piped}");
    }
    let out = s.exec(&Command::new("echo").arg("still")).await.unwrap();
    assert_eq!(out.stdout_str(), "still\n");
}
