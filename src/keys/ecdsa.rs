//! ECDSA verification on P-256, P-384 and P-521 inside the VM: Jacobian points over
//! `montgomery.rs`'s arithmetic, one generic code path for the three curves.
//!
//! Why our own and not RustCrypto's curve crates (which the module carried before): their field
//! code is fiat-crypto's, fully unrolled per curve (a P-384 multiplication alone is a 12 KB
//! straight-line function on wasm32), about 240 KB of the module for a fallback that runs only
//! where Envoy's `verify_signature` is missing; and Envoy's V8 compiles every function with
//! TurboFan when the module loads, at a memory cost that follows the largest functions
//! (docs/performance.md, "Footprint"). Verification handles only public values (key, message,
//! signature), so none of it needs to be constant-time. It is checked against Google's Wycheproof
//! vectors for the three curves (`tests/wycheproof.rs`, and inside Envoy) and against RustCrypto's
//! signatures in the tests below.

use super::montgomery::{bit_of, bytes_from_hex, is_zero, limbs_from_be, Limbs, Modulus, MAX_LIMBS};
use std::sync::OnceLock;

/// A point in Jacobian coordinates (X/Z², Y/Z³), each in the Montgomery domain of p; Z = 0 is the
/// point at infinity.
#[derive(Clone, Copy)]
struct Point {
    x: Limbs,
    y: Limbs,
    z: Limbs,
}

/// One curve y² = x³ − 3x + b over GF(p) of prime order n (all three have a = −3 and cofactor 1).
struct Curve {
    p: Modulus,
    n: Modulus,
    /// b in the Montgomery domain of p.
    b: Limbs,
    generator: Point,
    /// Coordinate and scalar size in bytes.
    size: usize,
}

impl Curve {
    fn new(p: &str, n: &str, b: &str, gx: &str, gy: &str, size: usize) -> Curve {
        let p = Modulus::new(p);
        let n = Modulus::new(n);
        let b = p.enter_montgomery(&limbs_from_be(&bytes_from_hex(b)));
        let generator = Point {
            x: p.enter_montgomery(&limbs_from_be(&bytes_from_hex(gx))),
            y: p.enter_montgomery(&limbs_from_be(&bytes_from_hex(gy))),
            z: p.one,
        };
        Curve { p, n, b, generator, size }
    }

    fn infinity(&self) -> Point {
        Point { x: self.p.one, y: self.p.one, z: [0; MAX_LIMBS] }
    }

    /// Whether the affine (x, y), in the Montgomery domain, satisfies the curve equation.
    fn on_curve(&self, x: &Limbs, y: &Limbs) -> bool {
        let p = &self.p;
        let y2 = p.mul(y, y);
        let x3 = p.mul(&p.mul(x, x), x);
        let three_x = p.add(&p.add(x, x), x);
        let rhs = p.add(&p.sub(&x3, &three_x), &self.b);
        y2 == rhs
    }

    /// 2P ("dbl-2001-b", for a = −3).
    fn double(&self, point: &Point) -> Point {
        let p = &self.p;
        let delta = p.mul(&point.z, &point.z);
        let gamma = p.mul(&point.y, &point.y);
        let beta = p.mul(&point.x, &gamma);
        let alpha = p.mul(&p.sub(&point.x, &delta), &p.add(&point.x, &delta));
        let alpha = p.add(&p.add(&alpha, &alpha), &alpha);
        let beta4 = p.add(&beta, &beta);
        let beta4 = p.add(&beta4, &beta4);
        let beta8 = p.add(&beta4, &beta4);
        let x3 = p.sub(&p.mul(&alpha, &alpha), &beta8);
        let y_plus_z = p.add(&point.y, &point.z);
        let z3 = p.sub(&p.sub(&p.mul(&y_plus_z, &y_plus_z), &gamma), &delta);
        let gamma2 = p.mul(&gamma, &gamma);
        let gamma2_2 = p.add(&gamma2, &gamma2);
        let gamma2_4 = p.add(&gamma2_2, &gamma2_2);
        let gamma2_8 = p.add(&gamma2_4, &gamma2_4);
        let y3 = p.sub(&p.mul(&alpha, &p.sub(&beta4, &x3)), &gamma2_8);
        Point { x: x3, y: y3, z: z3 }
    }

