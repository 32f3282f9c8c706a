#!/usr/bin/env bash
# Compare damocles' parity kernels with snapraid's built-in speed test on this
# machine. Both are single-threaded and cache-resident:
#   snapraid -T : 8 data buffers x 256 KiB, MB/s of data (gen2 = P+Q, rec2 =
#                 recover two data blocks).
#   damocles    : `damocles bench parity` rows, GB/s of data (gen_pq,
#                 recover_two_data, ...), per kernel and stripe shape.
# Usage: bench/parity-vs-snapraid.sh   (from anywhere inside the repo)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v snapraid >/dev/null 2>&1; then
    echo "## installing snapraid" >&2
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get install -y snapraid >/dev/null || {
        $SUDO apt-get update >/dev/null && $SUDO apt-get install -y snapraid >/dev/null
    }
fi

echo "## CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
echo
echo "## snapraid -T  (MB/s, 8 x 256 KiB)"
# Keep the header and the parity sections; drop the hash/CRC noise.
snapraid -T 2>&1 | awk '/^CPU|^Speed test/ {print} /^RAID functions/ {on=1} /^If the/ {on=0} on {print}'
echo

echo "## damocles bench parity  (GB/s)"
if ! cargo run --release -q -p damocles -- bench parity; then
    echo "(damocles bench parity failed; falling back to the crate example)" >&2
    cargo run --release -q -p damocles-parity --example bench
fi
