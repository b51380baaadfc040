#!/usr/bin/env bash
# iaas-vbox benchmarks (issue 6, "Speed"), opsbake and the anchor on the same
# work in one run, alternating which goes first:
#
#   A. VMDK export: a 5 GiB sparse raw disk holding 1 GiB of data (16 runs of
#      64 MiB, half xorshift random, half repetitive text) to streamOptimized
#      VMDK: opsbake's writer (crates/stemcell/examples/vmdk_bench `write`,
#      release profile) vs `qemu-img convert -O vmdk -o subformat=streamOptimized`.
#      Both deflate at zlib level 6 (qemu's block/vmdk.c calls zlib's
#      compress(), i.e. Z_DEFAULT_COMPRESSION = 6; opsbake's default is 6).
#      Wall time, peak RSS (/usr/bin/time -v of each process), output size;
#      `qemu-img compare` of both outputs with the raw disk, `qemu-img check`.
#   B. Offline build of the test stemcell up to the provisioned, powered-off
#      disk: `opsbake build --iaas vbox --offline` (QEMU engine, TCG) vs
#      Debian's Packer 1.6.6 `qemu` builder on the same stemcell disk, both
#      uploading 2000 files of 4 KiB in 20 folders and running 20 shell
#      scripts. Same QEMU hardware for both (TCG, 1 vCPU, 1024 MiB, virtio
#      disk and net, virtio-rng, the BOSH agent settings CD-ROM with the
#      build's key, user networking with restrict=on and one hostfwd on
#      127.0.0.1, serial console to a file, -rtc base=2024-01-01). Then the
#      export: opsbake's OVA (normalise + VMDK + tar) vs Packer's qcow2 +
#      `qemu-img convert` to streamOptimized + tar.
#
#   bash crates/iaas-vbox/bench/run.sh [--only a|b] [--reps-a 5] [--reps-b 3]
#        [--work DIR] [--no-docs] [--keep] [--no-build] [--tools opsbake,packer]
#
# Needs root (the vbox builder's normaliser loop-mounts), qemu-system-x86,
# qemu-utils, packer, jq, time, openssl, openssh-client (installed when
# missing). Results: markdown on stdout and in WORK/results.md, and (unless
# --no-docs) between the bench markers of docs/benchmarks.md's `## iaas-vbox`
# section. Progress, per-run figures and the load average on stderr.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$ROOT"
# shellcheck source=/dev/null
. .ci/lib.sh

REPS_A=5
REPS_B=3
ONLY=ab
WORK=/var/tmp/opsbake-vbox-bench
DOCS=1
KEEP=0
BUILD=1
TOOLS=opsbake,packer
while [ $# -gt 0 ]; do
    case "$1" in
    --only) ONLY=$2; shift 2 ;;
    --reps-a) REPS_A=$2; shift 2 ;;
    --reps-b) REPS_B=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --no-docs) DOCS=0; shift ;;
    --keep) KEEP=1; shift ;;
    --no-build) BUILD=0; shift ;;
    --tools) TOOLS=$2; shift 2 ;;
    -h | --help) sed -n '2,32p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "run.sh: run as root (the vbox builder's normaliser loop-mounts)" >&2; exit 2; }
export CHECKPOINT_DISABLE=1
unset PACKER_LOG
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
RES="$WORK/results"
mkdir -p "$RES"
# a part that runs replaces its earlier results; the other part's stay (results.md has both)
case "$ONLY" in *a*) rm -f "$RES"/a-* "$RES/a.md" ;; esac
case "$ONLY" in *b*) rm -f "$RES"/b-* "$RES/b.md" ;; esac

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
now() { date +%s.%N; }
# median of the numbers on stdin
median() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) print "nan"; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
# min and max of the numbers on stdin as "min-max"
range() { sort -g | awk 'NR==1{lo=$1} {hi=$1} END {print lo "-" hi}'; }
fmt() { awk -v x="$1" 'BEGIN {printf "%.2f", x}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b == 0) print "nan"; else printf "%.2f", a/b}'; }
# peak RSS in MiB from a /usr/bin/time -v file
rss_mib() { awk -F': ' '/Maximum resident set size/ {printf "%.1f", $2/1024}' "$1"; }
cpu_s() { awk -F': ' '/User time/ {u=$2} /System time/ {s=$2} END {printf "%.2f", u+s}' "$1"; }
# a row of per-run values "1.0, 2.0, 3.0"
joined() { paste -sd, "$1" | sed 's/,/, /g'; }

