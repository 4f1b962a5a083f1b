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
    controller.fail("nixgate hosts --wave nope -i /etc/nixgate/inventory.toml")
  '';
}
