#!/usr/bin/env bash
# Test peer for the vbox OVA (issue 6): vcsim (the vSphere API simulator) and govc,
# built from Debian's golang-github-vmware-govmomi SOURCE package with Debian's Go
# (PEERS.md "vcsim and govc"): neither is in Debian's binary packages and the Go
# module proxy is not reachable, so the build uses GOPATH mode and the Go libraries
# Debian packages under /usr/share/gocode. The deb-src lines live in a private apt
# config in the work dir; /etc/apt is not touched. The binaries are cached outside
# the clone, keyed by a hash of this script; the tests find them through
# OPSBAKE_VCSIM and OPSBAKE_GOVC.
set -euo pipefail
cd "$(dirname "$0")/../.."
. .ci/lib.sh
out="$(cache_dir vcsim "$(hash_inputs .ci/setup.d/50-vcsim.sh)")"
if [ ! -e "$out/.complete" ]; then
    apt_install golang-go golang-github-vmware-govmomi-dev golang-github-kr-pretty-dev ca-certificates xz-utils
    work="$(mktemp -d "${TMPDIR:-/tmp}/opsbake-vcsim.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/apt/parts" "$work/apt/lists/partial" "$work/src"
    # apt downloads as the _apt user when it exists
    chmod 0755 "$work"
    if id _apt >/dev/null 2>&1; then chown _apt "$work/src"; fi
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >"$work/apt/parts/src.sources"
    ao=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$work/apt/parts"
        -o "Dir::State::Lists=$work/apt/lists")
    echo "apt-get source --download-only golang-github-vmware-govmomi (private apt config)" >&2
    apt-get -qq "${ao[@]}" update >/dev/null
    (cd "$work/src" && apt-get -qq "${ao[@]}" source --download-only golang-github-vmware-govmomi >/dev/null)
    orig=("$work"/src/golang-github-vmware-govmomi_*.orig.tar.*)
    if [ "${#orig[@]}" -ne 1 ] || [ ! -f "${orig[0]}" ]; then
        echo "50-vcsim.sh: expected one govmomi orig tarball in $work/src, found: ${orig[*]}" >&2
        exit 1
    fi
    gp="$work/gp/src/github.com/vmware"
    mkdir -p "$gp"
    tar -xf "${orig[0]}" -C "$gp"
    mv "$gp"/govmomi-* "$gp/govmomi"
    mkdir -p "$work/bin" "$work/cache"
    for cmd in vcsim govc; do
        echo "go build $cmd" >&2
        (cd "$work" && GO111MODULE=off GOFLAGS= GOPROXY=off GOCACHE="$work/cache" \
            GOPATH="$work/gp:/usr/share/gocode" go build -o "bin/$cmd" "github.com/vmware/govmomi/$cmd")
    done
    "$work/bin/govc" version >/dev/null
    rm -rf "$out"
    mkdir -p "$out"
    cp "$work/bin/vcsim" "$work/bin/govc" "$out/"
    basename "${orig[0]}" >"$out/source"
    touch "$out/.complete"
fi
ci_env OPSBAKE_VCSIM "$out/vcsim"
ci_env OPSBAKE_GOVC "$out/govc"
