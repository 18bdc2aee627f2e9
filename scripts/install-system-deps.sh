#!/bin/sh
# Debian packages the tests and benchmarks use: nginx (comparison tests, benchmark backends),
# wrk (benchmarks), curl, openssl (certificates for the registry TLS tests), and gcc with the
# Python headers, which mypyc needs to compile the hot path when .venv is built.
# Installs only what is missing; needs root for apt-get.
set -eu
missing=""
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || missing="$missing nginx-light"
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
command -v curl >/dev/null 2>&1 || missing="$missing curl"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
command -v cc >/dev/null 2>&1 || missing="$missing gcc"
# perl runs nginx-tests (make nginx-tests), git fetches it
command -v prove >/dev/null 2>&1 || missing="$missing perl"
command -v git >/dev/null 2>&1 || missing="$missing git"
include=$(${PYTHON:-python3} -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
[ -f "$include/Python.h" ] || missing="$missing python3-dev"
# shellcheck disable=SC2086
exec sh "$(dirname "$0")/apt-install.sh" $missing
