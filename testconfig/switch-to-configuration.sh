#!/bin/sh
# switch-to-configuration for the nixgate test configuration.
# Behaves like NixOS's at the level nixgate observes: the lock, the pre-switch
# check, /run/current-system, the boot entry, unit (re)starts, dry-activate output,
# exit codes. @...@ placeholders are filled in when the toplevel is built.
set -u
export PATH="/usr/bin:/bin:/usr/sbin:/sbin:${PATH:-}"

toplevel='@out@'
misbehaviour='@misbehaviour@'
slow_seconds='@slowSeconds@'
other_path='@otherPath@'
sw_path='@swPath@'
profile=/nix/var/nix/profiles/system
action="${1:-}"

case "$action" in
  switch|boot|test|dry-activate) ;;
  *)
    echo "Usage: switch-to-configuration [switch|boot|test|dry-activate]" >&2
    exit 1
    ;;
esac

if [ "$misbehaviour" = inhibit ] && [ "${NIXOS_NO_CHECK:-}" != 1 ]; then
  echo "Pre-switch check 'switchInhibitors' failed" >&2
  exit 1
fi

# The fault matrix's knob (tests/fault_matrix_e2e.rs): while
# /nix/var/nixgate-test/slow/switch-<action> holds a number of seconds, this
# action sleeps that long (after the lock, where it takes one), and says so
# in <that file>.hit, so a fault can land while it runs.
slow_knob() {
  knob="/nix/var/nixgate-test/slow/switch-$action"
  [ -f "$knob" ] || return 0
  : >"$knob.hit"
  echo "slow knob: sleeping $(cat "$knob") s in $action" >&2
  sleep "$(cat "$knob")"
}

# sd_booted(3): the host runs systemd iff /run/systemd/system exists.
have_systemd() { [ -d /run/systemd/system ]; }

old_system=$(readlink -f /run/current-system 2>/dev/null || true)

# Classify this configuration's nixgate-test units against the running system.
start_list=""
restart_list=""
stop_list=""
classify_units() {
  for f in "$toplevel"/etc/systemd/system/nixgate-test-*.service; do
    [ -e "$f" ] || continue
    unit=$(basename "$f")
    new_src=$(readlink -f "$f")
    old_src=""
    if [ -n "$old_system" ] && [ -e "$old_system/etc/systemd/system/$unit" ]; then
      old_src=$(readlink -f "$old_system/etc/systemd/system/$unit")
    fi
    if [ -z "$old_src" ]; then
      start_list="$start_list $unit"
    elif [ "$old_src" != "$new_src" ]; then
      restart_list="$restart_list $unit"
    elif have_systemd && ! systemctl is-active --quiet "$unit"; then
      start_list="$start_list $unit"
    fi
  done
  if [ -n "$old_system" ]; then
    for f in "$old_system"/etc/systemd/system/nixgate-test-*.service; do
      [ -e "$f" ] || continue
      unit=$(basename "$f")
      [ -e "$toplevel/etc/systemd/system/$unit" ] || stop_list="$stop_list $unit"
    done
  fi
}

# "a b c" -> "a, b, c"
commas() { echo "$1" | sed 's/^ *//; s/ /, /g'; }

print_plan() {
  if [ "$1" = would ]; then
    stop="would stop"; restart="would restart"; start="would start"
  else
    stop="stopping"; restart="restarting"; start="starting"
  fi
  [ -z "$stop_list" ] || echo "$stop the following units: $(commas "$stop_list")" >&2
  [ -z "$restart_list" ] || echo "$restart the following units: $(commas "$restart_list")" >&2
  [ -z "$start_list" ] || echo "$start the following units: $(commas "$start_list")" >&2
}

if [ "$action" = dry-activate ]; then
  slow_knob
  classify_units
  print_plan would
  exit 0
fi

mkdir -p /run/nixos
exec 9>>/run/nixos/switch-to-configuration.lock
flock 9
slow_knob

case "$misbehaviour" in
  fail)
    echo "error: activation script failed (misbehaviour=fail)" >&2
    exit 1
    ;;
  slow)
    echo "slow: sleeping $slow_seconds seconds before switching" >&2
    sleep "$slow_seconds"
    ;;
esac

