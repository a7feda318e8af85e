//! RSA signature verification (RS256/384/512: RSASSA-PKCS1-v1_5; PS256/384/512: RSASSA-PSS) with
//! keys prepared once for Montgomery arithmetic on 32-bit limbs.
//!
//! Why not the `rsa` crate: its generic big-integer code recomputes the Montgomery constants and
//! allocates on every verification, and inside the Wasm VM (no 64×64→128 multiply) that costs
//! about 1 ms per token against 155 µs here (measured in V8; docs/performance.md). A public key is
//! parsed once, at JWKS load, into `n` as 32-bit limbs, `n' = -n⁻¹ mod 2³²` and `R² mod n`; a
//! verification is then 2 + (bits of e) Montgomery multiplications on fixed-size buffers, with no
//! allocation but the result block.
//! Everything here is public data (keys, signatures, messages), so no constant-time care is needed.

use crate::keys::alg::HashAlg;
use std::fmt;

/// Smallest modulus accepted (NIST SP 800-131A; Keycloak's default is 2048).
pub const MIN_MODULUS_BITS: usize = 2048;
/// Largest modulus accepted: verification cost grows with the square of the size.
pub const MAX_MODULUS_BITS: usize = 4096;
/// Largest public exponent accepted; the same cap as the `rsa` crate's (2³³ − 1).
const MAX_EXPONENT: u64 = (1 << 33) - 1;

/// DER of the DigestInfo prefix for each hash (RFC 8017 §9.2 note 1): the 19 bytes that precede
/// the hash at the end of an EMSA-PKCS1-v1_5 block. They differ only in the lengths, the OID's last
/// arc and the hash length.
const SHA256_DIGEST_INFO: [u8; 19] =
    [0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20];
const SHA384_DIGEST_INFO: [u8; 19] =
    [0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30];
const SHA512_DIGEST_INFO: [u8; 19] =
    [0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40];

fn digest_info(hash: HashAlg) -> &'static [u8; 19] {
    match hash {
        HashAlg::Sha256 => &SHA256_DIGEST_INFO,
        HashAlg::Sha384 => &SHA384_DIGEST_INFO,
        HashAlg::Sha512 => &SHA512_DIGEST_INFO,
    }
}

/// Why a JWK's modulus and exponent do not make a usable RS256 key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// Fewer bits than `MIN_MODULUS_BITS`.
    ModulusTooSmall(usize),
    /// More bits than `MAX_MODULUS_BITS`.
    ModulusTooLarge(usize),
    /// An even modulus is not an RSA modulus (and has no Montgomery form).
    EvenModulus,
    /// `e` must be odd, at least 3 and at most 2³³ − 1.
    BadExponent,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::ModulusTooSmall(bits) => write!(f, "{bits}-bit modulus is below {MIN_MODULUS_BITS} bits"),
            KeyError::ModulusTooLarge(bits) => write!(f, "{bits}-bit modulus is above {MAX_MODULUS_BITS} bits"),
            KeyError::EvenModulus => f.write_str("invalid RSA key: even modulus"),
            KeyError::BadExponent => f.write_str("invalid RSA key: exponent must be odd, >= 3 and < 2^33"),
        }
    }
}

/// An RSA public key in the form verification needs.
#[derive(Clone, PartialEq, Eq)]
pub struct RsaVerifyKey {
    /// The modulus, least significant limb first; exactly `limbs` long.
    n: Vec<u32>,
    /// `-n⁻¹ mod 2³²`.
    n_prime: u32,
    /// `R² mod n` with `R = 2^(32·limbs)`: multiplying by it enters the Montgomery domain.
    r_squared: Vec<u32>,
    e: u64,
    /// Length of the modulus in bytes, which is also the signature's length.
    size_bytes: usize,
}

impl fmt::Debug for RsaVerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RsaVerifyKey({} bits, e={})", self.bits(), self.e)
    }
}

impl RsaVerifyKey {
    /// Prepares a key from the big-endian bytes of `n` and `e` (as in a JWK; leading zeros allowed).
    pub fn from_be_bytes(n: &[u8], e: &[u8]) -> Result<RsaVerifyKey, KeyError> {
        let n = strip_leading_zeros(n);
        let bits = bit_length(n);
        if bits < MIN_MODULUS_BITS {
            return Err(KeyError::ModulusTooSmall(bits));
        }
        if bits > MAX_MODULUS_BITS {
            return Err(KeyError::ModulusTooLarge(bits));
        }
        if n.last().is_some_and(|low| low & 1 == 0) {
            return Err(KeyError::EvenModulus);
        }
        let e = strip_leading_zeros(e);
        if e.len() > 8 {
            return Err(KeyError::BadExponent);
        }
        let e = e.iter().fold(0u64, |acc, &byte| (acc << 8) | u64::from(byte));
        if !(3..=MAX_EXPONENT).contains(&e) || e & 1 == 0 {
            return Err(KeyError::BadExponent);
        }
        let limbs = n.len().div_ceil(4);
        let n = limbs_from_be_bytes(n, limbs);
        let n_prime = n.first().map(|&low| inverse_mod_2_32(low).wrapping_neg()).unwrap_or_default();
        let mut key = RsaVerifyKey { n, n_prime, r_squared: Vec::new(), e, size_bytes: bits.div_ceil(8) };
        key.r_squared = key.r_squared_mod(bits);
        Ok(key)
    }

