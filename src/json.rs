//! Small rules for reading request bodies that several domains share.

use serde::{Deserialize, Deserializer};

/// For `#[serde(default, deserialize_with = "crate::json::present")]` on an
/// optional field: absent is `None`, a value is `Some`, and `null` is
/// refused — an optional setting is left out, not set to nothing, so the
/// schema each body documents (no `null`) is what the server accepts.
pub fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize, Debug)]
    struct Patch {
        #[serde(default, deserialize_with = "super::present")]
        days: Option<i64>,
    }

    #[test]
    fn absent_is_none_a_value_is_some_and_null_is_refused() {
        let parse = |text: &str| serde_json::from_str::<Patch>(text);
        assert_eq!(parse("{}").unwrap().days, None);
        assert_eq!(parse(r#"{"days": 90}"#).unwrap().days, Some(90));
        assert!(parse(r#"{"days": null}"#).is_err());
    }
}
