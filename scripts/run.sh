#!/usr/bin/env bash
# Builds rzstack (release) and the test guest image (scripts/make-test-image.sh, cached in
# target/test-guest), then runs `rzstack up`: an all-in-one cloud on this machine (the management
# node on its embedded SQLite at http://127.0.0.1:8080/zstack and the host agent in one process,
# plus a default topology: zone, KVM cluster, this machine as a KVM host, local primary storage,
# an image store holding the test guest, an L2/L3 network with Flat DHCP, an instance offering).
# It prints a ready curl sequence that creates a VM. Data in ./rzstack-data (relative to the
# repository root). Ctrl-C stops it; guests keep running and the next run re-adopts them.
# Arguments are passed to `rzstack up`, e.g. `bash scripts/run.sh --listen 0.0.0.0:8080`.
# Installs what it needs on Debian 12 (run as root); can be run any number of times.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the management node needs, as "package" or "package:command" (a package
# counts as present when dpkg has it installed or its command is on PATH). Add new ones here
# (e.g. qemu-system-x86:qemu-system-x86_64 dnsmasq swtpm).
PACKAGES=(
    build-essential:cc  # linker for cargo
    pkg-config
    qemu-utils:qemu-img # image checks (qemu-img info)
    qemu-system-x86:qemu-system-x86_64 # the host agent runs guests with QEMU
    dnsmasq-base:dnsmasq # the agent's per-L3 DHCP servers (static leases)
    swtpm # TPM 2.0 for guests with devices.tpm.enable
    iproute2:ip # bridges, taps
    curl # the printed commands
)

install_packages() {
    local entry pkg cmd missing=()
    for entry in "${PACKAGES[@]}"; do
        pkg=${entry%%:*}
        cmd=${entry#*:}
        [ "$cmd" = "$entry" ] && cmd=$pkg
        if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then continue; fi
        command -v "$cmd" >/dev/null 2>&1 && continue
        missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "==== installing ${missing[*]} ===="
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

install_packages

# a rustup toolchain may not be on PATH in a non-login shell
if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi

echo "==== cargo build --release -p rzstack ===="
cargo build --release -p rzstack

echo "==== scripts/make-test-image.sh target/test-guest ===="
bash scripts/make-test-image.sh target/test-guest

echo "==== rzstack up $* ===="
exec target/release/rzstack up "$@" # --image defaults to target/test-guest/guest.qcow2
