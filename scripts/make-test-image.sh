#!/usr/bin/env bash
# Builds the rzstack test guest: a small qcow2 disk that boots through the firmware like any
# cloud image (SeaBIOS -> syslinux MBR -> SYSLINUX on a FAT partition -> Debian cloud kernel +
# busybox initramfs). Nothing image-specific is needed on the QEMU command line.
#
# On boot the guest (its /init, serial console ttyS0):
#   - opens the ACPI power button first, then on a press prints RZSTACK-GUEST-POWEROFF and
#     powers off;
#   - prints RZSTACK-GUEST-BOOTED uptime=<s>;
#   - runs DHCP on every NIC: RZSTACK-GUEST-NIC <if> mac=<mac> ip=<address|none>;
#   - lists its block devices: RZSTACK-GUEST-DISK <name> size=<bytes>;
#   - RZSTACK-GUEST-TPM <device> when a TPM is there;
#   - prints RZSTACK-GUEST-UP ip=<first address, or none>;
#   - with user data (QEMU fw_cfg opt/rzstack/userdata) words ping=<ip>: pings each and prints
#     RZSTACK-GUEST-PING-OK <ip> tries=<n> or RZSTACK-GUEST-PING-FAIL <ip>;
#   - then waits for the power button.
#
# Usage: scripts/make-test-image.sh [OUTDIR]   (default: target/test-guest)
# Output: OUTDIR/guest.qcow2 and OUTDIR/manifest.txt. The downloaded .debs are cached in
# OUTDIR/debs. Idempotent: an image built by this same script is kept as it is.
# Needs: apt-get (Debian 12 package lists), dpkg-deb, tar, gzip, qemu-img. Installs nothing,
# needs no root, no loop device, no mount.
set -euo pipefail

OUT=${1:-target/test-guest}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SCRIPT_HASH=$(sha256sum "$0" | cut -d' ' -f1)

if [ -f "$OUT/guest.qcow2" ] && grep -qx "script-sha256=$SCRIPT_HASH" "$OUT/manifest.txt" 2>/dev/null; then
    echo "$OUT/guest.qcow2 (up to date)"
    exit 0
fi

for tool in apt-get apt-cache dpkg-deb tar gzip qemu-img; do
    command -v "$tool" >/dev/null || { echo "make-test-image: $tool is missing" >&2; exit 1; }
done

DEBS="$OUT/debs"
mkdir -p "$DEBS"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# ---- packages: the versioned kernel behind the cloud metapackage, busybox, syslinux, mtools
resolve_kernel() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'
}
KPKG=$(resolve_kernel || true)
if [ -z "$KPKG" ]; then
    apt-get update -q >/dev/null
    KPKG=$(resolve_kernel)
fi
[ -n "$KPKG" ] || { echo "make-test-image: cannot resolve linux-image-cloud-amd64" >&2; exit 1; }
PKGS=("$KPKG" busybox-static syslinux syslinux-common mtools)

fetch() {
    local pkg=$1
    if ! ls "$DEBS/${pkg}"_*.deb >/dev/null 2>&1; then
        (cd "$DEBS" && apt-get download -q "$pkg" >/dev/null 2>&1) ||
            { apt-get update -q >/dev/null && (cd "$DEBS" && apt-get download -q "$pkg" >/dev/null); }
    fi
    ls "$DEBS/${pkg}"_*.deb | tail -1
}
for p in "${PKGS[@]}"; do
    mkdir -p "$WORK/pkg/$p"
    dpkg-deb -x "$(fetch "$p")" "$WORK/pkg/$p"
