//! Ed25519 keys (JWK `kty: OKP`, `crv: Ed25519`, RFC 8037) and EdDSA verification inside the VM
//! (RFC 8032 §5.1.7), over `montgomery.rs`'s arithmetic: extended twisted Edwards coordinates,
//! one complete addition formula, a double-and-add over both scalars at once.
//!
//! Envoy's `verify_signature` cannot verify Ed25519, so this is the only backend for it. Why our
//! own and not ed25519-dalek (which the module carried before): dalek's field code and its
//! precomputed tables of basepoint multiples were 20 KB of code and 8 KB of data, compiled by V8
//! at every start for an algorithm few issuers use (docs/performance.md, "Footprint"); this is a
//! few hundred lines over the arithmetic ECDSA already needs. Its cost is speed: about 0.45 ms a
//! verification natively against dalek's 36 µs, paid once per new token (verified tokens are
//! cached). It accepts exactly what dalek's `verify_strict` accepts, which the tests check on
//! Wycheproof's vectors and against dalek itself (a test-only dependency now).
//!
//! Verification handles only public values, so none of it needs to be constant-time.

use super::montgomery::{bit_of, bytes_from_hex, is_zero, limbs_from_be, limbs_from_le, Limbs, Modulus, MAX_LIMBS};
use sha2::{Digest, Sha512};
use std::fmt;
use std::sync::OnceLock;

/// A point (X : Y : Z : T) with x = X/Z, y = Y/Z and x·y = T/Z, every coordinate in the
/// Montgomery domain of p.
#[derive(Clone, Copy)]
struct Point {
    x: Limbs,
    y: Limbs,
    z: Limbs,
    t: Limbs,
}

/// edwards25519: −x² + y² = 1 + d·x²·y² over GF(2^255 − 19), its group of prime order L.
struct Curve {
    p: Modulus,
    l: Modulus,
    /// d and 2d in the Montgomery domain of p.
    d: Limbs,
    d2: Limbs,
    /// √−1 in the Montgomery domain of p.
    sqrt_m1: Limbs,
    /// (p − 5) / 8, plain: the exponent of the square root.
    p58: Limbs,
    /// 2^32 in the Montgomery domain of L: one step of reducing a hash mod L.
    l_word: Limbs,
    base: Point,
}

fn curve() -> &'static Curve {
    static CURVE: OnceLock<Curve> = OnceLock::new();
    CURVE.get_or_init(|| {
        // RFC 8032 §5.1.
        let p = Modulus::new("7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffed");
        let l = Modulus::new("1000000000000000000000000000000014def9dea2f79cd65812631a5cf5d3ed");
        let constant = |hex: &str| p.enter_montgomery(&limbs_from_be(&bytes_from_hex(hex)));
        let d = constant("52036cee2b6ffe738cc740797779e89800700a4d4141d8ab75eb4dca135978a3");
        let sqrt_m1 = constant("2b8324804fc1df0b2b4d00993dfbd7a72f431806ad2fe478c4ee1b274a0ea0b0");
        let bx = constant("216936d3cd6e53fec0a4e231fdd6dc5c692cc7609525a7b2c9562d608f25d51a");
        let by = constant("6666666666666666666666666666666666666666666666666666666666666658");
        let p58 = limbs_from_be(&bytes_from_hex("0ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffd"));
        let mut word = [0u32; MAX_LIMBS];
        word[1] = 1;
        let l_word = l.enter_montgomery(&word);
        let base = Point { x: bx, y: by, z: p.one, t: p.mul(&bx, &by) };
        Curve { d2: p.add(&d, &d), d, sqrt_m1, p58, l_word, base, p, l }
    })
}

impl Curve {
    fn identity(&self) -> Point {
        Point { x: [0; MAX_LIMBS], y: self.p.one, z: self.p.one, t: [0; MAX_LIMBS] }
    }

    fn negate(&self, a: &Limbs) -> Limbs {
        self.p.sub(&[0; MAX_LIMBS], a)
    }

    /// Complete for every pair of points, doubling included (a = −1 is a square and d is not:
    /// Hisil–Wong–Carter–Dawson, "add-2008-hwcd-3").
    fn add(&self, a: &Point, b: &Point) -> Point {
        let p = &self.p;
        let pa = p.mul(&p.sub(&a.y, &a.x), &p.sub(&b.y, &b.x));
        let pb = p.mul(&p.add(&a.y, &a.x), &p.add(&b.y, &b.x));
        let c = p.mul(&p.mul(&a.t, &self.d2), &b.t);
        let zz = p.mul(&a.z, &b.z);
        let d = p.add(&zz, &zz);
        let (e, f, g, h) = (p.sub(&pb, &pa), p.sub(&d, &c), p.add(&d, &c), p.add(&pb, &pa));
        Point { x: p.mul(&e, &f), y: p.mul(&g, &h), z: p.mul(&f, &g), t: p.mul(&e, &h) }
    }

