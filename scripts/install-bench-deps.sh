#!/bin/sh
# Debian packages only make bench uses: HAProxy and Caddy, the proxies a user would pick
# instead of upsync, measured in the same table. Installs only what is missing; needs root.
set -eu
missing=""
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing="$missing haproxy"
command -v caddy >/dev/null 2>&1 || missing="$missing caddy"
# shellcheck disable=SC2086
exec sh "$(dirname "$0")/apt-install.sh" $missing
