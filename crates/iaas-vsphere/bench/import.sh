#!/usr/bin/env bash
# Benchmark: import of the test stemcell's OVF + VMDK into vcsim, opsbake
# (the `base_image` step of a vsphere build with --reimport: manifest read,
# extraction, CreateImportSpec, ImportVApp, the HttpNfcLease upload, marking
# the template) against govc (extraction with tar, then `govc import.ovf`:
# CreateImportSpec, ImportVApp, the lease upload), one vcsim, same machine,
# REPS rounds each, interleaved. Prints medians and the ratio as a Markdown
# section for docs/benchmarks.md.
#
#   set -a; . target/ci-env; set +a
#   cargo build -p opsbake
#   crates/iaas-vsphere/bench/import.sh [REPS]
#
# vcsim discards the uploaded disk bytes, so this measures the client side
# (reading and sending 88 MiB) and the API round trips, not a datastore.
set -euo pipefail
REPS=${1:-3}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BIN=${OPSBAKE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/opsbake}
: "${OPSBAKE_VCSIM:?set OPSBAKE_VCSIM (target/ci-env)}" "${OPSBAKE_GOVC:?}" "${OPSBAKE_TEST_STEMCELL_DIR:?}"
SC=$OPSBAKE_TEST_STEMCELL_DIR/bosh-stemcell-1.0-vsphere-esxi-debian-bookworm-go_agent.tgz
W=$(mktemp -d /tmp/opsbake-bench-vsphere.XXXXXX)
mkdir -p "$W/tmp"
TMPDIR=$W/tmp "$OPSBAKE_VCSIM" -l 127.0.0.1:0 -username bench -password bench-pw >"$W/vcsim.out" 2>"$W/vcsim.log" &
VPID=$!
trap 'kill $VPID 2>/dev/null; wait $VPID 2>/dev/null; rm -rf "$W"' EXIT
for _ in $(seq 1 100); do grep -q GOVC_URL "$W/vcsim.out" && break; sleep 0.1; done
HOSTPORT=$(grep -o '127.0.0.1:[0-9]*' "$W/vcsim.out" | head -1)
export GOVC_URL=https://$HOSTPORT/sdk GOVC_USERNAME=bench GOVC_PASSWORD=bench-pw GOVC_INSECURE=1
TP=$("$OPSBAKE_GOVC" about.cert -k -thumbprint | awk '{print $2}')
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ops=(); gov=()
for r in $(seq 1 "$REPS"); do
  # opsbake: a build that stops after launch (no VM answers: a 2 s IP wait),
  # timed by its own base_image step event
  d=$W/ops$r; mkdir -p "$d"
  (cd "$d" && "$BIN" --state-dir "$d/state" --no-progress --json build "$ROOT/images/appliance.yml" \
     --iaas vsphere --skip-provision vsphere --reimport \
     --var-file "$ROOT/images/vsphere.vars.yml" --var "vsphere_thumbprint=$TP" \
     --var vsphere_ip_wait_timeout=2s >"$d/events.json" 2>"$d/stderr") || true
  t=$(grep '"step_finished"' "$d/events.json" | grep '"base_image"' | sed 's/.*"seconds":\([0-9.]*\).*/\1/')
  [ -n "$t" ] || { cat "$d/stderr"; echo "no base_image time" >&2; exit 1; }
  grep -q '"text":"imported ' "$d/events.json" || { cat "$d/stderr"; echo "round $r: opsbake did not import" >&2; exit 1; }
  t=$(printf '%.2f' "$t")
  ops+=("$t")
  # govc: extract, then import.ovf
  g=$W/govc$r; mkdir -p "$g"
  s=$(date +%s.%N)
  tar -xzf "$SC" -C "$g" image
  tar -xzf "$g/image" -C "$g"
  "$OPSBAKE_GOVC" import.ovf -ds=LocalDS_0 -pool=/DC0/host/DC0_C0/Resources -folder=/DC0/vm -name="govc-base-$r" "$g/image.ovf" >/dev/null 2>&1
  e=$(date +%s.%N)
  gov+=("$(printf '%.2f' "$(echo "$e - $s" | bc -l)")")
  rm -rf "$g"
done
mo=$(printf '%s\n' "${ops[@]}" | median); mg=$(printf '%s\n' "${gov[@]}" | median)
ratio=$(printf '%.2f' "$(echo "$mo / $mg" | bc -l)")
cat <<MD
## vSphere: stemcell import into vcsim, opsbake vs govc

$(date -u '+%Y-%m-%d %H:%M UTC'), \`crates/iaas-vsphere/bench/import.sh $REPS\`, load $(cut -d' ' -f1 /proc/loadavg),
vcsim 0.24 on 127.0.0.1 (it discards disk bytes: client side and API round trips only), the
test stemcell (88 MiB streamOptimized VMDK in a 86 MiB tarball).

| | median (s) | runs (s) |
|---|---|---|
| opsbake \`base_image\` (manifest, extraction, import spec, ImportVApp, lease upload with progress, template) | $mo | ${ops[*]} |
| \`tar -xzf\` x2 + \`govc import.ovf\` | $mg | ${gov[*]} |
| ratio opsbake / govc | $ratio | |
MD
