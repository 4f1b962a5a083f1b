//! delay_proxy: the benchmark fleet's network, one delaying TCP proxy per
//! host link (see link.rs for the model and the turn count).
//!
//!   delay_proxy --rtt 50ms [--rate 100mbit] [--log FILE] [--exit-with PID] \
//!     NAME=LISTEN_ADDR:PORT=UPSTREAM_ADDR:PORT...
//!
//! Prints `ready` on stdout once every listener is bound. Runs until killed
//! or, with --exit-with, until that process is gone (so it ends with the
//! benchmark that started it even when that one is killed).

mod link;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use link::{Link, Log, Spec};

#[derive(Parser)]
#[command(about = "A delaying, pacing TCP proxy per host link")]
struct Args {
    /// Round-trip time each link adds (RTT/2 each way), e.g. 50ms.
    #[arg(long, value_parser = link::parse_duration)]
    rtt: Duration,
    /// Bandwidth of each direction of each host's link, e.g. 100mbit.
    #[arg(long, value_parser = link::parse_rate)]
    rate: Option<f64>,
    /// Bytes per direction per connection held at most (default: one
    /// bandwidth-delay product with --rate, 4 MiB without).
    #[arg(long)]
    limit: Option<usize>,
    /// Quiet time of the client before a reply counts as a turn (default RTT/4).
    #[arg(long, value_parser = link::parse_duration)]
    gap: Option<Duration>,
    /// Append the open/turn/close log here.
    #[arg(long)]
    log: Option<std::path::PathBuf>,
    /// Exit when this process (pid, as it was when we started) is gone.
    #[arg(long)]
    exit_with: Option<u32>,
    /// NAME=LISTEN=UPSTREAM, one per host link.
    #[arg(required = true)]
    links: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut spec = Spec::new(args.rtt, args.rate);
    spec.limit = args.limit.unwrap_or(spec.limit).max(256 * 1024);
    spec.gap = args.gap.unwrap_or(spec.gap);
    let log = match &args.log {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening the log {}", p.display()))?,
        ),
        None => None,
    };
    let log = Log::new(log);
    let watched = args.exit_with.map(|pid| (pid, start_time(pid)));
    if let Some((pid, None)) = watched {
        anyhow::bail!("--exit-with {pid}: no such process");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let conns = Arc::new(AtomicU64::new(0));
        for l in &args.links {
            let (name, listen, upstream) = parse_link(l)?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("{name}: listening on {listen}"))?;
            let link = Link::new(name, upstream, spec, log.clone(), conns.clone());
            tokio::spawn(Arc::new(link).serve(listener));
        }
        println!("ready");
        match watched {
            Some((pid, started)) => {
                while start_time(pid) == started {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            None => std::future::pending::<()>().await,
        }
        Ok(())
    })
}

fn parse_link(s: &str) -> anyhow::Result<(&str, SocketAddr, SocketAddr)> {
    let mut it = s.splitn(3, '=');
    let (Some(name), Some(listen), Some(upstream)) = (it.next(), it.next(), it.next()) else {
        anyhow::bail!("`{s}`: give NAME=LISTEN_ADDR:PORT=UPSTREAM_ADDR:PORT");
    };
    let listen = listen
        .parse()
        .with_context(|| format!("`{s}`: listen address"))?;
    let upstream = upstream
        .parse()
        .with_context(|| format!("`{s}`: upstream address"))?;
    Ok((name, listen, upstream))
}

/// Field 22 of /proc/PID/stat (start time): a pid and its start time name
/// one process even if the pid is reused.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19).map(str::to_string)
}
