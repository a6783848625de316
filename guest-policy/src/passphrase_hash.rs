//! Argon2id passphrase hashes: the minimum cost we accept, checking PHC
//! strings found in a policy, hashing new passphrases, and verifying.
//!
//! The minimum follows RFC 9106's second recommended profile for memory
//! (64 MiB) with three passes: `m >= 65536` KiB, `t >= 3`, `p >= 1`.
//! A policy carrying a cheaper hash is refused, so a leaked policy file
//! cannot be brute-forced faster than that.

use argon2::password_hash::phc::PasswordHash;
use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};

/// Smallest accepted memory cost, in KiB.
pub const MIN_MEMORY_KIB: u32 = 65_536;
/// Smallest accepted number of passes.
pub const MIN_ITERATIONS: u32 = 3;
/// Smallest accepted parallelism.
pub const MIN_PARALLELISM: u32 = 1;

/// Cost used by `guest-policy hash-passphrase`.
const DEFAULT_PARALLELISM: u32 = 1;

/// Checks that `phc` is an Argon2id (v=19) PHC string with at least the
/// minimum cost. The error says what would be valid.
pub fn check_phc(phc: &str) -> Result<(), String> {
    let hint = "generate one with `guest-policy hash-passphrase`";
    let parsed = PasswordHash::new(phc)
        .map_err(|_| format!("passphrase is not a PHC string like \"$argon2id$v=19$m=65536,t=3,p=1$<salt>$<hash>\"; {hint}"))?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(format!(
            "passphrase hash uses \"{}\", only \"argon2id\" is accepted; {hint}",
            parsed.algorithm.as_str()
        ));
    }
    if parsed.version != Some(0x13) {
        return Err(format!(
            "passphrase hash must be Argon2 version 19 (\"v=19\"); {hint}"
        ));
    }
    let params = Params::try_from(&parsed)
        .map_err(|_| format!("passphrase hash has invalid Argon2 parameters; {hint}"))?;
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err(format!("passphrase hash lacks a salt or hash part; {hint}"));
    }
    if params.m_cost() < MIN_MEMORY_KIB
        || params.t_cost() < MIN_ITERATIONS
        || params.p_cost() < MIN_PARALLELISM
    {
        return Err(format!(
            "passphrase hash cost m={},t={},p={} is below the minimum m={MIN_MEMORY_KIB},t={MIN_ITERATIONS},p={MIN_PARALLELISM}; {hint}",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        ));
    }
    Ok(())
}

/// Hashes a passphrase with Argon2id at the minimum accepted cost and a fresh
/// random salt, returning the PHC string.
pub fn hash(passphrase: &[u8]) -> Result<String, argon2::password_hash::Error> {
    hash_with_cost(
        passphrase,
        MIN_MEMORY_KIB,
        MIN_ITERATIONS,
        DEFAULT_PARALLELISM,
    )
}

fn hash_with_cost(
    passphrase: &[u8],
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
) -> Result<String, argon2::password_hash::Error> {
    let params = Params::new(memory_kib, iterations, parallelism, None)?;
    let hasher = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    Ok(hasher.hash_password(passphrase)?.to_string())
}

/// Verifies a passphrase against a PHC string in constant time. Any malformed
/// hash verifies as false.
pub fn verify(passphrase: &[u8], phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    parsed.algorithm.as_str() == "argon2id"
        && Argon2::default()
            .verify_password(passphrase, &parsed)
            .is_ok()
}

/// A deliberately cheap hash for unit tests only; it never passes
/// [`check_phc`], so it cannot slip into a real policy.
#[cfg(test)]
pub(crate) fn hash_for_tests(passphrase: &[u8]) -> String {
    hash_with_cost(passphrase, 64, 1, 1).expect("cheap test hash")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cheap_hash_verifies_but_is_below_minimum() {
        let phc = hash_for_tests(b"correct horse");
        assert!(verify(b"correct horse", &phc));
        assert!(!verify(b"wrong horse", &phc));
        let error = check_phc(&phc).unwrap_err();
        assert!(
            error.contains("m=64,t=1,p=1 is below the minimum"),
            "{error}"
        );
    }

    #[test]
    fn other_algorithms_are_rejected() {
        let argon2i =
            "$argon2i$v=19$m=65536,t=3,p=1$c29tZXNhbHQ$iWh06vD8Fy27wf9npn6FXWiCX4K6pW6Ue1Bnzz07Z8A";
        assert!(check_phc(argon2i)
            .unwrap_err()
            .contains("only \"argon2id\""));
        assert!(!verify(b"password", argon2i));
        assert!(check_phc("plaintext")
            .unwrap_err()
            .contains("not a PHC string"));
    }

    #[test]
    fn minimum_cost_hash_passes_check() {
        let phc = "$argon2id$v=19$m=65536,t=3,p=1$c29tZXNhbHRzb21lc2FsdA$3sTLqpBAvmNJCiGkpVvYV4sfhyeV4aCDqxqfaoiBAbI";
        assert_eq!(check_phc(phc), Ok(()));
    }
}