    /// Modulus length in bits.
    pub fn bits(&self) -> usize {
        let top = self.n.last().copied().unwrap_or_default();
        self.n.len().saturating_sub(1) * 32 + (32 - top.leading_zeros() as usize)
    }

    /// Modulus length in bytes: every signature for this key has exactly this length.
    pub fn size(&self) -> usize {
        self.size_bytes
    }

    /// The modulus as big-endian bytes without leading zeros (as in a JWK's `n`), so a prepared
    /// key can be written back out, e.g. into the key set shared between worker VMs.
    pub fn modulus_be_bytes(&self) -> Vec<u8> {
        let bytes: Vec<u8> = self.n.iter().rev().flat_map(|limb| limb.to_be_bytes()).collect();
        let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        bytes.get(first..).unwrap_or_default().to_vec()
    }

    /// The public exponent as big-endian bytes without leading zeros (a JWK's `e`).
    pub fn exponent_be_bytes(&self) -> Vec<u8> {
        let bytes = self.e.to_be_bytes();
        let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        bytes.get(first..).unwrap_or_default().to_vec()
    }

    /// The public exponent.
    pub fn exponent(&self) -> u64 {
        self.e
    }

    /// RSASSA-PKCS1-v1_5-VERIFY (RFC 8017 §8.2.2) with SHA-256 over `message`.
    pub fn verify_rs256(&self, message: &[u8], signature: &[u8]) -> bool {
        self.verify_pkcs1(HashAlg::Sha256, &HashAlg::Sha256.digest(&[message]), signature)
    }

    /// RSASSA-PKCS1-v1_5-VERIFY for a `hash` digest the caller computed.
    pub fn verify_pkcs1(&self, hash: HashAlg, digest: &[u8], signature: &[u8]) -> bool {
        if digest.len() != hash.output_len() {
            return false;
        }
        match self.public_operation(signature) {
            Some(encoded) => self.is_expected_encoding(&encoded, digest_info(hash), digest),
            None => false,
        }
    }

    /// RSASSA-PSS-VERIFY (RFC 8017 §8.1.2, EMSA-PSS-VERIFY §9.1.2) for a `hash` digest, with MGF1
    /// over the same hash and a salt exactly as long as the hash: JOSE fixes both (RFC 7518 §3.5),
    /// so a signature made with any other salt length is refused, as jwt_verify_lib refuses it.
    pub fn verify_pss(&self, hash: HashAlg, digest: &[u8], signature: &[u8]) -> bool {
        let h_len = hash.output_len();
        if digest.len() != h_len {
            return false;
        }
        let Some(block) = self.public_operation(signature) else { return false };
        // emBits = modBits − 1; when modBits ≡ 1 (mod 8) the encoded message is one byte shorter
        // than the block, and that leading byte must be zero.
        let em_bits = self.bits() - 1;
        let em_len = em_bits.div_ceil(8);
        let Some((leading, em)) = block.split_at_checked(block.len() - em_len) else { return false };
        if leading.iter().any(|&b| b != 0) {
            return false;
        }
        let salt_len = h_len;
        // Step 3 and 4: room for hash, salt and the two marker bytes; the trailer byte is 0xbc.
        let Some(db_len) = em_len.checked_sub(h_len + 1) else { return false };
        if em_len < h_len + salt_len + 2 || em.last() != Some(&0xbc) {
            return false;
        }
        let (Some(masked_db), Some(h)) = (em.get(..db_len), em.get(db_len..em_len - 1)) else { return false };
        // Step 6: the bits above emBits must be zero.
        let unused_bits = 8 * em_len - em_bits;
        let top_mask = 0xFFu8.checked_shr(unused_bits as u32).unwrap_or(0);
        if masked_db.first().is_some_and(|&first| first & !top_mask != 0) {
            return false;
        }
        let mut db = mgf1(hash, h, db_len);
        db.iter_mut().zip(masked_db).for_each(|(d, m)| *d ^= m);
        if let Some(first) = db.first_mut() {
            *first &= top_mask;
        }
        // Step 10: DB = PS (zeros) || 0x01 || salt.
        let padding_len = db_len - salt_len - 1;
        let (Some(padding), Some(&marker), Some(salt)) =
            (db.get(..padding_len), db.get(padding_len), db.get(padding_len + 1..))
        else {
            return false;
        };
        if padding.iter().any(|&b| b != 0) || marker != 0x01 {
            return false;
        }
        // Steps 12–14: H' = Hash(00×8 || mHash || salt) must equal H.
        hash.digest(&[&[0u8; 8], digest, salt]) == h
    }

    /// RSAVP1 and I2OSP: `signature^e mod n` as a big-endian block of `size()` bytes, or `None`
    /// when the signature has the wrong length or is not below `n` (RFC 8017 §8.2.2 step 1 and
    /// §5.2.2 step 1: such values are refused, never reduced).
    fn public_operation(&self, signature: &[u8]) -> Option<Vec<u8>> {
        if signature.len() != self.size_bytes {
            return None;
        }
        let s = limbs_from_be_bytes(signature, self.n.len());
        if compare(&s, &self.n) != std::cmp::Ordering::Less {
            return None;
        }
        let m = self.pow_e(&s);
        Some(limbs_to_be_bytes(&m, self.size_bytes))
    }

