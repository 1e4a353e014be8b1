//! DSSE v1 (Dead Simple Signing Envelope, <https://github.com/secure-systems-lab/dsse>):
//! the envelope in-toto and SLSA tools read, signed with the builder's SSH key.
//!
//! A signature is `Sign(PAE(payloadType, payload))` where
//! `PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body` (LEN: the byte
//! length in ASCII decimal, no leading zeros). The envelope is
//! `{"payloadType", "payload": base64, "signatures": [{"keyid", "sig": base64}]}`.
//!
//! Buildfleet's conventions, agreed out of band as the spec asks:
//! - `payloadType` is always `application/vnd.in-toto+json` ([`PAYLOAD_TYPE`]);
//! - `keyid` is the signing key's OpenSSH SHA-256 fingerprint (`SHA256:…`, as `ssh-keygen
//!   -lf` prints it). The spec makes the keyid an unauthenticated hint; here it selects the
//!   admitted key, and a keyid naming no key the verifier trusts is refused;
//! - `sig` is the raw signature the SSH key type defines over the PAE bytes, base64
//!   (standard alphabet with padding when written; standard or URL-safe, padded or not, when
//!   read, as the spec requires):
//!   - Ed25519: the 64 bytes of the RFC 8032 signature (what any Ed25519 library verifies);
//!   - ECDSA (NIST P-256/384/521): the SSH signature blob of RFC 5656 §3.1.2, `mpint r`
//!     then `mpint s` (SHA-256/384/512 over PAE by curve), as ssh-key returns it;
//!   - RSA: RSASSA-PKCS1-v1_5 with SHA-512 (`rsa-sha2-512`), the modulus-sized bytes.

use std::fmt;

use base64ct::{Base64, Base64Unpadded, Base64Url, Base64UrlUnpadded, Encoding};
use serde::{Deserialize, Serialize};
use signature::{Signer, Verifier};
use ssh_key::{Algorithm, HashAlg, PrivateKey, PublicKey, Signature};

use crate::signing::fingerprint;
use crate::types::Fingerprint;

/// The payload type of every Buildfleet envelope: an in-toto statement in JSON.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// Why a DSSE signature or envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DsseError {
    /// The envelope is not the JSON the spec defines.
    Json(String),
    /// A base64 field (`payload` or a `sig`) does not decode in any DSSE alphabet.
    Base64 { field: &'static str },
    /// The envelope's `payloadType` is not [`PAYLOAD_TYPE`].
    WrongPayloadType { found: String },
    /// The signature's `keyid` is not the fingerprint of the key it is checked against.
    WrongKeyId { found: String, expected: String },
    /// The signature's `keyid` names no key the verifier trusts.
    UnknownKeyId(String),
    /// The envelope has no signature.
    NoSignatures,
    /// The signature bytes do not verify over PAE(payloadType, payload) with the key.
    BadSignature { keyid: String },
    /// The key cannot sign or verify raw signatures (an unsupported or encrypted key).
    Key(String),
}

impl fmt::Display for DsseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DsseError::Json(e) => write!(f, "not a DSSE envelope: {e}"),
            DsseError::Base64 { field } => write!(f, "the DSSE {field} is not valid base64"),
            DsseError::WrongPayloadType { found } => {
                write!(
                    f,
                    "DSSE payloadType is {found:?}, expected {PAYLOAD_TYPE:?}"
                )
            }
            DsseError::WrongKeyId { found, expected } => {
                write!(f, "DSSE keyid is {found:?}, expected {expected:?}")
            }
            DsseError::UnknownKeyId(keyid) => {
                write!(f, "DSSE keyid {keyid:?} names no trusted key")
            }
            DsseError::NoSignatures => f.write_str("the DSSE envelope has no signature"),
            DsseError::BadSignature { keyid } => {
                write!(f, "the DSSE signature by {keyid} does not verify")
            }
            DsseError::Key(e) => write!(f, "DSSE key: {e}"),
        }
    }
}

impl std::error::Error for DsseError {}

/// One entry of an envelope's `signatures`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DsseSignature {
    /// The signer's OpenSSH SHA-256 fingerprint.
    pub keyid: String,
    /// Base64 of the raw signature over PAE.
    pub sig: String,
}

/// The DSSE JSON envelope. Fields are written in this order; readers accept any order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// Base64 of the payload bytes.
    pub payload: String,
    pub signatures: Vec<DsseSignature>,
}

/// The Pre-Authentication Encoding of DSSE v1.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload_type.len() + body.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(body);
    out
}

/// Base64 as Buildfleet writes it: the standard alphabet with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    Base64::encode_string(bytes)
}

/// Base64 as DSSE verifiers must read it: standard or URL-safe, with or without padding.
pub fn base64_decode(text: &str, field: &'static str) -> Result<Vec<u8>, DsseError> {
    Base64::decode_vec(text)
        .or_else(|_| Base64Unpadded::decode_vec(text))
        .or_else(|_| Base64Url::decode_vec(text))
        .or_else(|_| Base64UrlUnpadded::decode_vec(text))
        .map_err(|_| DsseError::Base64 { field })
}

