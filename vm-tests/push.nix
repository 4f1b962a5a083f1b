# (1) A push to known-good: `nixgate check`, `nixgate build` (the builder
# evaluates the repository to the pre-built systems), then the NixOS module's
# rollout service pushes both targets through every gate to known-good, with
# release tags; `nixgate status` agrees; a second rollout (the canary) finds
# target1 already current and changes nothing.
args:
(import ./lib.nix args).mkFleetTest {
  name = "push";
  variants = [ "good" ];
  testScript = ''
    setup_fleet()

    with subtest("check: the builder and both targets answer"):
        nixgate("check")

    with subtest("build: the builder evaluates the repository to the pre-built systems"):
        built: dict[str, str] = {}
        for line in nixgate("build").splitlines():
            if line.strip():
                host, path = line.split()[:2]
                built[host] = path
        for host in TARGETS:
            assert built.get(host) == PREBUILT[host]["good"], (
                f"{host}: the builder built {built.get(host)}, the driver {PREBUILT[host]['good']}"
            )

    with subtest("push by the rollout service: both targets known-good"):
        booted = {host: state(host)["booted"] for host in TARGETS}
        controller.succeed("systemctl start nixgate-rollout-fleet.service")
        for host in TARGETS:
            assert_host(host, "good", generation=1)
            TARGETS[host].succeed("systemctl is-active nixgate-vm-app.service")
            assert state(host)["booted"] == booted[host], f"{host} rebooted"
        # Plain output (not a terminal) in the journal.
        # Read whole and searched here: `journalctl | grep -q` under the
        # driver's pipefail fails when grep exits first (SIGPIPE, 141).
        journal = controller.succeed("journalctl -u nixgate-rollout-fleet.service -o cat --no-pager")
        assert "target2" in journal, "no line about target2 in the rollout's journal"
        # Release tags: the sandboxed service wrote to the repository.
        for host in TARGETS:
            assert git(f"tag -l 'release/{host}/*'").strip(), f"no release tag for {host}"

    with subtest("status: both targets on their known-good, nothing pending"):
        st = status()
        for host in TARGETS:
            assert st[host]["current"] == PREBUILT[host]["good"], st[host]
            assert st[host]["known_good_generation"] == 1, st[host]
            assert not st[host]["pending_reboot"], st[host]
            assert not st[host]["unvalidated"], st[host]
            assert outcome_is(st[host], "known-good"), st[host]

    with subtest("the canary rollout: target1 already current, nothing changes"):
        controller.succeed("systemctl start nixgate-rollout-canary.service")
        assert_host("target1", "good", generation=1)
        assert outcome_is(status("/var/lib/nixgate/canary")["target1"], "already-current")
  '';
}