    /// Compares the whole recovered block with the one true encoding
    /// `00 01 FF…FF 00 || DigestInfo(hash) || H` (EMSA-PKCS1-v1_5, RFC 8017 §9.2).
    ///
    /// Building the expected block and comparing every byte, rather than parsing the recovered
    /// one, is what defeats Bleichenbacher's 2006 forgery: lenient parsers that skip the padding
    /// and stop after the hash accept blocks with attacker-chosen garbage after (or inside) it,
    /// and with a small exponent such blocks have easily computed cube roots.
    fn is_expected_encoding(&self, encoded: &[u8], prefix: &[u8], digest: &[u8]) -> bool {
        let suffix_len = prefix.len() + digest.len();
        // At least 8 bytes of 0xFF padding (RFC 8017 §9.2 step 3); always true for ≥ 2048 bits.
        let Some(padding_len) = self.size_bytes.checked_sub(3 + suffix_len).filter(|len| *len >= 8) else {
            return false;
        };
        if encoded.len() != self.size_bytes {
            return false;
        }
        let expected = [0x00u8, 0x01]
            .iter()
            .chain(std::iter::repeat_n(&0xFFu8, padding_len))
            .chain(std::iter::once(&0x00u8))
            .chain(prefix.iter())
            .chain(digest.iter());
        // Every byte is compared (no early exit): the lengths match, so this covers the block.
        let mut difference = 0u8;
        let mut compared = 0usize;
        for (got, want) in encoded.iter().zip(expected) {
            difference |= got ^ want;
            compared += 1;
        }
        difference == 0 && compared == self.size_bytes
    }

    /// R² mod n (R = 2^(32·limbs)), which `pow_e` multiplies by to enter the Montgomery domain.
    /// Computed in that domain from 2·R mod n: a squaring doubles the power of two it stands for
    /// and a modular doubling adds one, so the exponent 32·limbs takes one squaring per bit (11 for
    /// 2048-bit keys). Doubling all the way, as before, was 4,096 passes over the modulus for a
    /// 2048-bit key: every RSA key of every key set, in every VM, at every start.
    fn r_squared_mod(&self, bits: usize) -> Vec<u32> {
        let limbs = self.n.len();
        let mut scratch = vec![0u32; 2 * limbs + 1];
        // 2^(bits−1) < n: n is odd and its top bit is bit bits−1. Doubled up to 2^(32·limbs + 1).
        let mut x = vec![0u32; limbs];
        if let Some(limb) = x.get_mut((bits - 1) / 32) {
            *limb = 1 << ((bits - 1) % 32);
        }
        for _ in bits - 1..32 * limbs + 1 {
            self.double_in_place(&mut x);
        }
        // x = 2·R, the Montgomery form of 2^1; walk the exponent's bits below its top one.
        let exponent = 32 * limbs;
        let top = usize::BITS - 1 - exponent.leading_zeros();
        for bit in (0..top).rev() {
            x = self.mont_square(&x, &mut scratch);
            if (exponent >> bit) & 1 == 1 {
                self.double_in_place(&mut x);
            }
        }
        x
    }

    /// x = 2x mod n, for x < n before and after.
    fn double_in_place(&self, x: &mut [u32]) {
        let mut carry = 0u32;
        for limb in x.iter_mut() {
            let next_carry = *limb >> 31;
            *limb = (*limb << 1) | carry;
            carry = next_carry;
        }
        if carry != 0 || compare(x, &self.n) != std::cmp::Ordering::Less {
            subtract_in_place(x, &self.n);
        }
    }

    /// `base^e mod n` for `base < n`, by left-to-right binary exponentiation in the Montgomery
    /// domain. For e = 65537 that is one multiplication by R² (entering the domain), 16 squarings
    /// and one multiplication by the plain `base`, which also leaves the domain: 18 in all. The
    /// sequence of operations depends only on the public exponent.
    fn pow_e(&self, base: &[u32]) -> Vec<u32> {
        let limbs = self.n.len();
        let mut scratch = vec![0u32; 2 * limbs + 1];
        let base_mont = self.mont_mul(base, &self.r_squared, &mut scratch);
        let mut acc = base_mont.clone();
        let top_bit = 63 - self.e.leading_zeros();
        // Bits below the top one and above bit 0 (e is odd: bit 0 is handled last).
        for bit in (1..top_bit).rev() {
            acc = self.mont_square(&acc, &mut scratch);
            if (self.e >> bit) & 1 == 1 {
                acc = self.mont_mul(&acc, &base_mont, &mut scratch);
            }
        }
        acc = self.mont_square(&acc, &mut scratch);
        // acc = base^(e-1)·R; times the plain base and R⁻¹ gives base^e, out of the domain.
        self.mont_mul(&acc, base, &mut scratch)
    }