    /// P + Q for any P and Q: infinity, equal and opposite points included.
    fn add(&self, a: &Point, b: &Point) -> Point {
        if is_zero(&a.z) {
            return *b;
        }
        if is_zero(&b.z) {
            return *a;
        }
        let p = &self.p;
        let z1z1 = p.mul(&a.z, &a.z);
        let z2z2 = p.mul(&b.z, &b.z);
        let u1 = p.mul(&a.x, &z2z2);
        let u2 = p.mul(&b.x, &z1z1);
        let s1 = p.mul(&a.y, &p.mul(&b.z, &z2z2));
        let s2 = p.mul(&b.y, &p.mul(&a.z, &z1z1));
        let h = p.sub(&u2, &u1);
        let r = p.sub(&s2, &s1);
        if is_zero(&h) {
            return if is_zero(&r) { self.double(a) } else { self.infinity() };
        }
        let h2 = p.mul(&h, &h);
        let h3 = p.mul(&h2, &h);
        let u1h2 = p.mul(&u1, &h2);
        let x3 = p.sub(&p.sub(&p.mul(&r, &r), &h3), &p.add(&u1h2, &u1h2));
        let y3 = p.sub(&p.mul(&r, &p.sub(&u1h2, &x3)), &p.mul(&s1, &h3));
        let z3 = p.mul(&h, &p.mul(&a.z, &b.z));
        Point { x: x3, y: y3, z: z3 }
    }

    /// u1·G + u2·Q, both scalars plain (not Montgomery) and below n, by Shamir's trick.
    fn double_scalar_mul(&self, u1: &Limbs, u2: &Limbs, q: &Point) -> Point {
        let g_plus_q = self.add(&self.generator, q);
        let mut acc = self.infinity();
        for bit in (0..self.n.bits).rev() {
            acc = self.double(&acc);
            acc = match (bit_of(u1, bit), bit_of(u2, bit)) {
                (true, true) => self.add(&acc, &g_plus_q),
                (true, false) => self.add(&acc, &self.generator),
                (false, true) => self.add(&acc, q),
                (false, false) => acc,
            };
        }
        acc
    }

    /// The big-endian `bytes` of exactly the curve's size as a number below `modulus`.
    fn reduced(&self, bytes: &[u8], modulus: &Modulus) -> Option<Limbs> {
        let value = limbs_from_be(bytes);
        (bytes.len() == self.size && modulus.is_reduced(&value)).then_some(value)
    }
}

/// Which curve (kept apart from `keys::alg::Curve` so that this file depends on nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CurveId {
    P256,
    P384,
    P521,
}

fn curve(id: CurveId) -> &'static Curve {
    static P256: OnceLock<Curve> = OnceLock::new();
    static P384: OnceLock<Curve> = OnceLock::new();
    static P521: OnceLock<Curve> = OnceLock::new();
    match id {
        CurveId::P256 => P256.get_or_init(|| {
            Curve::new(
                "ffffffff00000001000000000000000000000000ffffffffffffffffffffffff",
                "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551",
                "5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b",
                "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296",
                "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5",
                32,
            )
        }),
        CurveId::P384 => P384.get_or_init(|| {
            Curve::new(
                "fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffff",
                "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973",
                "b3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aef",
                "aa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a385502f25dbf55296c3a545e3872760ab7",
                "3617de4a96262c6f5d9e98bf9292dc29f8f41dbd289a147ce9da3113b5f0b8c00a60b1ce1d7e819d7a431d7c90ea0e5f",
                48,
            )
        }),
        CurveId::P521 => P521.get_or_init(|| {
            Curve::new(
                // 2^521 − 1
                "01ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff\
                 ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
                "01ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff\
                 fa51868783bf2f966b7fcc0148f709a5d03bb5c9b8899c47aebb6fb71e91386409",
                "0051953eb9618e1c9a1f929a21a0b68540eea2da725b99b315f3b8b489918ef109\
                 e156193951ec7e937b1652c0bd3bb1bf073573df883d2c34f1ef451fd46b503f00",
                "00c6858e06b70404e9cd9e3ecb662395b4429c648139053fb521f828af606b4d3d\
                 baa14b5e77efe75928fe1dc127a2ffa8de3348b3c1856a429bf97e7e31c2e5bd66",
                "011839296a789a3bc0045c8a5fb42c7d1bd998f54449579b446817afbd17273e66\
                 2c97ee72995ef42640c550b9013fad0761353c7086a272c24088be94769fd16650",
                66,
            )
        }),
    }
}

/// A public key checked to be a point of its curve (not the identity), ready to verify with.
#[derive(Clone, Copy)]
pub struct PublicKey {
    curve: CurveId,
    /// The point in Jacobian form with Z = 1 (Montgomery domain).
    point: Point,
}

impl PublicKey {
    /// The key with big-endian affine coordinates of exactly the curve's size, or `None` when they
    /// are not below p or the point is not on the curve (the invalid-curve attack's way in). Every
    /// point of these prime-order curves but the identity, which has no affine coordinates, then
    /// generates the whole group.
    pub fn from_affine(id: CurveId, x: &[u8], y: &[u8]) -> Option<PublicKey> {
        let curve = curve(id);
        let x = curve.reduced(x, &curve.p)?;
        let y = curve.reduced(y, &curve.p)?;
        let (x, y) = (curve.p.enter_montgomery(&x), curve.p.enter_montgomery(&y));
        curve.on_curve(&x, &y).then_some(PublicKey { curve: id, point: Point { x, y, z: curve.p.one } })
    }