/// The DSSE keyid of a key: its OpenSSH SHA-256 fingerprint.
pub fn keyid(key: &PublicKey) -> String {
    fingerprint(key).to_string()
}

/// Signs `payload` (the in-toto statement's exact bytes) under [`PAYLOAD_TYPE`].
pub fn sign(key: &PrivateKey, payload: &[u8]) -> Result<DsseSignature, DsseError> {
    if key.is_encrypted() {
        return Err(DsseError::Key("the private key is encrypted".into()));
    }
    let message = pae(PAYLOAD_TYPE, payload);
    let signature: Signature = key
        .try_sign(&message)
        .map_err(|e| DsseError::Key(format!("cannot sign: {e}")))?;
    Ok(DsseSignature {
        keyid: keyid(key.public_key()),
        sig: base64_encode(signature.as_bytes()),
    })
}

/// The SSH signature algorithm a key's raw DSSE signatures use.
fn signature_algorithm(key: &PublicKey) -> Algorithm {
    match key.algorithm() {
        // ssh-key signs RSA with SHA-512 (rsa-sha2-512), as OpenSSH does by default.
        Algorithm::Rsa { .. } => Algorithm::Rsa {
            hash: Some(HashAlg::Sha512),
        },
        other => other,
    }
}

/// Verifies one signature made by `key` over `payload` under [`PAYLOAD_TYPE`]. The keyid
/// must be the key's fingerprint: a signature that names another key is refused before any
/// cryptography, with [`DsseError::WrongKeyId`].
pub fn verify(key: &PublicKey, payload: &[u8], signature: &DsseSignature) -> Result<(), DsseError> {
    let expected = keyid(key);
    if signature.keyid != expected {
        return Err(DsseError::WrongKeyId {
            found: signature.keyid.clone(),
            expected,
        });
    }
    let bytes = base64_decode(&signature.sig, "sig")?;
    let bad = || DsseError::BadSignature {
        keyid: expected.clone(),
    };
    let signature = Signature::new(signature_algorithm(key), bytes).map_err(|_| bad())?;
    Verifier::verify(key, &pae(PAYLOAD_TYPE, payload), &signature).map_err(|_| bad())
}

impl Envelope {
    /// An envelope of `payload` with `signatures`, as Buildfleet serves it.
    pub fn new(payload: &[u8], signatures: Vec<DsseSignature>) -> Envelope {
        Envelope {
            payload_type: PAYLOAD_TYPE.to_owned(),
            payload: base64_encode(payload),
            signatures,
        }
    }

    /// Parses an envelope and checks its payload type.
    pub fn parse(json: &str) -> Result<Envelope, DsseError> {
        let envelope: Envelope =
            serde_json::from_str(json).map_err(|e| DsseError::Json(e.to_string()))?;
        if envelope.payload_type != PAYLOAD_TYPE {
            return Err(DsseError::WrongPayloadType {
                found: envelope.payload_type,
            });
        }
        Ok(envelope)
    }

