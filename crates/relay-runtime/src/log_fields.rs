//! Log fields that hold more than one value. `tracing` records strings and numbers only, so such a
//! field is written as text that reads well in the human format; the binary's JSON format turns
//! it back into JSON (a list into an array, counts into an object of numbers). Every field logged
//! with [`list`] or [`counts`] must be named here, or JSON readers get the text.

/// Fields written with [`list`].
pub const LISTS: &[&str] = &["sinks", "topics", "kept", "lists"];
/// Fields written with [`counts`].
pub const COUNTS: &[&str] = &["outcomes"];

/// Separates the items of a list field (none of them contains it: sink, topic, purpose and list
/// names are identifiers).
pub const LIST_SEPARATOR: char = ',';

pub fn list<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> String {
    let mut text = String::new();
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            text.push(LIST_SEPARATOR);
        }
        text.push_str(item.as_ref());
    }
    text
}

/// `name=count` pairs separated by spaces.
pub fn counts<S: AsRef<str>>(pairs: impl IntoIterator<Item = (S, u64)>) -> String {
    pairs
        .into_iter()
        .map(|(name, n)| format!("{}={n}", name.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_counts_read_as_plain_text() {
        assert_eq!(list(["hubspot", "partner"]), "hubspot,partner");
        assert_eq!(list(Vec::<String>::new()), "");
        assert_eq!(
            counts([("applied", 3), ("superseded", 1)]),
            "applied=3 superseded=1"
        );
    }
}
