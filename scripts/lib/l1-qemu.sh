# shellcheck shell=bash
# Which qemu-system-x86_64 runs the L1 VM of scripts/nested (sourced, never
# run; needs lib/common.sh first). SECUREVM_L1_QEMU chooses:
#
#   system     (the default) the host's own QEMU, Debian bookworm's 7.2.
#   patched    the same Debian 7.2 source, built for x86_64 TCG only with
#              scripts/patches/qemu-7.2-l1-bql.patch. QEMU q35 with Debian's
#              OVMF run by KVM inside L1 makes an unpatched L1 abort before
#              the firmware prints anything: `tcg_handle_interrupt:
#              assertion failed: (qemu_mutex_iothread_locked())`. The
#              emulated SVM's CR8 write raises an interrupt without QEMU's
#              global lock; the patch takes the lock there.
#   backports  bookworm-backports' QEMU (10.0), unpacked, not installed. Its
#              emulation of SVM is newer, but it aborts on the same assertion
#              (`bql_locked()`), so it is no way out for UEFI guests; it is
#              kept for comparing L1 versions (docs/testing.md).
#
# Nothing is installed over the system's QEMU: sources and packages come
# through an apt configuration of our own (its own sources file, lists and
# cache under $SECUREVM_CACHE/l1-qemu; the system's sources, lists and dpkg
# database are left alone). Each result is cached under a key of everything
# it is made from; the private package lists are refreshed once a day.

L1_QEMU_CHOICES="system patched backports"
# What the L1 needs of a QEMU: the emulator, its shared data (option ROMs
# for -kernel), its modules, and the BIOS it boots -kernel through.
L1_QEMU_PACKAGES=(qemu-system-x86 qemu-system-common qemu-system-data seabios)
L1_QEMU_LISTS_MAX_AGE=86400
L1_QEMU_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
L1_QEMU_PATCH=$SECUREVM_REPO/scripts/patches/qemu-7.2-l1-bql.patch
# What the patched build needs; its configure enables no more than the L1
# uses (TCG, virtio-9p for the host share; fdt is required by the target).
L1_QEMU_BUILD_PKGS=(dpkg-dev xz-utils patch gcc make pkg-config python3 ninja-build meson
    libglib2.0-dev libpixman-1-dev libcap-ng-dev libattr1-dev libfdt-dev zlib1g-dev)
L1_QEMU_CONFIGURE=(--target-list=x86_64-softmmu --prefix=/usr --without-default-features
    --enable-tcg --enable-virtfs --enable-attr --enable-cap-ng --enable-fdt=system
    --disable-werror --disable-docs)

# l1_qemu_command: print the qemu-system-x86_64 command the L1 runs, fetching
# and unpacking it first if needed. Dies on an unknown SECUREVM_L1_QEMU.
l1_qemu_command() {
    case ${SECUREVM_L1_QEMU:-system} in
    system)
        command -v qemu-system-x86_64 >/dev/null || ensure_pkgs qemu-system-x86
        command -v qemu-system-x86_64
        ;;
    patched) l1_qemu_patched ;;
    backports) l1_qemu_backports ;;
    *) die "SECUREVM_L1_QEMU must be one of: $L1_QEMU_CHOICES (not '${SECUREVM_L1_QEMU}')" ;;
    esac
}

# l1_qemu_suite: the backports suite of the host's Debian release.
l1_qemu_suite() {
    local codename
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [[ -n $codename ]] || die "cannot tell the host's Debian release (no VERSION_CODENAME in /etc/os-release)"
    echo "$codename-backports"
}

