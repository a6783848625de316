//! Proof of possession: securevm draws a fresh random challenge, the
//! token signs it with the private key (which never leaves the token),
//! and securevm verifies the signature with the public key the policy
//! binds. A replayed or forged answer cannot verify, because the
//! challenge is new every time.

use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use openssl::bn::BigNum;
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Public};
use openssl::sign::Verifier;

use super::error::{Rejection, SmartCardError};
use super::keys::{KeyKind, TokenKey};
use super::token::Module;

/// Challenge length in bytes.
pub const CHALLENGE_BYTES: usize = 32;

/// DER DigestInfo prefix for SHA-256 (RFC 8017, section 9.2, note 1): for
/// tokens that only offer raw CKM_RSA_PKCS signatures.
const SHA256_DIGEST_INFO: &[u8] = &[
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

/// Have the token sign a fresh challenge with `key` and verify the
/// signature with the key's public half.
pub fn prove_possession(
    module: &Module,
    slot: Slot,
    session: &Session,
    key: &TokenKey,
) -> Result<(), SmartCardError> {
    let mut challenge = [0u8; CHALLENGE_BYTES];
    openssl::rand::rand_bytes(&mut challenge)
        .map_err(SmartCardError::crypto("drawing a random challenge"))?;
    let digest = openssl::sha::sha256(&challenge);
    let verified = match key.kind {
        KeyKind::Ec { .. } => {
            let signature = session
                .sign(&Mechanism::Ecdsa, key.handle, &digest)
                .map_err(SmartCardError::module("signing the challenge"))?;
            verify_ecdsa(&key.public, &digest, &signature)?
        }
        KeyKind::Rsa { .. } => {
            let signature = if supports(module, slot, MechanismType::SHA256_RSA_PKCS) {
                session.sign(&Mechanism::Sha256RsaPkcs, key.handle, &challenge)
            } else {
                let mut digest_info = SHA256_DIGEST_INFO.to_vec();
                digest_info.extend_from_slice(&digest);
                session.sign(&Mechanism::RsaPkcs, key.handle, &digest_info)
            }
            .map_err(SmartCardError::module("signing the challenge"))?;
            verify_rsa(&key.public, &challenge, &signature)?
        }
    };
    if verified {
        Ok(())
    } else {
        Err(SmartCardError::Rejected(Rejection::BadSignature))
    }
}

fn supports(module: &Module, slot: Slot, mechanism: MechanismType) -> bool {
    module
        .context()
        .get_mechanism_list(slot)
        .is_ok_and(|list| list.contains(&mechanism))
}

/// CKM_ECDSA answers r || s, each as wide as the curve's order.
fn verify_ecdsa(
    public: &PKey<Public>,
    digest: &[u8],
    signature: &[u8],
) -> Result<bool, SmartCardError> {
    if signature.is_empty() || !signature.len().is_multiple_of(2) {
        return Ok(false);
    }
    let (r, s) = signature.split_at(signature.len() / 2);
    let ec = public
        .ec_key()
        .map_err(SmartCardError::crypto("reading the EC key"))?;
    let signature = EcdsaSig::from_private_components(
        BigNum::from_slice(r).map_err(SmartCardError::crypto("reading a signature"))?,
        BigNum::from_slice(s).map_err(SmartCardError::crypto("reading a signature"))?,
    )
    .map_err(SmartCardError::crypto("reading a signature"))?;
    Ok(signature.verify(digest, &ec).unwrap_or(false))
}

fn verify_rsa(
    public: &PKey<Public>,
    challenge: &[u8],
    signature: &[u8],
) -> Result<bool, SmartCardError> {
    let mut verifier = Verifier::new(MessageDigest::sha256(), public)
        .map_err(SmartCardError::crypto("preparing a verifier"))?;
    verifier
        .update(challenge)
        .map_err(SmartCardError::crypto("verifying a signature"))?;
    Ok(verifier.verify(signature).unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    use openssl::rsa::{Padding, Rsa};

    #[test]
    fn raw_ecdsa_signatures_verify_and_tampering_is_caught() {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let private = EcKey::generate(&group).unwrap();
        let public = EcKey::from_public_key(&group, private.public_key()).unwrap();
        let key = PKey::from_ec_key(public).unwrap();
        let digest = openssl::sha::sha256(b"challenge");
        let signature = EcdsaSig::sign(&digest, &private).unwrap();
        let mut raw = signature.r().to_vec_padded(32).unwrap();
        raw.extend(signature.s().to_vec_padded(32).unwrap());
        assert!(verify_ecdsa(&key, &digest, &raw).unwrap());
        raw[10] ^= 1;
        assert!(!verify_ecdsa(&key, &digest, &raw).unwrap());
        assert!(!verify_ecdsa(&key, &digest, &raw[..63]).unwrap());
        assert!(!verify_ecdsa(&key, &digest, &[]).unwrap());
    }

    #[test]
    fn raw_rsa_pkcs_over_digest_info_verifies_as_sha256_rsa() {
        let private = Rsa::generate(2048).unwrap();
        let public = Rsa::from_public_components(
            private.n().to_owned().unwrap(),
            private.e().to_owned().unwrap(),
        )
        .unwrap();
        let key = PKey::from_rsa(public).unwrap();
        let challenge = b"a fresh challenge of some length";
        let mut digest_info = SHA256_DIGEST_INFO.to_vec();
        digest_info.extend_from_slice(&openssl::sha::sha256(challenge));
        let mut signature = vec![0u8; 256];
        let len = private
            .private_encrypt(&digest_info, &mut signature, Padding::PKCS1)
            .unwrap();
        signature.truncate(len);
        assert!(verify_rsa(&key, challenge, &signature).unwrap());
        assert!(!verify_rsa(&key, b"another challenge", &signature).unwrap());
    }
}
