# The stub NixOS: the options flake.nix's module-eval configuration and
# nix/module.nix set or read, declared with NixOS' names and (simplified)
# types, so that a misspelt or renamed one is an error here as it is in
# NixOS. Nothing else of NixOS is here: no unit files (`systemd.units`
# fails when read), no activation, no system closure.
#
# `system.build.toplevel` does what NixOS' top-level.nix does with the
# assertions (it throws the failed ones) and, instead of a derivation,
# forces every value the stub has (drvPath).
{ config, lib, ... }:
let
  inherit (lib) mkOption types;

  # NixOS' unitOptions/serviceOptions/timerOptions, what the files use.
  unitOptions = {
    description = mkOption {
      type = types.str;
      default = "";
    };
    after = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    wants = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    wantedBy = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
  };
  service = {
    options = unitOptions // {
      path = mkOption {
        type = types.listOf (types.either types.package types.str);
        default = [ ];
      };
      environment = mkOption {
        type = types.attrsOf (types.nullOr (types.either types.str types.package));
        default = { };
      };
      restartIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
      script = mkOption {
        type = types.lines;
        default = "";
      };
      serviceConfig = mkOption {
        type = types.attrsOf types.unitOption;
        default = { };
      };
    };
  };
  timer = {
    options = unitOptions // {
      timerConfig = mkOption {
        type = types.attrsOf types.unitOption;
        default = { };
      };
    };
  };
  user = {
    options = {
      isSystemUser = mkOption {
        type = types.bool;
        default = false;
      };
      group = mkOption {
        type = types.str;
        default = "";
      };
      home = mkOption {
        type = types.path;
        default = "/var/empty";
      };
      createHome = mkOption {
        type = types.bool;
        default = false;
      };
      description = mkOption {
        type = types.str;
        default = "";
      };
    };
  };

  failed = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
in
{
  options = {
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
    boot.isContainer = mkOption {
      type = types.bool;
      default = false;
    };
    system.stateVersion = mkOption { type = types.str; };
    system.build.toplevel = mkOption { type = types.unspecified; };
    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };
    users.users = mkOption {
      type = types.attrsOf (types.submodule user);
      default = { };
    };
    users.groups = mkOption {
      type = types.attrsOf (types.submodule { });
      default = { };
    };
    systemd.services = mkOption {
      type = types.attrsOf (types.submodule service);
      default = { };
    };
    systemd.timers = mkOption {
      type = types.attrsOf (types.submodule timer);
      default = { };
    };
    systemd.units = mkOption {
      type = types.unspecified;
      default = throw "stub NixOS: systemd.units (the unit files) is not generated; read systemd.services and systemd.timers";
    };
  };

  config.system.build.toplevel =
    if failed != [ ] then
      throw "\nFailed assertions:\n${lib.concatMapStrings (m: "- ${m}\n") failed}"
    else
      {
        type = "derivation";
        name = "nixos-system-stub";
        outPath = "/nix/store/00000000000000000000000000000000-nixos-system-stub";
        drvPath = builtins.deepSeq {
          inherit (config)
            boot
            users
            environment
            ;
          inherit (config.system) stateVersion;
          inherit (config.systemd) services timers;
        } "/nix/store/00000000000000000000000000000000-nixos-system-stub.drv";
      };
}