install_qemu
apt_install packer jq time openssl openssh-client
for t in qemu-img qemu-system-x86_64 packer jq /usr/bin/time openssl ssh-keygen; do
    command -v "$t" >/dev/null || { echo "run.sh: $t missing" >&2; exit 2; }
done

if [ "$BUILD" = 1 ]; then
    log "building (release profile): vmdk_bench, settings_iso, opsbake"
    cargo build --release -q -p opsbake-stemcell --example vmdk_bench --example settings_iso
    [ "${ONLY#*b}" != "$ONLY" ] && cargo build --release -q -p opsbake --bin opsbake
fi
BIN="$ROOT/target/release"

MACHINE="$(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, $(uname -sr)"
# who ran what, where: the first lines of each part's results
run_head() {
    echo "Run $(date -u +'%Y-%m-%d %H:%M UTC') with \`bash crates/iaas-vbox/bench/run.sh\` (commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates/stemcell crates/iaas-vbox crates/opsbake crates/core crates/comms-ssh crates/provision || echo ', with uncommitted changes in the crates')) on $MACHINE."
    echo "Load average (1, 5, 15 min) at the start: $(loadavg). Other engineers' builds and QEMU tests share these cores: the load is noted before and after every run."
    echo
}

##############################################################################
# A. VMDK export
##############################################################################
bench_a() {
    local d="$WORK/a" raw out
    mkdir -p "$d"
    raw="$d/disk.raw"
    out="$d/out.vmdk"
    if [ ! -f "$d/disk.done" ] || [ "$(stat -c %s "$raw" 2>/dev/null)" != $((5 << 30)) ]; then
        rm -f "$d/disk.done"
        "$BIN/examples/vmdk_bench" make-disk "$raw" --size-gib 5 --runs 16
        touch "$d/disk.done"
    fi
    run_head >"$RES/a-head.md"
    log "A: disk $(du -h --apparent-size "$raw" | cut -f1) apparent, $(du -h "$raw" | cut -f1) allocated; $REPS_A runs each"
    local tag
    # ours: the default writer; deflate: every grain deflated (as qemu-img does); deflate1: that on 1 thread
    for tag in ours deflate deflate1 qemu; do
        for f in s rss cpu bytes; do : >"$RES/a-$tag.$f"; done
        : >"$RES/a-$tag.check"
    done
    : >"$RES/a-loads"
    # one writer run: $1 tag, $2 rep; output measured, checked on the first rep, then deleted
    # (disk space here is short: one output at a time)
    run_a() {
        local tag=$1 rep=$2 t0 t1 tf="$RES/a-$1.time" l0 bytes
        rm -f "$out"
        l0=$(loadavg)
        t0=$(now)
        case "$tag" in
        ours) /usr/bin/time -v -o "$tf" "$BIN/examples/vmdk_bench" write "$raw" "$out" --level 6 >"$RES/a-$tag.json" ;;
        deflate) /usr/bin/time -v -o "$tf" "$BIN/examples/vmdk_bench" write "$raw" "$out" --level 6 --always-deflate >"$RES/a-$tag.json" ;;
        deflate1) /usr/bin/time -v -o "$tf" "$BIN/examples/vmdk_bench" write "$raw" "$out" --level 6 --always-deflate --threads 1 >"$RES/a-$tag.json" ;;
        qemu) /usr/bin/time -v -o "$tf" qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$raw" "$out" ;;
        esac
        t1=$(now)
        bytes=$(stat -c %s "$out")
        awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f\n", b-a}' >>"$RES/a-$tag.s"
        rss_mib "$tf" >>"$RES/a-$tag.rss"; echo >>"$RES/a-$tag.rss"
        cpu_s "$tf" >>"$RES/a-$tag.cpu"; echo >>"$RES/a-$tag.cpu"
        echo "$bytes" >>"$RES/a-$tag.bytes"
        echo "$tag (run $rep): $l0 -> $(loadavg)" >>"$RES/a-loads"
        log "A: $tag run $rep: $(tail -1 "$RES/a-$tag.s") s, RSS $(tail -1 "$RES/a-$tag.rss") MiB, CPU $(tail -1 "$RES/a-$tag.cpu") s, $bytes bytes; load $l0 -> $(loadavg)"
        if [ "$rep" = 1 ]; then
            local chk cmpr
            chk=$(qemu-img check -f vmdk "$out" 2>&1 | tr '\n' ' ' | sed 's/ *$//; s/\.$//')
            cmpr=$(qemu-img compare -f raw -F vmdk "$raw" "$out" 2>&1 | sed 's/\.$//' || true)
            echo "qemu-img compare with the raw disk: $cmpr; qemu-img check: $chk" >"$RES/a-$tag.check"
            log "A: $tag: $(cat "$RES/a-$tag.check")"
            case "$cmpr" in *identical*) ;; *) echo "run.sh: the $tag VMDK differs from the raw disk: $cmpr" >&2; exit 1 ;; esac
        fi
        rm -f "$out"
    }
    local i
    for i in $(seq 1 "$REPS_A"); do
        if [ $((i % 2)) = 1 ]; then
            run_a ours "$i"; run_a qemu "$i"; run_a deflate "$i"; run_a deflate1 "$i"
        else
            run_a deflate1 "$i"; run_a deflate "$i"; run_a qemu "$i"; run_a ours "$i"
        fi
    done
    local sq so zq zo ro speed size_ratio ok_speed ok_size ok_rss threads
    sq=$(median <"$RES/a-qemu.s"); so=$(median <"$RES/a-ours.s")
    zq=$(tail -1 "$RES/a-qemu.bytes"); zo=$(tail -1 "$RES/a-ours.bytes")
    ro=$(sort -g "$RES/a-ours.rss" | tail -1)
    threads=$(jq -r .threads "$RES/a-ours.json")
    speed=$(ratio "$sq" "$so")
    size_ratio=$(awk -v a="$zo" -v b="$zq" 'BEGIN {printf "%.4f", a/b}')
    ok_speed=$(awk -v s="$speed" 'BEGIN {print (s >= 1.8) ? "yes" : "**no**"}')
    ok_size=$(awk -v s="$size_ratio" 'BEGIN {print (s <= 1.05) ? "yes" : "**no**"}')
    ok_rss=$(awk -v r="$ro" 'BEGIN {print (r < 100) ? "yes" : "**no**"}')
    row() { # $1 tag, $2 label
        local s
        s=$(median <"$RES/a-$1.s")
        echo "| $2 | $(fmt "$s") | $(joined "$RES/a-$1.s") | $(ratio "$sq" "$s")x | $(median <"$RES/a-$1.cpu") | $(sort -g "$RES/a-$1.rss" | tail -1) MiB | $(sort -u "$RES/a-$1.bytes" | paste -sd/) |"
    }
    {
        echo "#### A. VMDK export: 5 GiB sparse disk, 1 GiB of data, to streamOptimized"
        echo
        cat "$RES/a-head.md"
        echo "16 runs of 64 MiB (8 xorshift random, 8 a repeated 72-byte log line), zlib level 6 for both"
        echo "(qemu's \`block/vmdk.c\` calls zlib's \`compress()\`, i.e. \`Z_DEFAULT_COMPRESSION\`). opsbake: the"
        echo "stemcell crate's writer as its own process (\`examples/vmdk_bench write\`, **release profile**),"
        echo "$threads compression threads (one per core) unless noted; qemu-img $(qemu-img --version | head -1 | awk '{print $3}') (one thread)."
        echo "\"stored\": grains that deflate cannot shrink (near-uniform byte histogram, no repeats of 8+"
        echo "bytes) are written as stored deflate blocks without the match search (the default);"
        echo "\"always deflate\": every grain goes through deflate level 6, as in qemu-img."
        echo "Median of $REPS_A runs, in alternating order; wall time from process start to exit (both"
        echo "fsync their output); peak RSS and CPU (user + system) from \`/usr/bin/time -v\`."
        echo
        echo "| writer | median s | runs (s) | speed-up vs qemu-img | CPU s (median) | peak RSS (max) | output bytes |"
        echo "|---|---|---|---|---|---|---|"
        row ours "**opsbake** (default: stored incompressible grains)"
        row deflate "opsbake, always deflate"
        row deflate1 "opsbake, always deflate, 1 thread"
        row qemu "qemu-img convert"
        echo
        echo "Checks (first run of each): opsbake: $(cat "$RES/a-ours.check"). Always deflate: $(cat "$RES/a-deflate.check" | sed 's/; qemu-img check.*//'); 1 thread: $(cat "$RES/a-deflate1.check" | sed 's/; qemu-img check.*//'). qemu-img's output: $(cat "$RES/a-qemu.check" | sed 's/; qemu-img check.*//')."
        echo "opsbake wrote $(jq -r .grains "$RES/a-ours.json") grains and skipped $(jq -r .zero_grains "$RES/a-ours.json") all-zero grains."
        echo
        echo "| target (issue 6) | result | met? |"
        echo "|---|---|---|"
        echo "| >= 1.8x faster than qemu-img on 2 cores, same zlib level | $(fmt "$so") s vs $(fmt "$sq") s: ${speed}x (always deflate: $(ratio "$sq" "$(median <"$RES/a-deflate.s")")x) | $ok_speed |"
        echo "| output <= 5% larger than qemu-img's | $zo vs $zq bytes: ratio $size_ratio | $ok_size |"
        echo "| peak RSS < 100 MiB | $ro MiB (highest of $REPS_A runs) | $ok_rss |"
        echo
        echo "Load average (1, 5, 15 min) before -> after each run:"
        echo
        echo '```'
        cat "$RES/a-loads"
        echo '```'
        echo
    } >"$RES/a.md"
}

