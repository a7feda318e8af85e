//! A JSON number, kept as the text it was written with, and read exactly, without floating point.
//!
//! Kept as text, not converted, because every reader wants something else: the configuration an
//! exact integer, `exp` whole seconds, a claim matcher or an output header the number as the
//! issuer wrote it (`1.0` stays `1.0`; nothing is rounded through a float). And read without
//! floating point because nothing here needs a float: the filter carries no float parsing at all
//! (its tables and code were 10 KB of the module, docs/performance.md, "Footprint").

use std::cmp::Ordering;
use std::fmt;

/// Checked against RFC 8259's grammar by the parser, or printed from an integer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Number(Box<str>);

/// 2^1024 − 2^970, the least number that rounds to infinity as an `f64` (the largest finite one
/// plus half its last place; a tie rounds to the even neighbour, infinity): its decimal digits.
const F64_OVERFLOW_DIGITS: &str = "17976931348623158079372897140530341507993413271003782693617377898044496829276475\
094664901797758720709633028641669288791094655554785194040263065748867150582068190890200070838367627385484581771\
15317644757302700698555713669596228429148198608349364752927190741684443655107043427115596995080930428801779041\
74497792";

/// The parts of a number's text: sign, all digits (integer then fraction), where the decimal
/// point falls among them, and the exponent (saturated far beyond any range that matters).
struct Decimal<'a> {
    negative: bool,
    integer: &'a str,
    fraction: &'a str,
    exponent: i64,
}

impl<'a> Decimal<'a> {
    fn of(text: &'a str) -> Decimal<'a> {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, exponent) = match rest.split_once(['e', 'E']) {
            Some((mantissa, exponent)) => (mantissa, exponent),
            None => (rest, "0"),
        };
        let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let (exponent_negative, exponent_digits) = match exponent.strip_prefix('-') {
            Some(digits) => (true, digits),
            None => (false, exponent.trim_start_matches('+')),
        };
        let magnitude = exponent_digits
            .bytes()
            .fold(0i64, |acc, digit| (acc * 10 + i64::from(digit.wrapping_sub(b'0'))).min(1_000_000_000));
        Decimal { negative, integer, fraction, exponent: if exponent_negative { -magnitude } else { magnitude } }
    }

    fn digits(&self) -> impl Iterator<Item = u8> + '_ {
        self.integer.bytes().chain(self.fraction.bytes())
    }

    /// The significant digits (no leading zeros) and the power of ten of the first, as in
    /// d.ddd × 10^power; `None` for zero.
    fn significant(&self) -> Option<(Vec<u8>, i64)> {
        let leading = self.digits().take_while(|&digit| digit == b'0').count();
        let digits: Vec<u8> = self.digits().skip(leading).collect();
        if digits.is_empty() {
            return None;
        }
        let power = self.integer.len() as i64 - leading as i64 - 1 + self.exponent;
        Some((digits, power))
    }
}

impl Number {
    /// An integer's decimal text (`u64::to_string` and the like).
    pub(super) fn from_integer_text(text: String) -> Number {
        Number(text.into())
    }

    /// Text the parser has checked against the grammar.
    pub(super) fn from_checked_text(text: &str) -> Number {
        Number(text.into())
    }

    fn is_integer(&self) -> bool {
        !self.0.contains(['.', 'e', 'E'])
    }

    /// The value as a `u64`, if it is written as an integer in that range.
    pub fn as_u64(&self) -> Option<u64> {
        if self.is_integer() {
            self.0.parse().ok()
        } else {
            None
        }
    }

    /// The value as an `i64`, if it is written as an integer in that range.
    pub fn as_i64(&self) -> Option<i64> {
        if self.is_integer() {
            self.0.parse().ok()
        } else {
            None
        }
    }

    /// Written with a fraction or an exponent, or an integer beyond `i64`/`u64` (serde's "floating
    /// point", as the configuration's messages call it).
    pub fn is_f64(&self) -> bool {
        self.as_u64().is_none() && self.as_i64().is_none()
    }

