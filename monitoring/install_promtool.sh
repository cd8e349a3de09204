#!/usr/bin/env bash
# Puts promtool (the Prometheus rule checker and unit test runner) where the tests find it and
# prints its path on stdout. Uses promtool from PATH or .tools/prometheus if there is one;
# otherwise unpacks Debian's `prometheus` package into .tools/prometheus (git-ignored).
# Nothing is installed system-wide and no service is started.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.tools/prometheus"
local_promtool="$dest/usr/bin/promtool"

if command -v promtool >/dev/null 2>&1; then
    command -v promtool
    exit 0
fi
if [ -x "$local_promtool" ]; then
    echo "$local_promtool"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg >/dev/null 2>&1; then
    echo "promtool not found and this is not a Debian/Ubuntu machine (no apt-get/dpkg)." >&2
    echo "Download Prometheus from https://prometheus.io/download/ and put promtool on PATH." >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# apt-get download writes as the _apt user when it can; let it, to avoid a noisy warning
chown _apt "$work" 2>/dev/null || chmod 755 "$work"
cd "$work"

echo "promtool not found; fetching Debian's prometheus package into .tools/prometheus" >&2
if ! apt-get download prometheus >&2; then
    echo "apt-get download failed; refreshing the package lists (apt-get update) and retrying" >&2
    if ! apt-get update >&2 || ! apt-get download prometheus >&2; then
        echo "Could not download the prometheus package. As root, run: apt-get update;" >&2
        echo "or install promtool from https://prometheus.io/download/ and put it on PATH." >&2
        exit 1
    fi
fi

mkdir -p "$dest"
dpkg -x prometheus_*.deb "$dest"
if ! "$local_promtool" --version >&2; then
    echo "Unpacked $local_promtool but it does not run." >&2
    exit 1
fi
echo "$local_promtool"
