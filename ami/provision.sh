#!/usr/bin/env bash
# Turns a Debian 12 machine into an sssrd image: the one script the Packer bake (on an EC2
# build instance) and the local image test (in a booted container) both run, as root.
#
#   provision.sh [--apt-source 'deb [trusted=yes] file:/srv/repo ./'] SSSRD_DEB
#
# --apt-source makes every apt-get call here use that one source instead of the machine's own
# sources (which stay untouched in the image): the local test bakes without network from a
# repository of .debs the host downloaded. The real bake gives no option.
# Idempotent: running it again on a provisioned (or already baked) machine changes nothing
# but the clean-up at the end. The files it installs are in files/ beside it; the Debian
# packages it adds are listed in packages.txt beside it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
die() { echo "provision.sh: $*" >&2; exit 2; }

apt_source=""
while (($#)); do
    case $1 in
        --apt-source) (($# >= 2)) || die "--apt-source needs a value"; apt_source=$2; shift 2 ;;
        --) shift; break ;;
        -*) die "unknown option $1" ;;
        *) break ;;
    esac
done
(($# == 1)) || die "usage: provision.sh [--apt-source LINE] SSSRD_DEB"
deb="$(realpath "$1")"
[[ -f $deb ]] || die "$1 is not a file"
((EUID == 0)) || die "run as root"

# On EC2 the build instance's first boot is still under way when Packer connects: cloud-init
# may be running apt itself (package updates, its own modules), and an apt-get racing it fails
# on "Could not get lock". Wait for cloud-init to finish; where it is absent (the local image
# test's container) there is nothing to wait for. A cloud-init that finished with errors is
# reported and the bake goes on: what matters here is that it no longer holds apt.
if command -v cloud-init >/dev/null; then
    cloud-init status --wait >/dev/null \
        || echo "provision.sh: cloud-init finished with errors ($(cloud-init status 2>&1 | tr '\n' ' '))" >&2
fi

export DEBIAN_FRONTEND=noninteractive
# Anything else holding dpkg's lock (apt-daily, unattended-upgrades) is waited for, up to ten
# minutes, rather than failing the bake at once.
apt_options=(-q -y -o DPkg::Lock::Timeout=600
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
if [[ -n $apt_source ]]; then
    # Replace, not add to, the machine's sources: those are unreachable where this is used.
    echo "$apt_source" > "$scratch/sources.list"
    mkdir "$scratch/sources.list.d"
    apt_options+=(-o "Dir::Etc::SourceList=$scratch/sources.list"
        -o "Dir::Etc::SourceParts=$scratch/sources.list.d")
fi
apt_get() { apt-get "${apt_options[@]}" "$@"; }

# Security updates: the image is what every instance boots, so it carries every fix published
# up to the bake (Debian stable's updates are security and serious fixes only). full-upgrade
# so that a kernel update's new ABI package is installed too; the next boot (every instance's
# first) runs it.
# The lists lock (apt-get update's) is not covered by DPkg::Lock::Timeout on every apt: a few
# bounded tries; an update run twice is the same update.
for attempt in 1 2 3 4 5 6; do
    apt_get update && break
    ((attempt < 6)) || die "apt-get update failed $attempt times"
    sleep 10
done
apt_get full-upgrade

# sssrd itself, and the packages packages.txt names: prometheus-node-exporter (host metrics on
# :9100, scraped next to sssrd's own /metrics) and chrony (see the time sync step).
# No recommends: an image carries what it runs, nothing else.
mapfile -t packages < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' -e 's/[[:space:]]//g' \
    "$here/packages.txt")
apt_get install --no-install-recommends "$deb" "${packages[@]}"

# Kernel settings for tens of thousands of held connections (files/etc/sysctl.d, each with
# why), journald limits (the access log is one line per request) and the time sync source.
while IFS= read -r -d '' file; do
    install -D -m 0644 "$file" "/${file#"$here/files/"}"
done < <(find "$here/files" -type f -print0)
# Applied now as well as at every boot: a key this kernel lacks fails the bake, not the fleet.
sysctl --quiet --load=/etc/sysctl.d/60-sssrd.conf

# Time sync: SigV4 signatures are refused when the clock is more than 5 minutes off, and every
# invoke is signed. chrony (installed above) asks the Amazon Time Sync Service at the
# link-local 169.254.169.123, which answers in private subnets with no route out
# (files/etc/chrony/sources.d/aws-time-sync.sources).
systemctl enable chrony.service

# sssrd must never pass the ALB health check with the placeholder config, so the image holds
# no /etc/sssrd/sssrd.toml at all: the drop-in files/etc/systemd/system/sssrd.service.d/
# 60-wait-for-user-data.conf makes the unit skip (not fail) while it is missing, and user data
# writes it and restarts sssrd. The package's commented default is kept beside it as
# sssrd.toml.example. Only the untouched placeholder is moved: a config someone wrote stays.
packaged_config_md5="$(dpkg-query -W -f='${Conffiles}' sssrd | awk '$1 == "/etc/sssrd/sssrd.toml" { print $2 }')"
if [[ -f /etc/sssrd/sssrd.toml ]] \
    && [[ $(md5sum < /etc/sssrd/sssrd.toml | cut -d' ' -f1) == "$packaged_config_md5" ]]; then
    mv /etc/sssrd/sssrd.toml /etc/sssrd/sssrd.toml.example
fi
systemctl daemon-reload
# The package enables sssrd on a fresh install; said again so a re-run repairs a disabled one.
systemctl enable sssrd.service prometheus-node-exporter.service

# Clean up, so that every instance launched from the image is its own machine.
# - APT's lists and downloaded .debs: stale from the first day, and half the root's churn.
apt_get clean
rm -rf /var/lib/apt/lists/*
# - cloud-init's record of the build instance, so every instance runs its first boot
#   (including the user data) as a new instance.
if command -v cloud-init >/dev/null; then
    cloud-init clean --logs
fi
# - SSH host keys: each instance must have its own (cloud-init makes them at first boot).
rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
# - Secrets systemd made for this machine: the random seed (every instance would start from
#   the same entropy, and credit it) and the credential encryption key. The seed's service is
#   stopped first: it saves a fresh seed when stopped, and would at the stop Packer does next.
systemctl stop systemd-random-seed.service
rm -f /var/lib/systemd/random-seed /var/lib/systemd/credential.secret
# - The build instance's DHCP leases.
rm -f /var/lib/dhcp/*.leases
# - Logs: the build's own lines are no instance's history. journald is told to keep what it
#   logs from now on (the rest of the bake, the shutdown) in /run, which does not reach the
#   image, and its files on disk are removed; text logs are emptied in place (daemons may hold
#   them open).
journalctl --relinquish-var
rm -rf /var/log/journal/*
find /var/log -type f ! -path '/var/log/journal/*' \( -name '*.gz' -o -name '*.[0-9]' \) -delete
find /var/log -type f ! -path '/var/log/journal/*' -exec truncate --size=0 {} +
# - The machine-id, last: emptied (not removed) so systemd makes a new one at each instance's
#   first boot, and treats that boot as the first. D-Bus's copy, where it is a file, goes too.
truncate --size=0 /etc/machine-id
if [[ -f /var/lib/dbus/machine-id && ! -L /var/lib/dbus/machine-id ]]; then
    rm -f /var/lib/dbus/machine-id
fi
echo "provision.sh: done"
