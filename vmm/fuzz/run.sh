#!/usr/bin/env bash
# Fuzz the securevm packet filter for a bounded time and report how many inputs
# ran clean:   vmm/fuzz/run.sh SECONDS
#
# Uses cargo-fuzz (libFuzzer) on the stable toolchain: RUSTC_BOOTSTRAP=1 lets
# stable rustc accept the -Z flags cargo-fuzz passes. Installs cargo-fuzz if
# it is missing. Prints `fuzz-netfilter-executions: N`; exits non-zero if the
# fuzzer found a crash (the reproducer is left under fuzz/artifacts/).
set -euo pipefail

seconds="${1:?usage: run.sh SECONDS}"
cd "$(dirname "$0")"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# The seed corpus is versioned; new inputs go to a scratch directory so a
# run does not litter the work tree.
scratch_corpus="$(mktemp -d)"
trap 'rm -rf "$scratch_corpus"' EXIT
log="$(mktemp)"

status=0
RUSTC_BOOTSTRAP=1 cargo fuzz run netfilter_frames "$scratch_corpus" corpus/netfilter_frames -- \
    -max_total_time="$seconds" -print_final_stats=1 -max_len=4096 \
    >"$log" 2>&1 || status=$?

executions="$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)"
if [ "$status" -ne 0 ] || [ -z "$executions" ]; then
    tail -n 60 "$log" >&2
    rm -f "$log"
    echo "fuzz-netfilter: FAILED (exit status $status)" >&2
    exit 1
fi
rm -f "$log"
echo "fuzz-netfilter-executions: $executions"