    /// [8]·point is the identity: the point is in the small subgroup of order dividing 8.
    fn is_small_order(&self, point: &Point) -> bool {
        let mut q = *point;
        for _ in 0..3 {
            q = self.add(&q, &q);
        }
        is_zero(&q.x) && q.y == q.z
    }

    /// The point of a 32-byte encoding, read as dalek reads it: y modulo p (so a non-canonical y
    /// decodes as its residue), x the square root of (y² − 1)/(d·y² + 1) whose least significant
    /// bit is the encoding's top bit (−0 = 0 where x is zero). `None` when there is no such x.
    fn decompress(&self, encoding: &[u8; 32]) -> Option<Point> {
        let p = &self.p;
        let mut y = limbs_from_le(encoding);
        y[7] &= 0x7fff_ffff;
        let (reduced, below) = p.sub_m(&y);
        if !below {
            y = reduced;
        }
        let y = p.enter_montgomery(&y);
        let yy = p.mul(&y, &y);
        let u = p.sub(&yy, &p.one);
        let v = p.add(&p.mul(&yy, &self.d), &p.one);
        let mut x = self.sqrt_ratio(&u, &v)?;
        if encoding[31] >> 7 == 1 {
            x = self.negate(&x);
        }
        Some(Point { x, y, z: p.one, t: p.mul(&x, &y) })
    }

    /// The non-negative (even) square root of u/v, if u/v is a square (RFC 8032 §5.1.3).
    fn sqrt_ratio(&self, u: &Limbs, v: &Limbs) -> Option<Limbs> {
        let p = &self.p;
        let v3 = p.mul(&p.mul(v, v), v);
        let v7 = p.mul(&p.mul(&v3, &v3), v);
        let mut r = p.mul(&p.mul(u, &v3), &p.pow(&p.mul(u, &v7), &self.p58));
        let check = p.mul(v, &p.mul(&r, &r));
        let minus_u = self.negate(u);
        let correct = check == *u;
        let flipped = check == minus_u;
        if flipped || check == p.mul(&minus_u, &self.sqrt_m1) {
            r = p.mul(&r, &self.sqrt_m1);
        }
        if p.leave_montgomery(&r)[0] & 1 == 1 {
            r = self.negate(&r);
        }
        (correct || flipped).then_some(r)
    }

    /// The canonical encoding: y below p, the sign of x in the top bit.
    fn compress(&self, point: &Point) -> [u8; 32] {
        let p = &self.p;
        let z_inverse = p.invert(&point.z);
        let x = p.leave_montgomery(&p.mul(&point.x, &z_inverse));
        let y = p.leave_montgomery(&p.mul(&point.y, &z_inverse));
        let mut out = le_bytes(&y);
        out[31] |= ((x[0] & 1) as u8) << 7;
        out
    }

    /// [s]·B + [k]·A for scalars below L (253 bits), one doubling per bit.
    fn double_scalar_mul(&self, s: &Limbs, k: &Limbs, a: &Point) -> Point {
        let both = self.add(&self.base, a);
        let mut acc = self.identity();
        for bit in (0..253).rev() {
            acc = self.add(&acc, &acc);
            acc = match (bit_of(s, bit), bit_of(k, bit)) {
                (true, true) => self.add(&acc, &both),
                (true, false) => self.add(&acc, &self.base),
                (false, true) => self.add(&acc, a),
                (false, false) => acc,
            };
        }
        acc
    }

    /// A 64-byte little-endian hash modulo L, plain (Horner's rule over 32-bit words).
    fn reduce_hash(&self, hash: &[u8]) -> Limbs {
        let l = &self.l;
        let mut acc = [0u32; MAX_LIMBS];
        for chunk in hash.rchunks(4) {
            // acc·2^32·R·R⁻¹ = acc·2^32 (mod L), then the next word.
            acc = l.add(&l.mul(&acc, &self.l_word), &limbs_from_le(chunk));
        }
        acc
    }
}

