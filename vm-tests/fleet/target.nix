# What every target is: as a test node (lib.nix) and in every system nixgate
# deploys to it (configs.nix). sshd for nixgate; switch-to-configuration;
# no boot loader (test VMs boot their kernel directly; `switch-to-configuration
# boot` then only moves the system profile); room on disk for closures.
{ ... }:
{
  services.openssh.enable = true;

  # Test nodes leave switch-to-configuration out unless told otherwise.
  system.switch.enable = true;

  boot.loader.grub.enable = false;

  documentation.enable = false;

  virtualisation = {
    memorySize = 1536;
    diskSize = 4096;
    # Closures copied in go to the disk, not to RAM.
    writableStoreUseTmpfs = false;
  };

  # A switch never restarts the test driver's shell on the machine.
  systemd.services.backdoor.restartIfChanged = false;
}
