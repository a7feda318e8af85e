//! Modular arithmetic for the in-VM signature checks: numbers below an odd modulus as 32-bit
//! limbs, Montgomery multiplication in loops (one copy for every modulus), for ECDSA's three
//! curves (`ecdsa.rs`) and Ed25519 (`ed25519.rs`).
//!
//! Loops, not code unrolled per modulus: Envoy's V8 compiles every function of the module with
//! TurboFan at every start, and its time and memory follow the code's size (docs/performance.md,
//! "Footprint"). Only public values (keys, messages, signatures) pass through here, so none of it
//! needs to be constant-time.

/// 32-bit limbs for the largest modulus (P-521: 521 bits in 17 limbs).
pub(super) const MAX_LIMBS: usize = 17;

/// A number below a modulus, little-endian limbs; limbs above the modulus' length are zero.
pub(super) type Limbs = [u32; MAX_LIMBS];

/// An odd modulus and its Montgomery constants (R = 2^(32·len)).
pub(super) struct Modulus {
    pub(super) m: Limbs,
    pub(super) len: usize,
    pub(super) bits: usize,
    /// −m⁻¹ mod 2³².
    pub(super) m_inv: u32,
    /// R² mod m: multiplying by it enters the Montgomery domain.
    pub(super) r2: Limbs,
    /// R mod m: 1 in the Montgomery domain.
    pub(super) one: Limbs,
}

impl Modulus {
    pub(super) fn new(hex: &str) -> Modulus {
        let m = limbs_from_be(&bytes_from_hex(hex));
        let len = m.iter().rposition(|&limb| limb != 0).map_or(1, |top| top + 1);
        let bits = 32 * len - m.get(len - 1).map_or(32, |top| top.leading_zeros() as usize);
        // Newton's iteration doubles the correct low bits of m⁻¹ mod 2³² each round (m is odd).
        let m0 = m.first().copied().unwrap_or(1);
        let mut inverse = 1u32;
        for _ in 0..5 {
            inverse = inverse.wrapping_mul(2u32.wrapping_sub(m0.wrapping_mul(inverse)));
        }
        let mut modulus =
            Modulus { m, len, bits, m_inv: inverse.wrapping_neg(), r2: [0; MAX_LIMBS], one: [0; MAX_LIMBS] };
        // R mod m and R² mod m by doubling 1 modulo m (once per curve, at first use).
        let mut x: Limbs = [0; MAX_LIMBS];
        x[0] = 1;
        for doubling in 0..64 * len {
            if doubling == 32 * len {
                modulus.one = x;
            }
            x = modulus.add(&x, &x);
        }
        modulus.r2 = x;
        modulus
    }

    /// `a + b mod m` for `a, b < m`.
    #[inline(never)] // one copy: see mul
    pub(super) fn add(&self, a: &Limbs, b: &Limbs) -> Limbs {
        let mut sum = [0u32; MAX_LIMBS];
        let mut carry = 0u64;
        for ((out, &x), &y) in sum.iter_mut().zip(a).zip(b).take(self.len) {
            let s = u64::from(x) + u64::from(y) + carry;
            *out = s as u32;
            carry = s >> 32;
        }
        let (reduced, borrow) = self.sub_m(&sum);
        if carry != 0 || !borrow {
            reduced
        } else {
            sum
        }
    }

    /// `a − b mod m` for `a, b < m`.
    #[inline(never)] // one copy: see mul
    pub(super) fn sub(&self, a: &Limbs, b: &Limbs) -> Limbs {
        let (difference, borrow) = sub_limbs(a, b, self.len);
        if !borrow {
            return difference;
        }
        let mut out = [0u32; MAX_LIMBS];
        let mut carry = 0u64;
        for ((o, &x), &y) in out.iter_mut().zip(&difference).zip(&self.m).take(self.len) {
            let s = u64::from(x) + u64::from(y) + carry;
            *o = s as u32;
            carry = s >> 32;
        }
        out
    }

    /// `a − m` and whether it borrowed (that is, whether `a < m`).
    pub(super) fn sub_m(&self, a: &Limbs) -> (Limbs, bool) {
        sub_limbs(a, &self.m, self.len)
    }

    pub(super) fn is_reduced(&self, a: &Limbs) -> bool {
        self.sub_m(a).1
    }

    /// Montgomery multiplication `a·b·R⁻¹ mod m` for `a, b < m` (coarsely integrated operand
    /// scanning: a row of the product, then a row of the reduction).
    #[inline(never)] // one copy, not one per use: the point formulas would each be kilobytes
    pub(super) fn mul(&self, a: &Limbs, b: &Limbs) -> Limbs {
        let len = self.len;
        // t[..len] and the two words above it; below 2m after every row.
        let mut t = [0u32; MAX_LIMBS + 2];
        let m0 = u64::from(self.m[0]);
        for &b_i in b.iter().take(len) {
            let b_i = u64::from(b_i);
            let mut carry = 0u64;
            for (t_j, &a_j) in t.iter_mut().zip(a).take(len) {
                let s = u64::from(*t_j) + u64::from(a_j) * b_i + carry;
                *t_j = s as u32;
                carry = s >> 32;
            }
            let mut high = t.iter_mut().skip(len);
            if let (Some(t_len), Some(t_top)) = (high.next(), high.next()) {
                let s = u64::from(*t_len) + carry;
                *t_len = s as u32;
                *t_top = (s >> 32) as u32;
            }
            // Add q·m with q chosen to clear the lowest word, and shift down one word.
            let mut words = t.iter_mut();
            let Some(first) = words.next() else { break };
            let q = u64::from(first.wrapping_mul(self.m_inv));
            let mut carry = (u64::from(*first) + q * m0) >> 32;
            let mut previous = first;
            for (t_j, &m_j) in words.by_ref().zip(self.m.iter().skip(1)).take(len - 1) {
                let s = u64::from(*t_j) + q * u64::from(m_j) + carry;
                *previous = s as u32;
                carry = s >> 32;
                previous = t_j;
            }
            if let (Some(t_len), Some(t_top)) = (words.next(), words.next()) {
                let s = u64::from(*t_len) + carry;
                *previous = s as u32;
                *t_len = t_top.wrapping_add((s >> 32) as u32);
                *t_top = 0;
            }
        }
        let mut result = [0u32; MAX_LIMBS];
        result.iter_mut().zip(&t).take(len).for_each(|(r, &x)| *r = x);
        let overflow = t.get(len).is_some_and(|&x| x != 0);
        let (reduced, borrow) = self.sub_m(&result);
        if overflow || !borrow {
            reduced
        } else {
            result
        }
    }