    /// The payload bytes.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, DsseError> {
        base64_decode(&self.payload, "payload")
    }

    /// Pretty JSON with a final newline, as served.
    #[allow(
        clippy::expect_used,
        reason = "an envelope is strings and a sequence: serialising cannot fail"
    )]
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("envelopes always serialise");
        text.push('\n');
        text
    }

    /// Verifies every signature against the trusted key its keyid names, and returns the
    /// payload and the signers' fingerprints in envelope order. Any signature that does not
    /// verify, or names no trusted key, refuses the whole envelope (Buildfleet's envelopes
    /// carry only signatures it checked; a stray one is a forgery, not noise).
    pub fn verify_all(
        &self,
        trusted: &[PublicKey],
    ) -> Result<(Vec<u8>, Vec<Fingerprint>), DsseError> {
        if self.payload_type != PAYLOAD_TYPE {
            return Err(DsseError::WrongPayloadType {
                found: self.payload_type.clone(),
            });
        }
        if self.signatures.is_empty() {
            return Err(DsseError::NoSignatures);
        }
        let payload = self.payload_bytes()?;
        let mut signers = Vec::with_capacity(self.signatures.len());
        for signature in &self.signatures {
            let key = trusted
                .iter()
                .find(|key| keyid(key) == signature.keyid)
                .ok_or_else(|| DsseError::UnknownKeyId(signature.keyid.clone()))?;
            verify(key, &payload, signature)?;
            signers.push(fingerprint(key));
        }
        Ok((payload, signers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::rand_core::OsRng;

    fn ed25519() -> PrivateKey {
        PrivateKey::random(&mut OsRng, Algorithm::Ed25519).unwrap()
    }

    #[test]
    fn pae_is_the_spec_test_vector() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }

    #[test]
    fn an_ed25519_signature_is_the_64_raw_bytes_and_verifies() {
        let key = ed25519();
        let payload = b"{\"_type\": \"https://in-toto.io/Statement/v1\"}\n";
        let signature = sign(&key, payload).unwrap();
        assert_eq!(signature.keyid, keyid(key.public_key()));
        assert!(signature.keyid.starts_with("SHA256:"));
        assert_eq!(base64_decode(&signature.sig, "sig").unwrap().len(), 64);
        verify(key.public_key(), payload, &signature).unwrap();
    }

    #[test]
    fn ecdsa_and_rsa_keys_sign_and_verify() {
        let keys = [
            PrivateKey::random(
                &mut OsRng,
                Algorithm::Ecdsa {
                    curve: ssh_key::EcdsaCurve::NistP256,
                },
            )
            .unwrap(),
            PrivateKey::from(ssh_key::private::RsaKeypair::random(&mut OsRng, 2048).unwrap()),
        ];
        for key in keys {
            let signature = sign(&key, b"payload").unwrap();
            verify(key.public_key(), b"payload", &signature).unwrap();
            assert!(matches!(
                verify(key.public_key(), b"payloaD", &signature),
                Err(DsseError::BadSignature { .. })
            ));
        }
    }

    #[test]
    fn a_tampered_payload_is_a_bad_signature() {
        let key = ed25519();
        let signature = sign(&key, b"artifact sha256 aa").unwrap();
        assert_eq!(
            verify(key.public_key(), b"artifact sha256 ab", &signature),
            Err(DsseError::BadSignature {
                keyid: keyid(key.public_key())
            })
        );
    }

    #[test]
    fn a_flipped_signature_bit_is_a_bad_signature() {
        let key = ed25519();
        let mut signature = sign(&key, b"payload").unwrap();
        let mut bytes = base64_decode(&signature.sig, "sig").unwrap();
        bytes[10] ^= 1;
        signature.sig = base64_encode(&bytes);
        assert!(matches!(
            verify(key.public_key(), b"payload", &signature),
            Err(DsseError::BadSignature { .. })
        ));
        // A signature of the wrong length is refused the same way, never a panic.
        signature.sig = base64_encode(&bytes[..20]);
        assert!(matches!(
            verify(key.public_key(), b"payload", &signature),
            Err(DsseError::BadSignature { .. })
        ));
    }

    #[test]
    fn another_keys_signature_is_a_wrong_keyid_and_bad_base64_is_named() {
        let (key, other) = (ed25519(), ed25519());
        let signature = sign(&other, b"payload").unwrap();
        assert!(matches!(
            verify(key.public_key(), b"payload", &signature),
            Err(DsseError::WrongKeyId { .. })
        ));
        let garbled = DsseSignature {
            keyid: keyid(key.public_key()),
            sig: "not base64!".into(),
        };
        assert_eq!(
            verify(key.public_key(), b"payload", &garbled),
            Err(DsseError::Base64 { field: "sig" })
        );
    }

    #[test]
    fn the_envelope_verifies_all_its_signatures_and_reads_url_safe_base64() {
        let (a, b) = (ed25519(), ed25519());
        let payload = b"statement \xff\xfe bytes that need + and / in base64";
        let mut envelope = Envelope::new(
            payload,
            vec![sign(&a, payload).unwrap(), sign(&b, payload).unwrap()],
        );
        let parsed = Envelope::parse(&envelope.to_json()).unwrap();
        assert_eq!(parsed, envelope);
        let trusted = [a.public_key().clone(), b.public_key().clone()];
        let (read, signers) = parsed.verify_all(&trusted).unwrap();
        assert_eq!(read, payload);
        assert_eq!(
            signers,
            vec![fingerprint(a.public_key()), fingerprint(b.public_key())]
        );

        // The spec lets signers use URL-safe base64 without padding.
        envelope.payload = Base64UrlUnpadded::encode_string(payload);
        assert_eq!(envelope.verify_all(&trusted).unwrap().0, payload);

        // One untrusted signer refuses the envelope.
        assert!(matches!(
            envelope.verify_all(&trusted[..1]),
            Err(DsseError::UnknownKeyId(_))
        ));
        // A tampered payload refuses it.
        envelope.payload = base64_encode(b"statement with other digests");
        assert!(matches!(
            envelope.verify_all(&trusted),
            Err(DsseError::BadSignature { .. })
        ));
    }

    #[test]
    fn a_wrong_payload_type_or_no_signature_is_refused() {
        let key = ed25519();
        let mut envelope = Envelope::new(b"x", vec![sign(&key, b"x").unwrap()]);
        envelope.payload_type = "application/json".into();
        assert_eq!(
            Envelope::parse(&envelope.to_json()),
            Err(DsseError::WrongPayloadType {
                found: "application/json".into()
            })
        );
        assert!(matches!(
            envelope.verify_all(&[key.public_key().clone()]),
            Err(DsseError::WrongPayloadType { .. })
        ));
        let empty = Envelope::new(b"x", Vec::new());
        assert_eq!(
            empty.verify_all(&[key.public_key().clone()]),
            Err(DsseError::NoSignatures)
        );
        assert!(matches!(
            Envelope::parse("{\"payload\": 1}"),
            Err(DsseError::Json(_))
        ));
    }
}
