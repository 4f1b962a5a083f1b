# The stub nixpkgs flake input: `lib` (./lib.nix, with `nixosSystem` on the
# stub NixOS of ./nixos.nix), `legacyPackages.<system>` (below) and
# `outPath` (this directory, which also holds the two NixOS modules and
# nixos/lib/eval-config.nix the VM tests' fleet repository imports).
#
# Packages are attribute sets with `type = "derivation"` and a made-up
# store path; nothing is instantiated or built. `drvPath` of a stub package
# forces its arguments (deepSeq), so that reading it evaluates what a real
# instantiation would: the fileset's paths, the inputs, the meta.
{
  # nixos-25.05 has 1.86 (too old: the package must refuse it).
  rustcVersion ? "1.89.0",
}:
let
  b = builtins;
  lib = (import ./lib.nix) // {
    nixosSystem =
      {
        system,
        modules,
        specialArgs ? { },
      }:
      lib.evalModules {
        modules = [ ./nixos.nix ] ++ modules;
        specialArgs = {
          pkgs = legacyPackages.${system};
          modulesPath = "${toString ./.}/nixos/modules";
        }
        // specialArgs;
      };
  };

  fakePath = name: "/nix/store/00000000000000000000000000000000-${name}";

  mkDrv =
    name: args:
    {
      type = "derivation";
      inherit name;
      outPath = fakePath name;
      drvPath = b.deepSeq args (fakePath "${name}.drv");
      meta = args.meta or { };
    }
    // b.removeAttrs args [ "meta" ];

  pkgsFor =
    system:
    let
      pkgs = {
        inherit lib system;
        path = toString ./.;
        stdenv.hostPlatform = {
          inherit system;
          isLinux = lib.hasSuffix "-linux" system;
          isDarwin = lib.hasSuffix "-darwin" system;
        };

        callPackage =
          fn: overrides:
          let
            f = if b.isFunction fn then fn else import fn;
            formals = b.functionArgs f;
            given = b.intersectAttrs formals (pkgs // overrides);
            missing = b.filter (n: !formals.${n} && !(given ? ${n})) (b.attrNames formals);
          in
          if missing != [ ] then
            throw "stub callPackage: ${toString fn} wants ${toString missing}, which the stub pkgs lacks (nix/eval/nixpkgs/default.nix)"
          else
            f given;

        rustPlatform = {
          rustLibSrc = mkDrv "rust-lib-src" { };
          buildRustPackage =
            args:
            let
              drv = mkDrv "${args.pname}-${args.version}" (
                args
                // {
                  overrideAttrs =
                    f:
                    let
                      new = if b.isFunction f then f args else f;
                    in
                    pkgs.rustPlatform.buildRustPackage (args // (if b.isFunction new then new args else new));
                }
              );
            in
            if !(b.pathExists args.cargoLock.lockFile) then
              throw "stub buildRustPackage: no ${toString args.cargoLock.lockFile}"
            else
              drv;
        };
        rustc = mkDrv "rustc-${rustcVersion}" { version = rustcVersion; };

        runCommand =
          name: env: buildCommand:
          mkDrv name { inherit buildCommand; } // { inherit env; };
        writeText = name: text: mkDrv name { inherit text; };
        mkShell = args: mkDrv (args.name or "nix-shell") args;
        # The test is kept, not evaluated (its nodes are whole NixOS systems).
        testers.runNixOSTest = test: {
          type = "derivation";
          name = "vm-test-run";
          inherit test;
        };
      }
      # Packages only named (in the dev shell, the module's unit path, the
      # package's inputs).
      // lib.genAttrs [
        "git"
        "openssh"
        "bash"
        "gnutar"
        "coreutils"
        "pkg-config"
        "zlib"
        "libiconv"
        "util-linux"
        "cargo"
        "clippy"
        "rustfmt"
        "rust-analyzer"
        "cargo-nextest"
        "zstd"
        # a command an inventory names (the module's extraPackages)
        "pass"
        "perl"
        "procps"
      ] (name: mkDrv name { });
    in
    pkgs;

  legacyPackages = lib.genAttrs [
    "x86_64-linux"
    "aarch64-linux"
    "x86_64-darwin"
    "aarch64-darwin"
  ] pkgsFor;
in
{
  inherit lib legacyPackages;
  outPath = toString ./.;
}
