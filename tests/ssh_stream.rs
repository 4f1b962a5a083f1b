//! `exec_stream` through a real sshd: 50 MB through `cat` with bounded
//! memory, exact byte count and content check; prints the throughput.
//! Alone in its test binary so peak-RSS numbers are its own.

mod support;

use std::time::Instant;

use nixgate::remote::{Command, Exit, Remote};
use nixgate::ssh::SshSession;
use support::sshd::{Sshd, keygen};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOTAL: usize = 50 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Byte `i` of the test stream: a pattern that catches reordering and loss.
fn byte_at(i: usize) -> u8 {
    ((i / CHUNK) as u8).wrapping_mul(31) ^ (i as u8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
async fn fifty_megabytes_through_cat() {
    let sshd = Sshd::start();
    let key = keygen(sshd.dir.path(), "id", "ed25519", "");
    sshd.authorize(&key);
    let s = SshSession::connect(sshd.target(&key)).await.unwrap();
    // The shared connection keeps working while a stream runs beside it.
    assert!(s.exec(&Command::new("true")).await.unwrap().success());

    let rss_before = peak_rss_kib();
    let start = Instant::now();
    let stream = s
        .exec_stream(&Command::script("cat; echo done >&2"))
        .await
        .unwrap();
    let mut stdin = stream.stdin;
    let mut stdout = stream.stdout;
    let writer = tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        let mut sent = 0;
        while sent < TOTAL {
            for (k, b) in buf.iter_mut().enumerate() {
                *b = byte_at(sent + k);
            }
            stdin.write_all(&buf).await.unwrap();
            sent += CHUNK;
        }
        stdin.shutdown().await.unwrap(); // EOF: cat ends
        sent
    });
    let side = s.clone();
    let during = tokio::spawn(async move { side.exec(&Command::new("echo").arg("beside")).await });
    let mut received = 0usize;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = stdout.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        for (k, &b) in buf[..n].iter().enumerate() {
            assert_eq!(b, byte_at(received + k), "byte {} differs", received + k);
        }
        received += n;
    }
    let sent = writer.await.unwrap();
    let out = stream.finish.await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(sent, TOTAL);
    assert_eq!(received, TOTAL);
    assert_eq!(out.exit, Exit::Code { code: 0 });
    assert_eq!(out.stderr_str(), "done\n");
    assert!(out.stdout.is_empty());
    assert_eq!(during.await.unwrap().unwrap().stdout_str(), "beside\n");
    let grown_mib = (peak_rss_kib().saturating_sub(rss_before)) as f64 / 1024.0;
    println!(
        "THROUGHPUT exec_stream cat: {:.1} MB/s ({} MiB in {:.2} s), peak RSS growth {:.1} MiB",
        TOTAL as f64 / 1e6 / secs,
        TOTAL / (1024 * 1024),
        secs,
        grown_mib
    );
    assert!(
        grown_mib < 25.0,
        "streaming must not buffer the whole stream: grew {grown_mib:.1} MiB"
    );

    // The stream had its own connection, now closed; the shared one lives on.
    assert_eq!(sshd.log().matches("Accepted publickey").count(), 2);
    assert!(s.exec(&Command::new("true")).await.unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
async fn dropped_stdin_still_sends_eof_and_exit_is_reported() {
    let sshd = Sshd::start();
    let key = keygen(sshd.dir.path(), "id", "ed25519", "");
    sshd.authorize(&key);
    let s = SshSession::connect(sshd.target(&key)).await.unwrap();
    let stream = s
        .exec_stream(&Command::script("wc -c; exit 7"))
        .await
        .unwrap();
    let mut stdin = stream.stdin;
    stdin.write_all(b"12345").await.unwrap();
    drop(stdin); // no shutdown: Drop sends EOF
    let mut text = String::new();
    let mut stdout = stream.stdout;
    stdout.read_to_string(&mut text).await.unwrap();
    assert_eq!(text.trim(), "5");
    let out = stream.finish.await.unwrap();
    assert_eq!(out.exit, Exit::Code { code: 7 });
}