    /// Montgomery squaring `a²·R⁻¹ mod n` for `a < n`: the full square first, where each cross
    /// product `aᵢ·aⱼ` is computed once and doubled (half the multiplications of `mont_mul`'s
    /// product), then the Montgomery reduction. `scratch` holds `2·limbs + 1` limbs.
    fn mont_square(&self, a: &[u32], scratch: &mut [u32]) -> Vec<u32> {
        let n = self.n.as_slice();
        let limbs = n.len();
        let (Some(a), Some(t)) = (a.get(..limbs), scratch.get_mut(..2 * limbs + 1)) else {
            return vec![0; limbs];
        };
        t.fill(0);
        // Cross products aᵢ·aⱼ for i < j.
        for (i, &a_i) in a.iter().enumerate() {
            let a_i = u64::from(a_i);
            let mut carry = 0u64;
            let (Some(rest), Some(row)) = (a.get(i + 1..), t.get_mut(2 * i + 1..i + limbs)) else { continue };
            for (slot, &a_j) in row.iter_mut().zip(rest) {
                let sum = u64::from(*slot) + a_i * u64::from(a_j) + carry;
                *slot = sum as u32;
                carry = sum >> 32;
            }
            if let Some(slot) = t.get_mut(i + limbs) {
                *slot = carry as u32;
            }
        }
        // Double them and add the squares aᵢ² at position 2i.
        let mut shifted_out = 0u32;
        for limb in t.iter_mut() {
            let next = *limb >> 31;
            *limb = (*limb << 1) | shifted_out;
            shifted_out = next;
        }
        let mut carry = 0u64;
        for (pair, &a_i) in t.chunks_exact_mut(2).zip(a) {
            let square = u64::from(a_i) * u64::from(a_i);
            if let [low, high] = pair {
                let sum = u64::from(*low) + (square & 0xFFFF_FFFF) + carry;
                let sum_high = u64::from(*high) + (square >> 32) + (sum >> 32);
                *low = sum as u32;
                *high = sum_high as u32;
                carry = sum_high >> 32;
            }
        }
        if let Some(slot) = t.get_mut(2 * limbs) {
            *slot = slot.wrapping_add(carry as u32);
        }
        self.montgomery_reduce(t)
    }

    /// Montgomery reduction of `t < n·R` (`2·limbs + 1` limbs, destroyed): `t·R⁻¹ mod n`.
    ///
    /// Two rows at a time: row i's multiple `mᵢ` of n and row i+1's `mᵢ₊₁` are added in one pass,
    /// each limb of `t` loaded and stored once for both, with two independent carry chains. In Wasm
    /// that is markedly faster than one row per pass.
    fn montgomery_reduce(&self, t: &mut [u32]) -> Vec<u32> {
        let n = self.n.as_slice();
        let limbs = n.len();
        let n_prime = self.n_prime;
        let (Some(&n0), Some(&n1), Some(&n_top)) = (n.first(), n.get(1), n.last()) else {
            return vec![0; limbs];
        };
        let (n0, n1, n_top) = (u64::from(n0), u64::from(n1), u64::from(n_top));
        let mut top_carry = 0u64;
        let mut i = 0;
        while i + 1 < limbs {
            let Some(rows) = t.get_mut(i..i + limbs + 2) else { break };
            let (head, rest) = rows.split_at_mut(2);
            let [t_i, t_i1] = head else { break };
            let m0 = u64::from(t_i.wrapping_mul(n_prime));
            let mut c0 = (u64::from(*t_i) + m0 * n0) >> 32;
            let x = u64::from(*t_i1) + m0 * n1 + c0;
            c0 = x >> 32;
            let m1 = u64::from((x as u32).wrapping_mul(n_prime));
            let mut c1 = ((x & 0xFFFF_FFFF) + m1 * n0) >> 32;
            // rest = t[i+2 ..= i+limbs+1]: positions i+2 .. i+limbs-1 take both rows.
            let (middle, tail) = rest.split_at_mut(limbs - 2);
            for (slot, pair) in middle.iter_mut().zip(n.get(1..).unwrap_or_default().windows(2)) {
                let [n_prev, n_here] = pair else { break };
                let x = u64::from(*slot) + m0 * u64::from(*n_here) + c0;
                c0 = x >> 32;
                let y = (x & 0xFFFF_FFFF) + m1 * u64::from(*n_prev) + c1;
                c1 = y >> 32;
                *slot = y as u32;
            }
            let [at_top, above] = tail else { break };
            let x = u64::from(*at_top) + c0 + top_carry;
            c0 = x >> 32;
            let y = (x & 0xFFFF_FFFF) + m1 * n_top + c1;
            c1 = y >> 32;
            *at_top = y as u32;
            let x = u64::from(*above) + c0 + c1;
            *above = x as u32;
            top_carry = x >> 32;
            i += 2;
        }
        if i < limbs {
            // An odd limb count leaves one row.
            let m = u64::from(t.get(i).copied().unwrap_or_default().wrapping_mul(n_prime));
            let mut carry = 0u64;
            if let Some(window) = t.get_mut(i..i + limbs) {
                for (slot, &n_j) in window.iter_mut().zip(n) {
                    let sum = u64::from(*slot) + m * u64::from(n_j) + carry;
                    *slot = sum as u32;
                    carry = sum >> 32;
                }
            }
            if let Some(slot) = t.get_mut(i + limbs) {
                let sum = u64::from(*slot) + carry + top_carry;
                *slot = sum as u32;
                top_carry = sum >> 32;
            }
        }
        let overflow = top_carry != 0 || t.get(2 * limbs).copied().unwrap_or_default() != 0;
        let mut result: Vec<u32> = t.get(limbs..2 * limbs).map(<[u32]>::to_vec).unwrap_or_default();
        if overflow || compare(&result, n) != std::cmp::Ordering::Less {
            subtract_in_place(&mut result, n);
        }
        result
    }

