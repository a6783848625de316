//! The private keys on a token and their public halves. The policy binds
//! a user to "the SHA-256 of the DER public key (SubjectPublicKeyInfo) or
//! certificate" (guest-policy's README); for each private key we compute
//! the SPKI fingerprint from its public key object (or the key's own
//! public attributes, or its certificate) and the fingerprints of the
//! certificates that carry the same public key, so either form in the
//! policy finds the key. Only public data is read here.

use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey, EcPoint};
use openssl::hash::{hash, MessageDigest};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Public};
use openssl::rsa::Rsa;
use openssl::x509::X509;

use super::error::{Rejection, SmartCardError};

/// What kind of key a token key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa { bits: u32 },
    Ec { curve: Nid },
}

/// One private key on a token, with its public half.
pub struct TokenKey {
    pub handle: ObjectHandle,
    /// CKA_ID (links the private key, public key and certificate).
    pub id: Vec<u8>,
    /// CKA_LABEL, for messages.
    pub label: String,
    pub kind: KeyKind,
    pub public: PKey<Public>,
    /// SHA-256 of the DER SubjectPublicKeyInfo.
    pub spki_sha256: [u8; 32],
    /// SHA-256 of each DER certificate on the token for this key.
    pub certificate_sha256: Vec<[u8; 32]>,
}

impl TokenKey {
    /// Whether the policy fingerprint names this key.
    pub fn has_fingerprint(&self, fingerprint: &[u8; 32]) -> bool {
        &self.spki_sha256 == fingerprint || self.certificate_sha256.contains(fingerprint)
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("id", &hex(&self.id))
            .field("label", &self.label)
            .field("kind", &self.kind)
            .field("spki_sha256", &hex(&self.spki_sha256))
            .finish()
    }
}

/// Lower-case hex, for ids and fingerprints in messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every private key on the token whose public half securevm can use
/// (RSA, EC P-256/P-384). Keys of other kinds are skipped with a log line.
pub fn private_keys(session: &Session) -> Result<Vec<TokenKey>, SmartCardError> {
    let handles = session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .map_err(SmartCardError::module("listing the keys on the card"))?;
    let mut keys = Vec::new();
    for handle in handles {
        match describe(session, handle) {
            Ok(Some(key)) => keys.push(key),
            Ok(None) => {}
            Err(SmartCardError::UnsupportedKey(what)) => {
                log::info!("ignoring a key on the card: it is {what}")
            }
            Err(e) => return Err(e),
        }
    }
    Ok(keys)
}

/// The private key whose public key or certificate has `fingerprint`.
pub fn find_bound_key(
    session: &Session,
    fingerprint: &[u8; 32],
) -> Result<TokenKey, SmartCardError> {
    private_keys(session)?
        .into_iter()
        .find(|key| key.has_fingerprint(fingerprint))
        .ok_or(SmartCardError::Rejected(Rejection::KeyNotBound))
}

fn describe(session: &Session, handle: ObjectHandle) -> Result<Option<TokenKey>, SmartCardError> {
    let id = attribute(session, handle, AttributeType::Id)?.unwrap_or_default();
    let label = attribute(session, handle, AttributeType::Label)?
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    let certificates = certificates_with_id(session, &id)?;
    let public = match public_key_object(session, &id)? {
        Some(public) => Some(public_key_of(session, public)?),
        None => match public_key_of(session, handle) {
            Ok(public) => Some(public),
            Err(SmartCardError::UnsupportedKey(_)) | Err(SmartCardError::Module { .. }) => None,
            Err(e) => return Err(e),
        },
    };
    let public = match (public, certificates.first()) {
        (Some(public), _) => public,
        (None, Some(certificate)) => certificate
            .public_key()
            .map_err(SmartCardError::crypto("reading a certificate's public key"))?,
        (None, None) => {
            log::info!(
                "ignoring key '{label}' (id {}): no public key or certificate for it on the card",
                hex(&id)
            );
            return Ok(None);
        }
    };
    let kind = kind_of(&public)?;
    let spki = public
        .public_key_to_der()
        .map_err(SmartCardError::crypto("encoding a public key"))?;
    let spki_sha256 = sha256(&spki)?;
    let mut certificate_sha256 = Vec::new();
    for certificate in &certificates {
        let same_key = certificate
            .public_key()
            .is_ok_and(|key| key.public_eq(&public));
        if same_key {
            let der = certificate
                .to_der()
                .map_err(SmartCardError::crypto("encoding a certificate"))?;
            certificate_sha256.push(sha256(&der)?);
        }
    }
    Ok(Some(TokenKey {
        handle,
        id,
        label,
        kind,
        public,
        spki_sha256,
        certificate_sha256,
    }))
}

