# shellcheck shell=bash
# Shared helpers for the securevm harness scripts (sourced, never run).
#
# Why one file: every script needs the same cache location, the same way of
# logging and failing, and the same "install the Debian package only if it is
# missing" logic; keeping them here keeps the scripts short and consistent.

SECUREVM_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SECUREVM_CACHE=${SECUREVM_CACHE:-${HOME:-/root}/.cache/securevm}
SECUREVM_ASSETS=${SECUREVM_ASSETS:-$SECUREVM_CACHE/assets}
export SECUREVM_REPO SECUREVM_CACHE SECUREVM_ASSETS

log() { printf '[%s] %s\n' "${SECUREVM_LOG_TAG:-securevm}" "$*" >&2; }
die() {
    printf '[%s] error: %s\n' "${SECUREVM_LOG_TAG:-securevm}" "$*" >&2
    exit 1
}

need_root() {
    [[ $(id -u) -eq 0 ]] || die "$1 needs root (it runs apt-get/debootstrap); re-run with sudo"
}

# Building: C toolchain, OpenSSL and libcryptsetup headers, clang for the
# libcryptsetup bindings. Tests: binutils assembles the tiny guests,
# acpica-tools checks the ACPI tables, minisign checks signature interop,
# cryptsetup-bin checks LUKS2 interop, qemu-utils and openssl are the disk
# benchmark's baselines, util-linux's setpriv drops privileges in a test,
# iproute2 and python3 are the network scenarios' TAP and peer in L1,
# wireguard-tools configures net-vpn's kernel WireGuard peer, tcpdump
# captures its links, and softhsm2 + opensc make the smart cards of the
# id-smartcard tests.
BUILD_PKGS=(gcc libc6-dev make pkg-config libssl-dev libcryptsetup-dev clang libclang-dev)
TEST_PKGS=(binutils acpica-tools minisign cryptsetup-bin qemu-utils openssl util-linux iproute2 python3 wireguard-tools tcpdump softhsm2 opensc)

# ensure_pkgs PKG...: apt-get install the packages that are not installed yet.
# An `apt-get update` is run once if the first attempt fails (fresh CI hosts
# may have stale or empty package lists).
ensure_pkgs() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    need_root "installing ${missing[*]}"
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; then
        log "apt-get install failed; running apt-get update and retrying"
        apt-get update >/dev/null || die "apt-get update failed; check network access to the Debian mirror"
        apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null ||
            die "could not install ${missing[*]}; see apt-get output above"
    fi
}

# asset_env: the file written by scripts/guest-assets that names every built asset.
asset_env_file() { echo "$SECUREVM_ASSETS/assets.env"; }

load_assets() {
    local env
    env=$(asset_env_file)
    [[ -r $env ]] || die "guest assets not built yet ($env missing); run scripts/guest-assets"
    # shellcheck disable=SC1090
    source "$env"
}

# now_ms: wall-clock milliseconds, for timings printed by the scripts.
now_ms() { date +%s%3N; }
