#!/usr/bin/env bash
# Installs the system packages the test suite drives, when a tool they provide is missing.
#   clang            (clang)          rebuild the example Wasm filter to prove the committed
#   wasm-ld          (lld)            binary is current
#   wasm-objdump     (wabt)           check the filter's proxy-wasm ABI surface
#   docker-registry  (docker-registry) a real OCI registry (distribution) the OCI tests start
#                                     on loopback (htpasswd files are written with the bcrypt
#                                     wheel, so no apache2-utils)
#   docker-compose   (docker-compose) `docker-compose config` validates docker-compose.yml
#                                     (no Docker engine is needed or used; tests/packaging)
# The tools are looked for on PATH, so however they were installed they count; only
# what is missing is named by its Debian package. Without root (and without
# sudo) it prints, on one line, the command to run instead.
set -euo pipefail

tools=(clang:clang wasm-ld:lld wasm-objdump:wabt docker-registry:docker-registry
    docker-compose:docker-compose)
missing=()
for tool in "${tools[@]}"; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
done
((${#missing[@]})) || exit 0

install="apt-get install -y --no-install-recommends ${missing[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
    echo "make test needs these tools; install the packages (Debian names: ${missing[*]})" \
        "with your package manager and run make test again" >&2
    exit 1
fi
sudo=()
if [[ $(id -u) -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "make test needs system packages; as root run: apt-get update && $install" >&2
        exit 1
    fi
    if ! sudo -n true 2>/dev/null; then
        echo "make test needs system packages; run: sudo apt-get update && sudo $install" >&2
        exit 1
    fi
    sudo=(sudo -n)
fi
echo "installing system packages for the tests: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