fn kind_of(public: &PKey<Public>) -> Result<KeyKind, SmartCardError> {
    if let Ok(rsa) = public.rsa() {
        let bits = rsa.size() * 8;
        if bits < 2048 {
            return Err(SmartCardError::UnsupportedKey(format!(
                "an RSA key of {bits} bits"
            )));
        }
        return Ok(KeyKind::Rsa { bits });
    }
    if let Ok(ec) = public.ec_key() {
        let curve = ec.group().curve_name();
        return match curve {
            Some(curve @ (Nid::X9_62_PRIME256V1 | Nid::SECP384R1)) => Ok(KeyKind::Ec { curve }),
            _ => Err(SmartCardError::UnsupportedKey(
                "an EC key on an unsupported curve".to_string(),
            )),
        };
    }
    Err(SmartCardError::UnsupportedKey(format!(
        "a key of type {:?}",
        public.id()
    )))
}

pub(crate) fn sha256(data: &[u8]) -> Result<[u8; 32], SmartCardError> {
    let digest = hash(MessageDigest::sha256(), data)
        .map_err(SmartCardError::crypto("hashing a public key"))?;
    let mut out = [0u8; 32];
    out.copy_from_slice(&digest);
    Ok(out)
}

/// One attribute's value, `None` when the token does not have it.
fn attribute(
    session: &Session,
    handle: ObjectHandle,
    kind: AttributeType,
) -> Result<Option<Vec<u8>>, SmartCardError> {
    let values = match session.get_attributes(handle, &[kind]) {
        Ok(values) => values,
        Err(cryptoki::error::Error::Pkcs11(
            cryptoki::error::RvError::AttributeTypeInvalid
            | cryptoki::error::RvError::AttributeSensitive,
            _,
        )) => return Ok(None),
        Err(e) => return Err(SmartCardError::module("reading key attributes")(e)),
    };
    Ok(values.into_iter().find_map(|value| match value {
        Attribute::Id(bytes)
        | Attribute::Label(bytes)
        | Attribute::Modulus(bytes)
        | Attribute::PublicExponent(bytes)
        | Attribute::EcParams(bytes)
        | Attribute::EcPoint(bytes)
        | Attribute::Value(bytes) => Some(bytes),
        _ => None,
    }))
}

fn key_type(session: &Session, handle: ObjectHandle) -> Result<Option<KeyType>, SmartCardError> {
    let values = session
        .get_attributes(handle, &[AttributeType::KeyType])
        .map_err(SmartCardError::module("reading the key type"))?;
    Ok(values.into_iter().find_map(|value| match value {
        Attribute::KeyType(key_type) => Some(key_type),
        _ => None,
    }))
}

fn public_key_object(session: &Session, id: &[u8]) -> Result<Option<ObjectHandle>, SmartCardError> {
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Id(id.to_vec()),
        ])
        .map_err(SmartCardError::module("looking for a public key"))?;
    Ok(found.into_iter().next())
}

fn certificates_with_id(session: &Session, id: &[u8]) -> Result<Vec<X509>, SmartCardError> {
    let handles = session
        .find_objects(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::Id(id.to_vec()),
        ])
        .map_err(SmartCardError::module("looking for certificates"))?;
    let mut certificates = Vec::new();
    for handle in handles {
        if let Some(der) = attribute(session, handle, AttributeType::Value)? {
            match X509::from_der(&der) {
                Ok(certificate) => certificates.push(certificate),
                Err(e) => log::info!("ignoring an unreadable certificate on the card: {e}"),
            }
        }
    }
    Ok(certificates)
}

/// The public key held by a key object's public attributes.
fn public_key_of(session: &Session, handle: ObjectHandle) -> Result<PKey<Public>, SmartCardError> {
    let missing = |what: &str| SmartCardError::UnsupportedKey(format!("a key without {what}"));
    match key_type(session, handle)? {
        Some(KeyType::RSA) => {
            let modulus = attribute(session, handle, AttributeType::Modulus)?
                .ok_or_else(|| missing("a modulus"))?;
            let exponent = attribute(session, handle, AttributeType::PublicExponent)?
                .ok_or_else(|| missing("a public exponent"))?;
            let rsa = Rsa::from_public_components(
                BigNum::from_slice(&modulus)
                    .map_err(SmartCardError::crypto("reading a modulus"))?,
                BigNum::from_slice(&exponent)
                    .map_err(SmartCardError::crypto("reading an exponent"))?,
            )
            .map_err(SmartCardError::crypto("building an RSA key"))?;
            PKey::from_rsa(rsa).map_err(SmartCardError::crypto("building an RSA key"))
        }
        Some(KeyType::EC) => {
            let params = attribute(session, handle, AttributeType::EcParams)?
                .ok_or_else(|| missing("EC parameters"))?;
            let point = attribute(session, handle, AttributeType::EcPoint)?
                .ok_or_else(|| missing("an EC point"))?;
            ec_public_key(&params, &point)
        }
        Some(other) => Err(SmartCardError::UnsupportedKey(format!(
            "a key of PKCS#11 type {other}"
        ))),
        None => Err(missing("a key type")),
    }
}

