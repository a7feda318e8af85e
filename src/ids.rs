//! `ProviderId`: the name every layer uses for one configured issuer (a `jwtRules` entry).
//!
//! Authentication verifies a token for a provider, the key cache holds keys per provider, and a
//! token requirement lists the providers it accepts. They all index the same compiled list, so the
//! index gets a type of its own: a bare `usize` would let a token location or a key index pass for
//! one without a word from the compiler.

use std::fmt;

/// Position of a provider in the compiled configuration (`authn::Issuers::providers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProviderId(pub usize);

impl ProviderId {
    pub fn index(self) -> usize {
        self.0
    }
}

impl fmt::Display for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "jwtRules[{}]", self.0)
    }
}