install_bootloader() {
  # The host's boot partition full (a file the test writes: the ESP is the
  # host's, not the configuration's): switch-to-configuration-ng's words.
  if [ -e /nix/var/nixgate-test/boot-full ]; then
    echo "cp: error writing '/boot/EFI/nixos/kernel.efi': No space left on device" >&2
    echo "Failed to install bootloader" >&2
    exit 1
  fi
  if [ ! -L "$profile" ]; then
    echo "Failed to install bootloader: $profile does not exist" >&2
    exit 1
  fi
  link=$(readlink "$profile")
  gen=${link#system-}
  gen=${gen%-link}
  case "$gen" in
    ''|*[!0-9]*)
      echo "Failed to install bootloader: cannot read a generation number from $profile -> $link" >&2
      exit 1
      ;;
  esac
  target=$(readlink -f "$profile")
  if [ "$target" != "$toplevel" ]; then
    echo "warning: $profile points to $target, not to $toplevel; the boot default follows the profile" >&2
  fi
  mkdir -p /boot/nixgate-test/entries
  ln -sfn "$target" "/boot/nixgate-test/entries/nixos-generation-$gen.tmp$$"
  mv -T "/boot/nixgate-test/entries/nixos-generation-$gen.tmp$$" "/boot/nixgate-test/entries/nixos-generation-$gen"
  ln -sfn "entries/nixos-generation-$gen" "/boot/nixgate-test/default.tmp$$"
  mv -T "/boot/nixgate-test/default.tmp$$" /boot/nixgate-test/default
}

set_current_system() {
  ln -sfn "$1" "/run/current-system.tmp$$"
  mv -T "/run/current-system.tmp$$" /run/current-system
}

if [ "$action" = boot ] || [ "$action" = switch ]; then
  install_bootloader
fi

if [ "$action" = boot ]; then
  exit 0
fi

# test | switch: activate.
classify_units
echo "activating the configuration..." >&2

case "$misbehaviour" in
  hang)
    echo "hang: never finishing (misbehaviour=hang)" >&2
    while :; do sleep 3600; done
    ;;
  flip)
    set_current_system "$other_path"
    echo "flip: /run/current-system now points at $other_path" >&2
    exit 0
    ;;
esac

set_current_system "$toplevel"

if have_systemd; then
  print_plan now
  for unit in $stop_list; do
    systemctl stop "$unit" || true
    rm -f "/run/systemd/system/$unit"
  done
  for f in "$toplevel"/etc/systemd/system/nixgate-test-*.service; do
    [ -e "$f" ] || continue
    ln -sfn "$(readlink -f "$f")" "/run/systemd/system/$(basename "$f")"
  done
  systemctl daemon-reload
  failed=""
  for unit in $restart_list; do
    systemctl restart "$unit" || failed="$failed $unit"
  done
  for unit in $start_list; do
    systemctl start "$unit" || failed="$failed $unit"
  done
  if [ -n "$failed" ]; then
    echo "warning: the following units failed:$failed" >&2
    exit 4
  fi
fi

# The host's SSH server, as a configuration leaves it (real-systemd test
# hosts: Debian's ssh.service, configured by the fleet's drop-in). Three
# configurations cut the controller off, the way a bad deploy does; every
# other one leaves sshd as the fleet set it up.
ssh_dropin=/etc/ssh/sshd_config.d/nixgate.conf
ssh_deny=/etc/ssh/sshd_config.d/zz-nixgate-test-deny.conf
ssh_moved=/run/nixgate-test-sshd-moved.conf
if have_systemd; then
  case "$misbehaviour" in
    stop-sshd)
      echo "stop-sshd: stopping ssh.service (established sessions stay)" >&2
      systemctl stop ssh.service
      ;;
    deny-ssh)
      echo "deny-ssh: new SSH logins refused (established sessions stay)" >&2
      echo "DenyUsers *" >"$ssh_deny"
      systemctl reload ssh.service
      ;;
    move-ssh)
      echo "move-ssh: sshd now listens on port 2222 only" >&2
      sed -e 's/^\(ListenAddress .*\):[0-9]*$/\1:2222/' "$ssh_dropin" >"$ssh_moved"
      echo "PidFile /run/nixgate-test-sshd-moved.pid" >>"$ssh_moved"
      systemctl stop ssh.service
      mkdir -p /run/sshd
      systemd-run --unit=nixgate-test-sshd-moved --collect /usr/sbin/sshd -D -f "$ssh_moved" >/dev/null 2>&1
      ;;
    *)
      if [ -e "$ssh_deny" ]; then
        rm -f "$ssh_deny"
        systemctl reload ssh.service
      fi
      if systemctl is-active --quiet nixgate-test-sshd-moved.service; then
        systemctl stop nixgate-test-sshd-moved.service
      fi
      systemctl is-active --quiet ssh.service || systemctl start ssh.service
      ;;
  esac
fi

case "$misbehaviour" in
  exit4)
    echo "warning: the following units failed: nixgate-test-broken.service" >&2
    echo "" >&2
    echo "× nixgate-test-broken.service - nixgate test broken unit" >&2
    echo "     Active: failed (Result: exit-code)" >&2
    exit 4
    ;;
  repoint-profile)
    ln -sfn "$sw_path" "$profile.tmp$$"
    mv -T "$profile.tmp$$" "$profile"
    echo "repoint-profile: $profile now points at $sw_path" >&2
    ;;
esac

exit 0