/// The low 256 bits of `value` as 32 little-endian bytes, as Ed25519 encodes its numbers (the
/// inverse of `limbs_from_le`).
fn le_bytes(value: &Limbs) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (chunk, limb) in out.chunks_mut(4).zip(value.iter()) {
        chunk.copy_from_slice(&limb.to_le_bytes());
    }
    out
}

/// An Ed25519 public key whose encoding decompresses to a curve point not of small order.
#[derive(Clone)]
pub struct Ed25519Key {
    /// As received: the challenge hash covers these bytes (RFC 8032 §5.1.7 step 2).
    encoding: [u8; 32],
    /// −A, the point the verification adds.
    minus_a: Point,
}

impl PartialEq for Ed25519Key {
    fn eq(&self, other: &Ed25519Key) -> bool {
        self.encoding == other.encoding
    }
}

impl Eq for Ed25519Key {}

impl fmt::Debug for Ed25519Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ed25519Key")
    }
}

impl Ed25519Key {
    /// The key from a JWK's `x`: 32 bytes that decode to a point not of small order (such a key
    /// can never pass the strict verification below, so it is refused at load, with the reason,
    /// rather than kept); `None` otherwise.
    pub fn from_bytes(x: &[u8]) -> Option<Ed25519Key> {
        let encoding: [u8; 32] = x.try_into().ok()?;
        let curve = curve();
        let a = curve.decompress(&encoding)?;
        if curve.is_small_order(&a) {
            return None;
        }
        let minus_a = Point { x: curve.negate(&a.x), t: curve.negate(&a.t), ..a };
        Some(Ed25519Key { encoding, minus_a })
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.encoding
    }

    /// Verifies a 64-byte signature R ‖ S over `message`, strictly (dalek's `verify_strict`):
    /// S must be below L (a non-canonical S is the classic malleability), R must decode to a
    /// point not of small order (with which one signature can verify for many messages: RFC
    /// 8032 leaves the choice to the verifier, and the strict reading is the safe one for
    /// authentication), and [S]B − [k]A must encode to exactly R's bytes, with k =
    /// SHA-512(R ‖ A ‖ message) mod L.
    #[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let (Some(r_bytes), Some(s_bytes)) = (signature.get(..32), signature.get(32..)) else { return false };
        let (Ok(r_encoding), true) = (<[u8; 32]>::try_from(r_bytes), s_bytes.len() == 32) else { return false };
        let curve = curve();
        let s = limbs_from_le(s_bytes);
        if !curve.l.is_reduced(&s) {
            return false;
        }
        let Some(r) = curve.decompress(&r_encoding) else { return false };
        if curve.is_small_order(&r) {
            return false;
        }
        let hash = Sha512::new().chain_update(r_bytes).chain_update(self.encoding).chain_update(message).finalize();
        let k = curve.reduce_hash(&hash);
        curve.compress(&curve.double_scalar_mul(&s, &k, &self.minus_a)) == r_encoding
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer as _;

