//! Encrypts minisign secret keys with scrypt at the cost `minisign -G` uses
//! (the `minisign` crate decrypts them, but encrypts only at a far lower
//! cost).
//!
//! minisign derives a keystream with libsodium's
//! `crypto_pwhash_scryptsalsa208sha256(opslimit, memlimit)` and XORs it over
//! the key material. libsodium turns (opslimit, memlimit) into scrypt's
//! (N, r, p) with a fixed rule, reproduced in [`scrypt_params`] so the keys
//! written here decrypt in minisign and in the crate.

use zeroize::Zeroizing;

/// minisign's opslimit for new encrypted keys (libsodium's "sensitive").
pub const MINISIGN_OPSLIMIT: u64 = 33_554_432;
/// minisign's memlimit for new encrypted keys: 1 GiB.
pub const MINISIGN_MEMLIMIT: u64 = 1_073_741_824;

/// libsodium's lower bound on opslimit.
const MIN_OPSLIMIT: u64 = 32_768;

/// scrypt (log2 N, r, p) for libsodium's opslimit/memlimit.
pub(crate) fn scrypt_params(opslimit: u64, memlimit: u64) -> (u8, u32, u32) {
    let opslimit = opslimit.max(MIN_OPSLIMIT);
    let r: u64 = 8;
    let smallest_log_n_above = |max_n: u64| {
        let mut log_n: u8 = 1;
        while log_n < 63 && (1u64 << log_n) <= max_n / 2 {
            log_n += 1;
        }
        log_n
    };
    if opslimit < memlimit / 32 {
        let log_n = smallest_log_n_above(opslimit / (r * 4));
        (log_n, r as u32, 1)
    } else {
        let log_n = smallest_log_n_above(memlimit / (r * 128));
        let max_rp = ((opslimit / 4) / (1u64 << log_n)).min(0x3fff_ffff);
        (log_n, r as u32, (max_rp / r).max(1) as u32)
    }
}

/// XORs the scrypt keystream for `passphrase` into `data` (which both
/// encrypts and decrypts).
pub(crate) fn apply_keystream(
    passphrase: &[u8],
    salt: &[u8],
    opslimit: u64,
    memlimit: u64,
    data: &mut [u8],
) -> Result<(), String> {
    let (log_n, r, p) = scrypt_params(opslimit, memlimit);
    // The length parameter only matters for PHC strings; the output is `data`.
    let params = scrypt::Params::new(log_n, r, p, scrypt::Params::RECOMMENDED_LEN)
        .map_err(|_| format!("unsupported scrypt parameters N=2^{log_n}, r={r}, p={p}"))?;
    let mut stream = Zeroizing::new(vec![0u8; data.len()]);
    scrypt::scrypt(passphrase, salt, &params, &mut stream)
        .map_err(|_| "scrypt refused the output length".to_string())?;
    for (byte, key) in data.iter_mut().zip(stream.iter()) {
        *byte ^= key;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minisign_default_cost_maps_to_n_2_20() {
        // minisign's defaults: opslimit 2^25, memlimit 2^30 (1 GiB).
        assert_eq!(
            scrypt_params(MINISIGN_OPSLIMIT, MINISIGN_MEMLIMIT),
            (20, 8, 1)
        );
    }

    #[test]
    fn small_cost_stays_small() {
        let (log_n, r, p) = scrypt_params(0, 0);
        assert!(log_n <= 14 && r == 8 && p >= 1, "{log_n} {r} {p}");
    }

    #[test]
    fn keystream_round_trips() {
        let mut data = *b"secret key material";
        apply_keystream(b"pw", b"salt", 32_768, 1 << 24, &mut data).unwrap();
        assert_ne!(&data, b"secret key material");
        apply_keystream(b"pw", b"salt", 32_768, 1 << 24, &mut data).unwrap();
        assert_eq!(&data, b"secret key material");
    }
}
