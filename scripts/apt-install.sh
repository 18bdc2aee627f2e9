#!/bin/sh
# Installs the Debian packages named as arguments (the callers pass only missing ones), with
# the packaged services kept from starting. Needs root for apt-get.
set -eu
[ "$#" -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: $* (run as root, or: sudo apt-get install $*)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d keeps the packaged services (nginx on port 80, ...) from starting
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
apt-get install -y -qq --no-install-recommends "$@" >/dev/null