    /// The value truncated toward zero (`1.9` is 1, `-1.9` is −1, `1.5e3` is 1500), exactly;
    /// `None` for an integer beyond `i64` and for other numbers beyond ±10^18 (a NumericDate is
    /// never near either).
    pub fn truncated(&self) -> Option<i64> {
        if let Some(value) = self.as_i64() {
            return Some(value);
        }
        let decimal = Decimal::of(&self.0);
        let Some((digits, power)) = decimal.significant() else { return Some(0) };
        if power < 0 {
            return Some(0);
        }
        if power >= 18 {
            return None;
        }
        let whole = (0..=power as usize)
            .map(|index| digits.get(index).map_or(0, |&digit| i64::from(digit - b'0')))
            .fold(0i64, |acc, digit| acc * 10 + digit);
        Some(if decimal.negative { -whole } else { whole })
    }

    /// Whether the value's magnitude rounds to infinity as an `f64` (at least 2^1024 − 2^970):
    /// such numbers are refused, as serde_json refuses them ("number out of range").
    pub(super) fn overflows_f64(&self) -> bool {
        let Some((digits, power)) = Decimal::of(&self.0).significant() else { return false };
        match power.cmp(&308) {
            Ordering::Less => false,
            Ordering::Greater => true,
            Ordering::Equal => {
                let threshold = F64_OVERFLOW_DIGITS.as_bytes();
                let length = digits.len().max(threshold.len());
                let ours = (0..length).map(|index| digits.get(index).copied().unwrap_or(b'0'));
                let theirs = (0..length).map(|index| threshold.get(index).copied().unwrap_or(b'0'));
                ours.cmp(theirs) != Ordering::Less
            }
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The nearest `f64`, for tests that compare against serde_json's readings.
    #[cfg(any(test, feature = "test-support"))]
    pub fn as_f64(&self) -> Option<f64> {
        self.0.parse().ok()
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_exactly() {
        let cases = [
            ("0", Some(0)),
            ("-0", Some(0)),
            ("1700000000", Some(1_700_000_000)),
            ("1700000000.9", Some(1_700_000_000)),
            ("-1.9", Some(-1)),
            ("-0.5", Some(0)),
            ("1.5e3", Some(1500)),
            ("1.5E+3", Some(1500)),
            ("17e-1", Some(1)),
            ("0.000123e7", Some(1230)),
            ("1e-400", Some(0)),
            ("0e999999999999999", Some(0)),
            ("1.7e9", Some(1_700_000_000)),
            ("999999999999999999", Some(999_999_999_999_999_999)),
            ("9.99e17", Some(999_000_000_000_000_000)),
            ("1e18", None),
            ("9223372036854775808", None),
            ("1e400", None),
            ("-1e999999999999", None),
        ];
        for (text, want) in cases {
            assert_eq!(Number::from_checked_text(text).truncated(), want, "{text}");
        }
    }

    #[test]
    fn overflows_where_an_f64_becomes_infinite() {
        for (text, overflows) in [
            ("1e308", false),
            ("1.7976931348623157e308", false),
            ("1.7976931348623158e308", false),
            ("1.797693134862315807937289714053034150799341327100378269361737789804449682927647509466490179775872070963302864166928879109465555478519404026306574886715058206819089020007083836762738548458177115317644757302700698555713669596228429148198608349364752927190741684443655107043427115596995080930428801779041744977919999e308", false),
            ("1.797693134862315807937289714053034150799341327100378269361737789804449682927647509466490179775872070963302864166928879109465555478519404026306574886715058206819089020007083836762738548458177115317644757302700698555713669596228429148198608349364752927190741684443655107043427115596995080930428801779041744977920e308", true),
            ("1.8e308", true),
            ("-1e309", true),
            ("1e999999999999", true),
            ("0.00000000001e320", true),
            ("0.00000000001e319", false),
            ("1e-400", false),
            ("0e999999999", false),
        ] {
            assert_eq!(Number::from_checked_text(text).overflows_f64(), overflows, "{text}");
            // What the standard library's correctly rounded parse says.
            assert_eq!(text.parse::<f64>().map(f64::is_infinite), Ok(overflows), "{text}");
        }
    }
}
