//! `json::parse` on arbitrary bytes against serde_json: never panics; a document serde_json refuses
//! is refused; one it accepts is accepted with the same tree, unless it repeats a member name
//! (refused on purpose) or nests deeper than the limit; what is accepted writes back to text that
//! parses to the same tree.
#![no_main]

use jwt_authz::json::{self, ErrorKind, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ours = json::parse(data, Limits::DOCUMENT);
    let theirs = serde_json::from_slice::<serde_json::Value>(data);
    match (&ours, &theirs) {
        (Ok(ours), Ok(theirs)) => {
            assert!(json::same_document(ours, theirs), "{ours:?} / {theirs:?}");
            let written = ours.to_string();
            assert_eq!(json::parse(written.as_bytes(), Limits::DOCUMENT).as_ref(), Ok(ours));
        }
        (Ok(ours), Err(theirs)) => panic!("accepted what serde_json refuses ({theirs}): {ours:?}"),
        (Err(failure), Ok(_)) => assert!(
            matches!(failure.kind, ErrorKind::DuplicateMember(_) | ErrorKind::RecursionLimitExceeded),
            "refused what serde_json accepts: {failure}"
        ),
        (Err(_), Err(_)) => {}
    }
});