# l1_qemu_mirror: the Debian mirror the host's apt uses for its main suite
# (SECUREVM_DEBIAN_MIRROR overrides it, as for scripts/guest-assets).
l1_qemu_mirror() {
    if [[ -n ${SECUREVM_DEBIAN_MIRROR:-} ]]; then
        echo "$SECUREVM_DEBIAN_MIRROR"
        return
    fi
    local codename uri
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    # shellcheck disable=SC2016 # $(...) is apt's own format syntax
    uri=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Identifier: Packages' 2>/dev/null |
        awk -v suite="$codename" '$2 == suite && $1 !~ /-security/ { print $1; exit }')
    echo "${uri:-http://deb.debian.org/debian/}"
}

# l1_qemu_apt DIR ARGS...: apt-get/apt-cache (first of ARGS) with every
# path of state pointed into DIR, so that nothing of the system's apt moves.
l1_qemu_apt() {
    local dir=$1 tool=$2
    shift 2
    "$tool" -o Dir::Etc::SourceList="$dir/sources.list" -o Dir::Etc::SourceParts="$dir/sources.list.d" \
        -o Dir::Etc::Preferences="$dir/preferences" -o Dir::Etc::PreferencesParts="$dir/preferences.d" \
        -o Dir::State::Lists="$dir/lists" -o Dir::Cache="$dir/cache" \
        -o Acquire::Languages=none -o APT::Get::List-Cleanup=false "$@"
}

# l1_qemu_refresh_lists DIR SOURCES: (re)write DIR's sources file with the
# one-line-format SOURCES and fetch its package lists when they are missing,
# older than a day, or for other sources. A failed refresh with lists
# already there only warns: a cached QEMU stays usable offline.
l1_qemu_refresh_lists() {
    local dir=$1 line=$2 stamp=$1/lists/.fetched
    mkdir -p "$dir/sources.list.d" "$dir/preferences.d" "$dir/lists/partial" "$dir/cache/archives/partial"
    : >"$dir/preferences"
    if [[ -f $dir/sources.list && $(<"$dir/sources.list") == "$line" && -f $stamp ]] &&
        (($(date +%s) - $(stat -c %Y "$stamp") < L1_QEMU_LISTS_MAX_AGE)); then
        return 0
    fi
    echo "$line" >"$dir/sources.list"
    log "fetching package lists for the L1's QEMU: ${line//$'\n'/; }"
    if l1_qemu_apt "$dir" apt-get update -q >"$dir/update.log" 2>&1; then
        touch "$stamp"
    elif [[ -f $stamp ]]; then
        log "warning: could not refresh the package lists in $dir (see $dir/update.log); using the ones from $(date -r "$stamp" -u '+%F %H:%M UTC')"
    else
        die "could not fetch the package lists in $dir; see $dir/update.log"
    fi
}

# l1_qemu_version DIR SUITE PKG: PKG's version in SUITE, per DIR's lists.
l1_qemu_version() {
    l1_qemu_apt "$1" apt-cache madison "$3" 2>/dev/null |
        awk -F' [|] ' -v suite="$2" 'index($3, " " suite "/") { print $2; exit }'
}

# l1_qemu_host_sources: one `deb-src` line per suite the host's apt uses
# (the host's QEMU came from one of them: the point release or security).
l1_qemu_host_sources() {
    # shellcheck disable=SC2016 # $(...) is apt's own format syntax
    apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Identifier: Packages' 2>/dev/null |
        sort -u | awk -v keyring="$L1_QEMU_KEYRING" '{ print "deb-src [signed-by=" keyring "] " $1 " " $2 " main" }'
}

