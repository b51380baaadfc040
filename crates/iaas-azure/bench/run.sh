#!/usr/bin/env bash
# Page-blob upload benchmark (issue 14): a 5 GiB fixed VHD holding 1 GiB of
# data (1 MiB of random bytes every 5 MiB, plus the footer) into azurite on
# 127.0.0.1, opsbake's uploader (examples/page_upload.rs) vs the Python
# azure-storage-blob client's page blob upload, same concurrency, RUNS runs
# each (default 3), alternating. Wall time, bytes sent (as counted by a
# proxy: request bytes on the wire), peak RSS (/usr/bin/time -v); medians,
# the ratio of medians, and the machine's load. Appends its table to
# docs/benchmarks.md unless --no-docs. One command:
#
#   bash crates/iaas-azure/bench/run.sh [--no-docs]      (RUNS=5 for more)
#
# The Python venv is cached in $OPSBAKE_CACHE/azure-bench-venv/<hash of this
# script and upload.py> (azure-storage-blob pinned below), the VHD in
# /var/tmp/opsbake-azure-bench. Each blob is deleted after its run.
set -euo pipefail
cd "$(dirname "$0")/../../.."
root=$PWD
. .ci/lib.sh
docs=1; [ "${1:-}" = "--no-docs" ] && docs=0
runs=${RUNS:-3}
pin=12.31.1
work=/var/tmp/opsbake-azure-bench
mkdir -p "$work"
: "${OPSBAKE_AZURITE:?run .ci/setup.d/36-azurite.sh and export OPSBAKE_AZURITE}"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
cargo build -q --release -p opsbake-iaas-azure --example page_upload
up="$CARGO_TARGET_DIR/release/examples/page_upload"
# Python anchor in a venv, cached and keyed.
venv="$(cache_dir azure-bench-venv "$(hash_inputs crates/iaas-azure/bench/run.sh crates/iaas-azure/bench/upload.py)")"
if [ ! -e "$venv/.complete" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "azure-storage-blob==$pin"
    touch "$venv/.complete"
fi
pyver=$("$venv/bin/python" -c 'import azure.storage.blob as b; print(b.__version__)')
load0=$(cut -d' ' -f1-3 /proc/loadavg)
# The VHD: 5 GiB, 1 GiB of data, fixed footer.
vhd="$work/bench.vhd"
if [ ! -f "$vhd" ]; then
    python3 - "$vhd" <<'PY'
import os, struct, sys, time
p = sys.argv[1]; size = 5 << 30
with open(p, "wb") as f:
    f.truncate(size)
    for i in range(1024):
        f.seek(i * 5 * (1 << 20)); f.write(os.urandom(1 << 20))
    # fixed VHD footer (conectix, fixed disk type 2), checksum over the footer
    foot = bytearray(512)
    foot[0:8] = b"conectix"; struct.pack_into(">I", foot, 8, 2); struct.pack_into(">I", foot, 12, 0x00010000)
    struct.pack_into(">Q", foot, 16, 0xFFFFFFFFFFFFFFFF); struct.pack_into(">I", foot, 24, int(time.time()) - 946684800)
    foot[28:32] = b"obak"; struct.pack_into(">Q", foot, 40, size); struct.pack_into(">Q", foot, 48, size)
    struct.pack_into(">I", foot, 60, 2)
    struct.pack_into(">I", foot, 64, (~sum(foot)) & 0xFFFFFFFF)
    f.seek(size); f.write(foot)
PY
fi
rm -f "$work/proxy.count" "$work/proxy.count.tmp"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
node "$OPSBAKE_AZURITE" --blobHost 127.0.0.1 --blobPort "$port" --inMemoryPersistence --disableTelemetry --skipApiVersionCheck --silent >"$work/azurite.log" 2>&1 &
azpid=$!
# A counting proxy (request bytes on the wire).
python3 - "$pport" "$port" "$work/proxy.count" <<'PY' &
import os, socket, sys, threading
lp, tp, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
total = [0]; lock = threading.Lock()
def pipe(a, b, count):
    try:
        while True:
            d = a.recv(1 << 16)
            if not d: break
            if count:
                with lock:
                    total[0] += len(d)
                    # Atomic: a reader never sees a half-written count.
                    open(out + ".tmp", "w").write(str(total[0]))
                    os.replace(out + ".tmp", out)
            b.sendall(d)
    except OSError: pass
    finally:
        for s in (a, b):
            try: s.shutdown(socket.SHUT_RDWR)
            except OSError: pass
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(("127.0.0.1", lp)); l.listen(64)
while True:
    c, _ = l.accept(); s = socket.create_connection(("127.0.0.1", tp))
    threading.Thread(target=pipe, args=(c, s, True), daemon=True).start()
    threading.Thread(target=pipe, args=(s, c, False), daemon=True).start()
PY
prpid=$!
trap 'kill $azpid $prpid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/devstoreaccount1?comp=list" && break; sleep 0.1; done
acct="http://127.0.0.1:$pport/devstoreaccount1"
count() { cat "$work/proxy.count" 2>/dev/null || echo 0; }
rss() { awk '/Maximum resident set size/ {printf "%.1f", $6/1024}' "$1"; }
median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
secs() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["seconds"])' "$1"; }
delete_blob() {
    "$venv/bin/python" - "$acct" "$1" <<'PY'
import sys
from azure.storage.blob import BlobServiceClient
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
svc = BlobServiceClient(sys.argv[1], credential={"account_name": "devstoreaccount1", "account_key": KEY})
svc.get_container_client("bench").get_blob_client(sys.argv[2]).delete_blob()
PY
}
ob_s=(); py_s=(); ob_b=(); py_b=(); ob_r=(); py_r=()
for i in $(seq "$runs"); do
    c0=$(count)
    /usr/bin/time -v "$up" "$acct" bench "opsbake-$i.vhd" "$vhd" 8 >"$work/opsbake.json" 2>"$work/opsbake.time"
    c1=$(count)
    delete_blob "opsbake-$i.vhd"
    c1b=$(count)
    /usr/bin/time -v "$venv/bin/python" crates/iaas-azure/bench/upload.py "$acct" bench "python-$i.vhd" "$vhd" 8 >"$work/python.json" 2>"$work/python.time"
    c2=$(count)
    delete_blob "python-$i.vhd"
    ob_s+=("$(secs "$work/opsbake.json")"); py_s+=("$(secs "$work/python.json")")
    ob_b+=("$((c1 - c0))"); py_b+=("$((c2 - c1b))")
    ob_r+=("$(rss "$work/opsbake.time")"); py_r+=("$(rss "$work/python.time")")
    echo "run $i: opsbake ${ob_s[-1]} s ${ob_b[-1]} B ${ob_r[-1]} MiB; python ${py_s[-1]} s ${py_b[-1]} B ${py_r[-1]} MiB" >&2
