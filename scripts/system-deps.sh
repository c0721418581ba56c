#!/usr/bin/env bash
# Installs the Debian packages the test suite drives, when any is missing.
#   clang, lld       rebuild the example Wasm filter to prove the committed binary is current
#   wabt             wasm-objdump, to check the filter's proxy-wasm ABI surface
#   docker-registry  a real OCI registry (distribution) the OCI tests start on loopback
#                    (htpasswd files are written with the bcrypt wheel, so no apache2-utils)
#   docker-compose   `docker-compose config` validates docker-compose.yml (no Docker
#                    engine is needed or used; tests/packaging)
# Without root (and without sudo) it prints the one command to run instead.
set -euo pipefail

packages=(clang lld wabt docker-registry docker-compose)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
((${#missing[@]})) || exit 0

if ! command -v apt-get >/dev/null; then
    echo "make test needs these packages (Debian names): ${missing[*]}; install them with your" \
        "package manager and run make test again." >&2
    exit 1
fi
sudo=()
if [[ $(id -u) -ne 0 ]]; then
    if ! sudo -n true 2>/dev/null; then
        echo "make test needs system packages that are missing; run once:" >&2
        echo "    sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
    sudo=(sudo -n)
fi
echo "installing system packages for the tests: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
