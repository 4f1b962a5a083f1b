# Stub of nixpkgs' nixos/modules/virtualisation/qemu-vm.nix: here so that the
# VM tests' fleet repository (vm-tests/fleet/configs.nix) finds the file; its
# options are not declared (nixos/lib/eval-config.nix does not check them).
{ ... }:
{ }
