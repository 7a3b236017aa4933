#!/usr/bin/env bash
# Runs the official ZStack Java SDK (org.zstack.sdk) against a fresh rzstack management node:
# login, a simulator topology, CreateVmInstance (+ failing creates), QueryVmInstance, the VM
# lifecycle, snapshots, CreateVmInstanceFromVolumeSnapshot, async call(Completion) and web hooks.
# The check program is scripts/sdk-check/SdkCheck.java; it prints PASS/FAIL per check.
#
# usage: scripts/sdk-check.sh <zstack source checkout | bare git dir of zstackio/zstack>
#
# The ZStack source is never downloaded here: pass a checkout you already have. Its SDK is
# compiled in a scratch directory (SDK_CHECK_WORK, default a new temp dir) and never copied into
# this repository. Needs javac (17+), qemu-img and Debian's jars:
#   apt-get install libokhttp-java libokio-java libgoogle-gson-java libcommons-beanutils-java \
#       libcommons-codec-java libservlet-api-java libcommons-logging-java libcommons-collections3-java
# RZSTACK_BIN: the rzstack binary to run (default: cargo build -p rzstack, target/debug/rzstack).
set -euo pipefail

src=${1:?usage: $0 <zstack source checkout or bare git dir>}
here=$(cd "$(dirname "$0")/.." && pwd)
work=${SDK_CHECK_WORK:-$(mktemp -d /tmp/sdk-check.XXXXXX)}
mkdir -p "$work"
echo "work directory: $work"

# 1. the SDK sources
rm -rf "$work/sdk-src" && mkdir -p "$work/sdk-src"
if [ -d "$src/sdk/src/main/java/org/zstack/sdk" ]; then
    cp -r "$src/sdk/src/main/java/." "$work/sdk-src/"
    commit=$(git -C "$src" rev-parse HEAD 2>/dev/null || echo unknown)
elif git --git-dir="$src" rev-parse --verify -q HEAD >/dev/null; then
    git --git-dir="$src" archive HEAD sdk/src/main/java | tar -x -C "$work/sdk-src" --strip-components=4
    commit=$(git --git-dir="$src" rev-parse HEAD)
else
    echo "$src: neither a checkout with sdk/src/main/java nor a git dir" >&2
    exit 2
fi
echo "ZStack source commit: $commit"
# SourceClassMap.java sits at the root of the source dir but declares package org.zstack.sdk
mv "$work/sdk-src/SourceClassMap.java" "$work/sdk-src/org/zstack/sdk/SourceClassMap.java"

# 2. compile the whole SDK (the schema map loads SDK classes by name, so a subset is not enough)
J=/usr/share/java
cp=""
for jar in okhttp okio gson commons-beanutils commons-codec servlet-api commons-logging commons-collections3; do
    [ -f "$J/$jar.jar" ] || { echo "missing $J/$jar.jar (see the apt-get line at the top)" >&2; exit 2; }
    cp="$cp:$J/$jar.jar"
done
cp=${cp#:}
if [ ! -f "$work/classes/.done-$commit" ]; then
    rm -rf "$work/classes" && mkdir -p "$work/classes"
    find "$work/sdk-src" -name '*.java' >"$work/files.txt"
    echo "compiling $(wc -l <"$work/files.txt") SDK files"
    javac -J-Xmx1g -nowarn -encoding UTF-8 -d "$work/classes" -cp "$cp" @"$work/files.txt" 2>&1 | grep -v '^Note:' || true
    touch "$work/classes/.done-$commit"
fi
mkdir -p "$work/check"
javac -nowarn -d "$work/check" -cp "$work/classes:$cp" "$here/scripts/sdk-check/SdkCheck.java"

# 3. a fresh management node
bin=${RZSTACK_BIN:-}
if [ -z "$bin" ]; then
    (cd "$here" && cargo build -p rzstack)
    bin="$here/target/debug/rzstack"
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
rm -rf "$work/mn" && mkdir -p "$work/mn"
"$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/mn" >"$work/mn.log" 2>&1 &
mn=$!
trap 'kill $mn 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/zstack/v1/management-nodes/ready" >/dev/null && break
    sleep 0.1
done

# 4. the check
qemu-img create -q -f qcow2 "$work/image.qcow2" 64M
java -cp "$work/classes:$cp:$work/check" SdkCheck 127.0.0.1 "$port" "$work/image.qcow2"