##############################################################################
# B. Offline build up to the provisioned, powered-off disk; then the export
##############################################################################
STEMCELL_DIR=${OPSBAKE_TEST_STEMCELL_DIR:-${OPSBAKE_CACHE}/test-stemcell/current}
VSPHERE_TGZ="$STEMCELL_DIR/bosh-stemcell-1.0-vsphere-esxi-debian-bookworm-go_agent.tgz"
DISK_RAW="$STEMCELL_DIR/disk.raw"

prepare_b() {
    local d="$WORK/b" i j
    mkdir -p "$d/scripts"
    if [ ! -f "$d/tree.done" ]; then
        rm -rf "$d/tree"
        for i in $(seq -w 0 19); do
            mkdir -p "$d/tree/dir$i"
            for j in $(seq -w 0 99); do
                # 4096 bytes: a 16-byte label, then 'x'
                { printf '%s-%s-opsbak' "00$i" "0$j"; head -c 4080 /dev/zero | tr '\0' x; } >"$d/tree/dir$i/file$j.txt"
            done
        done
        touch "$d/tree.done"
    fi
    for i in $(seq -w 0 19); do
        printf '#!/bin/sh\nset -e\necho "script %s: $(ls /var/tmp/tree/dir%s | wc -l) files in dir%s"\n' "$i" "$i" "$i" >"$d/scripts/s$i.sh"
        chmod 0755 "$d/scripts/s$i.sh"
    done
    # the first script also says when the guest's sshd came up and how long the guest
    # had been up when the first script ran (seconds since the kernel started)
    cat >>"$d/scripts/s00.sh" <<'EOS'
sshd_us=$(systemctl show -p ActiveEnterTimestampMonotonic --value ssh.service 2>/dev/null || echo 0)
echo "BENCH-GUEST sshd-active-at=$((sshd_us / 1000))ms uptime-at-first-script=$(cut -d' ' -f1 /proc/uptime)s"
EOS
    # Packer's key and the settings ISO (the agent installs the key for vcap
    # and sets the password hash, as the vbox builder's ISO does)
    if [ ! -f "$d/packer_key" ]; then
        ssh-keygen -q -t ed25519 -N '' -C packer-bench -f "$d/packer_key"
    fi
    # a throwaway password for this local test VM only (Packer's shutdown_command needs sudo)
    PACKER_VM_PW=$(openssl rand -hex 12)
    printf '%s\n' "$PACKER_VM_PW" | openssl passwd -6 -stdin >"$d/packer_pw.hash"
    "$BIN/examples/settings_iso" "$d/settings.iso" --key "$d/packer_key.pub" --password-hash-file "$d/packer_pw.hash" --agent-id opsbake-build 2>/dev/null
    local scripts_json
    scripts_json=$(for i in $(seq -w 0 19); do echo "$d/scripts/s$i.sh"; done | jq -R . | jq -s .)
    jq -n --arg disk "file://$DISK_RAW" --arg key "$d/packer_key" --arg iso "$d/settings.iso" \
        --arg tree "$d/tree" --arg pw "$PACKER_VM_PW" --argjson scripts "$scripts_json" '{
      builders: [{
        type: "qemu", accelerator: "tcg", disk_image: true,
        iso_url: $disk, iso_checksum: "none",
        format: "qcow2", skip_resize_disk: true, skip_compaction: true,
        disk_interface: "virtio", disk_cache: "writeback", disk_discard: "unmap",
        cpus: 1, memory: 1024, headless: true, boot_wait: "0s",
        output_directory: "{{user `out`}}", vm_name: "disk.qcow2",
        communicator: "ssh", ssh_username: "vcap", ssh_private_key_file: $key,
        ssh_timeout: "20m", ssh_handshake_attempts: 1000,
        shutdown_command: ("echo " + $pw + " | sudo -S -p \"\" poweroff"), shutdown_timeout: "5m",
        qemuargs: [
          ["-nodefaults"], ["-no-user-config"],
          ["-drive", "file={{ .OutputDir }}/{{ .Name }},if=virtio,cache=writeback,discard=unmap,format=qcow2"],
          ["-drive", ("file=" + $iso + ",format=raw,if=ide,media=cdrom,readonly=on")],
          ["-netdev", "user,id=user.0,restrict=on,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22"],
          ["-device", "virtio-net-pci,netdev=user.0"], ["-device", "virtio-rng-pci"],
          ["-serial", "file:{{ .OutputDir }}/serial.log"],
          ["-rtc", "base=2024-01-01T00:00:00,clock=vm"]
        ]
      }],
      variables: {out: ""},
      provisioners: [
        {type: "file", source: $tree, destination: "/var/tmp"},
        {type: "shell", scripts: $scripts}
      ]
    }' >"$d/packer.json"
    packer validate -var "out=$d/packer-validate" "$d/packer.json" >/dev/null
    {
        cat <<EOF
name: bench
version: "1.0"
variables:
  out: {default: out}
stemcells:
  vbox: {path: "$VSPHERE_TGZ"}
builds:
  vbox:
    cpus: 1
    memory: 1024
    ssh: {user: vcap, login_timeout: 20m}
    options: {engine: qemu, accel: tcg, vm_name: bench, shutdown_timeout: 2m}
provision:
  - type: file
    source: tree
    destination: /var/tmp/tree
  - type: shell
    scripts:
EOF
        for i in $(seq -w 0 19); do echo "      - scripts/s$i.sh"; done
        cat <<EOF
outputs:
  directory: "\${var.out}"
EOF
    } >"$d/bench.yml"
    "$BIN/opsbake" validate "$d/bench.yml" --var "out=$d/validate-out" >/dev/null 2>&1
}

