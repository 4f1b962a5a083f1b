# The fleet's NixOS configurations, for both sides of the VM tests: the test
# driver pre-builds every (host, variant) a test deploys with this file, and
# the builder VM evaluates this same file again from the configuration
# repository (flake.nix), with the same nixpkgs and the same arguments, so its
# `nix build` finds every system already in its store and builds nothing.
#
#   nixpkgs   the nixpkgs source, a store path
#   system    "x86_64-linux" or "aarch64-linux"
#   networks  per target, its test node's network settings
#             (`system.build.networkConfig` of nixos/lib/testing/network.nix,
#             through JSON): addresses, /etc/hosts
{
  nixpkgs,
  system,
  networks,
}:
let
  variants = import ./variants.nix;
in
{
  inherit variants;

  # The NixOS system of `host` running `variant`.
  configuration =
    host: variant:
    import "${nixpkgs}/nixos/lib/eval-config.nix" {
      system = null;
      modules = [
        # What a test node is made of besides its own modules: the VM and the
        # test driver's backdoor shell, so that a deployed system keeps
        # running in the test VM and answering the driver.
        "${nixpkgs}/nixos/modules/virtualisation/qemu-vm.nix"
        "${nixpkgs}/nixos/modules/testing/test-instrumentation.nix"
        networks.${host}
        ./target.nix
        variants.${variant}
        { nixpkgs.hostPlatform = system; }
      ];
    };
}
