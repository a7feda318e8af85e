//! Reading the files users have: plugin configurations in JSON, Kubernetes manifests in YAML
//! (one or many documents, `kind: List` included), turned into JSON values.

use serde_json::Value;
use std::fmt;

/// A document of a file, for messages that say where something came from.
#[derive(Debug, Clone)]
pub struct Document {
    pub file: String,
    pub value: Value,
}

impl Document {
    pub fn kind(&self) -> Option<&str> {
        self.value.get("kind").and_then(Value::as_str)
    }

    /// `kind namespace/name`, or `document N` for a manifest without metadata.
    pub fn describe(&self) -> String {
        let metadata = self.value.get("metadata");
        let name = metadata.and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("(unnamed)");
        let namespace = metadata.and_then(|m| m.get("namespace")).and_then(Value::as_str);
        let kind = self.kind().unwrap_or("document");
        match namespace {
            Some(namespace) => format!("{kind} {namespace}/{name}"),
            None => format!("{kind} {name}"),
        }
    }

    pub fn name(&self) -> Option<&str> {
        self.value.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str)
    }
}

/// Why a file could not be read as documents.
#[derive(Debug)]
pub struct ReadError(pub String);

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The text of a file, or of standard input for `-`.
pub fn read_text(file: &str) -> Result<String, ReadError> {
    let bytes = if file == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes).map(|_| bytes)
    } else {
        std::fs::read(file)
    }
    .map_err(|err| ReadError(format!("{file}: cannot read: {err}")))?;
    String::from_utf8(bytes).map_err(|_| ReadError(format!("{file}: not UTF-8 text")))
}

/// True when the text is a JSON document (an object), which is then handed over byte for byte.
pub fn looks_like_json(text: &str) -> bool {
    text.trim_start().starts_with('{')
}

/// Every document of a YAML (or JSON, which is YAML) file; `kind: List` is expanded into its items.
pub fn parse(file: &str, text: &str) -> Result<Vec<Document>, ReadError> {
    let values: Vec<Value> = if looks_like_json(text) {
        vec![serde_json::from_str(text).map_err(|err| ReadError(format!("{file}: invalid JSON: {err}")))?]
    } else {
        // Duplicate keys are an error (the default): a second `action:` silently winning is how a
        // reviewed policy ends up meaning something else.
        serde_saphyr::from_multiple(text).map_err(|err| ReadError(format!("{file}: invalid YAML: {err}")))?
    };
    let mut documents = Vec::new();
    for value in values {
        if value.is_null() {
            continue;
        }
        let is_list = value.get("kind").and_then(Value::as_str) == Some("List");
        match (is_list, value.get("items").and_then(Value::as_array)) {
            (true, Some(items)) => {
                documents.extend(items.iter().map(|item| Document { file: file.to_string(), value: item.clone() }))
            }
            _ => documents.push(Document { file: file.to_string(), value }),
        }
    }
    Ok(documents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_streams_lists_and_json_become_documents() {
        let docs = parse(
            "f.yaml",
            "kind: A\nmetadata: {name: a, namespace: ns}\n---\n---\nkind: List\nitems:\n- kind: B\n- kind: C\n",
        )
        .expect("valid");
        let kinds: Vec<_> = docs.iter().map(|d| d.kind().unwrap_or("?")).collect();
        assert_eq!(kinds, ["A", "B", "C"]);
        assert_eq!(docs[0].describe(), "A ns/a");
        let json = parse("f.json", r#"{"jwtRules": []}"#).expect("valid");
        assert_eq!(json[0].value, json!({"jwtRules": []}));
    }

    #[test]
    fn yaml_scalars_keep_their_json_types() {
        let docs = parse("f.yaml", "a: \"5\"\nb: 5\nc: true\nd: [x, \"*\"]\ne: ~\n").expect("valid");
        assert_eq!(docs[0].value, json!({"a": "5", "b": 5, "c": true, "d": ["x", "*"], "e": null}));
    }

    #[test]
    fn bad_input_is_reported_with_the_file() {
        let duplicate = parse("dup.yaml", "action: ALLOW\naction: DENY\n").expect_err("duplicate key");
        assert!(duplicate.0.starts_with("dup.yaml: invalid YAML"), "{duplicate}");
        let broken = parse("broken.yaml", "a: [1, 2\n").expect_err("unterminated");
        assert!(broken.0.starts_with("broken.yaml: invalid YAML"), "{broken}");
        let json = parse("x.json", "{\"a\": }").expect_err("bad json");
        assert!(json.0.starts_with("x.json: invalid JSON"), "{json}");
    }
}
