//! JSON for every document the filter reads or writes: a token's header and payload, key sets,
//! discovery documents, the shared key-cache records and the configuration.
//!
//! Our own, not serde_json: the filter needs one strict parser (no repeated member names, bounded
//! depth, the path of an error for the configuration) and a compact writer, and serde_json with
//! serde's visitors was the largest dependency in the Wasm module (about 60 KB of its code with
//! the glue, a tenth of what V8 compiles at every start: docs/performance.md, "Footprint").
//! serde_json remains for the native command and the tests, which check this parser against it
//! (`tests` below, and the fuzz target `json_parse`).

mod number;
mod parse;
mod value;
mod write;

pub use number::Number;
pub use parse::{parse, Error, ErrorKind, Limits, Segment};
pub use value::{Map, Value};
pub use write::Quoted;

#[cfg(any(test, feature = "test-support"))]
mod from_serde;
#[cfg(any(test, feature = "test-support"))]
pub use from_serde::same_document;

#[cfg(test)]
mod tests;
