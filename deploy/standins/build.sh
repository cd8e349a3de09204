#!/usr/bin/env bash
# Offline stand-ins for the base images the stack pins, for machines that reach PyPI and
# Debian but no container registry (CI here). Each is tagged with the exact name
# deploy/Dockerfile or docker-compose.yml uses, so the unchanged `make up` builds and runs on
# them. An image of that name that is not a stand-in (a real pull) is left alone.
#
#   bash deploy/standins/build.sh        # needs a Docker engine, Compose v2, debootstrap
#
# Cache (outside the repo): the debootstrap root file system and the uv wheel in
# $STANDIN_CACHE (default ~/.cache/boring-ml-stack/standins); the images themselves stay in
# the engine and are rebuilt only when a file of this folder changes (label below).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${STANDIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/boring-ml-stack/standins}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=bookworm
base=boring-ml-stack-standin/bookworm:minbase
uv_image=ghcr.io/astral-sh/uv:0.8.17
label=org.boring-ml-stack.standin
mkdir -p "$cache"

# This machine's CA bundle goes into the python stand-in (a TLS-intercepting network to PyPI).
ca_bundle="${STANDIN_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
[ -s "$ca_bundle" ] || { echo "standins: no CA bundle at $ca_bundle (apt-get install ca-certificates, or set STANDIN_CA_BUNDLE)" >&2; exit 1; }