    /// Montgomery multiplication `a·b·R⁻¹ mod n` for `a, b < n` (separated operand scanning: the
    /// full product, then the reduction). Every inner loop walks slices in step, so the compiled
    /// code has no bounds checks: that matters more in Wasm than the scanning order.
    /// `scratch` holds `2·limbs + 1` limbs.
    fn mont_mul(&self, a: &[u32], b: &[u32], scratch: &mut [u32]) -> Vec<u32> {
        let limbs = self.n.len();
        let (Some(a), Some(b), Some(t)) = (a.get(..limbs), b.get(..limbs), scratch.get_mut(..2 * limbs + 1)) else {
            return vec![0; limbs];
        };
        let (Some(&a0), Some(&a_top)) = (a.first(), a.last()) else {
            return vec![0; limbs];
        };
        let (a0, a_top) = (u64::from(a0), u64::from(a_top));
        t.fill(0);
        // Two rows of the product at a time (see `montgomery_reduce`): at position i+j, row i adds
        // aⱼ·bᵢ and row i+1 adds aⱼ₋₁·bᵢ₊₁.
        let mut rows = b.chunks_exact(2);
        for (pair_index, pair) in rows.by_ref().enumerate() {
            let [b0, b1] = pair else { break };
            let (b0, b1) = (u64::from(*b0), u64::from(*b1));
            let i = 2 * pair_index;
            let Some(window) = t.get_mut(i..i + limbs + 2) else { break };
            let (first, rest) = window.split_at_mut(1);
            let (middle, tail) = rest.split_at_mut(limbs - 1);
            let Some(t_i) = first.first_mut() else { break };
            let x = u64::from(*t_i) + a0 * b0;
            *t_i = x as u32;
            let (mut c0, mut c1) = (x >> 32, 0u64);
            for (slot, pair) in middle.iter_mut().zip(a.windows(2)) {
                let [a_prev, a_here] = pair else { break };
                let x = u64::from(*slot) + u64::from(*a_here) * b0 + c0;
                c0 = x >> 32;
                let y = (x & 0xFFFF_FFFF) + u64::from(*a_prev) * b1 + c1;
                c1 = y >> 32;
                *slot = y as u32;
            }
            let [at_top, above] = tail else { break };
            let x = u64::from(*at_top) + c0;
            let y = (x & 0xFFFF_FFFF) + a_top * b1 + c1;
            *at_top = y as u32;
            *above = ((x >> 32) + (y >> 32)) as u32;
        }
        if let [b_last] = rows.remainder() {
            // An odd limb count leaves one row.
            let b_last = u64::from(*b_last);
            let i = limbs - 1;
            let mut carry = 0u64;
            if let Some(row) = t.get_mut(i..i + limbs + 1) {
                let (row, top) = row.split_at_mut(limbs);
                for (slot, &a_j) in row.iter_mut().zip(a) {
                    let sum = u64::from(*slot) + u64::from(a_j) * b_last + carry;
                    *slot = sum as u32;
                    carry = sum >> 32;
                }
                if let Some(slot) = top.first_mut() {
                    *slot = carry as u32;
                }
            }
        }
        self.montgomery_reduce(t)
    }
}

/// MGF1 (RFC 8017 §B.2.1): `len` bytes of Hash(seed || counter) for counters 0, 1, …
fn mgf1(hash: HashAlg, seed: &[u8], len: usize) -> Vec<u8> {
    let mut mask = Vec::with_capacity(len + hash.output_len());
    let mut counter = 0u32;
    while mask.len() < len {
        mask.extend(hash.digest(&[seed, &counter.to_be_bytes()]));
        counter = counter.wrapping_add(1);
    }
    mask.truncate(len);
    mask
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes.get(first..).unwrap_or_default()
}

/// Bit length of a big-endian number without leading zero bytes.
fn bit_length(bytes: &[u8]) -> usize {
    match bytes.first() {
        Some(&top) => bytes.len() * 8 - top.leading_zeros() as usize,
        None => 0,
    }
}

/// Big-endian bytes to `limbs` little-endian 32-bit limbs; excess high bytes are dropped (callers
/// pass numbers that fit).
fn limbs_from_be_bytes(bytes: &[u8], limbs: usize) -> Vec<u32> {
    let mut out = vec![0u32; limbs];
    for (index, chunk) in bytes.rchunks(4).enumerate() {
        if let Some(slot) = out.get_mut(index) {
            *slot = chunk.iter().fold(0u32, |acc, &byte| (acc << 8) | u32::from(byte));
        }
    }
    out
}

