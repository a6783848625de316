# shellcheck shell=bash
# Helpers shared by the boot benchmarks, scripts/bench-boot and
# scripts/bench-boot-uefi (sourced, never run): both report medians and the
# VMM's memory overhead measured the same way, so those live here once.

# median N...: the median of the numbers (the mean of the middle two for an
# even count).
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# vmm_rss_kib PID GUEST_MIB: print "VmRSS_kiB guest_rss_kiB" of the running
# VMM process PID. Guest RAM is an anonymous mapping of exactly the guest's
# size; only pages the guest touched are resident, so VmRSS minus that
# mapping's Rss is the VMM's own code, heap, stacks and device buffers.
# (VmRSS minus the configured RAM would be negative and meaningless.)
vmm_rss_kib() {
    local rss guest
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$1/status")
    guest=$(awk -v want=$(($2 * 1024)) '
        /^[0-9a-f]+-[0-9a-f]+ / { anon = (NF < 6) }
        /^Size:/ { size = $2 }
        /^Rss:/ { if (anon && size == want) total += $2 }
        END { print total + 0 }' "/proc/$1/smaps")
    echo "$rss $guest"
}