    pub(super) fn enter_montgomery(&self, a: &Limbs) -> Limbs {
        self.mul(a, &self.r2)
    }

    pub(super) fn leave_montgomery(&self, a: &Limbs) -> Limbs {
        let mut one = [0u32; MAX_LIMBS];
        one[0] = 1;
        self.mul(a, &one)
    }

    /// `a⁻¹` in the Montgomery domain for `a ≠ 0` (Fermat: `a^(m−2)`; every modulus here is
    /// prime). Zero maps to zero.
    pub(super) fn invert(&self, a: &Limbs) -> Limbs {
        let mut exponent = self.m;
        exponent[0] = exponent[0].wrapping_sub(2); // m is odd and its low limb above 2
        self.pow(a, &exponent)
    }

    /// `a^exponent` in the Montgomery domain, for a plain `exponent` below 2^bits.
    pub(super) fn pow(&self, a: &Limbs, exponent: &Limbs) -> Limbs {
        let mut acc = self.one;
        for bit in (0..self.bits).rev() {
            acc = self.mul(&acc, &acc);
            if bit_of(exponent, bit) {
                acc = self.mul(&acc, a);
            }
        }
        acc
    }
}

/// `a − b` over `len` limbs and whether it borrowed.
pub(super) fn sub_limbs(a: &Limbs, b: &Limbs, len: usize) -> (Limbs, bool) {
    let mut out = [0u32; MAX_LIMBS];
    let mut borrow = 0u64;
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b).take(len) {
        let d = u64::from(x).wrapping_sub(u64::from(y)).wrapping_sub(borrow);
        *o = d as u32;
        borrow = (d >> 63) & 1;
    }
    (out, borrow != 0)
}

pub(super) fn bit_of(a: &Limbs, bit: usize) -> bool {
    a.get(bit / 32).is_some_and(|limb| (limb >> (bit % 32)) & 1 == 1)
}

pub(super) fn is_zero(a: &Limbs) -> bool {
    a.iter().all(|&limb| limb == 0)
}

/// Big-endian bytes (at most 68) as limbs; longer input keeps its low 68 bytes' worth only, which
/// callers exclude by checking lengths first.
pub(super) fn limbs_from_be(bytes: &[u8]) -> Limbs {
    let mut limbs = [0u32; MAX_LIMBS];
    for (limb, chunk) in limbs.iter_mut().zip(bytes.rchunks(4)) {
        *limb = chunk.iter().fold(0u32, |acc, &byte| (acc << 8) | u32::from(byte));
    }
    limbs
}

/// Little-endian bytes (at most 68) as limbs, as Ed25519 encodes its numbers.
pub(super) fn limbs_from_le(bytes: &[u8]) -> Limbs {
    let mut limbs = [0u32; MAX_LIMBS];
    for (limb, chunk) in limbs.iter_mut().zip(bytes.chunks(4)) {
        *limb = chunk.iter().rev().fold(0u32, |acc, &byte| (acc << 8) | u32::from(byte));
    }
    limbs
}

/// Constants are written in hex as the standard gives them (SP 800-186, SEC 2).
pub(super) fn bytes_from_hex(hex: &str) -> Vec<u8> {
    let digits: Vec<u8> = hex.bytes().filter_map(|c| (c as char).to_digit(16).map(|d| d as u8)).collect();
    let odd = digits.len() % 2;
    let mut bytes = Vec::with_capacity(digits.len() / 2 + 1);
    if odd == 1 {
        bytes.extend(digits.first().copied());
    }
    bytes.extend(
        digits.get(odd..).unwrap_or_default().chunks(2).map(|pair| pair.iter().fold(0u8, |acc, &d| (acc << 4) | d)),
    );
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2^521 − 1
    const P521: &str = "01ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

    #[test]
    fn montgomery_arithmetic_agrees_with_plain_arithmetic() {
        // P-521's field: the largest modulus, all 17 limbs.
        let p = &Modulus::new(P521);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            let mut x = [0u32; MAX_LIMBS];
            for limb in x.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *limb = state as u32;
            }
            x[16] &= 0x1ff;
            if !p.is_reduced(&x) {
                x[0] = 0;
            }
            x
        };
        for _ in 0..200 {
            let (a, b) = (next(), next());
            let (am, bm) = (p.enter_montgomery(&a), p.enter_montgomery(&b));
            assert_eq!(p.leave_montgomery(&am), a);
            // (a·b)·a⁻¹ = b
            let product = p.mul(&am, &bm);
            let back = p.mul(&product, &p.invert(&am));
            assert_eq!(p.leave_montgomery(&back), b);
            assert_eq!(p.sub(&p.add(&a, &b), &b), a);
        }
    }
}
