#!/usr/bin/env bash
# tests/e2e/runner.sh: run one phase of e2e scenarios (called by scripts/e2e).
#
#   runner.sh prepare RESULTS NAME   on the host: NAME's prepare(), if any
#   runner.sh run RESULTS NAME...    where /dev/kvm works (inside L1): each
#                                    NAME's run() under its TIMEOUT, printing
#                                    `PASS name (N s)` or `FAIL name: reason`
#                                    (plus the tail of its serial log)
#
# Per scenario, RESULTS/NAME/ is its working directory and keeps serial.log
# (guest console + securevm output), prepare.log, run.log, `started` and `result`
# (PASS SECONDS | FAIL REASON), which scripts/e2e reads for the summary.
# Disk images (*.img, e2e) are deleted afterwards unless E2E_KEEP_IMAGES=1.
set -euo pipefail
E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$E2E_DIR/../.." && pwd)
export E2E_DIR
SECUREVM=${SECUREVM:-$REPO/target/release/securevm}
[[ $SECUREVM == /* ]] || SECUREVM=$REPO/$SECUREVM
export SECUREVM

PREPARE_TIMEOUT=300
LOG_TAIL_LINES=${E2E_LOG_TAIL:-25}

# phase_in_subshell PHASE NAME LIMIT LOGFILE [WORKDIR]: run PHASE() of
# scenario NAME in WORKDIR (default RESULTS/NAME) in a fresh bash under
# `timeout`, so `fail`/`exit` only end that scenario.
phase_in_subshell() {
    local phase=$1 name=$2 limit=$3 logfile=$4 work
    work=${5:-$RESULTS/$name}
    # shellcheck disable=SC2016 # the fresh bash expands its own variables
    WORK=$work SERIAL_LOG=$work/serial.log \
        timeout -k 10 "$limit" bash -c '
            set -euo pipefail
            source "$E2E_DIR/lib.sh"
            source "$SECUREVM_ASSETS/assets.env"
            source "$E2E_DIR/scenarios/$1.sh"
            cd "$WORK"
            if declare -F "$2" >/dev/null; then "$2"; fi
        ' _ "$name" "$phase" >"$logfile" 2>&1
}

scenario_timeout() {
    bash -c 'source "$E2E_DIR/scenarios/$1.sh"; echo "${TIMEOUT:-300}"' _ "$1"
}

# failure_reason NAME STATUS LIMIT PHASE
failure_reason() {
    local dir=$RESULTS/$1
    if [[ -s $dir/fail-reason ]]; then
        head -n1 "$dir/fail-reason"
    elif [[ $2 -eq 124 || $2 -eq 137 ]]; then
        echo "$4 timed out after ${3}s"
    else
        echo "$4 exited $2: $(tail -n1 "$dir/$4.log" 2>/dev/null)"
    fi
}

# copy_back WORK DIR: WORK's files into DIR, disk images (16 MiB and more)
# only with E2E_KEEP_IMAGES=1.
copy_back() {
    local size=(-size -16M)
    [[ ${E2E_KEEP_IMAGES:-} == 1 ]] && size=()
    (cd "$1" && find . -type f "${size[@]}" -print0 | xargs -0 -r cp -a --parents -t "$2")
}

# memory_snapshot WHEN FILE: the machine's free memory and its page
# migration, compaction and huge-page counters, appended to FILE. Nested
# guests crash more often late in a full run than alone in a fresh L1;
# whether the L1 moving guest pages around (each move rewrites the
# guest's nested page tables) goes with the crashes is what this records.
memory_snapshot() {
    {
        echo "== $1 $(date +%T) uptime $(cut -d' ' -f1 /proc/uptime) s; THP $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)"
        grep -E '^(MemFree|MemAvailable|Cached|Shmem|AnonPages|AnonHugePages):' /proc/meminfo
        grep -E '^(pgmigrate_success|compact_stall|compact_success|thp_fault_alloc|thp_collapse_alloc|thp_split_page|numa_pages_migrated) ' /proc/vmstat
    } >>"$2" 2>/dev/null || true
}

cleanup_images() {
    [[ ${E2E_KEEP_IMAGES:-} == 1 ]] || rm -f "$RESULTS/$1"/*.img "$RESULTS/$1/e2e"
}

prepare_one() {
    local name=$1 dir=$RESULTS/$1 t0 status=0
    rm -rf "$dir"
    mkdir -p "$dir"
    t0=$(date +%s)
    phase_in_subshell prepare "$name" "$PREPARE_TIMEOUT" "$dir/prepare.log" || status=$?
    echo $(($(date +%s) - t0)) >"$dir/prepare-secs"
    if [[ $status -ne 0 ]]; then
        echo "FAIL $(failure_reason "$name" "$status" "$PREPARE_TIMEOUT" prepare)" >"$dir/result"
        cleanup_images "$name"
        return 1
    fi
}

run_one() {
    local name=$1 dir=$RESULTS/$1 limit t0 status=0 secs
    limit=$(scenario_timeout "$name")
    t0=$(date +%s)
    rm -f "$dir/fail-reason"
    # scripts/e2e's watchdog on the host times the scenario from this file.
    echo "$t0" >"$dir/started"
    if [[ ! -x $SECUREVM ]]; then
        echo "FAIL securevm binary missing ($SECUREVM); build it with: cargo build --release -p securevm" >"$dir/result"
    else
        # run() works on a local copy: RESULTS is the host's 9p share when
        # this runs in L1, and guest disk I/O and logs through 9p are slow
        # and have wedged the L1 kernel. What is worth keeping comes back.
        local work
        work=$(mktemp -d "${E2E_LOCAL_DIR:-/tmp}/e2e-$name.XXXXXX")
        cp -a --sparse=always "$dir/." "$work/"
        memory_snapshot before "$work/memory.txt"
        phase_in_subshell run "$name" "$limit" "$work/run.log" "$work" || status=$?
        memory_snapshot after "$work/memory.txt"
        copy_back "$work" "$dir"
        rm -rf "$work"
        secs=$(($(date +%s) - t0 + $(cat "$dir/prepare-secs" 2>/dev/null || echo 0)))
        if [[ $status -eq 0 ]]; then
            echo "PASS $secs" >"$dir/result"
        else
            # However the scenario noticed (a ctl call that found no socket,
            # a marker that never came), a guest that triple-faulted makes
            # the failure a crash, which scripts/e2e runs again.
            ! grep -qs 'securevm: guest crashed: vcpu' "$dir/serial.log" "$dir/securevm.err" ||
                touch "$dir/guest-crashed"
            echo "FAIL $(failure_reason "$name" "$status" "$limit" run)" >"$dir/result"
        fi
    fi
    cleanup_images "$name"
    report "$name"
}

# report NAME: print the scenario's result line (and log tails on failure).
report() {
    local name=$1 dir=$RESULTS/$1 verdict rest
    read -r verdict rest <"$dir/result"
    if [[ $verdict == PASS ]]; then
        echo "PASS $name ($rest s)"
        return
    fi
    echo "FAIL $name: $rest"
    local f
    for f in run.log serial.log hang-diagnostics.txt; do
        [[ -s $dir/$f ]] || continue
        echo "    --- last $LOG_TAIL_LINES lines of $dir/$f"
        tail -n "$LOG_TAIL_LINES" "$dir/$f" | tr -d '\r' | sed 's/^/    | /'
    done
}

main() {
    local mode=${1:-}
    RESULTS=${2:-}
    [[ -n $mode && -n $RESULTS && $# -ge 3 ]] || {
        echo "usage: runner.sh prepare|run RESULTS NAME..." >&2
        exit 2
    }
    shift 2
    export RESULTS
    : "${SECUREVM_ASSETS:?SECUREVM_ASSETS must name the asset cache (see scripts/guest-assets)}"
    local name failed=0
    for name in "$@"; do
        case $mode in
        prepare) prepare_one "$name" || failed=1 ;;
        run) run_one "$name" ;;
        *)
            echo "unknown mode $mode" >&2
            exit 2
            ;;
        esac
    done
    if [[ $mode == run ]]; then
        for name in "$@"; do
            grep -q '^PASS' "$RESULTS/$name/result" 2>/dev/null || failed=1
        done
    fi
    return "$failed"
}

main "$@"
