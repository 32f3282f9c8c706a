#!/usr/bin/env bash
# Installs damocles as a systemd service: the binary, the unit (ExecStart pointed at the
# installed binary), man pages, shell completions and an example config (never over an
# existing one).
#
#   packaging/install.sh [--binary PATH] [--prefix /usr/local] [--destdir DIR]
#
# --binary defaults to target/release/damocles (built with `cargo build --release` when
# missing). --destdir stages the files under DIR (for packages) and skips systemctl.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
binary="$root/target/release/damocles"
prefix=/usr/local
destdir=""
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary=$2; shift 2 ;;
        --prefix) prefix=$2; shift 2 ;;
        --destdir) destdir=$2; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ ! -x "$binary" ]; then
    echo "building $binary"
    (cd "$root" && cargo build --release -p damocles)
fi

bindir="$destdir$prefix/bin"
mandir="$destdir$prefix/share/man/man1"
unitdir="$destdir/etc/systemd/system"
confdir="$destdir/etc/damocles"
bashdir="$destdir$prefix/share/bash-completion/completions"
zshdir="$destdir$prefix/share/zsh/site-functions"
fishdir="$destdir$prefix/share/fish/vendor_completions.d"

install -d "$bindir" "$mandir" "$unitdir" "$confdir" "$bashdir" "$zshdir" "$fishdir"
install -m 0755 "$binary" "$bindir/damocles"
sed "s|/usr/local/bin/damocles|$prefix/bin/damocles|g" "$here/damocles.service" \
    > "$unitdir/damocles.service"
chmod 0644 "$unitdir/damocles.service"
"$binary" man "$mandir"
"$binary" completions bash > "$bashdir/damocles"
"$binary" completions zsh > "$zshdir/_damocles"
"$binary" completions fish > "$fishdir/damocles.fish"
if [ ! -e "$confdir/damocles.toml" ]; then
    install -m 0644 "$root/docs/damocles.toml.example" "$confdir/damocles.toml.example"
fi

if [ -z "$destdir" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    echo "installed; write /etc/damocles/damocles.toml (see damocles.toml.example and"
    echo "damocles config check), then: systemctl enable --now damocles"
else
    echo "installed under ${destdir:-/}"
fi
