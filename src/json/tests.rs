//! The parser and writer against serde_json, the reference: the same documents accepted, the same
//! trees built, the same text written.

use super::*;
use from_serde::same_document;

const LIMITS: Limits = Limits { max_depth: 127 };

fn check_against_serde(document: &[u8]) {
    let ours = parse(document, LIMITS);
    let theirs = serde_json::from_slice::<serde_json::Value>(document);
    match (&ours, &theirs) {
        (Ok(a), Ok(b)) => assert!(same_document(a, b), "{:?}: {a:?} / {b:?}", String::from_utf8_lossy(document)),
        (Err(_), Err(_)) => {}
        _ => panic!("{:?}: ours {ours:?}, serde_json {theirs:?}", String::from_utf8_lossy(document)),
    }
}

#[test]
fn accepts_and_refuses_what_serde_json_does() {
    let cases: &[&[u8]] = &[
        b"{}",
        b"[]",
        b" \t\r\n{} \n",
        b"null",
        b"true",
        b"false",
        b"0",
        b"-0",
        b"1",
        b"-1",
        b"1.5",
        b"-1.5e3",
        b"1E2",
        b"1e-2",
        b"1e+2",
        b"0.0",
        b"18446744073709551615",
        b"18446744073709551616",
        b"-9223372036854775808",
        b"-9223372036854775809",
        b"1e308",
        b"1e309",
        b"-1e400",
        b"123456789012345678901234567890",
        b"01",
        b"1.",
        b".5",
        b"-",
        b"+1",
        b"1e",
        b"1e+",
        b"0x10",
        b"NaN",
        b"Infinity",
        b"tru",
        b"nul",
        b"truex",
        b"\"\"",
        b"\"abc\"",
        b"\"\\u00e9\\n\\t\\\\\\/\\\"\"",
        b"\"\\ud83d\\ude00\"",
        b"\"\\ud83d\"",
        b"\"\\ude00\"",
        b"\"\\ud83dx\"",
        b"\"\\ud83d\\u0041\"",
        b"\"\\u12\"",
        b"\"\\uzzzz\"",
        b"\"\\x\"",
        b"\"a\x01b\"",
        b"\"a\x7fb\"",
        "\"é😀\"".as_bytes(),
        b"\"\xff\"",
        b"\"\xc3\"",
        b"[1,2,3]",
        b"[1,]",
        b"[,1]",
        b"[1 2]",
        b"[",
        b"[1",
        b"{\"a\":1}",
        b"{\"a\":1,}",
        b"{\"a\"}",
        b"{\"a\" 1}",
        b"{a:1}",
        b"{\"a\":1 \"b\":2}",
        b"{\"a\":",
        b"{\"a\"",
        b"{",
        b"{\"b\":1,\"a\":[{\"c\":null}]}",
        b"{} {}",
        b"[] x",
        b"",
        b"   ",
        b"\"unterminated",
        b"[\"\\u0000\"]",
        b"{\"\":0}",
        b"[1e-400]",
        b"[-0.0e-0]",
        b"[true,false,null]",
    ];
    for case in cases {
        check_against_serde(case);
    }
}

