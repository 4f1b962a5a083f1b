{
  description = "nixgate test configuration: NixOS-shaped systems without nixpkgs";

  # Pure flake evaluation has no builtins.currentSystem, so the system is fixed here.
  outputs = { self }: import ./default.nix { system = "x86_64-linux"; };
}
