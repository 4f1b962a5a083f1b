# The configuration repository of the VM tests' fleet. lib.nix assembles it
# (this file, configs.nix, target.nix, variants.nix, fleet.json) and the test
# scripts commit variants.json (target -> variant) to it. @nixpkgs@ becomes the
# store path of the tests' nixpkgs, which is in the builder's store: nothing
# is fetched.
{
  description = "nixgate VM tests: the fleet's configuration repository";

  inputs.nixpkgs = {
    url = "path:@nixpkgs@";
    flake = false;
  };

  outputs =
    { self, nixpkgs }:
    let
      fleet = builtins.fromJSON (builtins.readFile ./fleet.json);
      configs = import ./configs.nix {
        nixpkgs = nixpkgs.outPath;
        inherit (fleet) system networks;
      };
      variants = builtins.fromJSON (builtins.readFile ./variants.json);
    in
    {
      # nixosConfigurations.<target>.config.system.build.toplevel
      nixosConfigurations = builtins.mapAttrs configs.configuration variants;
    };
}
