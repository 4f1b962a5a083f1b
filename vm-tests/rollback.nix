# (4) `nixgate rollback`: both targets on `good` (known-good generation 1);
# target1 on `good2` (generation 2); `nixgate rollback target1` redeploys,
# through every gate, the known-good before it: `good` runs, boots and is
# known-good again (generation 3); `--to 2` goes forward to `good2`
# (generation 4). target2 is not touched.
args:
(import ./lib.nix args).mkFleetTest {
  name = "rollback";
  variants = [
    "good"
    "good2"
  ];
  testScript = ''
    setup_fleet()
    push_good()

    with subtest("a second known-good on target1"):
        commit({"target1": "good2", "target2": "good"}, "target1: good2")
        nixgate("push target1")
        assert_host("target1", "good2", generation=2)

    with subtest("nixgate rollback: target1 back to the known-good before"):
        nixgate("rollback target1")
        assert_host("target1", "good", generation=3)
        target1.succeed("systemctl is-active nixgate-vm-app.service")
        assert outcome_is(status()["target1"], "known-good")

    with subtest("nixgate rollback --to: a named known-good generation"):
        nixgate("rollback --to 2 target1")
        assert_host("target1", "good2", generation=4)

    with subtest("target2 untouched"):
        assert_host("target2", "good", generation=1)
  '';
}