# seconds between two RFC 3339 UTC times with milliseconds (or epoch.ns for $1)
ts_epoch() { date -u -d "$1" +%s.%N; }

run_opsbake_b() { # $1: run number
    local d="$WORK/b" r="$WORK/b/opsbake-$1" t0 t1 l0 tf cap_ts prov_ts login_ts build_ts
    rm -rf "$r"
    mkdir -p "$r"
    tf="$RES/b-opsbake-$1.time"
    l0=$(loadavg)
    t0=$(now)
    if ! /usr/bin/time -v -o "$tf" "$BIN/opsbake" --json --no-progress --state-dir "$r/state" \
        build "$d/bench.yml" --iaas vbox --offline --var "out=$r/out" >"$r/events.jsonl" 2>"$r/stderr.log"; then
        log "B: opsbake run $1 FAILED (see $r)"; tail -5 "$r/stderr.log" >&2
        echo "opsbake $1 FAILED $l0 -> $(loadavg)" >>"$RES/b-loads"
        return 1
    fi
    t1=$(now)
    # step end times from the events (RFC 3339, UTC, ms)
    step_end() { jq -r --arg s "$1" 'select(.event == "step_finished" and .step == $s) | .ts' "$r/events.jsonl" | tail -1; }
    step_secs() { jq -r --arg s "$1" 'select(.event == "step_finished" and .step == $s) | .seconds' "$r/events.jsonl" | tail -1; }
    cap_ts=$(ts_epoch "$(step_end capture)")
    local total to_disk export steps
    total=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b-a}')
    to_disk=$(awk -v a="$t0" -v b="$cap_ts" 'BEGIN {printf "%.2f", b-a}')
    export=$(awk -v a="$cap_ts" -v b="$t1" 'BEGIN {printf "%.2f", b-a}')
    echo "$to_disk" >>"$RES/b-opsbake.disk"
    # phases: start (to QEMU up: validate, stemcell, launch), boot (to the first login),
    # provision (sudo grant, uploads, scripts), power-off
    local launched
    launched=$(ts_epoch "$(step_end launch)")
    awk -v a="$t0" -v b="$launched" 'BEGIN {printf "%.2f\n", b-a}' >>"$RES/b-opsbake.p-start"
    fmt "$(step_secs connect)" >>"$RES/b-opsbake.p-boot"; echo >>"$RES/b-opsbake.p-boot"
    awk -v a="$(step_secs before_provision)" -v b="$(step_secs provision)" 'BEGIN {printf "%.2f\n", a+b}' >>"$RES/b-opsbake.p-prov"
    fmt "$(step_secs capture)" >>"$RES/b-opsbake.p-off"; echo >>"$RES/b-opsbake.p-off"
    echo "$total" >>"$RES/b-opsbake.total"
    echo "$export" >>"$RES/b-opsbake.export"
    jq -r 'select(.event == "message") | .text' "$r/events.jsonl" | grep -E '^(root file system rebuilt|OVA |QEMU pid .* stopped)' | sed 's/^/    /' >"$RES/b-opsbake-$1.export-msgs" || true
    steps=$(jq -r 'select(.event == "step_finished") | "\(.step)=\(.seconds * 100 | round / 100)"' "$r/events.jsonl" | paste -sd' ')
    echo "run $1: $steps" >>"$RES/b-opsbake.steps"
    jq -r 'select(.event == "output") | .line' "$r/events.jsonl" | grep -o 'BENCH-GUEST.*' | sed 's/^/    /' >>"$RES/b-opsbake.steps" || true
    sed 's/^    /    export: /' "$RES/b-opsbake-$1.export-msgs" >>"$RES/b-opsbake.steps" 2>/dev/null || true
    echo "opsbake $1 $l0 -> $(loadavg)" >>"$RES/b-loads"
    # the OVA's pieces, for the export comparison
    local ova
    ova=$(find "$r/out" -name '*.ova' | head -1)
    stat -c %s "$ova" >"$RES/b-opsbake.ova-bytes"
    log "B: opsbake run $1: powered-off disk at $to_disk s, OVA at $total s (export $export s); steps: $steps; RSS $(rss_mib "$tf") MiB; load $l0 -> $(loadavg)"
    rss_mib "$tf" >>"$RES/b-opsbake.rss"; echo >>"$RES/b-opsbake.rss"
    [ "$KEEP" = 1 ] || rm -rf "$r/state" "$r/out"
}

