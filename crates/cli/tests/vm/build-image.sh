#!/usr/bin/env bash
# Builds the guest image of the VM suite (crates/cli/tests/vm.rs) from Debian packages only:
# the kernel of linux-image-amd64 with the modules the guest loads, and a busybox initramfs
# with e2fsprogs, fio, nbd-client and mdadm and the libraries they link.
#
# Usage: build-image.sh OUTDIR
# Writes OUTDIR/<key>/{vmlinuz,initrd.img,versions} and prints that directory on its last
# line. <key> is a hash of the package versions, this script and the guest's init, so a new
# kernel or a changed script builds a new image and an unchanged one is reused (a cache hit
# is instant).
#
# Needs apt-get (download only: nothing is installed), dpkg-deb, cpio, gzip, xz, depmod.
# Runs as any user; apt-get download writes into the current directory.
set -euo pipefail
export LC_ALL=C PATH="$PATH:/usr/sbin:/sbin"

out=${1:?usage: build-image.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
here=$(cd "$(dirname "$0")" && pwd)

for t in apt-get apt-cache dpkg-deb cpio gzip xz depmod readelf; do
    command -v "$t" >/dev/null || {
        echo "build-image: missing $t (packages: apt, dpkg, cpio, gzip, xz-utils, kmod, binutils)" >&2
        exit 2
    }
done

# The tools the guest runs; the kernel package comes from linux-image-amd64's dependency.
tools=(busybox-static e2fsprogs fio nbd-client mdadm)
kpkg=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -1)
[ -n "$kpkg" ] || { echo "build-image: apt-cache knows no linux-image-amd64 (apt-get update?)" >&2; exit 2; }

# Library packages in the tools' dependency closure (perl, python etc. are not needed:
# only shared objects are taken, and only those the binaries link).
libs=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
    --no-breaks --no-replaces --no-enhances "${tools[@]}" 2>/dev/null |
    grep -v '^ ' | grep -E '^(lib|zlib|gcc-[0-9]+-base)' | grep -v -E 'perl|python' | sort -u)
pkgs=("$kpkg" "${tools[@]}" $libs)