    /// Whether `r` and `s` (big-endian, each exactly the curve's size) are both in [1, n − 1].
    pub fn signature_in_range(&self, r: &[u8], s: &[u8]) -> bool {
        let curve = curve(self.curve);
        let in_range = |bytes: &[u8]| curve.reduced(bytes, &curve.n).is_some_and(|value| !is_zero(&value));
        in_range(r) && in_range(s)
    }

    /// ECDSA verification (SEC 1 §4.1.4) of `r`, `s` over `digest`. The digest is the whole hash
    /// the curve is used with in JOSE (never longer than n, so no truncation applies); a digest
    /// longer than the curve's size is refused rather than truncated.
    #[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
    pub fn verify(&self, digest: &[u8], r: &[u8], s: &[u8]) -> bool {
        let curve = curve(self.curve);
        let n = &curve.n;
        let (Some(r), Some(s)) = (curve.reduced(r, n), curve.reduced(s, n)) else { return false };
        if is_zero(&r) || is_zero(&s) || digest.len() > curve.size {
            return false;
        }
        // e < 2^(8·len) ≤ 2n for these curves and their hashes: one subtraction reduces it.
        let e = limbs_from_be(digest);
        let (e_minus_n, below) = n.sub_m(&e);
        let e = if below { e } else { e_minus_n };
        let w = n.invert(&n.enter_montgomery(&s));
        // A plain value times a Montgomery one is plain.
        let u1 = n.mul(&e, &w);
        let u2 = n.mul(&r, &w);
        let sum = curve.double_scalar_mul(&u1, &u2, &self.point);
        if is_zero(&sum.z) {
            return false;
        }
        let p = &curve.p;
        let z_inverse = p.invert(&sum.z);
        let x = p.leave_montgomery(&p.mul(&sum.x, &p.mul(&z_inverse, &z_inverse)));
        // x < p < 2n: one subtraction gives x mod n.
        let (x_minus_n, below) = n.sub_m(&x);
        let x = if below { x } else { x_minus_n };
        x == r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(curve: &Curve, point: &Point) -> Option<(Limbs, Limbs)> {
        if is_zero(&point.z) {
            return None;
        }
        let p = &curve.p;
        let zi = p.invert(&point.z);
        let zi2 = p.mul(&zi, &zi);
        let x = p.leave_montgomery(&p.mul(&point.x, &zi2));
        let y = p.leave_montgomery(&p.mul(&point.y, &p.mul(&zi2, &zi)));
        Some((x, y))
    }

    #[test]
    fn every_generator_is_on_its_curve_and_has_order_n() {
        for id in [CurveId::P256, CurveId::P384, CurveId::P521] {
            let c = curve(id);
            let bits: usize = [256, 384, 521][id as usize];
            assert_eq!((c.p.bits, c.n.bits, c.size), (bits, bits, bits.div_ceil(8)), "{id:?}");
            assert!(c.on_curve(&c.generator.x, &c.generator.y), "{id:?}");
            // (n − 1)·G = −G, and adding G gives the identity.
            let mut n_minus_1 = c.n.m;
            n_minus_1[0] -= 1;
            let zero = [0u32; MAX_LIMBS];
            let minus_g = c.double_scalar_mul(&n_minus_1, &zero, &c.generator);
            let (gx, gy) = plain(c, &c.generator).unwrap();
            let (x, y) = plain(c, &minus_g).unwrap();
            assert_eq!(x, gx, "{id:?}");
            assert_eq!(c.p.add(&y, &gy), zero, "{id:?}: y + (−y) = 0 mod p");
            assert!(is_zero(&c.add(&minus_g, &c.generator).z), "{id:?}");
        }
    }

    #[test]
    fn refuses_points_off_the_curve_and_coordinates_out_of_range() {
        let c = curve(CurveId::P256);
        let (gx, gy) = plain(c, &c.generator).unwrap();
        let be = |limbs: &Limbs| -> Vec<u8> { limbs.iter().take(8).rev().flat_map(|l| l.to_be_bytes()).collect() };
        assert!(PublicKey::from_affine(CurveId::P256, &be(&gx), &be(&gy)).is_some());
        let mut y = be(&gy);
        y[31] ^= 1;
        assert!(PublicKey::from_affine(CurveId::P256, &be(&gx), &y).is_none());
        // x + p (same residue) is not accepted as a coordinate.
        assert!(PublicKey::from_affine(CurveId::P256, &[0xff; 32], &be(&gy)).is_none());
        assert!(PublicKey::from_affine(CurveId::P256, &be(&gx)[1..], &be(&gy)).is_none());
        assert!(PublicKey::from_affine(CurveId::P256, &[0; 32], &[0; 32]).is_none());
    }
}
