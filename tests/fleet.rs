//! End-to-end check of the test fleet itself: real sshd per host, separate Nix
//! stores and current systems, real systemd in the systemd host, the light hosts'
//! systemd stand-ins answering like the real thing, the test configuration's
//! switch-to-configuration misbehaviours, and a clean teardown.

mod support;

use std::thread::sleep;
use std::time::{Duration, Instant};

use support::fleet::{Fleet, FleetSpec};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn ssh_ok(fleet: &Fleet, host: &str, cmd: &str) -> String {
    let out = fleet.ssh(host, cmd);
    assert!(
        out.status.success(),
        "ssh {host} `{cmd}` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

/// `systemctl show` of the given unit, without MainPID (which differs by nature).
fn show(fleet: &Fleet, host: &str, unit: &str) -> String {
    ssh_ok(
        fleet,
        host,
        &format!(
            "systemctl show {unit} --property=ActiveState,SubState,Result,ExecMainStatus,ExecMainCode,LoadState"
        ),
    )
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        sleep(Duration::from_millis(100));
    }
}

/// Runs the same transient-unit scenarios on a host and returns what systemctl
/// and journalctl said, for comparing the real systemd with the stand-ins.
fn unit_scenarios(fleet: &Fleet, host: &str) -> Vec<String> {
    let mut seen = Vec::new();
    // Collected after failure: systemd forgets the unit, journald keeps the log.
    ssh_ok(
        fleet,
        host,
        "systemd-run --unit=probe-collect --collect --no-ask-password -- /bin/sh -c 'echo probe-out; exit 3'",
    );
    wait_until("probe-collect to finish", Duration::from_secs(10), || {
        show(fleet, host, "probe-collect").contains("LoadState=not-found")
    });
    seen.push(show(fleet, host, "probe-collect"));
    let log = ssh_ok(
        fleet,
        host,
        "journalctl -u probe-collect -n 20 --no-pager -o cat",
    );
    assert!(
        log.contains("probe-out"),
        "{host}: journal lacks output: {log}"
    );
    assert!(
        log.contains(
            "probe-collect.service: Main process exited, code=exited, status=3/NOTIMPLEMENTED"
        ),
        "{host}: journal lacks the exit line: {log}"
    );
    // Not collected: the failure stays visible.
    ssh_ok(
        fleet,
        host,
        "systemd-run --unit=probe-keep --setenv=PROBE=42 -- /bin/sh -c 'echo env=$PROBE; exit 4'",
    );
    wait_until("probe-keep to fail", Duration::from_secs(10), || {
        show(fleet, host, "probe-keep").contains("ActiveState=failed")
    });
    seen.push(show(fleet, host, "probe-keep"));
    let log = ssh_ok(
        fleet,
        host,
        "journalctl -u probe-keep -n 20 --no-pager -o cat",
    );
    assert!(
        log.contains("env=42"),
        "{host}: --setenv not applied: {log}"
    );
    let again = fleet.ssh(host, "systemd-run --unit=probe-keep -- /bin/true");
    assert_eq!(
        again.status.code(),
        Some(1),
        "{host}: reusing a failed unit name must fail"
    );
    let active = fleet.ssh(host, "systemctl is-active probe-keep");
    seen.push(format!(
        "is-active={} rc={:?}",
        stdout(&active),
        active.status.code()
    ));
    // Running, then stopped.
    ssh_ok(
        fleet,
        host,
        "systemd-run --unit=probe-run --collect -- /bin/sleep 600",
    );
    seen.push(show(fleet, host, "probe-run"));
    let active = fleet.ssh(host, "systemctl is-active probe-run");
    seen.push(format!(
        "is-active={} rc={:?}",
        stdout(&active),
        active.status.code()
    ));
    ssh_ok(fleet, host, "systemctl stop probe-run");
    seen.push(show(fleet, host, "probe-run"));
    // Never existed.
    seen.push(show(fleet, host, "probe-never"));
    seen
}

fn switch_on(fleet: &Fleet, host: &str, toplevel: &str, action: &str) -> std::process::Output {
    fleet.ssh(
        host,
        &format!(
            "nix-env -p /nix/var/nix/profiles/system --set {toplevel} && {toplevel}/bin/switch-to-configuration {action}"
        ),
    )
}

#[test]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
fn fleet_hosts_are_real_separate_and_torn_down() {
    let mut fleet = Fleet::start(FleetSpec {
        light: 3,
        systemd: 1,
        builder: true,
    })
    .unwrap();
    let hosts = ["light1", "light2", "light3", "sys1"];

    // The inventory names every host with its address and the builder.
    let inventory = std::fs::read_to_string(fleet.inventory_path()).unwrap();
    for h in hosts {
        let info = fleet.host(h);
        assert!(inventory.contains(&format!("[hosts.{h}]\naddress = \"{}\"", info.address)));
    }
    assert!(inventory.contains(&format!("address = \"{}\"", fleet.host("builder").address)));
    assert!(inventory.contains(&format!("source = \"{}\"", fleet.config_repo().display())));

    // Each host answers over ssh with its own current system (gen 0, profile generation 1).
    let mut systems = Vec::new();
    for h in hosts {
        let current = ssh_ok(&fleet, h, "readlink /run/current-system");
        assert!(
            current.starts_with("/nix/store/") && current.contains(&format!("-nixos-system-{h}-")),
            "{h}: unexpected current system {current}"
        );
        assert_eq!(fleet.in_host_ok(h, "readlink /run/current-system"), current);
        assert_eq!(
            ssh_ok(
                &fleet,
                h,
                "readlink /nix/var/nix/profiles/system; readlink -f /boot/nixgate-test/default"
            ),
            format!("system-1-link\n{current}")
        );
        ssh_ok(&fleet, h, "nix-store --verify-path /run/current-system");
        systems.push(current);
    }
    systems.dedup();
    assert_eq!(systems.len(), hosts.len());

    // Own stores: a path added on light1 exists nowhere else.
    let added = ssh_ok(
        &fleet,
        "light1",
        "echo only-on-light1 > /root/marker && nix-store --add /root/marker",
    );
    ssh_ok(
        &fleet,
        "light1",
        &format!("nix-store --check-validity {added}"),
    );
    for h in ["light2", "light3", "sys1", "builder"] {
        let out = fleet.ssh(
            h,
            &format!("test -e {added} || nix-store --check-validity {added}"),
        );
        assert!(!out.status.success(), "{h} sees light1's path {added}");
    }

    // Real systemd on sys1, running the configuration's unit.
    assert_eq!(ssh_ok(&fleet, "sys1", "cat /proc/1/comm"), "systemd");
    assert_eq!(
        ssh_ok(
            &fleet,
            "sys1",
            "systemctl is-active nixgate-test-hello.service"
        ),
        "active"
    );
    // The stand-ins on a light host answer exactly like systemd 252 does.
    let real = unit_scenarios(&fleet, "sys1");
    let fake = unit_scenarios(&fleet, "light1");
    assert_eq!(
        fake, real,
        "light-host systemd stand-ins differ from real systemd"
    );
    assert!(real[0].contains("LoadState=not-found"));
    assert!(real[1].contains("Result=exit-code") && real[1].contains("ExecMainStatus=4"));

    // Misbehaviours, built on the builder and copied like a deployment would.
    let gen0_light2 = systems[1].clone();
    let gen0_sys1 = systems[3].clone();
    fleet
        .commit_config(|v| {
            v["hosts"]["light1"]["misbehaviour"] = "exit4".into();
            v["hosts"]["light2"]["misbehaviour"] = "flip".into();
            v["hosts"]["light3"]["misbehaviour"] = "inhibit".into();
            v["hosts"]["sys1"]["misbehaviour"] = "hang".into();
            // A new hello changes sys1's unit, so dry-activate has a restart to report.
            v["hosts"]["sys1"]["packages"] =
                serde_json::json!({ "hello": { "version": "2.12.2" } });
            for h in ["light1", "light2", "light3", "sys1"] {
                v["hosts"][h]["generation"] = 1.into();
            }
        })
        .unwrap();
    let mut new = std::collections::HashMap::new();
    for h in hosts {
        let top = fleet.build_on_builder(h).unwrap();
        fleet.copy_closure("builder", h, &top).unwrap();
        new.insert(h, top);
    }

    // exit4: switches, then exits 4 like NixOS when units fail.
    let out = switch_on(&fleet, "light1", &new["light1"], "switch");
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("the following units failed"));
    assert_eq!(
        ssh_ok(&fleet, "light1", "readlink /run/current-system"),
        new["light1"]
    );
    assert_eq!(
        ssh_ok(&fleet, "light1", "readlink /boot/nixgate-test/default"),
        "entries/nixos-generation-2"
    );

    // flip: /run/current-system ends up at neither the old nor the new system.
    let out = switch_on(&fleet, "light2", &new["light2"], "test");
    assert!(out.status.success());
    let flipped = ssh_ok(&fleet, "light2", "readlink /run/current-system");
    assert_ne!(flipped, new["light2"]);
    assert_ne!(flipped, gen0_light2);

    // inhibit: refused unless NIXOS_NO_CHECK=1.
    let out = switch_on(&fleet, "light3", &new["light3"], "test");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Pre-switch check 'switchInhibitors' failed")
    );
    let out = fleet.ssh(
        "light3",
        &format!(
            "NIXOS_NO_CHECK=1 {}/bin/switch-to-configuration test",
            new["light3"]
        ),
    );
    assert!(out.status.success());
    assert_eq!(
        ssh_ok(&fleet, "light3", "readlink /run/current-system"),
        new["light3"]
    );

    // dry-activate reports the unit it would restart.
    let out = fleet.ssh(
        "sys1",
        &format!("{}/bin/switch-to-configuration dry-activate", new["sys1"]),
    );
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("would restart the following units: nixgate-test-hello.service"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // hang under real systemd: never flips; RuntimeMaxSec ends it as a timeout.
    ssh_ok(
        &fleet,
        "sys1",
        &format!(
            "systemd-run --unit=nixgate-switch --property=RuntimeMaxSec=3 -- {}/bin/switch-to-configuration test",
            new["sys1"]
        ),
    );
    sleep(Duration::from_secs(1));
    assert!(show(&fleet, "sys1", "nixgate-switch").contains("ActiveState=active"));
    wait_until(
        "the hanging switch to time out",
        Duration::from_secs(15),
        || show(&fleet, "sys1", "nixgate-switch").contains("Result=timeout"),
    );
    assert_eq!(
        ssh_ok(&fleet, "sys1", "readlink /run/current-system"),
        gen0_sys1
    );
    // The unit's whole cgroup died, so the switch lock is free again.
    ssh_ok(
        &fleet,
        "sys1",
        "flock -n /run/nixos/switch-to-configuration.lock true",
    );

    // Teardown: nothing of the fleet survives, and down is idempotent.
    assert!(!fleet.processes().unwrap().is_empty());
    fleet.stop().unwrap();
    assert_eq!(fleet.processes().unwrap(), Vec::<u32>::new());
    fleet.stop().unwrap();
    let out = fleet.ssh("light1", "true");
    assert!(!out.status.success(), "light1 still answers after stop");
}

