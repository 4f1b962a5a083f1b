# The systems the VM tests deploy to a target: NixOS modules on top of
# target.nix (see configs.nix). /etc/nixgate-variant names the variant, so a
# test sees at a glance which one runs.
let
  # A service that is active once started and stays so (the inventory's
  # health check asks for it). `failing` breaks it.
  app =
    command:
    { pkgs, ... }:
    {
      systemd.services.nixgate-vm-app = {
        description = "nixgate VM test application";
        wantedBy = [ "multi-user.target" ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          ExecStart = "${pkgs.coreutils}/bin/${command}";
        };
      };
    };

  marker = name: { environment.etc."nixgate-variant".text = name; };
in
{
  good = {
    imports = [
      (app "true")
      (marker "good")
    ];
  };

  # Another known-good system: a second generation for `nixgate rollback`.
  good2 = {
    imports = [
      (app "true")
      (marker "good2")
    ];
  };

  # A change that breaks a running service: switch-to-configuration restarts
  # it, the restart fails, the switch exits 4. Breaking a unit the known-good
  # also has (rather than adding a new one) lets the rollback's switch start
  # it again, so no failed unit is left behind.
  failing = {
    imports = [
      (app "false")
      (marker "failing")
    ];
  };

  # `good` on another kernel: nixgate does not switch it live, it makes it the
  # boot default (pending reboot).
  kernel =
    { pkgs, ... }:
    {
      imports = [
        (app "true")
        (marker "kernel")
      ];
      boot.kernelPackages = pkgs.linuxPackages_latest;
      assertions = [
        {
          assertion = pkgs.linuxPackages_latest.kernel.version != pkgs.linuxPackages.kernel.version;
          message = "vm-tests: linuxPackages_latest is linuxPackages in this nixpkgs; pick another kernel for the `kernel` variant";
        }
      ];
    };
}