run_packer_b() { # $1: run number
    local d="$WORK/b" r="$WORK/b/packer-$1" t0 t1 t2 l0 tf
    rm -rf "$r"
    mkdir -p "$r"
    tf="$RES/b-packer-$1.time"
    l0=$(loadavg)
    t0=$(now)
    if ! /usr/bin/time -v -o "$tf" packer build -color=false -timestamp-ui -var "out=$r/out" "$d/packer.json" >"$r/packer.log" 2>&1; then
        log "B: packer run $1 FAILED (see $r/packer.log)"; tail -5 "$r/packer.log" >&2
        echo "packer $1 FAILED $l0 -> $(loadavg)" >>"$RES/b-loads"
        return 1
    fi
    t1=$(now)
    # export: streamOptimized VMDK with qemu-img (same zlib level as opsbake), then tar
    qemu-img convert -f qcow2 -O vmdk -o subformat=streamOptimized "$r/out/disk.qcow2" "$r/out/disk1.vmdk"
    tar -C "$r/out" --owner=0 --group=0 -cf "$r/packer.ova" disk1.vmdk
    t2=$(now)
    local total export
    total=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b-a}')
    export=$(awk -v a="$t1" -v b="$t2" 'BEGIN {printf "%.2f", b-a}')
    echo "$total" >>"$RES/b-packer.disk"
    # the same phases from Packer's -timestamp-ui lines (1 s resolution)
    pts() { date -u -d "$(grep -m1 "$1" "$r/packer.log" | cut -d' ' -f1 | sed 's/:$//')" +%s; }
    local vm conn halt
    vm=$(pts 'Starting VM'); conn=$(pts 'Connected to SSH'); halt=$(pts 'Gracefully halting')
    awk -v a="$t0" -v b="$vm" 'BEGIN {d = b - a; if (d < 0) d = 0; printf "%.0f\n", d}' >>"$RES/b-packer.p-start"
    echo $((conn - vm)) >>"$RES/b-packer.p-boot"
    echo $((halt - conn)) >>"$RES/b-packer.p-prov"
    awk -v a="$halt" -v b="$t1" 'BEGIN {printf "%.0f\n", b-a}' >>"$RES/b-packer.p-off"
    echo "$export" >>"$RES/b-packer.export"
    awk -v a="$total" -v b="$export" 'BEGIN {printf "%.2f\n", a+b}' >>"$RES/b-packer.total"
    stat -c %s "$r/packer.ova" >"$RES/b-packer.ova-bytes"
    stat -c %s "$r/out/disk.qcow2" >"$RES/b-packer.qcow2-bytes"
    echo "packer $1 $l0 -> $(loadavg)" >>"$RES/b-loads"
    # Packer's own step times (-timestamp-ui), for the notes
    grep -E 'Copying hard drive|Starting VM|Waiting for SSH|Connected to SSH|Provisioning with shell script: .*s00.sh|Uploading .*/tree|Gracefully halting|finished after|BENCH-GUEST' "$r/packer.log" | sed 's/^/    /' >"$RES/b-packer-$1.steps" || true
    log "B: packer run $1: powered-off disk at $total s, export $export s; RSS $(rss_mib "$tf") MiB; load $l0 -> $(loadavg)"
    rss_mib "$tf" >>"$RES/b-packer.rss"; echo >>"$RES/b-packer.rss"
    [ "$KEEP" = 1 ] || rm -f "$r/out/disk.qcow2" "$r/out/disk1.vmdk" "$r/packer.ova"
}

