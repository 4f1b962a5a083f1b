# nixgate test configuration: NixOS-shaped systems built with nothing but
# `derivation` and /bin/sh (no nixpkgs). Per-host settings live in hosts.json:
# `defaults` merged recursively with `hosts.<name>`.
#
#   nix-build <dir> -A nixosConfigurations.<host>.config.system.build.toplevel
#   nix build --json --no-link 'path:<dir>#nixosConfigurations.<host>.config.system.build.toplevel'
{ system ? builtins.currentSystem or "x86_64-linux"
, hostsFile ? ./hosts.json
}:
let
  data = builtins.fromJSON (builtins.readFile hostsFile);

  # Recursive attrset merge: values in `b` win, nested attrsets are merged.
  merge = a: b:
    a // builtins.mapAttrs
      (k: v: if builtins.isAttrs v && builtins.isAttrs (a.${k} or null) then merge a.${k} v else v)
      b;

  mkHost = name: overrides:
    let cfg = merge data.defaults overrides;
    in {
      config = {
        networking.hostName = name;
        nixgate-test = cfg;
        system.build.toplevel = import ./system.nix { inherit system name cfg; };
      };
    };
in
{
  nixosConfigurations = builtins.mapAttrs mkHost (data.hosts or { });
}