# l1_qemu_patched: print the path of the patched build of the host's QEMU
# source version, building it first if no build for these inputs exists.
# It uses the host QEMU's own data files (BIOS, option ROMs) of the same
# version, so the host's QEMU must be installed.
l1_qemu_patched() {
    local base=$SECUREVM_CACHE/l1-qemu version key dest
    command -v qemu-system-x86_64 >/dev/null || ensure_pkgs qemu-system-x86
    version=$(dpkg-query -W -f='${source:Version}' qemu-system-x86 2>/dev/null) ||
        die "SECUREVM_L1_QEMU=patched rebuilds the source of the Debian package qemu-system-x86, which is not installed"
    [[ -r $L1_QEMU_PATCH ]] || die "$L1_QEMU_PATCH is missing"
    key=$({
        declare -f l1_qemu_build
        printf '%s\n' "$version" "${L1_QEMU_CONFIGURE[@]}" "$(sha256sum <"$L1_QEMU_PATCH")" "$(gcc --version 2>/dev/null | head -n 1)"
    } | sha256sum | cut -c1-16)
    dest=$base/patched-$key
    if [[ ! -f $dest/.key || $(<"$dest/.key") != "$key" ]]; then
        ensure_pkgs "${L1_QEMU_BUILD_PKGS[@]}"
        local sources
        sources=$(l1_qemu_host_sources)
        [[ -n $sources ]] || die "the host's apt has no Debian suites configured; cannot fetch the qemu source"
        l1_qemu_refresh_lists "$base/apt-src" "$sources"
        rm -rf "$dest.tmp"
        mkdir -p "$dest.tmp"
        log "building qemu $version with $(basename "$L1_QEMU_PATCH") for the L1 (once; about 15 minutes on 2 cores; log in $dest.tmp/build.log)"
        local t0
        t0=$(now_ms)
        l1_qemu_build "$base/apt-src" "$dest.tmp" "$version" >"$dest.tmp/build.log" 2>&1 ||
            die "the patched QEMU build failed; last lines of $dest.tmp/build.log: $(tail -n 5 "$dest.tmp/build.log" | tr '\n' ' ')"
        echo "$key" >"$dest.tmp/.key"
        rm -rf "$dest"
        mv "$dest.tmp" "$dest" || die "cannot move $dest.tmp to $dest"
        find "$base" -mindepth 1 -maxdepth 1 -type d -name 'patched-*' ! -name "patched-$key" -exec rm -rf {} +
        log "patched QEMU for the L1 built in $((($(now_ms) - t0) / 1000)) s"
    fi
    # Where this relocatable build looks for data, beside its binary: the
    # host QEMU's option ROMs and Debian's SeaBIOS (Debian's own build is
    # configured with these directories as its firmware path).
    mkdir -p "$dest/share"
    ln -sfn /usr/share/qemu "$dest/share/qemu"
    ln -sfn /usr/share/seabios "$dest/share/qemu-firmware"
    echo "$dest/bin/qemu-system-x86_64"
}

