{
  description = "nixgate: deploy NixOS systems to a fleet over SSH, gate by gate";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: {
        nixgate = pkgs.rustPlatform.buildRustPackage {
          pname = "nixgate";
          version = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).package.version;
          src = self;
          cargoLock.lockFile = ./Cargo.lock;
          # The test suite starts a local fleet (sshd in namespaces, nspawn
          # containers) and needs root: it runs in CI and the VM tests instead.
          doCheck = false;
          meta = {
            description = "Deploy NixOS systems to a fleet over SSH, gate by gate";
            mainProgram = "nixgate";
            license = with pkgs.lib.licenses; [ mit asl20 ];
          };
        };
        default = self.packages.${pkgs.stdenv.hostPlatform.system}.nixgate;
      });

      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = "${self.packages.${pkgs.stdenv.hostPlatform.system}.nixgate}/bin/nixgate";
        };
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [ cargo rustc clippy rustfmt cargo-nextest openssh git zstd ];
        };
      });
    };
}