want() { case ",$TOOLS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

bench_b() {
    [ -f "$VSPHERE_TGZ" ] && [ -f "$DISK_RAW" ] || {
        echo "run.sh: the test stemcell is missing in $STEMCELL_DIR: run .ci/setup.d/20-test-stemcell.sh" >&2
        exit 2
    }
    prepare_b
    run_head >"$RES/b-head.md"
    : >"$RES/b-loads"
    for f in disk total export rss steps p-start p-boot p-prov p-off; do : >"$RES/b-opsbake.$f"; : >"$RES/b-packer.$f"; done
    local i
    for i in $(seq 1 "$REPS_B"); do
        if [ $((i % 2)) = 1 ]; then
            if want opsbake; then run_opsbake_b "$i" || true; fi
            if want packer; then run_packer_b "$i" || true; fi
        else
            if want packer; then run_packer_b "$i" || true; fi
            if want opsbake; then run_opsbake_b "$i" || true; fi
        fi
    done
    local od pd ot pt oe pe
    od=$(median <"$RES/b-opsbake.disk"); pd=$(median <"$RES/b-packer.disk")
    ot=$(median <"$RES/b-opsbake.total"); pt=$(median <"$RES/b-packer.total")
    oe=$(median <"$RES/b-opsbake.export"); pe=$(median <"$RES/b-packer.export")
    local share ok
    share=$(ratio "$od" "$pd")
    ok=$(awk -v s="$share" 'BEGIN {print (s <= 0.5) ? "yes" : "**no**"}')
    {
        echo "#### B. Offline build of the test stemcell: opsbake vs Packer 1.6.6 \`qemu\`"
        echo
        cat "$RES/b-head.md"
        echo "Same work for both: the test stemcell's disk (opsbake from the vSphere stemcell tarball it"
        echo "takes as input: extract, SHA-1, VMDK to raw; Packer from the same disk as \`disk.raw\`,"
        echo "which it converts to its qcow2 output disk), booted under QEMU **TCG** with 1 vCPU,"
        echo "1024 MiB, virtio disk and net, virtio-rng, the BOSH agent settings CD-ROM (for Packer"
        echo "written by \`crates/stemcell/examples/settings_iso\` with Packer's key and a password hash),"
        echo "user networking with \`restrict=on\` and one hostfwd on 127.0.0.1, serial console to a file,"
        echo "\`-rtc base=2024-01-01T00:00:00,clock=vm\`; login as vcap with a key; upload of 2000"
        echo "files of 4 KiB in 20 folders; 20 shell scripts (each lists one folder); power-off."
        echo "opsbake: release build, \`--offline\`, \`accel: tcg\` (no KVM probe), its own power-off"
        echo "(ACPI, 15 s grace, then SysRq s/u/o). Packer: \`boot_wait: 0s\`, scp uploads (its default),"
        echo "\`shutdown_command\` = \`sudo poweroff\` with the password, \`skip_compaction\` and"
        echo "\`skip_resize_disk\` (so it stops at the powered-off disk). Median of $REPS_B runs, in"
        echo "alternating order. \"Powered-off disk\": from process start to the end of opsbake's"
        echo "\`capture\` step / to Packer's exit."
        echo
        echo "| | opsbake | Packer 1.6.6 (phases: 1 s resolution) | opsbake / Packer |"
        echo "|---|---|---|---|"
        echo "| **to the provisioned, powered-off disk** (median s) | **$(fmt "$od")** | **$(fmt "$pd")** | **$share** |"
        echo "| runs (s) | $(joined "$RES/b-opsbake.disk") | $(joined "$RES/b-packer.disk") | |"
        echo "| start: to QEMU running (opsbake: validate, stemcell extract + SHA-1 + VMDK to raw, overlay, ISO; Packer: qcow2 copy of disk.raw) | $(median <"$RES/b-opsbake.p-start") | $(median <"$RES/b-packer.p-start") | |"
        echo "| boot: QEMU start to the first vcap login (Packer: 10 s fixed wait, then SSH attempts 5 s apart) | $(median <"$RES/b-opsbake.p-boot") | $(median <"$RES/b-packer.p-boot") | $(ratio "$(median <"$RES/b-opsbake.p-boot")" "$(median <"$RES/b-packer.p-boot")") |"
        echo "| provision: (opsbake: sudo grant, staging) 2000-file upload, 20 scripts | $(median <"$RES/b-opsbake.p-prov") | $(median <"$RES/b-packer.p-prov") | $(ratio "$(median <"$RES/b-opsbake.p-prov")" "$(median <"$RES/b-packer.p-prov")") |"
        echo "| power-off (opsbake: ACPI, SysRq if ignored; Packer: \`sudo poweroff\` over SSH) | $(median <"$RES/b-opsbake.p-off") | $(median <"$RES/b-packer.p-off") | |"
        echo "| export (median s) | $(fmt "$oe") (normalise: file system rebuilt with \`mkfs.ext4 -d\`, VMDK, \`.mf\`, OVA tar) | $(fmt "$pe") (\`qemu-img convert\` qcow2 to streamOptimized, tar) | $(ratio "$oe" "$pe") |"
        echo "| export runs (s) | $(joined "$RES/b-opsbake.export") | $(joined "$RES/b-packer.export") | |"
        echo "| whole, disk + export (median s) | $(fmt "$ot") | $(fmt "$pt") | $(ratio "$ot" "$pt") |"
        echo "| OVA bytes (last run) | $(cat "$RES/b-opsbake.ova-bytes" 2>/dev/null || echo -) | $(cat "$RES/b-packer.ova-bytes" 2>/dev/null || echo -) (VMDK only; qcow2 was $(cat "$RES/b-packer.qcow2-bytes" 2>/dev/null || echo -)) | |"
        echo
        echo "| target (issue 6) | result | met? |"
        echo "|---|---|---|"
        echo "| opsbake at most half of Packer's wall time (to the powered-off disk) | $(fmt "$od") s vs $(fmt "$pd") s: $share | $ok |"
        echo
        echo "opsbake's step times per run (s, from its \`--json\` events):"
        echo
        echo '```'
        cat "$RES/b-opsbake.steps"
        echo '```'
        echo
        echo "Packer's log lines with \`-timestamp-ui\` (per run):"
        echo
        echo '```'
        for f in "$RES"/b-packer-*.steps; do [ -f "$f" ] && { echo "$(basename "$f" .steps):"; cat "$f"; }; done
        echo '```'
        echo
        echo "Load average (1, 5, 15 min) before -> after each run:"
        echo
        echo '```'
        cat "$RES/b-loads"
        echo '```'
        echo
    } >"$RES/b.md"
}

case "$ONLY" in *a*) bench_a ;; esac
case "$ONLY" in *b*) bench_b ;; esac

