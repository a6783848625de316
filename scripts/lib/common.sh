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
# cryptsetup-bin checks LUKS2 interop, fdisk writes GPTs of both sector
# sizes for `disk create --from`'s probe, qemu-utils and openssl are the disk
# benchmark's baselines, util-linux's setpriv drops privileges in a test,
# iproute2 and python3 are the network scenarios' TAP and peer in L1,
# wireguard-tools configures net-vpn's kernel WireGuard peer, tcpdump
# captures its links, and softhsm2 + opensc make the smart cards of the
# id-smartcard tests, shellcheck lints the shell scripts, and gvncviewer's
# gvnccapture (through socat to the VNC socket) is the desktop scenarios'
# independent VNC client, python3-pil their PNG reader; systemd's
# systemd-analyze checks the packaged unit and man-db reads its man pages
# (package-install), rsyslog and rsyslog-gnutls the audit-syslog and
# audit-remote scenarios' collectors.
# shellcheck disable=SC2034 # for the scripts that source this file
BUILD_PKGS=(gcc libc6-dev make pkg-config libssl-dev libcryptsetup-dev clang libclang-dev)
# shellcheck disable=SC2034 # for the scripts that source this file
TEST_PKGS=(binutils acpica-tools minisign cryptsetup-bin fdisk qemu-utils openssl util-linux iproute2 python3 wireguard-tools tcpdump softhsm2 opensc shellcheck udev gvncviewer socat python3-pil systemd man-db rsyslog rsyslog-gnutls)

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

# shell_scripts: every shell script of the repository, one path a line,
# relative to $SECUREVM_REPO (what scripts/test's shellcheck step checks).
# Found by what a file is, not by a list, so that a new script is never
# missed: a name ending in .sh or .bash, a first line that is a shebang
# naming sh, bash or dash, or (for fragments that are only sourced) a first
# line that is a `# shellcheck shell=` directive. Files git ignores (target/,
# the caches) are left out; new files not yet added to git are in.
shell_scripts() {
    # shellcheck disable=SC2016 # an awk program: awk reads its $0
    local is_shell='FNR == 1 {
        if (FILENAME ~ /\.(sh|bash)$/ || $0 ~ /^#!.*[\/ ](ba|da)?sh([ \t]|$)/ || $0 ~ /^# shellcheck shell=/)
            print substr(FILENAME, 3)
        nextfile
    }'
    (
        cd "$SECUREVM_REPO" || exit 1
        # ./ in front, so that awk never takes a name with `=` for an assignment.
        git ls-files -z --cached --others --exclude-standard |
            while IFS= read -r -d '' file; do
                if [[ -f $file ]]; then printf './%s\0' "$file"; fi
            done |
            xargs -0 -r awk "$is_shell"
    ) | LC_ALL=C sort
}

# now_ms: wall-clock milliseconds, for timings printed by the scripts.
now_ms() { date +%s%3N; }
