# shellcheck shell=bash
# Smart-card helpers for the id-smartcard and id-card-removal scenarios: a
# SoftHSM2 token in a private token directory on L1's tmpfs, made the way
# a card issuer would (softhsm2-util, then pkcs11-tool from OpenSC for the
# key pair). "Pulling the card" moves the token's directory out of
# SoftHSM2's token directory; securevm's monitor re-initializes the module
# on each poll and no longer finds it.

CARD_MODULE=/usr/lib/softhsm/libsofthsm2.so
CARD_PIN=246810

# card_setup LABEL rsa:2048|EC:prime256v1: the token with key id 01; sets
# SOFTHSM2_CONF, CARD_DIR, CARD_TOKEN_DIR and writes the PIN to $CARD_DIR/pin.
card_setup() {
    local label=$1 key_type=$2 usage=(--usage-sign)
    [[ -e $CARD_MODULE ]] || fail "SoftHSM2 is not installed ($CARD_MODULE missing): apt-get install softhsm2 opensc"
    [[ $key_type == rsa:* ]] && usage+=(--usage-decrypt)
    CARD_DIR=$(mktemp -d)
    mkdir "$CARD_DIR/tokens"
    printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' \
        "$CARD_DIR/tokens" >"$CARD_DIR/softhsm2.conf"
    export SOFTHSM2_CONF=$CARD_DIR/softhsm2.conf
    softhsm2-util --init-token --free --label "$label" --so-pin 13579135 --pin "$CARD_PIN" >/dev/null
    pkcs11-tool --module "$CARD_MODULE" --token-label "$label" --login --pin "$CARD_PIN" \
        --keypairgen --key-type "$key_type" --id 01 --label key "${usage[@]}" >/dev/null 2>&1 ||
        fail "pkcs11-tool could not generate the $key_type key on the token"
    printf '%s\n' "$CARD_PIN" >"$CARD_DIR/pin"
    CARD_TOKEN_DIR=$(find "$CARD_DIR/tokens" -mindepth 1 -maxdepth 1 -type d)
}

# card_fingerprint LABEL: SHA-256 of the key's DER SubjectPublicKeyInfo, as
# an administrator puts it in the policy.
card_fingerprint() {
    pkcs11-tool --module "$CARD_MODULE" --token-label "$1" --read-object --type pubkey \
        --id 01 -o "$CARD_DIR/pub.der" >/dev/null 2>&1
    sha256sum "$CARD_DIR/pub.der" | cut -d' ' -f1
}

card_remove() { mv "$CARD_TOKEN_DIR" "$CARD_DIR/removed"; }
card_insert() { mv "$CARD_DIR/removed" "$CARD_TOKEN_DIR"; }