#[test]
fn refuses_repeated_member_names_with_their_path() {
    let failure = parse(br#"{"x": {"a": {"b": 1, "\u0062": 2}}}"#, LIMITS).unwrap_err();
    assert_eq!(failure.kind, ErrorKind::DuplicateMember("b".into()));
    assert_eq!(failure.path, [Segment::Member("x".into()), Segment::Member("a".into()), Segment::Member("b".into())]);
    assert_eq!(failure.to_string(), r#"duplicate field "b""#);
    // A name from a remote document cannot forge a log line.
    let failure = parse(b"{\"a\\n[critical] forged\":1,\"a\\n[critical] forged\":2}", LIMITS).unwrap_err();
    assert_eq!(failure.to_string(), r#"duplicate field "a\n[critical] forged""#);
    let failure = parse(br#"[{"a": 1}, {"a": 1, "a": 1}]"#, LIMITS).unwrap_err();
    assert_eq!(failure.path, [Segment::Index(1), Segment::Member("a".into())]);
}

#[test]
fn errors_name_line_column_and_path() {
    let failure = parse(b"{not json", LIMITS).unwrap_err();
    assert_eq!(failure.to_string(), "key must be a string at line 1 column 2");
    let failure = parse(b"{\"a\": [1,\n  2 x]}", LIMITS).unwrap_err();
    assert_eq!(failure.to_string(), "expected `,` or `]` at line 2 column 5");
    assert_eq!(failure.path, [Segment::Member("a".into())]);
    // The same positions as serde_json's.
    for document in [&b"{not json"[..], b"{\"a\": [1,\n  2 x]}", b"[1,", b"{\"a\" 1}", b"[1] x", b"\"\\q\""] {
        let theirs = serde_json::from_slice::<serde_json::Value>(document).unwrap_err();
        let ours = parse(document, LIMITS).unwrap_err();
        assert_eq!((ours.line, ours.column), (theirs.line(), theirs.column()), "{document:?}");
    }
}

#[test]
fn bounds_depth_as_each_container_opens() {
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    assert!(parse(nested(3).as_bytes(), Limits { max_depth: 3 }).is_ok());
    let failure = parse(nested(4).as_bytes(), Limits { max_depth: 3 }).unwrap_err();
    assert_eq!(failure.kind, ErrorKind::RecursionLimitExceeded);
    assert_eq!(failure.path, [Segment::Index(0), Segment::Index(0), Segment::Index(0)]);
    // serde_json's own limit, 127 nested containers, is what the configuration gets.
    check_against_serde(nested(127).as_bytes());
    check_against_serde(nested(128).as_bytes());
    // 100,000 levels: refused at the limit, no deep recursion.
    assert!(parse("[".repeat(100_000).as_bytes(), LIMITS).is_err());
}

#[test]
fn writes_what_serde_json_writes() {
    let documents =
        [r#"{"b":[1,-2,0.5,true,null],"a":{"z":"x\"y\\z\n\t\u0001\u001f/é😀"},"":""}"#, "[]", "{}", r#""\b\f\r""#];
    for document in documents {
        let ours = parse(document.as_bytes(), LIMITS).expect("valid").to_string();
        let theirs = serde_json::from_str::<serde_json::Value>(document).expect("valid").to_string();
        assert_eq!(ours, theirs);
    }
    // Numbers keep their text.
    assert_eq!(parse(b"[1.0, 1E2, -0]", LIMITS).expect("valid").to_string(), "[1.0,1E2,-0]");
}

#[test]
fn maps_look_up_insert_and_remove_by_name() {
    let mut map = Map::new();
    assert_eq!(map.insert("b".into(), Value::from(1u64)), None);
    assert_eq!(map.insert("a".into(), Value::from("x")), None);
    assert_eq!(map.insert("b".into(), Value::from(2u64)), Some(Value::from(1u64)));
    assert_eq!(map.keys().map(String::as_str).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(map.get("b").and_then(Value::as_u64), Some(2));
    assert_eq!(map.remove("a"), Some(Value::from("x")));
    assert!(!map.contains_key("a") && map.len() == 1);
}

#[test]
fn numbers_read_as_serde_json_read_them() {
    let number = |text: &str| match parse(text.as_bytes(), LIMITS) {
        Ok(Value::Number(number)) => number,
        other => panic!("{text}: {other:?}"),
    };
    assert_eq!(number("42").as_u64(), Some(42));
    assert_eq!(number("-42").as_i64(), Some(-42));
    assert_eq!(number("-42").as_u64(), None);
    assert!(!number("42").is_f64() && number("4.2").is_f64() && number("18446744073709551616").is_f64());
    assert_eq!(number("1.5e3").as_f64(), Some(1500.0));
    assert_eq!(number("1.0").as_u64(), None);
}

/// Mutations of valid documents (a byte replaced, inserted or removed, from an alphabet of JSON's
/// own characters) judged the same way by both parsers: a deterministic, native stand-in for the
/// `json_parse` fuzz target.
#[test]
fn mutated_documents_are_judged_as_serde_json_judges_them() {
    let seeds: &[&[u8]] = &[
        br#"{"iss":"https://idp/realms/shop","aud":["a","b"],"exp":1700000000,"n":-1.5e3,"o":{"x":[true,false,null]}}"#,
        br#"[{"k":"\u00e9\ud83d\ude00\n"},0.25,-0,1E+2,"",{}]"#,
    ];
    let alphabet = b"{}[]:,\"0123456789-+.eEtrufalsn \\u\n\x01\xc3\xa9ab";
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = |bound: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % bound as u64) as usize
    };
    let (mut accepted, mut refused) = (0, 0);
    for round in 0..20_000 {
        let mut document = seeds[round % seeds.len()].to_vec();
        for _ in 0..1 + next(3) {
            let at = next(document.len() + 1);
            let byte = alphabet[next(alphabet.len())];
            match next(3) {
                0 if at < document.len() => document[at] = byte,
                1 if at < document.len() => {
                    document.remove(at);
                }
                _ => document.insert(at, byte),
            }
        }
        let text = String::from_utf8_lossy(&document).into_owned();
        match (parse(&document, LIMITS), serde_json::from_slice::<serde_json::Value>(&document)) {
            (Ok(a), Ok(b)) => {
                assert!(same_document(&a, &b), "{text:?}");
                accepted += 1;
            }
            (Err(failure), Ok(_)) => {
                assert!(matches!(failure.kind, ErrorKind::DuplicateMember(_)), "{text:?}: {failure}")
            }
            (Ok(_), Err(e)) => panic!("{text:?}: serde_json refuses ({e})"),
            (Err(_), Err(_)) => refused += 1,
        }
    }
    // Both outcomes were exercised, many times.
    assert!(accepted > 1_000 && refused > 1_000, "{accepted} accepted, {refused} refused");
}

#[test]
fn sorts_large_objects_and_finds_a_repeat_anywhere() {
    // 5,000 members in reverse order: sorted, every one found, in name order when written.
    let members: Vec<String> = (0..5_000).rev().map(|i| format!("\"m{i:05}\":{i}")).collect();
    let document = format!("{{{}}}", members.join(","));
    let Ok(Value::Object(map)) = parse(document.as_bytes(), LIMITS) else { panic!("valid") };
    assert_eq!(map.len(), 5_000);
    assert!(map.keys().zip(map.keys().skip(1)).all(|(a, b)| a < b));
    assert_eq!(map.get("m04321").and_then(Value::as_u64), Some(4321));
    // The same name first and last, far apart.
    let repeated = format!("{{\"m00000\":0,{}}}", members.join(","));
    let failure = parse(repeated.as_bytes(), LIMITS).unwrap_err();
    assert_eq!(failure.kind, ErrorKind::DuplicateMember("m00000".into()));
}

#[test]
fn quoted_text_cannot_forge_or_disguise_a_log_line() {
    let shown = Quoted("a\"b\\c\n\u{7f}\u{85}\u{202e}\u{2028}\u{200b}\u{feff}é😀").to_string();
    assert_eq!(shown, r#""a\"b\\c\n\u007f\u0085\u202e\u2028\u200b\ufeffé😀""#);
    // The JSON writer stays serde_json's: those characters are valid JSON text as they are.
    assert_eq!(Value::from("\u{202e}").to_string(), "\"\u{202e}\"");
}
