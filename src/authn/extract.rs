//! Token extraction: finds JWTs in the request's headers, query parameters and cookies.

/// One place a token may be carried, as configured in `fromHeaders`, `fromParams`, `fromCookies`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLocation {
    /// A header (name lower-cased) whose value starts with `prefix` (compared ASCII
    /// case-insensitively: RFC 7235 auth schemes are case-insensitive, so `bearer x` is a token).
    Header { name: String, prefix: String },
    /// A query parameter of `:path`.
    Param(String),
    /// A cookie in the `cookie` header.
    Cookie(String),
}

impl TokenLocation {
    pub fn header(name: &str, prefix: &str) -> Self {
        TokenLocation::Header { name: name.to_ascii_lowercase(), prefix: prefix.to_string() }
    }

    /// `Authorization: DPoP <token>` (RFC 9449 §7.1): a token sent this way must be key-bound and
    /// come with its proof; one sent any other way must not be.
    pub fn is_dpop_scheme(&self) -> bool {
        matches!(self, TokenLocation::Header { name, prefix } if name == "authorization" && prefix.eq_ignore_ascii_case("DPoP "))
    }

    pub fn name(&self) -> &str {
        match self {
            TokenLocation::Header { name, .. } => name,
            TokenLocation::Param(name) | TokenLocation::Cookie(name) => name,
        }
    }
}

/// Position of a token location in the compiled configuration (`Issuers::locations`). Providers
/// share locations: two issuers reading `Authorization: Bearer` name the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocationId(pub usize);

/// A token found at `location`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundToken {
    pub location: LocationId,
    pub token: String,
}

/// The request attributes token extraction reads. Header names are lower-case.
pub trait HeaderSource {
    /// Every value of the header `name` (lower-case), in order.
    fn header_values<'a>(&'a self, name: &'a str) -> Box<dyn Iterator<Item = &'a str> + 'a>;
    /// The raw `:path`, with its query string.
    fn raw_path(&self) -> &str;
}

/// Returns every token present, in configuration order. A location that holds no token is
/// skipped; a value that does not start with the location's prefix is not a token (e.g. `Basic`).
#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
pub fn find_tokens(locations: &[TokenLocation], request: &dyn HeaderSource) -> Vec<FoundToken> {
    let mut found = Vec::new();
    for (index, location) in locations.iter().enumerate() {
        let index = LocationId(index);
        match location {
            TokenLocation::Header { name, prefix } => {
                for value in request.header_values(name) {
                    if let Some(token) = strip_prefix_ignore_case(value.trim(), prefix) {
                        push_token(&mut found, index, token.trim());
                    }
                }
            }
            TokenLocation::Param(param) => {
                for token in query_values(request.raw_path(), param) {
                    push_token(&mut found, index, &token);
                }
            }
            TokenLocation::Cookie(cookie) => {
                for header in request.header_values("cookie") {
                    for (name, value) in header.split(';').filter_map(|pair| pair.trim().split_once('=')) {
                        if name.trim() == cookie {
                            push_token(&mut found, index, value.trim().trim_matches('"'));
                        }
                    }
                }
            }
        }
    }
    found
}

fn push_token(found: &mut Vec<FoundToken>, location: LocationId, token: &str) {
    if !token.is_empty() {
        found.push(FoundToken { location, token: token.to_string() });
    }
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        value.get(prefix.len()..)
    } else if prefix.ends_with(' ') && value.eq_ignore_ascii_case(prefix.trim_end()) {
        // `Authorization: Bearer` with nothing after it: a bearer header without a token.
        Some("")
    } else {
        None
    }
}

/// Percent-decoded values of the query parameter `name` in `path`.
fn query_values<'a>(path: &'a str, name: &'a str) -> impl Iterator<Item = String> + 'a {
    let query = path.split('#').next().unwrap_or_default().split_once('?').map(|(_, q)| q).unwrap_or_default();
    query.split('&').filter_map(move |pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key).unwrap_or_else(|| key.to_string());
        // A value that does not decode is still a presented token: pass it on as sent so that it
        // is rejected, rather than treating the request as carrying no token at all.
        (key == name).then(|| percent_decode(value).unwrap_or_else(|| value.to_string()))
    })
}

/// Decodes `%XX` and `+` (form encoding); `None` when an escape is malformed or the result is
/// not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Req {
        path: String,
        headers: Vec<(String, String)>,
    }

    impl HeaderSource for Req {
        fn header_values<'a>(&'a self, name: &'a str) -> Box<dyn Iterator<Item = &'a str> + 'a> {
            Box::new(self.headers.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str()))
        }
        fn raw_path(&self) -> &str {
            &self.path
        }
    }

    fn req(path: &str, headers: &[(&str, &str)]) -> Req {
        Req { path: path.to_string(), headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect() }
    }

    fn defaults() -> Vec<TokenLocation> {
        vec![TokenLocation::header("Authorization", "Bearer "), TokenLocation::Param("access_token".into())]
    }

    fn tokens(locations: &[TokenLocation], r: &Req) -> Vec<(usize, String)> {
        find_tokens(locations, r).into_iter().map(|f| (f.location.0, f.token)).collect()
    }

    #[test]
    fn bearer_header_any_case_and_spacing() {
        for value in ["Bearer abc", "bearer abc", "BEARER   abc ", "  Bearer abc"] {
            assert_eq!(
                tokens(&defaults(), &req("/", &[("authorization", value)])),
                vec![(0, "abc".into())],
                "{value:?}"
            );
        }
    }

    #[test]
    fn non_bearer_schemes_and_empty_bearer_are_not_tokens() {
        for value in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Bearerabc", ""] {
            assert!(tokens(&defaults(), &req("/", &[("authorization", value)])).is_empty(), "{value:?}");
        }
    }

    #[test]
    fn query_parameter_is_decoded_and_must_match_exactly() {
        let r = req("/p?x=1&access_token=a%2Eb.c&access_tokenx=zzz#frag", &[]);
        assert_eq!(tokens(&defaults(), &r), vec![(1, "a.b.c".into())]);
        assert_eq!(tokens(&defaults(), &req("/p?access_token=%zz", &[])), vec![(1, "%zz".into())]);
        assert!(tokens(&defaults(), &req("/p#?access_token=abc", &[])).is_empty());
    }

    #[test]
    fn header_and_query_tokens_are_both_reported() {
        let r = req("/p?access_token=q", &[("authorization", "Bearer h")]);
        assert_eq!(tokens(&defaults(), &r), vec![(0, "h".into()), (1, "q".into())]);
    }

    #[test]
    fn cookies_and_custom_headers() {
        let locations = vec![TokenLocation::Cookie("session".into()), TokenLocation::header("X-Token", "")];
        let r = req("/", &[("cookie", "a=1; session=tok; b=2"), ("x-token", "raw")]);
        assert_eq!(tokens(&locations, &r), vec![(0, "tok".into()), (1, "raw".into())]);
        let r = req("/", &[("cookie", "xsession=tok; session2=x")]);
        assert!(tokens(&locations, &r).is_empty());
    }
}
