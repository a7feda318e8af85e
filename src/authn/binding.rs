//! Certificate-bound access tokens (RFC 8705 §3): a token whose `cnf` claim has `x5t#S256` is
//! accepted only on a connection whose client certificate has that SHA-256 thumbprint.
//!
//! The thumbprint is read from the claims once the token is verified, and compared on every
//! request, cached token or not: the binding is a property of the connection, not of the token.
//! Envoy shows a Wasm filter the peer certificate's digest as the attribute
//! `connection.sha256_peer_certificate_digest` (hex); the host reads it only for a request that
//! carries a bound token (`engine::Decision::Bound`), so that no other request pays the call.

use super::claims::ClaimsError;
use crate::base64url;
use crate::json::{Map, Value};

/// The SHA-256 thumbprint a token is bound to: `None` for a token without `cnf.x5t#S256` (a
/// bearer token, or one bound otherwise, such as DPoP's `cnf.jkt`). A `cnf` that is not an object,
/// or an `x5t#S256` that is not the base64url of 32 bytes, makes the token invalid: a token meant
/// to be bound must never pass as a bearer token because its binding could not be read.
pub fn certificate_thumbprint(claims: &Map) -> Result<Option<[u8; 32]>, ClaimsError> {
    confirmation(claims, "x5t#S256")
}

/// The SHA-256 digest a token's `cnf.<member>` holds (RFC 7800 confirmation: `x5t#S256` here,
/// DPoP's `jkt`): `None` without `cnf` or without the member; an error for a `cnf` that is not an
/// object or a member that is not the base64url of 32 bytes.
pub fn confirmation(claims: &Map, member: &str) -> Result<Option<[u8; 32]>, ClaimsError> {
    let Some(cnf) = claims.get("cnf") else { return Ok(None) };
    let Value::Object(cnf) = cnf else { return Err(ClaimsError::BadConfirmation) };
    let Some(thumbprint) = cnf.get(member) else { return Ok(None) };
    let bytes = thumbprint.as_str().and_then(base64url::decode).ok_or(ClaimsError::BadConfirmation)?;
    <[u8; 32]>::try_from(bytes.as_slice()).map(Some).map_err(|_| ClaimsError::BadConfirmation)
}

/// Whether Envoy's `connection.sha256_peer_certificate_digest` (64 hex digits; absent or empty
/// without a client certificate) is `thumbprint`.
pub fn presented(thumbprint: &[u8; 32], envoy_digest: Option<&[u8]>) -> bool {
    let Some(hex) = envoy_digest.filter(|hex| hex.len() == 64) else { return false };
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    // Every byte compared, whatever the first difference: the thumbprint is not secret, but
    // there is no reason to say where it differs.
    let mut same = true;
    for (expected, pair) in thumbprint.iter().zip(hex.chunks_exact(2)) {
        let byte = match pair {
            [high, low] => nibble(*high).zip(nibble(*low)).map(|(high, low)| high << 4 | low),
            _ => None,
        };
        same &= byte == Some(*expected);
    }
    same
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(value: serde_json::Value) -> Map {
        let crate::json::Value::Object(map) = crate::json::Value::from(value) else { panic!("object") };
        map
    }

    #[test]
    fn reads_the_thumbprint_and_refuses_a_malformed_one() {
        let digest = [7u8; 32];
        let encoded = crate::testkeys::b64(digest);
        assert_eq!(certificate_thumbprint(&claims(json!({"cnf": {"x5t#S256": encoded}}))), Ok(Some(digest)));
        assert_eq!(certificate_thumbprint(&claims(json!({"sub": "a"}))), Ok(None));
        assert_eq!(certificate_thumbprint(&claims(json!({"cnf": {"jkt": "abc"}}))), Ok(None));
        for bad in [
            json!({"cnf": "x"}),
            json!({"cnf": {"x5t#S256": 5}}),
            json!({"cnf": {"x5t#S256": "not base64url!"}}),
            json!({"cnf": {"x5t#S256": crate::testkeys::b64([7u8; 20])}}),
            json!({"cnf": {"x5t#S256": format!("{encoded}AA")}}),
        ] {
            assert_eq!(certificate_thumbprint(&claims(bad.clone())), Err(ClaimsError::BadConfirmation), "{bad}");
        }
    }

    #[test]
    fn compares_with_envoys_hex_digest() {
        let mut digest = [0u8; 32];
        digest[0] = 0xAB;
        digest[31] = 0x01;
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert!(presented(&digest, Some(hex.as_bytes())));
        assert!(presented(&digest, Some(hex.to_uppercase().as_bytes())));
        let mut other = hex.clone().into_bytes();
        other[63] = b'2';
        assert!(!presented(&digest, Some(&other)));
        assert!(!presented(&digest, None));
        assert!(!presented(&digest, Some(b"")));
        assert!(!presented(&digest, Some(&hex.as_bytes()[..62])));
        assert!(!presented(&digest, Some(format!("{}zz", &hex[..62]).as_bytes())));
    }
}