/// Little-endian limbs to exactly `len` big-endian bytes (the number must fit).
fn limbs_to_be_bytes(limbs: &[u32], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    for (index, slot) in out.iter_mut().rev().enumerate() {
        let limb = limbs.get(index / 4).copied().unwrap_or_default();
        *slot = (limb >> (8 * (index % 4))) as u8;
    }
    out
}

/// Compares two little-endian numbers of the same limb count.
fn compare(a: &[u32], b: &[u32]) -> std::cmp::Ordering {
    a.iter().rev().cmp(b.iter().rev())
}

/// `a -= b`, modulo 2^(32·len); the final borrow is dropped (callers know `a ≥ b` or that the
/// borrow cancels a carry above the top limb).
fn subtract_in_place(a: &mut [u32], b: &[u32]) {
    let mut borrow = 0u64;
    for (a_i, &b_i) in a.iter_mut().zip(b) {
        let diff = u64::from(*a_i).wrapping_sub(u64::from(b_i)).wrapping_sub(borrow);
        *a_i = diff as u32;
        borrow = (diff >> 63) & 1;
    }
}

/// The inverse of an odd `x` modulo 2³², by Newton's iteration (each step doubles the correct
/// low bits; `x` is its own inverse modulo 8).
fn inverse_mod_2_32(x: u32) -> u32 {
    let mut inverse = x;
    for _ in 0..4 {
        inverse = inverse.wrapping_mul(2u32.wrapping_sub(x.wrapping_mul(inverse)));
    }
    inverse
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkeys;
    use rsa::traits::PublicKeyParts;
    use rsa::{BigUint, Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
    use sha2::{Digest, Sha256};

    /// A small deterministic generator (xorshift64*): reproducible test inputs without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    fn prepared(key: &RsaPublicKey) -> RsaVerifyKey {
        RsaVerifyKey::from_be_bytes(&key.n().to_bytes_be(), &key.e().to_bytes_be()).expect("valid key")
    }

    fn reference_verify(key: &RsaPublicKey, message: &[u8], signature: &[u8]) -> bool {
        key.verify(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(message), signature).is_ok()
    }

    fn sign(key: &RsaPrivateKey, message: &[u8]) -> Vec<u8> {
        key.sign(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(message)).expect("signs")
    }

    /// The raw private operation: turns any block below n into the "signature" that opens to it.
    fn raw_sign(key: &RsaPrivateKey, block: &[u8]) -> Vec<u8> {
        let m = BigUint::from_bytes_be(block);
        let s = rsa::hazmat::rsa_decrypt::<rsa::rand_core::OsRng>(None, key, &m).expect("raw RSA");
        let bytes = s.to_bytes_be();
        let mut out = vec![0u8; key.size() - bytes.len()];
        out.extend(bytes);
        out
    }

    fn expected_block(size: usize, digest: &[u8]) -> Vec<u8> {
        let mut block = vec![0x00, 0x01];
        block.extend(std::iter::repeat_n(0xFF, size - 3 - SHA256_DIGEST_INFO.len() - digest.len()));
        block.push(0x00);
        block.extend(SHA256_DIGEST_INFO);
        block.extend(digest);
        block
    }

    #[test]
    fn modular_exponentiation_matches_bigint_for_random_moduli_and_exponents() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        // Limb counts 64 to 128 with odd and even counts (the reduction works 2 rows at a time, then 1).
        let sizes = [2048usize, 2049, 2056, 2100, 2144, 3072, 3100, 4095, 4096];
        for round in 0..600 {
            let bits = sizes[round % sizes.len()];
            let mut n = rng.bytes(bits.div_ceil(8));
            let spare = n.len() * 8 - bits;
            n[0] = (n[0] & (0xFF >> spare)) | (0x80 >> spare);
            *n.last_mut().unwrap() |= 1;
            let e: u64 = match round % 4 {
                0 => 65537,
                1 => 3,
                2 => (rng.next() % MAX_EXPONENT) | 1 | 2,
                _ => ((rng.next() % 1_000_000) | 1).max(3),
            };
            let key = RsaVerifyKey::from_be_bytes(&n, &e.to_be_bytes()).expect("valid");
            let n_big = BigUint::from_bytes_be(&n);
            let r2 = BigUint::from_bytes_be(&limbs_to_be_bytes(&key.r_squared, key.n.len() * 4));
            assert_eq!(r2, (BigUint::from(1u32) << (64 * key.n.len())) % &n_big, "R² for {bits} bits");
            for _ in 0..4 {
                let s_big = BigUint::from_bytes_be(&rng.bytes(n.len())) % &n_big;
                let mut signature = vec![0u8; key.size()];
                let s_bytes = s_big.to_bytes_be();
                signature[key.size() - s_bytes.len()..].copy_from_slice(&s_bytes);
                let got = key.public_operation(&signature).expect("s < n");
                let want = s_big.modpow(&BigUint::from(e), &n_big);
                assert_eq!(BigUint::from_bytes_be(&got), want, "bits {bits} e {e}");
            }
        }
    }

    #[test]
    fn extreme_operands() {
        let key = prepared(&testkeys::key(0).to_public_key());
        let n = testkeys::key(0).n().to_bytes_be();
        let n_big = BigUint::from_bytes_be(&n);
        let e = BigUint::from(65537u32);
        let one = BigUint::from(1u32);
        for s in [BigUint::from(0u32), one.clone(), BigUint::from(2u32), &n_big - &one, &n_big - BigUint::from(2u32)] {
            let mut signature = vec![0u8; key.size()];
            let bytes = s.to_bytes_be();
            signature[key.size() - bytes.len()..].copy_from_slice(&bytes);
            let got = BigUint::from_bytes_be(&key.public_operation(&signature).expect("below n"));
            assert_eq!(got, s.modpow(&e, &n_big));
        }
        // s = n and s > n are refused, never reduced.
        assert_eq!(key.public_operation(&n), None);
        assert_eq!(key.public_operation(&vec![0xFF; n.len()]), None);
        // Any length but the modulus length is refused, even with leading zeros.
        let mut padded = vec![0u8];
        padded.extend(vec![0u8; n.len() - 1]);
        padded.push(1);
        assert_eq!(key.public_operation(&padded), None);
        assert_eq!(key.public_operation(&[]), None);
        assert_eq!(key.public_operation(&n[1..]), None);
    }

    #[test]
    fn pss_agrees_with_the_rsa_crate_for_every_hash_and_odd_modulus_sizes() {
        use sha2::{Sha384, Sha512};
        // 2049 and 2057 bits: emLen is one byte shorter than the block (modBits ≡ 1 mod 8), whose
        // leading byte must then be zero; 2056 and 2048 are the usual case.
        for bits in [2049usize, 2056, 2057] {
            let private = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits).expect("key");
            let key = prepared(&private.to_public_key());
            assert_eq!(key.bits(), bits);
            for (hash, message) in [(HashAlg::Sha256, &b"a"[..]), (HashAlg::Sha384, b"bb"), (HashAlg::Sha512, b"ccc")] {
                let digest = hash.digest(&[message]);
                let sign = |salt: usize| {
                    let mut rng = rsa::rand_core::OsRng;
                    match hash {
                        HashAlg::Sha256 => {
                            private.sign_with_rng(&mut rng, rsa::Pss::new_with_salt::<Sha256>(salt), &digest)
                        }
                        HashAlg::Sha384 => {
                            private.sign_with_rng(&mut rng, rsa::Pss::new_with_salt::<Sha384>(salt), &digest)
                        }
                        HashAlg::Sha512 => {
                            private.sign_with_rng(&mut rng, rsa::Pss::new_with_salt::<Sha512>(salt), &digest)
                        }
                    }
                    .expect("signs")
                };
                let signature = sign(hash.output_len());
                assert!(key.verify_pss(hash, &digest, &signature), "{bits} bits, {hash:?}");
                // Another salt length, another hash, another message, a flipped bit: refused.
                assert!(!key.verify_pss(hash, &digest, &sign(0)), "{bits} {hash:?} salt 0");
                assert!(!key.verify_pss(hash, &digest, &sign(hash.output_len() - 1)));
                assert!(!key.verify_pkcs1(hash, &digest, &signature));
                assert!(!key.verify_pss(hash, &hash.digest(&[b"other"]), &signature));
                let mut flipped = signature.clone();
                let middle = flipped.len() / 2;
                flipped[middle] ^= 0x10;
                assert!(!key.verify_pss(hash, &digest, &flipped));
            }
        }
    }

    #[test]
    fn agrees_with_the_rsa_crate_on_thousands_of_signatures() {
        let mut rng = Rng(42);
        for index in 0..3 {
            let private = testkeys::key(index);
            let public = private.to_public_key();
            let key = prepared(&public);
            let other = prepared(&testkeys::key(index + 1).to_public_key());
            for round in 0..120 {
                let len = (rng.next() % 2000) as usize;
                let message = rng.bytes(len);
                let signature = sign(private, &message);
                assert!(key.verify_rs256(&message, &signature));
                assert!(reference_verify(&public, &message, &signature));
                assert!(!other.verify_rs256(&message, &signature), "another key must not verify");
                // A changed message, a flipped signature bit, a truncated or extended signature.
                let mut tampered = message.clone();
                tampered.push(b'x');
                assert!(!key.verify_rs256(&tampered, &signature));
                let mut flipped = signature.clone();
                let bit = (rng.next() % (flipped.len() as u64 * 8)) as usize;
                flipped[bit / 8] ^= 1 << (bit % 8);
                assert_eq!(key.verify_rs256(&message, &flipped), reference_verify(&public, &message, &flipped));
                assert!(!key.verify_rs256(&message, &flipped));
                assert!(!key.verify_rs256(&message, &signature[1..]));
                let mut longer = vec![0u8];
                longer.extend(&signature);
                assert!(!key.verify_rs256(&message, &longer));
                if round % 20 == 0 {
                    // Random garbage of the right length: both implementations refuse it.
                    let garbage = rng.bytes(signature.len());
                    assert_eq!(key.verify_rs256(&message, &garbage), reference_verify(&public, &message, &garbage));
                }
            }
        }
    }

    #[test]
    fn a_block_that_is_not_exactly_the_expected_encoding_is_refused() {
        // Blocks a lenient parser would accept (Bleichenbacher 2006 and its variants), each turned
        // into a real "signature" with the private key: the signature math checks out, only the
        // encoding is wrong, so only the full-block comparison can refuse them.
        let private = testkeys::key(0);
        let public = private.to_public_key();
        let key = prepared(&public);
        let message = b"header.payload";
        let digest = Sha256::digest(message);
        let good = expected_block(key.size(), &digest);
        assert!(key.verify_rs256(message, &raw_sign(private, &good)), "the true encoding verifies");

        let mut forgeries: Vec<(&str, Vec<u8>)> = Vec::new();
        // Short padding with garbage after the hash (the 2006 forgery's shape).
        let mut garbage_after = vec![0x00, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00];
        garbage_after.extend(SHA256_DIGEST_INFO);
        garbage_after.extend(digest);
        garbage_after.resize(key.size(), 0xAB);
        forgeries.push(("garbage after the hash", garbage_after));
        // Garbage inside the padding.
        let mut in_padding = good.clone();
        in_padding[10] = 0x00;
        forgeries.push(("zero in the padding", in_padding));
        // Block type 02, leading byte not zero.
        let mut block_type = good.clone();
        block_type[1] = 0x02;
        forgeries.push(("block type 2", block_type));
        let mut leading = good.clone();
        leading[0] = 0x01;
        forgeries.push(("leading byte", leading));
        // DigestInfo with the NULL parameters left out (accepted by some, not by RFC 8017 §9.2 as
        // the encoding we emit and expect).
        let mut no_null = vec![0x00, 0x01];
        let info_without_null =
            [0x30, 0x2f, 0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
        no_null.extend(std::iter::repeat_n(0xFF, key.size() - 3 - info_without_null.len() - 2 - 32));
        no_null.push(0x00);
        no_null.extend(info_without_null);
        no_null.extend([0x04, 0x20]);
        no_null.extend(digest);
        forgeries.push(("DigestInfo without NULL", no_null));
        // SHA-1's DigestInfo with a SHA-256-sized hash, and the hash of another message.
        let mut wrong_oid = good.clone();
        let oid_at = key.size() - 32 - SHA256_DIGEST_INFO.len() + 14;
        wrong_oid[oid_at] = 0x02;
        forgeries.push(("another hash OID", wrong_oid));
        let mut other_hash = good.clone();
        let last = other_hash.len() - 1;
        other_hash[last] ^= 1;
        forgeries.push(("another hash", other_hash));
        // No padding at all.
        let mut bare = vec![0u8; key.size() - 51];
        bare.extend(SHA256_DIGEST_INFO);
        bare.extend(digest);
        forgeries.push(("hash without padding", bare));

        for (what, block) in forgeries {
            assert_eq!(block.len(), key.size(), "{what}");
            let signature = raw_sign(private, &block);
            assert!(!key.verify_rs256(message, &signature), "{what} must be refused");
            assert!(!reference_verify(&public, message, &signature), "{what}: the rsa crate agrees");
        }
    }

    #[test]
    fn refuses_keys_that_are_not_rs256_keys() {
        let n = testkeys::key(0).n().to_bytes_be();
        let e = [0x01, 0x00, 0x01];
        assert!(RsaVerifyKey::from_be_bytes(&n, &e).is_ok());
        let mut with_zeros = vec![0, 0];
        with_zeros.extend(&n);
        let key = RsaVerifyKey::from_be_bytes(&with_zeros, &[0, 1, 0, 1]).expect("leading zeros are fine");
        assert_eq!((key.bits(), key.size(), key.exponent()), (2048, 256, 65537));
        let short = RsaVerifyKey::from_be_bytes(&n[1..], &e);
        assert!(matches!(short, Err(KeyError::ModulusTooSmall(bits)) if bits <= 2040), "{short:?}");
        assert_eq!(RsaVerifyKey::from_be_bytes(&[0xFF; 513], &e), Err(KeyError::ModulusTooLarge(4104)));
        let mut even = n.clone();
        *even.last_mut().unwrap() &= 0xFE;
        assert_eq!(RsaVerifyKey::from_be_bytes(&even, &e), Err(KeyError::EvenModulus));
        for bad in [&[][..], &[1], &[2], &[1, 0, 0], &[2, 0, 0, 0, 1], &[1; 9]] {
            assert_eq!(RsaVerifyKey::from_be_bytes(&n, bad), Err(KeyError::BadExponent), "e = {bad:?}");
        }
        assert!(RsaVerifyKey::from_be_bytes(&n, &[3]).is_ok());
        assert!(RsaVerifyKey::from_be_bytes(&n, &[1, 0xFF, 0xFF, 0xFF, 0xFF]).is_ok());
    }

    #[test]
    fn montgomery_constants() {
        for x in [1u32, 3, 0xFFFF_FFFF, 0x1234_5677, 65537] {
            assert_eq!(x.wrapping_mul(inverse_mod_2_32(x)), 1, "{x}");
        }
        let key = prepared(&testkeys::key(1).to_public_key());
        let n = BigUint::from_bytes_be(&testkeys::key(1).n().to_bytes_be());
        let r2 = BigUint::from_bytes_be(&limbs_to_be_bytes(&key.r_squared, key.n.len() * 4));
        assert_eq!(r2, (BigUint::from(1u32) << (2 * 32 * key.n.len())) % n);
    }
}
