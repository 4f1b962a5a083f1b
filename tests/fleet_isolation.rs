//! The test fleet's real-systemd hosts are isolated from each other's cgroups.
//!
//! On a machine whose PID 1 is not systemd, containers started from one cgroup
//! all got nspawn's `/payload` as their root: the same transient unit name
//! fired on two hosts at once collided (`status=219/CGROUP`, "Failed to attach
//! to cgroup", units left loaded). Measured before the fix with this test's
//! schedule: 100 rounds on 2 hosts, 5 failed starts. scripts/fleet now starts
//! each container in a cgroup of its own.

mod support;

use std::time::Duration;

use support::fleet::{Fleet, FleetSpec};

const HOSTS: [&str; 3] = ["sys1", "sys2", "sys3"];
const ROUNDS: usize = 40;

/// The cgroup2 path of a host's PID 1, seen from this machine.
fn init_cgroup(fleet: &Fleet, host: &str) -> String {
    let pid = std::fs::read_to_string(fleet.dir().join("hosts").join(host).join("init.pid"))
        .expect("init.pid of a systemd host");
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", pid.trim()))
        .expect("the container's init runs");
    cgroups
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup2 line")
        .to_owned()
}

/// Fires `unit` on every host at once; host i starts `i * stagger` later and
/// its job runs `run` long, so one host's unit ends while another's starts.
fn fire_everywhere(fleet: &Fleet, unit: &str, stagger: Duration, run: Duration) -> Vec<String> {
    std::thread::scope(|s| {
        let jobs: Vec<_> = HOSTS
            .iter()
            .enumerate()
            .map(|(i, host)| {
                s.spawn(move || {
                    std::thread::sleep(stagger * i as u32);
                    let out = fleet.in_host(
                        host,
                        &format!(
                            "systemd-run --quiet --wait --collect --unit={unit} -- /bin/sleep {:.2}",
                            run.as_secs_f64()
                        ),
                    );
                    (!out.status.success()).then(|| {
                        format!(
                            "{host} {unit}: {} {}",
                            out.status,
                            String::from_utf8_lossy(&out.stderr).trim()
                        )
                    })
                })
            })
            .collect();
        jobs.into_iter()
            .filter_map(|j| j.join().expect("firing thread"))
            .collect()
    })
}

#[test]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
fn the_same_unit_name_on_every_systemd_host_at_once_never_collides() {
    let fleet = Fleet::start(FleetSpec {
        light: 0,
        systemd: HOSTS.len(),
        builder: false,
    })
    .unwrap();
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        let stagger = Duration::from_millis(50 * (round % 6) as u64);
        let run = Duration::from_millis(100 + 50 * (round % 4) as u64);
        failures.extend(fire_everywhere(
            &fleet,
            &format!("fleet-isolation-{round}"),
            stagger,
            run,
        ));
    }
    // What each host's systemd kept: units it could not collect, and
    // complaints about cgroups another host's systemd changed under it.
    let left: Vec<String> = HOSTS
        .iter()
        .map(|h| {
            fleet.in_host_ok(
                h,
                "systemctl list-units --all --no-legend --plain 'fleet-isolation-*' | wc -l",
            )
        })
        .collect();
    let complaints: Vec<String> = HOSTS
        .iter()
        .map(|h| {
            fleet.in_host_ok(
                h,
                "journalctl -q --no-pager | grep -c 'Failed to attach to cgroup\\|Failed to kill control group' || true",
            )
        })
        .collect();
    eprintln!(
        "{ROUNDS} rounds on {} hosts: {} failed starts; units left loaded per host {left:?}; cgroup complaints per host {complaints:?}",
        HOSTS.len(),
        failures.len(),
    );
    let mut roots: Vec<String> = HOSTS.iter().map(|h| init_cgroup(&fleet, h)).collect();
    roots.sort();
    roots.dedup();
    assert_eq!(roots.len(), HOSTS.len(), "hosts share a cgroup: {roots:?}");
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(
        left.iter().all(|n| n == "0"),
        "collected units kept: {left:?}"
    );
    assert!(
        complaints.iter().all(|n| n == "0"),
        "a host's systemd saw another host's cgroups: {complaints:?}"
    );

    // `down` removes the hosts' cgroups.
    let dirs: Vec<String> = HOSTS
        .iter()
        .flat_map(|h| {
            std::fs::read_to_string(fleet.dir().join("hosts").join(h).join("cgroups"))
                .expect("the host's cgroups")
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(dirs.len(), 2 * HOSTS.len(), "cgroup2 and name=systemd each");
    let mut fleet = fleet;
    fleet.stop().unwrap();
    for d in dirs {
        assert!(!std::path::Path::new(&d).exists(), "{d} left after down");
    }
}