/// DER of the named-curve OIDs securevm supports.
const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384_OID: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

/// An EC public key from CKA_EC_PARAMS (a named-curve OID) and
/// CKA_EC_POINT (the uncompressed point, which PKCS#11 wraps in a DER
/// OCTET STRING; some modules return it bare).
pub(crate) fn ec_public_key(params: &[u8], point: &[u8]) -> Result<PKey<Public>, SmartCardError> {
    let (nid, field_bytes) = match params {
        P256_OID => (Nid::X9_62_PRIME256V1, 32),
        P384_OID => (Nid::SECP384R1, 48),
        _ => {
            return Err(SmartCardError::UnsupportedKey(
                "an EC key on a curve other than P-256 or P-384".to_string(),
            ))
        }
    };
    let point_len = 1 + 2 * field_bytes;
    let bare = match point {
        [0x04, len, rest @ ..] if usize::from(*len) == point_len && rest.len() == point_len => rest,
        bare if bare.len() == point_len => bare,
        _ => {
            return Err(SmartCardError::UnsupportedKey(
                "an EC key with a malformed public point".to_string(),
            ))
        }
    };
    let group = EcGroup::from_curve_name(nid).map_err(SmartCardError::crypto("loading a curve"))?;
    let mut context =
        openssl::bn::BigNumContext::new().map_err(SmartCardError::crypto("loading a curve"))?;
    let point = EcPoint::from_bytes(&group, bare, &mut context)
        .map_err(SmartCardError::crypto("reading an EC point"))?;
    let key = EcKey::from_public_key(&group, &point)
        .map_err(SmartCardError::crypto("building an EC key"))?;
    key.check_key()
        .map_err(SmartCardError::crypto("checking an EC key"))?;
    PKey::from_ec_key(key).map_err(SmartCardError::crypto("building an EC key"))
}

#[cfg(test)]
mod tests {
    // Test fixtures narrow small known values; a wrong one fails the test.
    #![allow(clippy::cast_possible_truncation)]
    use super::*;

    fn p256_point() -> Vec<u8> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = EcKey::generate(&group).unwrap();
        let mut context = openssl::bn::BigNumContext::new().unwrap();
        key.public_key()
            .to_bytes(
                &group,
                openssl::ec::PointConversionForm::UNCOMPRESSED,
                &mut context,
            )
            .unwrap()
    }

    #[test]
    fn ec_points_are_accepted_wrapped_or_bare() {
        let bare = p256_point();
        let mut wrapped = vec![0x04, bare.len() as u8];
        wrapped.extend_from_slice(&bare);
        let from_bare = ec_public_key(P256_OID, &bare).unwrap();
        let from_wrapped = ec_public_key(P256_OID, &wrapped).unwrap();
        assert!(from_bare.public_eq(&from_wrapped));
    }

    #[test]
    fn malformed_ec_keys_are_refused() {
        let bare = p256_point();
        assert!(matches!(
            ec_public_key(P384_OID, &bare),
            Err(SmartCardError::UnsupportedKey(_))
        ));
        assert!(matches!(
            ec_public_key(&[0x06, 0x01, 0x00], &bare),
            Err(SmartCardError::UnsupportedKey(_))
        ));
        assert!(ec_public_key(P256_OID, &bare[..40]).is_err());
        let mut off_curve = bare.clone();
        off_curve[64] ^= 1;
        assert!(ec_public_key(P256_OID, &off_curve).is_err());
    }

    #[test]
    fn small_rsa_keys_are_refused() {
        let small = PKey::from_rsa(Rsa::generate(1024).unwrap()).unwrap();
        let public = PKey::public_key_from_der(&small.public_key_to_der().unwrap()).unwrap();
        assert!(matches!(
            kind_of(&public),
            Err(SmartCardError::UnsupportedKey(_))
        ));
    }
}
