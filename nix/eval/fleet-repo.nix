# The VM tests' fleet repository, evaluated from a copy of vm-tests/fleet
# alone (nix/eval/fleet-repo-check makes it) against the stub nixpkgs: its
# flake's outputs, one host per variant, each host's modules collected by
# the stub eval-config (every import resolved). Evaluates to
# { <host> = [ the modules' files, relative to the copy or the stub ]; }
# and fails when a file the repository uses is not in it.
{
  # The copy, with fleet.json and variants.json.
  dir,
}:
let
  b = builtins;
  stub = toString ./nixpkgs;
  flake = import (dir + "/flake.nix");
  outputs = flake.outputs {
    self = {
      outPath = dir;
    };
    nixpkgs = {
      outPath = stub;
    };
  };
  # A module's file, relative to where it comes from; `<modules>:i` as is.
  where =
    key:
    let
      strip = prefix: b.substring (b.stringLength prefix) (-1) key;
      under = prefix: b.substring 0 (b.stringLength prefix) key == prefix;
    in
    if under "${toString dir}/" then
      "repo:" + strip "${toString dir}/"
    else if under "${stub}/" then
      "stub-nixpkgs:" + strip "${stub}/"
    else if under "<modules>" then
      key
    else
      throw "fleet repository: the module ${key} is outside the repository";
in
assert
  b.attrNames outputs == [ "nixosConfigurations" ]
  || throw "fleet repository: outputs ${toString (b.attrNames outputs)}";
b.mapAttrs (_: c: map where c.config.system.build.toplevel.modules) outputs.nixosConfigurations