done
load1=$(cut -d' ' -f1-3 /proc/loadavg)
mob_s=$(median "${ob_s[@]}"); mpy_s=$(median "${py_s[@]}")
mob_b=$(median "${ob_b[@]}"); mpy_b=$(median "${py_b[@]}")
mob_r=$(median "${ob_r[@]}"); mpy_r=$(median "${py_r[@]}")
ratio=$(python3 -c "print(round($mpy_s/$mob_s, 2))")
bratio=$(python3 -c "print(round($mpy_b/$mob_b, 2))")
rratio=$(python3 -c "print(round($mpy_r/$mob_r, 2))")
mib() { python3 -c "print(round($1/1048576))"; }
table=$(cat <<MD

## Azure page-blob upload (issue 14)

<!-- iaas-azure bench: generated by crates/iaas-azure/bench/run.sh -->
Run $(date -u '+%Y-%m-%d %H:%M UTC') with \`bash crates/iaas-azure/bench/run.sh\` (commit $(git rev-parse --short HEAD)) on $(nproc) cores,
load average $load0 before and $load1 after (a shared machine: wall times are indicative, byte counts exact).
A 5 GiB fixed VHD holding 1 GiB of data (1 MiB of random bytes every 5 MiB) plus its footer, into azurite 3.35.0
on 127.0.0.1 through a counting proxy, 8 requests in flight each, $runs runs each, alternating, medians (release build of
\`examples/page_upload.rs\` vs Python azure-storage-blob $pyver \`upload_blob(blob_type=PageBlob, max_concurrency=8)\`,
which also skips all-zero chunks). Runs (s): opsbake ${ob_s[*]}; Python ${py_s[*]}.

| uploader | median wall time | median request bytes on the wire | median peak RSS |
|---|---|---|---|
| opsbake (azure_storage_blob, Put Page <= 4 MiB, MD5 per range) | ${mob_s} s | $(mib "$mob_b") MiB | ${mob_r} MiB |
| Python azure-storage-blob | ${mpy_s} s | $(mib "$mpy_b") MiB | ${mpy_r} MiB |

Python / opsbake: wall time **${ratio}x**, bytes sent **${bratio}x**, peak RSS **${rratio}x**.
MD
)
echo "$table"
if [ "$docs" = 1 ]; then echo "$table" >>docs/benchmarks.md; fi
