# Stub of nixpkgs' nixos/lib/eval-config.nix for the VM tests' fleet
# repository (nix/eval/fleet-repo-check): it collects the modules, resolving
# every `imports` (files, functions, sets) and calling every module function,
# and evaluates the names each module defines. It does not evaluate the
# configuration (its NixOS options are not in the stub): what it proves is
# that every file the repository's modules use is in the repository.
#
# `config.system.build.toplevel.modules` is the list of the modules' keys
# (file paths, or `<modules>:i` for the unnamed ones), forced.
{
  system ? null,
  modules,
  ...
}:
let
  stub = import ../../default.nix { };
  inherit (stub) lib;
  notHere = what: throw "stub eval-config: `${what}` is not evaluated by the stub (see nix/eval/README.md)";
  args = {
    inherit lib;
    pkgs = stub.legacyPackages.x86_64-linux;
    config = notHere "config";
    options = notHere "options";
    modulesPath = "${toString ../..}/nixos/modules";
  };
  collected = lib.stubModules.collect args modules;
  keys = map (m: m.key) collected;
in
{
  config.system.build.toplevel = {
    type = "derivation";
    modules = builtins.deepSeq (map (m: builtins.attrNames m.config) collected) keys;
  };
}
