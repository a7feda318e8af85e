//! Base64url without padding (RFC 4648 §5, as RFC 7515 §2 uses it): the token's segments and the
//! numbers of a JWK, decoded strictly; the shared key copies, encoded.
//!
//! Our own, not the `base64` crate (which the filter used before and the tests still use as the
//! reference): its generic engine was 6 KB of the Wasm module, compiled by V8 at every start,
//! for these two loops (docs/performance.md, "Footprint"). Strict as that crate's
//! `URL_SAFE_NO_PAD` is: no padding, no whitespace, no other alphabet, no length of 4n + 1, and
//! the unused low bits of the last symbol must be zero, so every byte string has exactly one
//! encoding.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The 6-bit value of a symbol.
fn value(symbol: u8) -> Option<u32> {
    match symbol {
        b'A'..=b'Z' => Some(u32::from(symbol - b'A')),
        b'a'..=b'z' => Some(u32::from(symbol - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(symbol - b'0') + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

/// The bytes `text` encodes; `None` for anything but the one canonical unpadded encoding.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3 + 2);
    for chunk in text.chunks(4) {
        let mut bits = 0u32;
        for &symbol in chunk {
            bits = (bits << 6) | value(symbol)?;
        }
        // A chunk of n symbols carries n·6 bits: n − 1 whole bytes, the rest must be zero.
        let unused = chunk.len() * 6 % 8;
        if bits & ((1 << unused) - 1) != 0 {
            return None;
        }
        let bytes = (bits >> unused).to_be_bytes();
        out.extend_from_slice(bytes.get(4 - (chunk.len() - 1)..).unwrap_or_default());
    }
    Some(out)
}

/// The unpadded base64url text of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let bits = chunk.iter().fold(0u32, |acc, &byte| (acc << 8) | u32::from(byte)) << (8 * (3 - chunk.len()));
        for index in 0..=chunk.len() {
            let symbol = ALPHABET.get(((bits >> (18 - 6 * index)) & 0x3f) as usize).copied().unwrap_or(b'A');
            out.push(char::from(symbol));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

    #[test]
    fn round_trips_every_length_as_the_base64_crate_encodes() {
        for length in 0..70 {
            let bytes: Vec<u8> = (0..length).map(|i| (i * 37 + 11) as u8).collect();
            let text = encode(&bytes);
            assert_eq!(text, URL_SAFE_NO_PAD.encode(&bytes), "{length}");
            assert_eq!(decode(&text), Some(bytes), "{length}");
        }
    }

    #[test]
    fn refuses_what_the_base64_crate_refuses() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let symbols = b"AQgw-_Zz09+/=. \n";
        let mut cases: Vec<String> =
            ["", "A", "AA", "AB", "AAA", "AAB", "AAAA", "AA==", "AAA=", "A===", "AB__", "_w", "_x", "-_-_", "a b"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        for _ in 0..5_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let length = (state % 9) as usize;
            cases.push((0..length).map(|i| char::from(symbols[((state >> (8 + 4 * i)) % 16) as usize])).collect());
        }
        for case in cases {
            assert_eq!(decode(&case), URL_SAFE_NO_PAD.decode(&case).ok(), "{case:?}");
        }
    }
}
