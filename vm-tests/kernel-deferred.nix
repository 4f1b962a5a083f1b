# (3) A kernel change deferred to boot: both targets on `good`; target2 gets
# another kernel. nixgate does not switch it live: the running system, the
# running kernel and the known-good stay; the system profile (the boot
# default) is the new system; the outcome is pending-reboot, which fails
# the run (exit 1) unless it is allowed: the push passes
# --allow-pending-reboot and exits 0.
args:
(import ./lib.nix args).mkFleetTest {
  name = "kernel-deferred";
  variants = [
    "good"
    "kernel"
  ];
  testScript = ''
    setup_fleet()
    push_good()

    with subtest("a new kernel becomes the boot default, not the running system"):
        before = state("target2")
        uname = target2.succeed("uname -r").strip()
        commit({"target1": "good", "target2": "kernel"}, "target2: another kernel")
        nixgate("push --allow-pending-reboot target2")
        assert_host("target2", "good", boot="kernel", known_good="good", generation=1)
        assert state("target2")["booted"] == before["booted"], "target2 rebooted"
        assert target2.succeed("uname -r").strip() == uname
        running = target2.succeed("readlink -e /run/current-system/kernel").strip()
        next_boot = target2.succeed(f"readlink -e {SYSTEM}/kernel").strip()
        assert running != next_boot, f"the kernel did not change: {running}"

    with subtest("status: target2 has a reboot pending"):
        st = status()["target2"]
        assert st["pending_reboot"], st
        assert st["current"] == PREBUILT["target2"]["good"], st
        assert st["boot_default"] == PREBUILT["target2"]["kernel"], st
        assert outcome_is(st, "pending-reboot"), st

    with subtest("target1 untouched"):
        assert_host("target1", "good", generation=1)
  '';
}
