# (2) A failing unit rolled back to known-good: both targets on `good`
# (known-good generation 1); then target1's service is broken (`failing`), the
# live switch exits 4, nixgate rolls target1 back to its known-good and exits
# 1; the failed canary wave stops the run, so target2 is not touched.
args:
(import ./lib.nix args).mkFleetTest {
  name = "failing-unit";
  variants = [
    "good"
    "failing"
  ];
  testScript = ''
    setup_fleet()
    push_good()

    with subtest("a service that fails: target1 rolled back to its known-good"):
        commit({"target1": "failing", "target2": "good"}, "target1: break the app")
        nixgate("push", expect=1)
        # Running, booting and known-good: all `good` again, no new generation.
        assert_host("target1", "good", generation=1)
        target1.succeed("systemctl is-active nixgate-vm-app.service")
        target1.fail("systemctl is-failed --quiet nixgate-vm-app.service")
        st = status()
        assert outcome_is(st["target1"], "rolled-back"), st["target1"]
        assert not st["target1"]["unvalidated"], st["target1"]

    with subtest("the failed canary wave stopped the run: target2 untouched"):
        assert_host("target2", "good", generation=1)
        assert outcome_is(st["target2"], "not-started"), st["target2"]
  '';
}
