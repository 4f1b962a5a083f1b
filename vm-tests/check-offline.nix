# The smallest VM test: the packaged nixgate validates an inventory offline.
# Run with: nix build .#checks.x86_64-linux.vm-check-offline
{ pkgs, nixgate }:
pkgs.testers.runNixOSTest {
  name = "nixgate-check-offline";
  nodes.controller = { ... }: {
    environment.systemPackages = [ nixgate ];
    environment.etc."nixgate/inventory.toml".text = ''
      [builder]
      address = "builder"

      [hosts.target1]
      address = "target1"
    '';
  };
  testScript = ''
    controller.wait_for_unit("multi-user.target")
    controller.succeed("nixgate check --offline -i /etc/nixgate/inventory.toml")
    # An unknown wave is a usage error: exit 2, not any failure.
    status, _ = controller.execute("nixgate hosts --wave nope -i /etc/nixgate/inventory.toml")
    assert status == 2, f"nixgate hosts --wave nope: exit {status}, expected 2"
  '';
}