# A section this run did not make and has no earlier result for keeps
# what docs/benchmarks.md holds (so that `--only b` does not drop A).
keep_section() { # $1: a|b
    local from to
    case "$1" in
        a) from='#### A. '; to='#### B. ' ;;
        b) from='#### B. '; to='<!-- /iaas-vbox bench -->' ;;
    esac
    [ -f docs/benchmarks.md ] || return 0
    awk -v f="$from" -v t="$to" '
        index($0, f) == 1 {on = 1}
        on && index($0, t) == 1 && index($0, f) != 1 {exit}
        on {print}' docs/benchmarks.md
}
for sec in a b; do
    if [ ! -f "$RES/$sec.md" ]; then
        keep_section "$sec" >"$RES/$sec.md"
        [ -s "$RES/$sec.md" ] || rm -f "$RES/$sec.md"
    fi
done
{
    if [ -f "$RES/a.md" ]; then cat "$RES/a.md"; fi
    if [ -f "$RES/b.md" ]; then cat "$RES/b.md"; fi
} >"$WORK/results.md"
cat "$WORK/results.md"

if [ "$DOCS" = 1 ]; then
    # replace what is between the markers in docs/benchmarks.md (the iaas-vbox section)
    doc=docs/benchmarks.md
    start='<!-- iaas-vbox bench: generated by crates/iaas-vbox/bench/run.sh -->'
    end='<!-- /iaas-vbox bench -->'
    grep -qF "$start" "$doc" && grep -qF "$end" "$doc" || { echo "run.sh: markers missing in $doc; results are in $WORK/results.md" >&2; exit 1; }
    awk -v s="$start" -v e="$end" -v f="$WORK/results.md" '
        $0 == s {print; print ""; while ((getline l < f) > 0) print l; print ""; skip = 1; next}
        $0 == e {skip = 0}
        !skip {print}' "$doc" >"$doc.tmp.$$" && mv "$doc.tmp.$$" "$doc"
    log "results written into $doc (between the iaas-vbox bench markers)"
fi
