#!/usr/bin/env bash
# Build rzstack and run the management node on its embedded SQLite default
# (http://127.0.0.1:8080/zstack, data in ./rzstack-data). Extra arguments go to `rzstack serve`.
# Installs what it needs on Debian 12 (as root) and can be run any number of times.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the main job needs (the host agent will add qemu-system-x86, dnsmasq, swtpm).
PACKAGES=(qemu-utils)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

cargo build --release -p rzstack
exec target/release/rzstack serve "$@"
