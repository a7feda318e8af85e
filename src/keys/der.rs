//! The few DER structures Envoy's `verify_signature` needs from us: a SubjectPublicKeyInfo for an
//! RSA or EC key, and an ECDSA signature as an `ECDSA-Sig-Value`.
//!
//! Written, never parsed: keys arrive as JWKs (numbers and points), so a minimal DER writer is all
//! there is; nothing here reads attacker-controlled DER.

use crate::keys::alg::Curve;

/// rsaEncryption, 1.2.840.113549.1.1.1 (RFC 8017 §A.1).
const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// id-ecPublicKey, 1.2.840.10045.2.1 (RFC 5480 §2.1.1).
const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// secp256r1 1.2.840.10045.3.1.7, secp384r1 1.3.132.0.34, secp521r1 1.3.132.0.35 (RFC 5480 §2.1.1.1).
const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];

const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const NULL: u8 = 0x05;
const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;

/// SubjectPublicKeyInfo of an RSA key from the big-endian `n` and `e` (RFC 8017 §A.1.1 inside
/// RFC 5280 §4.1): Envoy refuses a bare PKCS#1 `RSAPublicKey`.
pub fn rsa_spki(n: &[u8], e: &[u8]) -> Vec<u8> {
    let rsa_public_key = tlv(SEQUENCE, &[unsigned_integer(n), unsigned_integer(e)].concat());
    let algorithm = tlv(SEQUENCE, &[tlv(OID, RSA_ENCRYPTION), tlv(NULL, &[])].concat());
    tlv(SEQUENCE, &[algorithm, bit_string(&rsa_public_key)].concat())
}

/// SubjectPublicKeyInfo of an EC key from its uncompressed SEC1 point (`04 || x || y`).
pub fn ec_spki(curve: Curve, point: &[u8]) -> Vec<u8> {
    let curve_oid = match curve {
        Curve::P256 => P256,
        Curve::P384 => P384,
        Curve::P521 => P521,
    };
    let algorithm = tlv(SEQUENCE, &[tlv(OID, EC_PUBLIC_KEY), tlv(OID, curve_oid)].concat());
    tlv(SEQUENCE, &[algorithm, bit_string(point)].concat())
}

/// `ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` (RFC 5480 §2.2 / X9.62) from a JWS
/// signature's raw `r || s`, each `size` bytes. `None` unless the signature is exactly `2 × size`
/// bytes: that length is the JOSE form (RFC 7518 §3.4), and a DER signature sent in its place
/// must not be converted into something that verifies.
pub fn ecdsa_signature(raw: &[u8], size: usize) -> Option<Vec<u8>> {
    if raw.len() != 2 * size {
        return None;
    }
    let (r, s) = raw.split_at_checked(size)?;
    Some(tlv(SEQUENCE, &[unsigned_integer(r), unsigned_integer(s)].concat()))
}

/// A DER INTEGER holding the non-negative big-endian number `bytes`: minimal, with a zero byte
/// in front when the top bit is set.
fn unsigned_integer(bytes: &[u8]) -> Vec<u8> {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    let digits = bytes.get(first..).unwrap_or_default();
    let mut content = Vec::with_capacity(digits.len() + 1);
    if digits.first().is_none_or(|&top| top & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(digits);
    tlv(INTEGER, &content)
}

fn bit_string(bytes: &[u8]) -> Vec<u8> {
    // No unused bits in the last byte.
    tlv(BIT_STRING, &[&[0u8][..], bytes].concat())
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let len_bytes = len.to_be_bytes();
        let first = len_bytes.iter().position(|&b| b != 0).unwrap_or(len_bytes.len() - 1);
        let significant = len_bytes.get(first..).unwrap_or_default();
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkeys;
    use rsa::pkcs8::EncodePublicKey;
    use rsa::traits::PublicKeyParts;

    #[test]
    fn rsa_spki_is_what_the_rsa_crate_writes() {
        for index in 0..3 {
            let public = testkeys::key(index).to_public_key();
            let ours = rsa_spki(&public.n().to_bytes_be(), &public.e().to_bytes_be());
            let theirs = public.to_public_key_der().expect("der");
            assert_eq!(ours, theirs.as_bytes());
        }
    }

    #[test]
    fn ec_spki_reads_back_with_the_curve_crates() {
        use p256::pkcs8::DecodePublicKey as _;
        let p256_key = p256::SecretKey::from_slice(&[7u8; 32]).expect("scalar").public_key();
        let ours = ec_spki(Curve::P256, p256::EncodedPoint::from(p256_key).as_bytes());
        assert_eq!(p256::PublicKey::from_public_key_der(&ours), Ok(p256_key));
        let p384_key = p384::SecretKey::from_slice(&[7u8; 48]).expect("scalar").public_key();
        let ours = ec_spki(Curve::P384, p384::EncodedPoint::from(p384_key).as_bytes());
        assert_eq!(p384::PublicKey::from_public_key_der(&ours), Ok(p384_key));
        let mut scalar = [7u8; 66];
        scalar[0] = 1;
        let p521_key = p521::SecretKey::from_slice(&scalar).expect("scalar").public_key();
        let ours = ec_spki(Curve::P521, p521::EncodedPoint::from(p521_key).as_bytes());
        assert_eq!(p521::PublicKey::from_public_key_der(&ours), Ok(p521_key));
        // The wrong curve's OID is refused by the parser of the right one.
        let mislabelled = ec_spki(Curve::P384, p256::EncodedPoint::from(p256_key).as_bytes());
        assert!(p256::PublicKey::from_public_key_der(&mislabelled).is_err());
    }

    #[test]
    fn integers_are_minimal_and_positive() {
        assert_eq!(unsigned_integer(&[0, 0, 0x7f]), vec![0x02, 0x01, 0x7f]);
        assert_eq!(unsigned_integer(&[0x80]), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(unsigned_integer(&[0, 0]), vec![0x02, 0x01, 0x00]);
        assert_eq!(tlv(0x04, &[0u8; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(tlv(0x04, &[0u8; 200])[..3], [0x04, 0x81, 200]);
    }

    #[test]
    fn ecdsa_signatures_only_from_the_exact_raw_length() {
        let mut raw = vec![0u8; 64];
        raw[31] = 1;
        raw[32] = 0xff;
        let der = ecdsa_signature(&raw, 32).expect("64 bytes");
        // r = 1: one content byte; s has its top bit set: a zero byte in front of its 32.
        assert_eq!(der[..5], [0x30, 0x26, 0x02, 0x01, 0x01]);
        assert_eq!(der[5..9], [0x02, 0x21, 0x00, 0xff]);
        assert_eq!(der.len(), 2 + 3 + 35);
        assert_eq!(ecdsa_signature(&raw[1..], 32), None);
        assert_eq!(ecdsa_signature(&[raw.clone(), vec![0]].concat(), 32), None);
        assert_eq!(ecdsa_signature(&der, 32), None);
    }
}
