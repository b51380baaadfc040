#!/usr/bin/env bash
# Build the opsbake test stemcell: a small bootable Debian bookworm disk that behaves
# like a BOSH stemcell where a builder notices, packaged in the real stemcell formats.
# See docs/test-stemcell.md.
#
# Usage: stemcells/build-test-stemcell.sh [OUTDIR]
#   Without OUTDIR the result goes to $(cache_dir test-stemcell HASH), HASH being a
#   hash of everything under stemcells/. When the result is already there, nothing is
#   built: the script only prints the paths. Needs root (debootstrap, chroot).
#
# Environment:
#   OPSBAKE_DEBIAN_MIRROR        the Debian mirror (default: the first deb.debian.org-style
#                                 URI in /etc/apt/sources.list.d/*.sources or sources.list)
#   OPSBAKE_STEMCELL_BASE_TAR    development aid: a tar of the debootstrap result; used
#                                 instead of debootstrap when it exists, written when not.
#
# Prints, as the last line: OPSBAKE_TEST_STEMCELL_DIR=<dir>
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
# shellcheck source=../.ci/lib.sh
. "$REPO/.ci/lib.sh"
cd "$REPO"

HASH=$(hash_inputs stemcells)
OUT=${1:-$(cache_dir test-stemcell "$HASH")}
OUT=$(realpath -m "$OUT")

VERSION=1.0
OS=debian-bookworm
SUITE=bookworm
DISK_MIB=384          # the raw disk (aws-raw, azure-vhd, vSphere VMDK)
GCE_DISK_MIB=1024     # GCE imports need a whole number of GiB: disk.raw is padded
PART_START=63         # one ext4 partition at sector 63, as on a jammy stemcell
ROOT_UUID=$(printf '%s' "$HASH" | sha256sum | sed -E 's/^(.{8})(.{4}).(.{3}).(.{3})(.{12}).*/\1-\2-4\3-a\4-\5/')
PASSWORD=c1oudc0w

