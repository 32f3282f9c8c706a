#!/usr/bin/env bash
# Installs the external tools the black-box suites (crates/cli/tests) drive, and the
# system libraries the build needs (OpenSSL's headers for the openssl crate).
# Does nothing when they are all present. With CI set, the suite fails on a missing tool.
set -euo pipefail

# tool:package
deps=(
    nbdinfo:libnbd-bin
    nbdcopy:libnbd-bin
    nbdfuse:libnbd-bin
    qemu-img:qemu-utils
    qemu-io:qemu-utils
    fio:fio
    fusermount3:fuse3
    mkfs.ext4:e2fsprogs
    e2fsck:e2fsprogs
    losetup:mount
    mount:mount
    umount:mount
    sync:coreutils
    # The direct I/O suite (crates/cli/tests/direct.rs): page-cache residency, dropping it.
    fincore:util-linux
    dd:coreutils
    cmp:diffutils
    nbdkit:nbdkit
    # The TLS suite (crates/cli/tests/tls.rs): test certificates and pre-shared keys.
    certtool:gnutls-bin
    psktool:gnutls-bin
    openssl:openssl
    # The service suites (crates/cli/tests/packaging.rs, metrics.rs).
    systemd-analyze:systemd
    curl:curl
    # The VM suite (crates/cli/tests/vm.rs): QEMU, and what builds the guest image from
    # Debian packages (apt-get download, unpacked, never installed).
    qemu-system-x86_64:qemu-system-x86
    cpio:cpio
    gzip:gzip
    xz:xz-utils
    depmod:kmod
    readelf:binutils
    strip:binutils
    dpkg-deb:dpkg
)

# Build dependencies, checked by the files the build needs (a tool alone is not enough):
# the openssl crate (damocles-nbd's TLS) finds OpenSSL's headers through pkg-config.
# file:package
build_deps=(
    /usr/include/openssl/ssl.h:libssl-dev
    /usr/bin/pkg-config:pkg-config
)

export PATH="$PATH:/usr/sbin:/sbin"
missing=()
for d in "${deps[@]}"; do
    tool=${d%%:*}
    pkg=${d#*:}
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "missing: $tool (package $pkg)"
        missing+=("$pkg")
    fi
done
for d in "${build_deps[@]}"; do
    file=${d%%:*}
    pkg=${d#*:}
    if [ ! -e "$file" ]; then
        echo "missing: $file (package $pkg)"
        missing+=("$pkg")
    fi
done
if [ -x /usr/bin/pkg-config ] && ! pkg-config --exists openssl; then
    echo "missing: openssl.pc for pkg-config (package libssl-dev)"
    missing+=(libssl-dev)
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
    # No root and no password-less sudo: say exactly what to install, and fail.
    if ! command -v sudo >/dev/null 2>&1 || ! sudo -n true 2>/dev/null; then
        if [ ${#missing[@]} -gt 0 ]; then
            echo "cannot install as $(id -un) (no root, no password-less sudo); as root run:" >&2
            echo "  apt-get update && apt-get install -y --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')" >&2
            exit 1
        fi
        if ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
            echo "the package lists do not know linux-image-amd64 (VM suite guest image); as root run: apt-get update" >&2
            exit 1
        fi
        echo "interop test tools: all present"
        exit 0
    fi
fi

# The guest image is built from the package lists: without them apt-get download fails.
if ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
    echo "no package lists know linux-image-amd64 (VM suite guest image): apt-get update"
    "${sudo[@]}" apt-get update
fi

if [ ${#missing[@]} -eq 0 ]; then
    echo "interop test tools: all present"
    exit 0
fi

# Every tool's package in one transaction, not only the missing ones: installing one (say
# qemu-system-x86) may replace a present one of another version (qemu-utils from
# backports), and apt then keeps the set consistent instead of removing it.
all=()
for d in "${deps[@]}"; do all+=("${d#*:}"); done
pkgs=$(printf '%s\n' "${missing[@]}" "${all[@]}" | sort -u | tr '\n' ' ')
"${sudo[@]}" apt-get update
# A qemu-utils from another suite (backports: 10.x) than the lists' qemu-system-x86 (7.2)
# breaks it ("qemu-utils : Breaks: qemu-system-common (< ...)"), and apt never downgrades
# by itself: pin both to qemu-system-x86's candidate, so the set installs from the lists
# the machine has.
downgrade=()
qsys=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
qutils=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
if ! command -v qemu-system-x86_64 >/dev/null 2>&1 && [ -n "$qsys" ] && [ "$qsys" != "(none)" ] \
    && [ -n "$qutils" ] && [ "$qutils" != "$qsys" ]; then
    echo "qemu-utils $qutils does not match qemu-system-x86 $qsys: installing both at $qsys"
    pkgs=$(printf '%s\n' $pkgs | sed -e "s/^qemu-utils\$/qemu-utils=$qsys/" \
        -e "s/^qemu-system-x86\$/qemu-system-x86=$qsys/" | tr '\n' ' ')
    downgrade=(--allow-downgrades)
fi
# shellcheck disable=SC2086
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    "${downgrade[@]}" $pkgs

for d in "${deps[@]}"; do
    tool=${d%%:*}
    command -v "$tool" >/dev/null 2>&1 || { echo "still missing after install: $tool" >&2; exit 1; }
done
for d in "${build_deps[@]}"; do
    file=${d%%:*}
    [ -e "$file" ] || { echo "still missing after install: $file" >&2; exit 1; }
done
pkg-config --exists openssl || { echo "still missing after install: openssl.pc" >&2; exit 1; }
echo "interop test tools: installed $pkgs"