    /// A xorshift stream for reproducible cases.
    fn stream(mut state: u64) -> impl FnMut() -> u8 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        }
    }

    /// What dalek's `verify_strict` says, with its key parsing and weak-key refusal as before.
    fn dalek(key: &[u8; 32], message: &[u8], signature: &[u8]) -> Option<bool> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(key).ok().filter(|key| !key.is_weak())?;
        let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else { return Some(false) };
        Some(key.verify_strict(message, &signature).is_ok())
    }

    fn ours(key: &[u8; 32], message: &[u8], signature: &[u8]) -> Option<bool> {
        Ed25519Key::from_bytes(key).map(|key| key.verify(message, signature))
    }

    #[test]
    fn the_base_point_has_order_l() {
        let c = curve();
        let mut l_minus_1 = c.l.m;
        l_minus_1[0] -= 1;
        let zero = [0u32; MAX_LIMBS];
        // [L − 1]B + B is the identity, and B is not of small order.
        let minus_b = c.double_scalar_mul(&l_minus_1, &zero, &c.identity());
        let sum = c.add(&minus_b, &c.base);
        assert!(is_zero(&sum.x) && sum.y == sum.z);
        assert!(!c.is_small_order(&c.base));
        // B's encoding (RFC 8032: y = 4/5, x even) decodes to B.
        let encoded = c.compress(&c.base);
        assert_eq!(encoded[0], 0x58);
        assert_eq!(c.compress(&c.decompress(&encoded).unwrap()), encoded);
    }

    #[test]
    fn agrees_with_dalek_on_valid_tampered_and_foreign_signatures() {
        let mut next = stream(0x1234_5678_9abc_def1);
        for round in 0..64 {
            let secret: [u8; 32] = std::array::from_fn(|_| next());
            let signer = ed25519_dalek::SigningKey::from_bytes(&secret);
            let key = signer.verifying_key().to_bytes();
            let message: Vec<u8> = (0..round * 7).map(|_| next()).collect();
            let signature = signer.sign(&message).to_bytes();
            assert_eq!(ours(&key, &message, &signature), Some(true), "round {round}");
            let mut tampered = signature;
            let at = usize::from(next()) % 64;
            tampered[at] ^= 1 << (next() % 8);
            assert_eq!(ours(&key, &message, &tampered), dalek(&key, &message, &tampered), "round {round}: byte {at}");
            let mut other = message.clone();
            other.push(next());
            assert_eq!(ours(&key, &other, &signature), Some(false));
            // S + L: the same residue, not canonical.
            let mut malleable = signature;
            let mut carry = 0u16;
            let l = le_bytes(&curve().l.m);
            for (byte, &l_byte) in malleable[32..].iter_mut().zip(&l) {
                let sum = u16::from(*byte) + u16::from(l_byte) + carry;
                *byte = sum as u8;
                carry = sum >> 8;
            }
            assert_eq!(ours(&key, &message, &malleable), dalek(&key, &message, &malleable));
            assert_eq!(ours(&key, &message, &malleable), Some(false));
        }
    }

    #[test]
    fn refuses_a_small_order_r_even_where_the_equation_holds() {
        // The key's owner can make [S]B − [k]A the identity (S = k·a): the equation holds for
        // R = identity, a small-order R that strict verification refuses.
        let c = curve();
        let zero = [0u32; MAX_LIMBS];
        let mut a = limbs_from_le(&[0x35; 32]);
        a[7] &= 0x0fff_ffff;
        let key = c.compress(&c.double_scalar_mul(&a, &zero, &c.identity()));
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let message = b"small order";
        let hash = Sha512::new().chain_update(identity).chain_update(key).chain_update(message).finalize();
        let k = c.reduce_hash(&hash);
        let s = c.l.mul(&c.l.enter_montgomery(&k), &a);
        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(&identity);
        signature[32..].copy_from_slice(&le_bytes(&s));
        // The equation does hold: [S]B − [k]A encodes to R.
        let parsed = Ed25519Key::from_bytes(&key).unwrap();
        assert_eq!(c.compress(&c.double_scalar_mul(&s, &k, &parsed.minus_a)), identity);
        assert_eq!(ours(&key, message, &signature), Some(false));
        assert_eq!(dalek(&key, message, &signature), Some(false));
    }

    #[test]
    fn agrees_with_dalek_on_edge_encodings() {
        let signer = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let message = b"edge";
        let good = signer.sign(message).to_bytes();
        let key = signer.verifying_key().to_bytes();
        let p_le: [u8; 32] = {
            let mut p = [0xff; 32];
            p[0] = 0xed;
            p[31] = 0x7f;
            p
        };
        let mut encodings: Vec<[u8; 32]> = vec![[0; 32], p_le, [0xff; 32], key];
        // The identity (y = 1), its non-canonical twin (y = p + 1), with and without the sign bit;
        // y = 0 and y = −1 (points of order 4 and 2); random bytes.
        let mut one = [0u8; 32];
        one[0] = 1;
        let mut p_plus_1 = p_le;
        p_plus_1[0] = 0xee;
        let mut minus_one = p_le;
        minus_one[0] = 0xec;
        for base in [one, p_plus_1, minus_one, [0; 32]] {
            encodings.push(base);
            let mut signed = base;
            signed[31] |= 0x80;
            encodings.push(signed);
        }
        let mut next = stream(42);
        encodings.extend((0..64).map(|_| std::array::from_fn(|_| next())));
        for encoding in &encodings {
            // As a key.
            assert_eq!(ours(encoding, message, &good), dalek(encoding, message, &good), "key {encoding:02x?}");
            // As R, with the good S.
            let mut signature = good;
            signature[..32].copy_from_slice(encoding);
            assert_eq!(ours(&key, message, &signature), dalek(&key, message, &signature), "R {encoding:02x?}");
        }
        // Wrong lengths.
        assert_eq!(ours(&key, message, &good[..63]), Some(false));
        assert!(Ed25519Key::from_bytes(&key[..31]).is_none());
    }
}