#[test]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
fn testconfig_is_nixos_shaped_and_flake_matches_nix_build() {
    let fleet = Fleet::start(FleetSpec {
        light: 1,
        systemd: 0,
        builder: true,
    })
    .unwrap();
    let attr = "nixosConfigurations.light1.config.system.build.toplevel";
    let classic = fleet.build_on_builder("light1").unwrap();
    assert!(classic.contains("-nixos-system-light1-"), "{classic}");
    // Same derivation through the flake (Nix 2.8: --json, no --print-out-paths).
    let json = ssh_ok(
        &fleet,
        "builder",
        &format!(
            "nix build --json --no-link 'path:{}#{attr}'",
            fleet.config_repo().display()
        ),
    );
    let built: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(built[0]["outputs"]["out"], classic.as_str());

    // NixOS shape, checked in the builder's store.
    let shape = ssh_ok(
        &fleet,
        "builder",
        &format!(
            "t={classic}; for f in systemd sw kernel initrd etc; do printf '%s -> %s\\n' $f \"$(readlink $t/$f)\"; done; \
             test -x $t/systemd/lib/systemd/systemd && test -x $t/sw/lib/systemd/systemd && test -x $t/init && \
             test -x $t/bin/switch-to-configuration && test -x $t/sw/bin/hello && test -x $t/sw/bin/nginx && \
             readlink $t/etc/systemd/system/dbus.service && cat $t/nixos-version && $t/sw/bin/hello && \
             nix-store -qR $t | wc -l"
        ),
    );
    let lines: Vec<&str> = shape.lines().collect();
    assert!(
        lines[0].starts_with("systemd -> /nix/store/") && lines[0].ends_with("-systemd-255.4"),
        "{shape}"
    );
    assert!(
        lines[1].starts_with("sw -> /nix/store/") && lines[1].ends_with("-system-path"),
        "{shape}"
    );
    assert!(lines[2].ends_with("-linux-6.6.21/bzImage"), "{shape}");
    assert!(lines[4].ends_with("-etc/etc"), "{shape}");
    assert!(
        lines[5].contains("-dbus-1.14.10/lib/systemd/system/dbus.service"),
        "{shape}"
    );
    assert_eq!(lines[6], "24.05.20240315.1e4b7a5");
    assert_eq!(lines[7], "Hello, world!");
    let closure_size: usize = lines[8].parse().unwrap();
    assert!(
        (15..=60).contains(&closure_size),
        "closure has {closure_size} paths"
    );

    // Changing openssl's flags rebuilds openssl and nginx at the same versions.
    let pkgs = |top: &str| {
        ssh_ok(
            &fleet,
            "builder",
            &format!("nix-store -qR {top} | grep -E -- '-(openssl|nginx|zlib|hello)-'"),
        )
    };
    let before = pkgs(&classic);
    fleet
        .commit_config(|v| {
            v["hosts"]["light1"]["packages"] =
                serde_json::json!({ "openssl": { "flags": "shared no-ssl3 enable-ktls" } });
        })
        .unwrap();
    let rebuilt = fleet.build_on_builder("light1").unwrap();
    assert_ne!(rebuilt, classic);
    let after = pkgs(&rebuilt);
    let changed = |name: &str| {
        let pick = |s: &str| s.lines().find(|l| l.contains(name)).unwrap().to_string();
        let (b, a) = (pick(&before), pick(&after));
        assert_eq!(
            b.split_once('-').unwrap().1,
            a.split_once('-').unwrap().1,
            "{name} changed name"
        );
        b != a
    };
    assert!(changed("-openssl-3.0.13"));
    assert!(changed("-nginx-1.24.0"));
    assert!(!changed("-zlib-1.3.1"));
    assert!(!changed("-hello-2.12.1"));
}