done
KDIR="$WORK/pkg/$KPKG"
BB="$WORK/pkg/busybox-static/bin/busybox"
SYSLINUX_BIN="$WORK/pkg/syslinux/usr/bin/syslinux"
MTOOLS_BIN="$WORK/pkg/mtools/usr/bin"
MBR="$WORK/pkg/syslinux-common/usr/lib/syslinux/mbr/mbr.bin"
VMLINUZ=$(ls "$KDIR"/boot/vmlinuz-* | head -1)
KVER=${VMLINUZ##*/vmlinuz-}

# ---- initramfs: busybox, the modules the guest needs, /init
ROOT="$WORK/root"
mkdir -p "$ROOT"/{bin,sbin,dev,proc,sys,tmp,etc,usr/bin,usr/sbin,lib/modules/"$KVER"}
cp "$BB" "$ROOT/bin/busybox"
for app in $("$BB" --list); do
    [ "$app" = busybox ] || ln -sf busybox "$ROOT/bin/$app"
done
ln -sf ../bin/busybox "$ROOT/sbin/modprobe"
MODSRC="$KDIR/lib/modules/$KVER"
MODS="drivers/virtio drivers/net/virtio_net.ko drivers/net/net_failover.ko net/core/failover.ko
      drivers/block/virtio_blk.ko drivers/scsi/virtio_scsi.ko drivers/scsi/sd_mod.ko drivers/acpi/button.ko
      drivers/input/evdev.ko drivers/char/tpm drivers/firmware/qemu_fw_cfg.ko drivers/char/hw_random/virtio-rng.ko
      drivers/nvme lib/crc64.ko lib/crc-t10dif.ko crypto/crct10dif_common.ko crypto/crct10dif_generic.ko
      block/t10-pi.ko"
for m in $MODS; do
    if [ -e "$MODSRC/kernel/$m" ]; then
        mkdir -p "$ROOT/lib/modules/$KVER/kernel/$(dirname "$m")"
        cp -r "$MODSRC/kernel/$m" "$ROOT/lib/modules/$KVER/kernel/$(dirname "$m")/"
    fi
done
cp "$MODSRC"/modules.builtin* "$MODSRC"/modules.order "$ROOT/lib/modules/$KVER/" 2>/dev/null || true
"$BB" depmod -b "$ROOT" "$KVER"

cat >"$ROOT/init" <<'INIT'
#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
for m in virtio_pci virtio_net virtio_blk virtio_scsi sd_mod virtio-rng button evdev qemu_fw_cfg tpm_crb tpm_tis; do
    modprobe "$m" 2>/dev/null
done
# The ACPI power button appears asynchronously: open it before announcing anything.
btn=""
i=0
while [ -z "$btn" ] && [ $i -lt 50 ]; do
    for e in /sys/class/input/event*; do
        [ "$(cat "$e/device/name" 2>/dev/null)" = "Power Button" ] && btn=/dev/input/${e##*/}
    done
    [ -z "$btn" ] && sleep 0.1
    i=$((i + 1))
done
if [ -n "$btn" ]; then
    (head -c 1 "$btn" >/dev/null; echo "RZSTACK-GUEST-POWEROFF"; sync; poweroff -f) &
else
    echo "RZSTACK-GUEST-NO-POWER-BUTTON"
fi
echo "RZSTACK-GUEST-BOOTED uptime=$(cut -d' ' -f1 /proc/uptime)"
cat >/tmp/dhcp.sh <<'EOF'
#!/bin/sh
case "$1" in
bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    echo "$ip" >"/tmp/ip.$interface"
    ;;
esac
exit 0
EOF
chmod +x /tmp/dhcp.sh
ip link set lo up
first=""
for n in /sys/class/net/*; do
    i=${n##*/}
    [ "$i" = lo ] && continue
    ip link set "$i" up
    udhcpc -i "$i" -n -q -t 10 -T 1 -s /tmp/dhcp.sh >/dev/null 2>&1
    a=$(cat "/tmp/ip.$i" 2>/dev/null)
    echo "RZSTACK-GUEST-NIC $i mac=$(cat "$n/address") ip=${a:-none}"
    [ -z "$first" ] && [ -n "$a" ] && first=$a
done
for b in /sys/block/*; do
    d=${b##*/}
    case "$d" in loop*|ram*) continue ;; esac
    echo "RZSTACK-GUEST-DISK $d size=$(($(cat "$b/size") * 512))"
done
for t in /dev/tpm0 /dev/tpmrm0; do
    [ -e "$t" ] && echo "RZSTACK-GUEST-TPM $t"