# The recipe: every file here and that bundle. A change rebuilds every stand-in.
STANDIN_RECIPE="$(cd "$here" && cat ./* "$ca_bundle" | sha256sum | cut -c1-16)"
# The build context: this folder plus the bundle, outside the repo.
STANDIN_CONTEXT="$cache/context"
rm -rf "$STANDIN_CONTEXT" && mkdir -p "$STANDIN_CONTEXT"
cp "$here"/* "$STANDIN_CONTEXT"/ && cp "$ca_bundle" "$STANDIN_CONTEXT/host-ca-certificates.crt"
export STANDIN_RECIPE STANDIN_CONTEXT

label_of() { docker image inspect --format "{{index .Config.Labels \"$label\"}}" "$1" 2>/dev/null || true; }
exists() { docker image inspect "$1" >/dev/null 2>&1; }
current() { [ "$(label_of "$1")" = "$STANDIN_RECIPE" ]; }
real() { exists "$1" && [ -z "$(label_of "$1")" ]; }  # present and not made here

build_base() {
    local rootfs="$cache/$suite-minbase-2.tar"  # bump the number when the preparation below changes
    if [ ! -s "$rootfs" ]; then
        command -v debootstrap >/dev/null || { echo "standins: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
        local dir
        dir="$(mktemp -d)"
        echo "standins: debootstrap $suite (about a minute, once; cached in $rootfs)"
        debootstrap --variant=minbase --include=ca-certificates,wget "$suite" "$dir/root" "$mirror" >"$dir/log" 2>&1 \
            || { tail -5 "$dir/log" >&2; echo "standins: debootstrap failed (log above)" >&2; exit 1; }
        # As Debian's official images: no services started by package scripts, no recommends,
        # no package caches; plus the security and updates suites.
        printf '#!/bin/sh\nexit 101\n' >"$dir/root/usr/sbin/policy-rc.d"
        chmod 0755 "$dir/root/usr/sbin/policy-rc.d"
        printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$dir/root/etc/apt/apt.conf.d/90standin"
        # the official images' docker-clean: no package cache files left in a layer (~80 MB)
        cat >"$dir/root/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
        printf 'deb %s %s main\ndeb %s %s-updates main\ndeb %s-security %s-security main\n' \
            "$mirror" "$suite" "$mirror" "$suite" "$mirror" "$suite" >"$dir/root/etc/apt/sources.list"
        rm -rf "$dir"/root/var/cache/apt/archives/*.deb "$dir"/root/var/lib/apt/lists/*
        rm -f "$cache/$suite"-minbase*.tar
        tar -C "$dir/root" -cf "$rootfs.tmp" . && mv "$rootfs.tmp" "$rootfs"
        rm -rf "$dir"
    fi
    docker import --change "LABEL $label=$STANDIN_RECIPE" --change 'CMD ["bash"]' "$rootfs" "$base" >/dev/null
}

build_uv() {  # the official image is FROM scratch with /uv and /uvx; so is this one
    [ "$(uname -m)" = x86_64 ] || { echo "standins: the uv stand-in is pinned for x86_64 only" >&2; exit 1; }
    local wheels="$cache/wheels" dir
    mkdir -p "$wheels"
    if ! ls "$wheels"/uv-0.8.17-*.whl >/dev/null 2>&1; then
        grep '^uv==' "$here/tools.txt" >"$wheels/uv.txt"
        "${PYTHON:-python3}" -m pip download -q --no-deps --require-hashes --only-binary=:all: \
            --platform manylinux_2_17_x86_64 -r "$wheels/uv.txt" -d "$wheels"
    fi
    dir="$(mktemp -d)"
    "${PYTHON:-python3}" - "$dir" "$wheels"/uv-0.8.17-*.whl <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[2]) as wheel:
    for name in ("uv", "uvx"):
        with open(f"{sys.argv[1]}/{name}", "wb") as out:
            out.write(wheel.read(f"uv-0.8.17.data/scripts/{name}"))
PY
    chmod 0755 "$dir/uv" "$dir/uvx"
    tar -C "$dir" -c uv uvx | docker import --change "LABEL $label=$STANDIN_RECIPE" \
        --change 'ENTRYPOINT ["/uv"]' - "$uv_image" >/dev/null
    rm -rf "$dir"
}

declare -A images=(
    [python]=python:3.11.13-slim-bookworm [postgres]=postgres:16.10-bookworm
    [prometheus]=prom/prometheus:v3.5.0 [nginx]=nginx:1.28.0-alpine [grafana]=grafana/grafana:12.2.0
)
todo=()
for service in python postgres prometheus nginx grafana; do
    image="${images[$service]}"
    if real "$image"; then
        echo "standins: $image is a real image here; using it"
    elif ! current "$image"; then
        todo+=("$service")
    fi
done
need_uv=0
real "$uv_image" || current "$uv_image" || need_uv=1

if [ ${#todo[@]} -gt 0 ] || [ $need_uv = 1 ]; then
    started=$SECONDS
    current "$base" || build_base
    [ $need_uv = 1 ] && build_uv
    compose=(docker compose -f "$here/compose.yml")
    log="$cache/build.log"
    # python first: the grafana stand-in is built on it
    if [[ " ${todo[*]} " == *" python "* ]]; then
        "${compose[@]}" build python >"$log" 2>&1 || { tail -20 "$log" >&2; echo "standins: build of python failed (log above)" >&2; exit 1; }
    fi
    rest=()
    for service in "${todo[@]}"; do [ "$service" = python ] || rest+=("$service"); done
    if [ ${#rest[@]} -gt 0 ]; then
        "${compose[@]}" build "${rest[@]}" >>"$log" 2>&1 || { tail -20 "$log" >&2; echo "standins: build of ${rest[*]} failed (log above)" >&2; exit 1; }
    fi
    echo "standins: built ${todo[*]}$([ $need_uv = 1 ] && echo ' uv') in $((SECONDS - started)) s"
fi

# The one line that says which images are not the real thing.
declare -A what=(
    [python]="Debian's Python 3.11.2 trusting this machine's CA bundle" [postgres]="Debian's PostgreSQL 15" [prometheus]="Debian's Prometheus 2.42"
    [nginx]="Debian's nginx 1.22" [grafana]="a health-only stub, not Grafana"
)
line=()
for service in python postgres prometheus nginx grafana; do
    current "${images[$service]}" && line+=("${images[$service]} = ${what[$service]}")
done
current "$uv_image" && line+=("$uv_image = uv 0.8.17 from its PyPI wheel")
if [ ${#line[@]} -gt 0 ]; then
    printf -v joined '%s; ' "${line[@]}"
    echo "standins: offline stand-ins, not the upstream images: ${joined%; }"
fi
