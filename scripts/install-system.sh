#!/usr/bin/env bash
# Install the Debian packages the test suite's real servers need (Samba AD DC, slapd, Postfix,
# Dovecot, mail clients), listed one per line in .ci/apt/*.txt. Needs root; does nothing when
# everything is already installed. Services are never started by the packages (policy-rc.d).
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t packages < <(cat .ci/apt/*.txt | sed 's/#.*//' | tr -s ' \t' '\n' | sed '/^$/d' | sort -u)
missing=()
for package in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: ${missing[*]}" >&2
    echo "run this script as root (the test suite provisions real servers)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Packages must not start their own services, nor create a system-wide configuration we'd fight.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
fi
echo 'slapd slapd/no_configuration boolean true' | debconf-set-selections
echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
apt-get -o DPkg::Lock::Timeout=600 update -q
apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
