{
  description = "nixgate: deploy NixOS systems to a fleet over SSH, gate by gate";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # The NixOS VM tests (Linux only): see vm-tests/README.md.
      vmTests =
        pkgs:
        let
          nixgate = self.packages.${pkgs.stdenv.hostPlatform.system}.nixgate;
          fleetArgs = {
            inherit pkgs nixgate;
            nixosModule = self.nixosModules.nixgate;
            # The nixpkgs source as a store path: the builder VM evaluates the
            # fleet's configurations from it again (vm-tests/lib.nix).
            nixpkgs = nixpkgs.outPath;
            # Its NAR hash: the fleet repository's flake.lock locks nixpkgs
            # with it (nixgate evaluates purely and never writes a lock).
            nixpkgsNarHash = nixpkgs.narHash;
          };
        in
        {
          vm-check-offline = import ./vm-tests/check-offline.nix { inherit pkgs nixgate; };
          vm-push = import ./vm-tests/push.nix fleetArgs;
          vm-failing-unit = import ./vm-tests/failing-unit.nix fleetArgs;
          vm-kernel-deferred = import ./vm-tests/kernel-deferred.nix fleetArgs;
          vm-rollback = import ./vm-tests/rollback.nix fleetArgs;
        };

      # Evaluates a NixOS system with the module and checks the units it
      # makes, that its system.build.toplevel evaluates (drvPath: instantiated,
      # not built), and that a rollout name that could escape its state
      # directory is refused.
      moduleEval =
        pkgs:
        let
          inventory = "/etc/nixgate/inventory.toml";
          nixosWith =
            nixgate:
            lib.nixosSystem {
              inherit (pkgs.stdenv.hostPlatform) system;
              modules = [
                self.nixosModules.default
                {
                  boot.isContainer = true;
                  system.stateVersion = lib.trivial.release;
                  services.nixgate = {
                    enable = true;
                  }
                  // nixgate;
                }
              ];
            };
          sys = nixosWith {
            sshAuthSock = "/run/nixgate-agent.sock";
            rollouts.web = {
              inherit inventory;
              selector = "--tag=web";
              schedule = "Mon..Fri *-*-* 03:00:00";
              randomizedDelaySec = "15min";
              extraArgs = [
                "--expect"
                "nginx"
              ];
            };
            rollouts.all = { inherit inventory; };
          };
          badName = "../escape";
          bad = nixosWith { rollouts.${badName} = { inherit inventory; }; };
          inherit (sys.config.systemd) services timers units;
          web = services.nixgate-rollout-web;
          expectedArgs = lib.escapeShellArgs [
            "--inventory"
            inventory
            "--state-dir"
            "/var/lib/nixgate/web"
            "push"
            "--yes"
            "--expect"
            "nginx"
            "--tag=web"
          ];
          checks = [
            (lib.hasInfix "/bin/nixgate ${expectedArgs}" web.script)
            (lib.hasInfix "--state-dir /var/lib/nixgate/all push --yes\n" services.nixgate-rollout-all.script)
            (web.serviceConfig.Type == "oneshot")
            (web.serviceConfig.User == "nixgate")
            (web.serviceConfig.ProtectSystem == "strict")
            (web.serviceConfig.PrivateTmp)
            (web.environment.SSH_AUTH_SOCK == "/run/nixgate-agent.sock")
            (timers.nixgate-rollout-web.timerConfig.OnCalendar == "Mon..Fri *-*-* 03:00:00")
            (timers.nixgate-rollout-web.timerConfig.Persistent)
            (timers.nixgate-rollout-web.timerConfig.RandomizedDelaySec == "15min")
            (sys.config.users.users.nixgate.isSystemUser)
            (sys.config.users.users.nixgate.home == "/var/lib/nixgate")
            (lib.all (a: a.assertion) (
              lib.filter (a: lib.hasPrefix "services.nixgate" a.message) sys.config.assertions
            ))
            # The whole system evaluates.
            (lib.hasSuffix ".drv" sys.config.system.build.toplevel.drvPath)
            # The bad name: its assertion fails, so the system does not evaluate.
            (lib.any (
              a: !a.assertion && lib.hasPrefix "services.nixgate.rollouts.${badName}:" a.message
            ) bad.config.assertions)
            (!(builtins.tryEval bad.config.system.build.toplevel.drvPath).success)
          ];
        in
        assert lib.all lib.id checks;
        pkgs.runCommand "nixgate-module-eval"
          {
            # The generated units, for reading (not built: context dropped).
            service = builtins.unsafeDiscardStringContext units."nixgate-rollout-web.service".text;
            timer = builtins.unsafeDiscardStringContext units."nixgate-rollout-web.timer".text;
          }
          ''
            printf '%s\n\n%s\n' "$service" "$timer" > $out
          '';
    in
    {
      packages = forAllSystems (pkgs: {
        nixgate = pkgs.callPackage ./nix/package.nix { };
        default = self.packages.${pkgs.stdenv.hostPlatform.system}.nixgate;
      });

      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = lib.getExe self.packages.${pkgs.stdenv.hostPlatform.system}.nixgate;
          meta.description = "Deploy NixOS systems to a fleet over SSH, gate by gate";
        };
        nixgate = self.apps.${pkgs.stdenv.hostPlatform.system}.default;
      });

      # `final.nixgate`, built with the nixpkgs it is applied to.
      overlays.default = final: prev: {
        nixgate = final.callPackage ./nix/package.nix { };
      };

      # The controller module (nix/module.nix), defaulting to this flake's package.
      nixosModules.nixgate =
        { lib, pkgs, ... }:
        {
          imports = [ ./nix/module.nix ];
          services.nixgate.package = lib.mkDefault (
            self.packages.${pkgs.stdenv.hostPlatform.system}.nixgate
              or (pkgs.callPackage ./nix/package.nix { })
          );
        };
      nixosModules.default = self.nixosModules.nixgate;

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [
            cargo
            rustc
            clippy
            rustfmt
            rust-analyzer
            cargo-nextest
            # libgit2 (vendored by the git2 crate) links zlib
            pkg-config
            zlib
            # what the tests call: ssh-keygen and sshd, git, zstd
            openssh
            git
            zstd
          ];
          RUST_SRC_PATH = "${pkgs.rustPlatform.rustLibSrc}";
        };
      });

      checks = forAllSystems (
        pkgs:
        let
          nixgate = self.packages.${pkgs.stdenv.hostPlatform.system}.nixgate;
        in
        {
          # The package as shipped (no tests).
          package = nixgate;
          # The package again, with `cargo test --lib` in its checkPhase
          # (cargoTestFlags; checkFlags skips the unit tests that need a Nix
          # store): the unit tests that need neither root nor a fleet.
          unit-tests = nixgate.overrideAttrs { doCheck = true; };
        }
        // lib.optionalAttrs pkgs.stdenv.hostPlatform.isLinux (
          {
            module-eval = moduleEval pkgs;
          }
          // vmTests pkgs
        )
      );
    };
}
