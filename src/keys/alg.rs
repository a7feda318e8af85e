//! The JOSE signature algorithms a token may name (RFC 7518 §3, RFC 8037 §3.1) and what each one
//! needs: a key family, a curve, a hash.
//!
//! Ten algorithms, the set Envoy's jwt_authn (google/jwt_verify_lib) accepts. HMAC (`HS*`) is
//! deliberately absent: its "key" would be public key material, which is the classic confusion
//! attack, and no JWKS we fetch holds a shared secret worth trusting.

use sha2::{Digest, Sha256, Sha384, Sha512};
use std::fmt;

/// A JWS `alg` we verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256, MGF1 with SHA-256, 32-byte salt.
    Ps256,
    /// RSASSA-PSS with SHA-384, MGF1 with SHA-384, 48-byte salt.
    Ps384,
    /// RSASSA-PSS with SHA-512, MGF1 with SHA-512, 64-byte salt.
    Ps512,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// ECDSA on P-384 with SHA-384.
    Es384,
    /// ECDSA on P-521 with SHA-512.
    Es512,
    /// EdDSA; only with Ed25519 keys (RFC 8037; Ed448 is not accepted, as in Envoy).
    EdDsa,
}

/// The kind of key an algorithm needs: a key of one kind is never used for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Rsa,
    Ec(Curve),
    Ed25519,
}

/// The NIST curves of ECDSA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Curve {
    P256,
    P384,
    P521,
}

/// The hash functions the algorithms use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlg {
    Sha256,
    Sha384,
    Sha512,
}

impl Algorithm {
    pub const ALL: [Algorithm; 10] = [
        Algorithm::Rs256,
        Algorithm::Rs384,
        Algorithm::Rs512,
        Algorithm::Ps256,
        Algorithm::Ps384,
        Algorithm::Ps512,
        Algorithm::Es256,
        Algorithm::Es384,
        Algorithm::Es512,
        Algorithm::EdDsa,
    ];

    /// The algorithm a JWS header or a JWK names; `None` for everything else (`none`, `HS256`,
    /// `RSA-OAEP`, lower case: JOSE names are case-sensitive).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|alg| alg.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RS256",
            Algorithm::Rs384 => "RS384",
            Algorithm::Rs512 => "RS512",
            Algorithm::Ps256 => "PS256",
            Algorithm::Ps384 => "PS384",
            Algorithm::Ps512 => "PS512",
            Algorithm::Es256 => "ES256",
            Algorithm::Es384 => "ES384",
            Algorithm::Es512 => "ES512",
            Algorithm::EdDsa => "EdDSA",
        }
    }

    pub fn family(self) -> Family {
        match self {
            Algorithm::Rs256 | Algorithm::Rs384 | Algorithm::Rs512 => Family::Rsa,
            Algorithm::Ps256 | Algorithm::Ps384 | Algorithm::Ps512 => Family::Rsa,
            Algorithm::Es256 => Family::Ec(Curve::P256),
            Algorithm::Es384 => Family::Ec(Curve::P384),
            Algorithm::Es512 => Family::Ec(Curve::P521),
            Algorithm::EdDsa => Family::Ed25519,
        }
    }

    /// The hash the signature is computed over; EdDSA hashes inside the scheme (SHA-512 of more
    /// than the message), so it has none here.
    pub fn hash(self) -> Option<HashAlg> {
        match self {
            Algorithm::Rs256 | Algorithm::Ps256 | Algorithm::Es256 => Some(HashAlg::Sha256),
            Algorithm::Rs384 | Algorithm::Ps384 | Algorithm::Es384 => Some(HashAlg::Sha384),
            Algorithm::Rs512 | Algorithm::Ps512 | Algorithm::Es512 => Some(HashAlg::Sha512),
            Algorithm::EdDsa => None,
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Curve {
    /// The JWK `crv` name.
    pub fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::P521 => "P-521",
        }
    }

    pub fn from_name(name: &str) -> Option<Curve> {
        [Curve::P256, Curve::P384, Curve::P521].into_iter().find(|curve| curve.name() == name)
    }

    /// Bytes of one coordinate, of `r` and of `s`: a JWK's `x`/`y` and half a JWS signature
    /// must be exactly this long (RFC 7518 §6.2.1.2, §3.4).
    pub fn size(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }
}

impl HashAlg {
    /// The name Envoy's `verify_signature` takes.
    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha384 => "sha384",
            HashAlg::Sha512 => "sha512",
        }
    }

    pub fn output_len(self) -> usize {
        match self {
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    /// The hash of the concatenation of `parts`.
    pub fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut hasher = D::new();
            parts.iter().for_each(|part| hasher.update(part));
            hasher.finalize().to_vec()
        }
        match self {
            HashAlg::Sha256 => run::<Sha256>(parts),
            HashAlg::Sha384 => run::<Sha384>(parts),
            HashAlg::Sha512 => run::<Sha512>(parts),
        }
    }
}

/// A set of algorithms (a per-issuer allow-list, or what the host can verify).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct AlgorithmSet(u16);

impl AlgorithmSet {
    pub const NONE: AlgorithmSet = AlgorithmSet(0);

    pub fn all() -> AlgorithmSet {
        Algorithm::ALL.into_iter().collect()
    }

    pub fn contains(self, alg: Algorithm) -> bool {
        self.0 & alg.bit() != 0
    }

    pub fn insert(&mut self, alg: Algorithm) {
        self.0 |= alg.bit();
    }

    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Algorithm> {
        Algorithm::ALL.into_iter().filter(move |alg| self.contains(*alg))
    }
}

impl FromIterator<Algorithm> for AlgorithmSet {
    fn from_iter<I: IntoIterator<Item = Algorithm>>(iter: I) -> Self {
        let mut set = AlgorithmSet::NONE;
        iter.into_iter().for_each(|alg| set.insert(alg));
        set
    }
}

impl fmt::Debug for AlgorithmSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(Algorithm::name)).finish()
    }
}

impl fmt::Display for AlgorithmSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Algorithm::name).collect();
        f.write_str(&names.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_nothing_else_is_an_algorithm() {
        for alg in Algorithm::ALL {
            assert_eq!(Algorithm::from_name(alg.name()), Some(alg));
        }
        for name in ["none", "None", "HS256", "HS384", "HS512", "rs256", "RSA-OAEP", "ES256K", "Ed25519", "", "RS256 "]
        {
            assert_eq!(Algorithm::from_name(name), None, "{name}");
        }
    }

    #[test]
    fn sets_hold_exactly_what_was_put_in() {
        let set: AlgorithmSet = [Algorithm::Es256, Algorithm::EdDsa].into_iter().collect();
        assert!(set.contains(Algorithm::Es256) && set.contains(Algorithm::EdDsa));
        assert!(!set.contains(Algorithm::Rs256));
        assert_eq!(set.len(), 2);
        assert_eq!(set.to_string(), "ES256 EdDSA");
        assert_eq!(AlgorithmSet::all().len(), 10);
        assert!(AlgorithmSet::NONE.is_empty());
    }

    #[test]
    fn hashes_have_their_sizes() {
        for hash in [HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512] {
            assert_eq!(hash.digest(&[b"a", b"bc"]), hash.digest(&[b"abc"]));
            assert_eq!(hash.digest(&[]).len(), hash.output_len());
        }
    }
}