print_result() {
    echo "test stemcell in $1:" >&2
    (cd "$1" && ls -l ./*.tgz disk.raw 2>/dev/null) >&2 || true
    echo "OPSBAKE_TEST_STEMCELL_DIR=$1"
}

if [ -f "$OUT/.complete" ]; then
    print_result "$OUT"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "build-test-stemcell.sh: needs root (debootstrap, chroot)" >&2
    exit 1
fi
for tool in debootstrap qemu-img sfdisk mkfs.ext4 grub-mkimage sha1sum gzip tar; do
    command -v "$tool" >/dev/null || { echo "build-test-stemcell.sh: $tool is missing (run .ci/setup.d/20-test-stemcell.sh)" >&2; exit 1; }
done
GRUB_LIB=/usr/lib/grub/i386-pc
[ -f "$GRUB_LIB/boot.img" ] || { echo "build-test-stemcell.sh: $GRUB_LIB is missing (grub-pc-bin)" >&2; exit 1; }

mirror() {
    if [ -n "${OPSBAKE_DEBIAN_MIRROR:-}" ]; then
        echo "$OPSBAKE_DEBIAN_MIRROR"
        return
    fi
    local m
    m=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -E '/debian/?$' | head -1 || true)
    if [ -z "$m" ]; then
        m=$(grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}' | grep -E '/debian/?$' | head -1 || true)
    fi
    echo "${m:-http://deb.debian.org/debian}"
}

START=$(date +%s)
step() { echo "== test stemcell: $* ($(( $(date +%s) - START ))s)" >&2; }

mkdir -p "$(dirname "$OUT")"
WORK=$(mktemp -d "$OUT.work.XXXXXX")
ROOT=$WORK/root
cleanup() {
    local m
    for m in "$ROOT/proc" "$ROOT/sys" "$ROOT/dev"; do
        if mountpoint -q "$m" 2>/dev/null; then umount -l "$m" || true; fi
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# 1. Debian minbase ------------------------------------------------------------------
# dbus: systemd-logind, so that an ACPI power button (QMP system_powerdown) powers off
PACKAGES=systemd-sysv,udev,kmod,dbus,openssh-server,sudo,busybox,jq,linux-image-cloud-amd64
if [ -n "${OPSBAKE_STEMCELL_BASE_TAR:-}" ] && [ -f "$OPSBAKE_STEMCELL_BASE_TAR" ]; then
    step "unpacking $OPSBAKE_STEMCELL_BASE_TAR"
    mkdir -p "$ROOT"
    tar -C "$ROOT" -xf "$OPSBAKE_STEMCELL_BASE_TAR"
else
    step "debootstrap $SUITE from $(mirror)"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT" "$(mirror)" >"$WORK/debootstrap.log" 2>&1 || {
        tail -30 "$WORK/debootstrap.log" >&2
        echo "build-test-stemcell.sh: debootstrap failed" >&2
        exit 1
    }
    if [ -n "${OPSBAKE_STEMCELL_BASE_TAR:-}" ]; then
        tar -C "$ROOT" -cf "$OPSBAKE_STEMCELL_BASE_TAR" .
    fi
fi

# 2. Stemcell configuration ----------------------------------------------------------
step "configuring"
tar -C stemcells/rootfs --owner=0 --group=0 --numeric-owner -cf - . | tar -C "$ROOT" --no-overwrite-dir -xf -
chmod 0440 "$ROOT/etc/sudoers"
chmod 0700 "$ROOT/root"

KVER=$(basename "$(ls -1 "$ROOT"/boot/vmlinuz-* | sort -V | tail -1)")
KVER=${KVER#vmlinuz-}

in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
HASHED=$(in_root busybox mkpasswd -m sha512 "$PASSWORD" "opsbake.$(printf '%s' "$HASH" | cut -c1-8)")
in_root useradd -m -u 1000 -U -s /bin/bash vcap
for g in bosh_sshers admin bosh_sudoers; do
    in_root groupadd -f "$g"
done
in_root usermod -a -G bosh_sshers,admin,sudo vcap
in_root usermod -p "$HASHED" root
in_root usermod -p "$HASHED" vcap
install -d -m 0700 -o 1000 -g 1000 "$ROOT/home/vcap/.ssh"
install -d -m 0700 "$ROOT/var/vcap/data"
chown -R root:root "$ROOT/var/vcap/bosh"
chmod 0700 "$ROOT/var/vcap/bosh"

in_root systemctl enable firstboot.service firstboot-rsa.service bosh-agent.service >/dev/null 2>&1
in_root systemctl disable apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
    e2scrub_all.timer fstrim.timer e2scrub_reap.service >/dev/null 2>&1 || true
# boot time under emulation: units a small VM does not need
in_root systemctl mask systemd-networkd-wait-online.service getty-static.service systemd-pstore.service \
    modprobe@dm_mod.service modprobe@efi_pstore.service modprobe@fuse.service modprobe@loop.service \
    modprobe@drm.service >/dev/null 2>&1

echo "bosh-stemcell" >"$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
: >"$ROOT/etc/resolv.conf"
: >"$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
cat >"$ROOT/etc/fstab" <<EOF
# <file system> <mount point> <type> <options> <dump> <pass>
UUID=$ROOT_UUID / ext4 defaults,errors=remount-ro 0 0
EOF
# only lo until the agent has settings (STEMCELLS.md section 3)
mkdir -p "$ROOT/etc/network"
printf 'auto lo\niface lo inet loopback\n' >"$ROOT/etc/network/interfaces"

# a small initramfs (etc/initramfs-tools/conf.d: MODULES=list), for a faster boot
mount -t proc proc "$ROOT/proc"
in_root update-initramfs -u -k "$KVER" >"$WORK/initramfs.log" 2>&1 || {
    cat "$WORK/initramfs.log" >&2
    exit 1
}
umount "$ROOT/proc"

# packages.txt and dev_tools_file_list.txt, as the stemcell tarball carries them
in_root dpkg -l >"$WORK/packages.txt"
: >"$WORK/dev_tools_file_list.txt"

# 3. Strip ----------------------------------------------------------------------------
step "stripping"
find "$ROOT/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$ROOT/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* "$ROOT"/usr/share/lintian/* \
    "$ROOT"/var/cache/apt/* "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/debconf/*-old \
    "$ROOT"/var/lib/dpkg/*-old "$ROOT"/boot/*.dpkg-bak "$ROOT"/boot/*.new "$ROOT"/tmp/* "$ROOT"/var/tmp/*
find "$ROOT/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} + 2>/dev/null || true
# drivers a VM on QEMU, VirtualBox, vSphere or the clouds never needs
rm -rf "$ROOT/lib/modules/$KVER/kernel/drivers/infiniband" "$ROOT/lib/modules/$KVER/kernel/net/wireless" \
    "$ROOT/lib/modules/$KVER/kernel/drivers/gpu" "$ROOT/lib/modules/$KVER/kernel/sound"
# Modules stay uncompressed: zstd would save ~65 MiB of disk but costs ~3 s of
# boot under QEMU TCG (decompressing every module udev loads).
in_root depmod -a "$KVER"
find "$ROOT/var/log" -type f -delete
# Host keys and the firstboot marker go together (STEMCELLS.md section 4).
rm -f "$ROOT"/etc/ssh/ssh_host_* "$ROOT/root/firstboot_done"

# 4. Bootloader files (GRUB, BIOS) -------------------------------------------------------
step "bootloader"
CMDLINE="root=UUID=$ROOT_UUID ro console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0"
mkdir -p "$ROOT/boot/grub/i386-pc"
# modules normal mode needs, with their dependencies (moddep.lst)
want="normal linux ext2 part_msdos biosdisk serial terminal echo test search search_fs_uuid gzio"
have=""
while [ -n "$want" ]; do
    set -- $want
    m=$1
    shift
    want="$*"
    case " $have " in *" $m "*) continue ;; esac
    have="$have $m"
    deps=$(awk -v m="$m:" '$1 == m { $1 = ""; print }' "$GRUB_LIB/moddep.lst")
    want="$want $deps"
done
for m in $have; do cp "$GRUB_LIB/$m.mod" "$ROOT/boot/grub/i386-pc/"; done
cp "$GRUB_LIB"/*.lst "$ROOT/boot/grub/i386-pc/"
cat >"$ROOT/boot/grub/grub.cfg" <<EOF
# opsbake test stemcell
set timeout=0
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
search --no-floppy --fs-uuid --set=root $ROOT_UUID
linux /boot/vmlinuz-$KVER $CMDLINE
initrd /boot/initrd.img-$KVER
boot
EOF
cat >"$WORK/early.cfg" <<EOF
search.fs_uuid $ROOT_UUID root
set prefix=(\$root)/boot/grub
EOF
grub-mkimage -O i386-pc -o "$WORK/core.img" -c "$WORK/early.cfg" -p /boot/grub \
    biosdisk part_msdos ext2 search_fs_uuid
core_sectors=$(( ($(stat -c %s "$WORK/core.img") + 511) / 512 ))
if [ "$core_sectors" -ge "$PART_START" ]; then
    echo "build-test-stemcell.sh: GRUB core.img ($core_sectors sectors) does not fit before sector $PART_START" >&2
    exit 1
fi

# 5. The disk: MBR, one ext4 partition, GRUB in the MBR gap ---------------------------------
step "disk image"
DISK=$WORK/disk.raw
truncate -s "${DISK_MIB}M" "$DISK"
printf 'label: dos\nunit: sectors\nstart=%s, type=83, bootable\n' "$PART_START" | sfdisk -q "$DISK"
part_sectors=$(( DISK_MIB * 2048 - PART_START ))
fs_blocks=$(( part_sectors * 512 / 4096 ))
E2FSPROGS_FAKE_TIME=$(date -d 2024-01-01 +%s) mkfs.ext4 -q -F -L root -U "$ROOT_UUID" -m 1 -b 4096 -I 256 -i 8192 \
    -O ^metadata_csum_seed,^orphan_file -E "offset=$(( PART_START * 512 )),hash_seed=$ROOT_UUID" \
    -d "$ROOT" "$DISK" "$fs_blocks" 2>"$WORK/mkfs.log" || {
    cat "$WORK/mkfs.log" >&2
    exit 1
}
dd if="$GRUB_LIB/boot.img" of="$DISK" bs=440 count=1 conv=notrunc status=none
dd if="$WORK/core.img" of="$DISK" bs=512 seek=1 conv=notrunc status=none
USED_MIB=$(( $(du -k "$DISK" | cut -f1) / 1024 ))

# 6. Image formats ---------------------------------------------------------------------------
step "converting"
mkdir -p "$WORK"/{vsphere,aws,google,azure,light-aws}
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized,adapter_type=ide "$DISK" "$WORK/vsphere/image-disk1.vmdk" &
vmdk_pid=$!
qemu-img convert -f raw -O vpc -o subformat=fixed,force_size=on "$DISK" "$WORK/azure/root.vhd"
cp --sparse=always "$DISK" "$WORK/aws/root.img"
cp --sparse=always "$DISK" "$WORK/google/disk.raw"
truncate -s "${GCE_DISK_MIB}M" "$WORK/google/disk.raw"
wait "$vmdk_pid"

sed -e "s/@VMDK_SIZE@/$(stat -c %s "$WORK/vsphere/image-disk1.vmdk")/" \
    -e "s/@DISK_BYTES@/$(( DISK_MIB * 1024 * 1024 ))/" \
    -e "s/@POPULATED_BYTES@/$(( USED_MIB * 1024 * 1024 ))/" \
    stemcells/image.ovf.in >"$WORK/vsphere/image.ovf"
(cd "$WORK/vsphere" && for f in image.ovf image-disk1.vmdk; do
    echo "SHA1($f)= $(sha1sum "$f" | cut -d' ' -f1)"
done) >"$WORK/vsphere/image.mf"

# 7. Stemcell tarballs -------------------------------------------------------------------------
step "packaging"
TAR_OPTS=(--owner=0 --group=0 --numeric-owner --mtime=2024-01-01T00:00:00Z --format=gnu)

# write_mf DIR IAAS HYPERVISOR FORMATS DISK_FORMAT DISK_MIB [EXTRA_CLOUD_PROPERTIES] [BOSH_PROTOCOL]
write_mf() {
    local dir=$1 iaas=$2 hyp=$3 formats=$4 dfmt=$5 dmib=$6 extra=${7:-} proto=${8:-1}
    local name="bosh-$iaas-$hyp-$OS-go_agent"
    local sha
    sha=$(sha1sum "$dir/image" | cut -d' ' -f1)
    cat >"$dir/stemcell.MF" <<EOF
---
name: $name
version: '$VERSION'
bosh_protocol: $proto
api_version: 3
sha1: $sha
operating_system: $OS
stemcell_formats: [$formats]
cloud_properties:
  name: $name
  version: '$VERSION'
  infrastructure: $iaas
  hypervisor: $hyp
  disk: $dmib
  disk_format: $dfmt
  container_format: bare
  os_type: linux
  os_distro: debian
  architecture: x86_64
$extra
EOF
    # drop the empty line an absent EXTRA leaves
    sed -i '/^$/d' "$dir/stemcell.MF"
}

# package DIR TGZ: the stemcell tarball, members in the bosh order, no ./ prefix
package() {
    local dir=$1 tgz=$2
    cp "$WORK/packages.txt" "$WORK/dev_tools_file_list.txt" "$dir/"
    # the image member is compressed already: a fast outer gzip
    tar -C "$dir" "${TAR_OPTS[@]}" -cf - stemcell.MF packages.txt dev_tools_file_list.txt image |
        gzip -n -1 >"$WORK/$tgz"
}

# image_tar DIR MEMBER...: the inner `image` member (a gzip tar)
image_tar() {
    local dir=$1
    shift
    tar -C "$dir" "${TAR_OPTS[@]}" -cf - "$@" | gzip -n -6 >"$dir/image"
    rm -f "${@/#/$dir/}"
}

image_tar "$WORK/vsphere" image.ovf image.mf image-disk1.vmdk &
p1=$!
image_tar "$WORK/aws" root.img &
p2=$!
wait "$p1" "$p2"
image_tar "$WORK/google" disk.raw &
p1=$!
image_tar "$WORK/azure" root.vhd &
p2=$!
wait "$p1" "$p2"
: >"$WORK/light-aws/image"

write_mf "$WORK/vsphere" vsphere esxi "vsphere-ova, vsphere-ovf" ovf "$DISK_MIB"
write_mf "$WORK/aws" aws xen-hvm aws-raw raw "$DISK_MIB" '  root_device_name: /dev/sda1'
# the MF says hypervisor xen for AWS while the file name says xen-hvm
sed -i 's/^  hypervisor: xen-hvm$/  hypervisor: xen/' "$WORK/aws/stemcell.MF"
write_mf "$WORK/google" google kvm google-rawdisk rawdisk "$GCE_DISK_MIB"
write_mf "$WORK/azure" azure hyperv azure-vhd vhd "$DISK_MIB"
amis=$(grep -E '^  [a-z0-9-]+: ami-[0-9a-f]+$' stemcells/light-aws.yml)
[ -n "$amis" ] || { echo "build-test-stemcell.sh: no AMI ids in stemcells/light-aws.yml" >&2; exit 1; }
write_mf "$WORK/light-aws" aws xen-hvm aws-light raw "$DISK_MIB" \
    "  root_device_name: /dev/sda1
  ami:
$(echo "$amis" | sed 's/^/  /')" "'1'"
sed -i 's/^  hypervisor: xen-hvm$/  hypervisor: xen/' "$WORK/light-aws/stemcell.MF"

package "$WORK/vsphere" "bosh-stemcell-$VERSION-vsphere-esxi-$OS-go_agent.tgz" &
p1=$!
package "$WORK/aws" "bosh-stemcell-$VERSION-aws-xen-hvm-$OS-go_agent.tgz" &
p2=$!
wait "$p1" "$p2"
package "$WORK/google" "bosh-stemcell-$VERSION-google-kvm-$OS-go_agent.tgz" &
p1=$!
package "$WORK/azure" "bosh-stemcell-$VERSION-azure-hyperv-$OS-go_agent.tgz" &
p2=$!
package "$WORK/light-aws" "light-bosh-stemcell-$VERSION-aws-xen-hvm-$OS-go_agent.tgz"
wait "$p1" "$p2"

# 8. Publish -----------------------------------------------------------------------------------
step "publishing"
FINAL=$WORK/final
mkdir -p "$FINAL"
mv "$WORK"/*.tgz "$FINAL/"
mv "$DISK" "$FINAL/disk.raw"
cp "$WORK/packages.txt" "$FINAL/"
cat >"$FINAL/build-info.txt" <<EOF
inputs_hash=$HASH
version=$VERSION
operating_system=$OS
kernel=$KVER
root_uuid=$ROOT_UUID
disk_mib=$DISK_MIB
disk_used_mib=$USED_MIB
kernel_cmdline=$CMDLINE
build_seconds=$(( $(date +%s) - START ))
EOF
(cd "$FINAL" && ls -l ./*.tgz) >>"$FINAL/build-info.txt"
touch "$FINAL/.complete"
rm -rf "$OUT"
mv "$FINAL" "$OUT"
step "done"
print_result "$OUT"