done
echo "RZSTACK-GUEST-UP ip=${first:-none}"
# User data (QEMU firmware config opt/rzstack/userdata): words ping=<ip> make the guest ping
# that address (retrying for about a minute, the peer may still be booting).
ud=/sys/firmware/qemu_fw_cfg/by_name/opt/rzstack/userdata/raw
if [ -r "$ud" ]; then
    for w in $(cat "$ud"); do
        case "$w" in
        ping=*)
            t=${w#ping=}
            n=0
            until ping -c 1 -W 1 "$t" >/dev/null 2>&1; do
                n=$((n + 1))
                [ $n -ge 60 ] && break
                sleep 1
            done
            if [ $n -lt 60 ]; then echo "RZSTACK-GUEST-PING-OK $t tries=$((n + 1))"; else echo "RZSTACK-GUEST-PING-FAIL $t"; fi
            ;;
        esac
    done
fi
while true; do sleep 3600; done
INIT
chmod +x "$ROOT/init"
(cd "$ROOT" && find . | "$BB" cpio -o -H newc -R 0:0 2>/dev/null | gzip -9) >"$WORK/initrd.gz"

# ---- disk: MBR + one active FAT16 partition (sector 2048, 32 MiB) holding SYSLINUX and the boot files
DISK="$WORK/disk.raw"
PART_START=2048
PART_SECTORS=65536
truncate -s $(((PART_START + PART_SECTORS) * 512)) "$DISK"
dd if="$MBR" of="$DISK" bs=440 count=1 conv=notrunc status=none
le32() { printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 & 255)) $((($1 >> 8) & 255)) $((($1 >> 16) & 255)) $((($1 >> 24) & 255)); }
{
    printf '\x72\x7a\x73\x74\x00\x00'                 # disk id, reserved
    printf '\x80\xfe\xff\xff\x0e\xfe\xff\xff'         # active, CHS (LBA only), type 0x0e FAT16 LBA, CHS
    printf "$(le32 $PART_START)$(le32 $PART_SECTORS)" # first sector, sector count
    head -c 48 /dev/zero                              # partitions 2-4: none
    printf '\x55\xaa'
} | dd of="$DISK" bs=1 seek=440 conv=notrunc status=none
cat >"$WORK/syslinux.cfg" <<'CFG'
SERIAL 0 115200
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  LINUX /vmlinuz
  INITRD /initrd.gz
  APPEND console=ttyS0 quiet no_timer_check panic=-1
CFG
cp "$VMLINUZ" "$WORK/vmlinuz"
OFF=$((PART_START * 512))
export PATH="$MTOOLS_BIN:$PATH" MTOOLS_SKIP_CHECK=1
mformat -i "$DISK@@$OFF" -T $PART_SECTORS -H $PART_START -h 255 -s 63 -v RZBOOT ::
mcopy -i "$DISK@@$OFF" "$WORK/vmlinuz" "$WORK/initrd.gz" "$WORK/syslinux.cfg" ::/
"$SYSLINUX_BIN" --offset "$OFF" --install "$DISK"

qemu-img convert -f raw -O qcow2 "$DISK" "$WORK/guest.qcow2"
{
    echo "kernel=$KPKG ($KVER)"
    for p in busybox-static syslinux mtools; do echo "$p=$(basename "$(fetch "$p")")"; done
    echo "markers=RZSTACK-GUEST-BOOTED RZSTACK-GUEST-NIC RZSTACK-GUEST-DISK RZSTACK-GUEST-TPM RZSTACK-GUEST-UP RZSTACK-GUEST-PING-OK RZSTACK-GUEST-PING-FAIL RZSTACK-GUEST-POWEROFF"
    echo "script-sha256=$SCRIPT_HASH"
} >"$WORK/manifest.txt"
mv -f "$WORK/guest.qcow2" "$OUT/guest.qcow2"
mv -f "$WORK/manifest.txt" "$OUT/manifest.txt"
echo "$OUT/guest.qcow2"