# l1_qemu_build APTDIR DEST VERSION: fetch Debian's qemu source VERSION
# (Debian's patches applied by dpkg-source), apply ours, build only the
# x86_64 system emulator and leave it in DEST/bin. The source and build
# trees are removed.
l1_qemu_build() {
    local aptdir=$1 dest=$2 version=$3 work=$2/work
    # Every step checked (set -e does not apply: this runs left of ||), in a
    # subshell so that its cd's stay there.
    (
        mkdir -p "$work/src" && cd "$work" &&
            l1_qemu_apt "$aptdir" apt-get source --download-only -q "qemu=$version" &&
            dpkg-source -x ./*.dsc src/qemu && cd src/qemu &&
            patch -p1 --forward <"$L1_QEMU_PATCH" &&
            mkdir build && cd build && ../configure "${L1_QEMU_CONFIGURE[@]}" &&
            nice -n 10 ninja qemu-system-x86_64 &&
            install -D -s qemu-system-x86_64 "$dest/bin/qemu-system-x86_64"
    ) || return 1
    rm -rf "$work"
    "$dest/bin/qemu-system-x86_64" --version
}

# l1_qemu_backports: print the path of the wrapper that runs the unpacked
# backports QEMU, unpacking it first if no tree for these versions exists.
l1_qemu_backports() {
    local base=$SECUREVM_CACHE/l1-qemu suite pkg version versions=() key dest tmp
    suite=$(l1_qemu_suite)
    l1_qemu_refresh_lists "$base/apt" \
        "deb [signed-by=$L1_QEMU_KEYRING] $(l1_qemu_mirror) $suite main"
    for pkg in "${L1_QEMU_PACKAGES[@]}"; do
        version=$(l1_qemu_version "$base/apt" "$suite" "$pkg")
        [[ -n $version ]] || die "$suite has no package $pkg (needed for SECUREVM_L1_QEMU=backports)"
        versions+=("$pkg=$version")
    done
    key=$({ declare -f l1_qemu_backports l1_qemu_unpack; printf '%s\n' "$suite" "${versions[@]}"; } |
        sha256sum | cut -c1-16)
    dest=$base/$key
    if [[ ! -f $dest/.key || $(<"$dest/.key") != "$key" ]]; then
        tmp=$dest.tmp
        rm -rf "$tmp"
        mkdir -p "$tmp"
        log "unpacking ${versions[*]} for the L1 (not installed: cached in $dest)"
        l1_qemu_unpack "$base/apt" "$tmp" "${versions[@]}"
        echo "$key" >"$tmp/.key"
        rm -rf "$dest"
        mv "$tmp" "$dest" || die "cannot move $tmp to $dest"
        # The trees of earlier versions are no longer used.
        find "$base" -mindepth 1 -maxdepth 1 -type d ! -name apt ! -name "$key" -exec rm -rf {} +
    fi
    echo "$dest/bin/qemu-system-x86_64"
}

# l1_qemu_unpack APTDIR DEST PKG=VERSION...: download the packages, unpack
# them into DEST/root, check the emulator finds its libraries, and write the
# wrapper DEST/bin/qemu-system-x86_64.
l1_qemu_unpack() {
    local aptdir=$1 dest=$2 deb missing
    shift 2
    mkdir -p "$dest/debs" "$dest/root" "$dest/bin"
    (cd "$dest/debs" && l1_qemu_apt "$aptdir" apt-get download -q "$@" >"$dest/download.log" 2>&1) ||
        die "apt-get download $* failed; see $dest/download.log"
    for deb in "$dest"/debs/*.deb; do
        dpkg -x "$deb" "$dest/root" || die "dpkg -x $deb failed"
    done
    rm -rf "$dest/debs"
    local root=$dest/root
    [[ -x $root/usr/bin/qemu-system-x86_64 ]] || die "the unpacked packages have no usr/bin/qemu-system-x86_64"
    # The backport is built against the host's release: its libraries are
    # the host's. One missing means a package the system QEMU did not pull in.
    missing=$(ldd "$root/usr/bin/qemu-system-x86_64" | awk '/not found/ { print $1 }' | tr '\n' ' ')
    [[ -z $missing ]] || die "the backports QEMU needs libraries this host lacks: $missing(install the Debian packages that ship them)"
    # -L: the BIOS and option ROMs of the same backports; QEMU_MODULE_DIR:
    # its own modules, never the system QEMU's (they must match the binary).
    # Paths relative to the wrapper: the tree is unpacked elsewhere first.
    # shellcheck disable=SC2016 # the wrapper's own bash expands these
    printf '%s\n' '#!/bin/bash' \
        '# Written by scripts/lib/l1-qemu.sh: the unpacked backports QEMU with its own files.' \
        'root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../root" && pwd) || exit 127' \
        'export QEMU_MODULE_DIR=$root/usr/lib/x86_64-linux-gnu/qemu' \
        'exec "$root/usr/bin/qemu-system-x86_64" -L "$root/usr/share/seabios" -L "$root/usr/share/qemu" "$@"' \
        >"$dest/bin/qemu-system-x86_64"
    chmod 755 "$dest/bin/qemu-system-x86_64"
    "$dest/bin/qemu-system-x86_64" --version >/dev/null 2>"$dest/version.err" ||
        die "the unpacked QEMU does not run: $(head -n 3 "$dest/version.err")"
}
