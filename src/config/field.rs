//! A configuration field's path (`policies[0].rules[1].from[0].source.ipBlocks[2]`), written out
//! only when an error names it.
//!
//! Why not a `String` per field: compiling formatted the path of every list it checked before it
//! knew of any error, and each `format!` is inline code that V8 compiles at every start of every
//! sidecar. A borrowed chain of segments costs a few stores per field and one out-of-line
//! `render` (docs/performance.md, "Footprint").

/// One step of the path below its parent.
#[derive(Clone, Copy)]
enum Segment<'a> {
    Name(&'a str),
    Index(usize),
}

/// A field's path: a chain of segments, innermost last, borrowed from the caller's stack.
#[derive(Clone, Copy)]
pub(super) struct Field<'a> {
    parent: Option<&'a Field<'a>>,
    segment: Segment<'a>,
}

impl<'a> Field<'a> {
    /// A top-level member (`jwtRules`, `limits`).
    pub(super) const fn root(name: &'a str) -> Field<'a> {
        Field { parent: None, segment: Segment::Name(name) }
    }

    /// The member `name` of this field: `.name`.
    pub(super) fn name(&'a self, name: &'a str) -> Field<'a> {
        Field { parent: Some(self), segment: Segment::Name(name) }
    }

    /// The item `index` of this list: `[index]`.
    pub(super) fn index(&'a self, index: usize) -> Field<'a> {
        Field { parent: Some(self), segment: Segment::Index(index) }
    }

    /// The path as users read it in errors and in `check`.
    #[inline(never)] // once, for every caller: only errors need it
    pub(super) fn render(&self) -> String {
        let mut segments = Vec::new();
        let mut field = Some(self);
        while let Some(current) = field {
            segments.push(current.segment);
            field = current.parent;
        }
        let mut out = String::new();
        for segment in segments.iter().rev() {
            match segment {
                Segment::Name(name) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(name);
                }
                Segment::Index(index) => {
                    out.push('[');
                    out.push_str(&index.to_string());
                    out.push(']');
                }
            }
        }
        out
    }
}

impl From<Field<'_>> for String {
    fn from(field: Field<'_>) -> String {
        field.render()
    }
}

impl From<&Field<'_>> for String {
    fn from(field: &Field<'_>) -> String {
        field.render()
    }
}

#[cfg(test)]
mod tests {
    use super::Field;

    #[test]
    fn renders_members_and_indices_in_order() {
        let policies = Field::root("policies");
        let policy = policies.index(0);
        let rules = policy.name("rules");
        let rule = rules.index(12);
        let from = rule.name("from");
        let first = from.index(0);
        let source = first.name("source");
        let blocks = source.name("ipBlocks");
        assert_eq!(blocks.index(3).render(), "policies[0].rules[12].from[0].source.ipBlocks[3]");
        assert_eq!(Field::root("limits").name("maxTokenBytes").render(), "limits.maxTokenBytes");
        assert_eq!(String::from(Field::root("unsafePaths")), "unsafePaths");
    }
}