versions=$(apt-cache policy "${pkgs[@]}" | awk '/^[^ ].*:$/ { p = substr($0, 1, length($0) - 1) }
    /^ *Candidate:/ { print p "=" $2 }')
if [ "$(printf '%s\n' "$versions" | grep -c -v '=(none)$')" -ne ${#pkgs[@]} ]; then
    echo "build-image: apt-cache has no candidate for some packages (apt-get update?):" >&2
    printf '%s\n' "$versions" | grep '=(none)$' >&2
    exit 2
fi
key=$( (printf '%s\n' "$versions"; cat "$0" "$here/init") | sha256sum | cut -c1-16)
dest="$out/$key"
if [ -s "$dest/initrd.img" ] && [ -s "$dest/vmlinuz" ]; then
    echo "build-image: cached"
    echo "$dest"
    exit 0
fi

work=$(mktemp -d "$out/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
debs="$out/debs"
mkdir -p "$debs"

# One apt-get at a time on this machine: wait while another apt-get or dpkg runs.
wait_apt() {
    local n=0
    while pgrep -x apt-get >/dev/null || pgrep -x dpkg >/dev/null || pgrep -x apt >/dev/null; do
        [ $((n % 6)) -eq 0 ] && echo "build-image: another apt-get/dpkg is running; waiting" >&2
        n=$((n + 1))
        sleep 20
    done
}

need=()
while read -r pv; do
    p=${pv%%=*}
    v=${pv#*=}
    # Debian file names write the epoch's colon as %3a.
    vf=${v//:/%3a}
    ls "$debs/${p}_${vf}_"*.deb >/dev/null 2>&1 || need+=("$p")
done <<<"$versions"
if [ ${#need[@]} -gt 0 ]; then
    echo "build-image: downloading ${#need[@]} package(s)" >&2
    wait_apt
    (cd "$debs" && apt-get download -q "${need[@]}" 2>&1 | grep -v -E '^(Get|Fetched)' >&2) || {
        wait_apt
        (cd "$debs" && apt-get download -q "${need[@]}" >&2)
    }
fi

root="$work/root"
mkdir -p "$root"
while read -r pv; do
    p=${pv%%=*}
    v=${pv#*=}
    vf=${v//:/%3a}
    deb=$(ls "$debs/${p}_${vf}_"*.deb | head -1)
    dpkg-deb -x "$deb" "$work/unpacked"
done <<<"$versions"
u="$work/unpacked"

kver=${kpkg#linux-image-}
cp "$u/boot/vmlinuz-$kver" "$work/vmlinuz"

# Modules in dependency order (depmod on the unpacked tree), decompressed for busybox.
depmod -b "$u" "$kver"
mdir="lib/modules/$kver"
# crc32c first: libcrc32c (raid456, ext4 checksums) only soft-depends on it.
want=(crc32c_generic virtio_pci virtio_blk nbd ext4 raid456 raid0 raid1 raid10)
order="$work/modorder"
: >"$order"
add_mod() { # $1: path relative to $mdir, as modules.dep writes it
    grep -qxF "$1" "$order" && return 0
    local deps
    deps=$(grep -E "^$1:" "$u/$mdir/modules.dep" | cut -d: -f2)
    for d in $deps; do add_mod "$d"; done
    echo "$1" >>"$order"
}
for m in "${want[@]}"; do
    pat=${m//_/[-_]}
    rel=$(grep -E "/$pat\.ko(\.[a-z]+)?:" "$u/$mdir/modules.dep" | cut -d: -f1 | head -1 || true)
    if [ -z "$rel" ]; then
        # Built into the kernel: nothing to load.
        if grep -qE "/$pat\.ko" "$u/$mdir/modules.builtin" 2>/dev/null; then continue; fi
        echo "build-image: module $m not found" >&2
        exit 1
    fi
    add_mod "$rel"
done
mkdir -p "$root/modules"
: >"$root/modules/order"
while read -r rel; do
    base=$(basename "$rel")
    case "$base" in
    *.ko.xz) xz -dc "$u/$mdir/$rel" >"$root/modules/${base%.xz}" ;;
    *.ko.zst) zstd -qdc "$u/$mdir/$rel" >"$root/modules/${base%.zst}" ;;
    *.ko.gz) gzip -dc "$u/$mdir/$rel" >"$root/modules/${base%.gz}" ;;
    *) cp "$u/$mdir/$rel" "$root/modules/$base" ;;
    esac
    echo "${base%.ko*}.ko" >>"$root/modules/order"
done <"$order"

# Busybox and its applets.
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,mnt,run,lib64,usr/lib}
cp "$u/bin/busybox" "$root/bin/busybox"
for a in $("$root/bin/busybox" --list); do
    [ -e "$root/bin/$a" ] || ln -s busybox "$root/bin/$a"
done

# The tools and every shared object they need, resolved inside the unpacked tree only.
libdirs=("$u/lib/x86_64-linux-gnu" "$u/usr/lib/x86_64-linux-gnu" "$u/lib" "$u/usr/lib")
find_lib() {
    local d
    for d in "${libdirs[@]}" "$u/usr/lib/x86_64-linux-gnu/"*/; do
        [ -e "$d/$1" ] && { echo "$d/$1"; return 0; }
    done
    return 1
}
declare -A seen=()
copy_elf() { # $1: file in the unpacked tree, $2: destination in the guest root
    install -D -m 755 "$1" "$2"
    local n lib
    for n in $(readelf -d "$1" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
        [ -n "${seen[$n]:-}" ] && continue
        seen[$n]=1
        lib=$(find_lib "$n") || { echo "build-image: library $n (needed by $1) not found" >&2; exit 1; }
        copy_elf "$(readlink -f "$lib")" "$root/usr/lib/$n"
    done
}
for b in sbin/mkfs.ext4 sbin/mke2fs sbin/e2fsck sbin/fsck.ext4 sbin/tune2fs sbin/dumpe2fs \
    usr/bin/fio sbin/nbd-client usr/sbin/nbd-client sbin/mdadm usr/sbin/mdadm; do
    [ -e "$u/$b" ] || continue
    copy_elf "$(readlink -f "$u/$b")" "$root/sbin/$(basename "$b")"
done
for b in fio mkfs.ext4 e2fsck nbd-client mdadm; do
    [ -x "$root/sbin/$b" ] || { echo "build-image: $b missing from the packages" >&2; exit 1; }
done
ld=$(readlink -f "$u/lib64/ld-linux-x86-64.so.2" 2>/dev/null || find_lib ld-linux-x86-64.so.2)
cp "$ld" "$root/lib64/ld-linux-x86-64.so.2"
cp "$here/init" "$root/init"
chmod 755 "$root/init"
printf 'root:x:0:0:root:/:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
: >"$root/etc/mtab"

(cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --quiet) | gzip -1 >"$work/initrd.img"

mkdir -p "$dest"
mv "$work/vmlinuz" "$work/initrd.img" "$dest/"
printf '%s\n' "$versions" >"$dest/versions"
# Images of older package versions or of an older script are not used again.
for d in "$out"/????????????????; do
    [ "$d" = "$dest" ] || rm -rf "$d"
done
echo "build-image: built $(du -h "$dest/initrd.img" | cut -f1) initramfs for kernel $kver" >&2
echo "$dest"
