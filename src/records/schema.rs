//! Collection schemas and record validation. A schema is parsed once at the
//! edge; a record body is checked against it field by field, and every
//! refusal names the field.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::RecordError;

/// Types a file field may accept (FIL-4: the content type is sniffed and
/// must be one of these). Active content (HTML, SVG, XML) is not among them.
pub const KNOWN_TYPES: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "application/pdf",
    "application/zip",
    "text/plain",
    "application/octet-stream",
];

pub fn is_known_type(text: &str) -> bool {
    KNOWN_TYPES.contains(&text)
}

const MAX_FIELDS: usize = 200;
const MAX_TEXT_CHARS: usize = 65_536;
const MAX_OPTIONS: usize = 500;
/// Names the API puts beside a record's fields.
const RESERVED: &[&str] = &["id", "collection", "version", "created_at", "updated_at"];

/// `[a-z][a-z0-9_]{0,62}`: safe in URLs, JSON paths and log lines.
pub fn is_identifier(text: &str) -> bool {
    (1..=63).contains(&text.len())
        && text.starts_with(|c: char| c.is_ascii_lowercase())
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// A collection name, valid by construction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CollectionName(String);

impl CollectionName {
    pub fn parse(text: &str) -> Result<CollectionName, RecordError> {
        if is_identifier(text) {
            Ok(CollectionName(text.to_owned()))
        } else {
            Err(RecordError::InvalidSchema(format!(
                "collection name {text:?} must match [a-z][a-z0-9_]{{0,62}}"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    Text,
    Integer,
    Number,
    Boolean,
    Datetime,
    Email,
    Select,
    Json,
    /// Uploaded files (FIL-1); the value lists the files' descriptions.
    File,
}

/// Default and ceiling of a file field's `max_size` (FIL-4).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 25 * 1024 * 1024;
pub const MAX_FILE_BYTES: u64 = 5 * 1024 * 1024 * 1024;
const MAX_FILES_PER_FIELD: u32 = 100;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: FieldType,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub unique: bool,
    #[serde(default)]
    pub indexed: bool,
    /// Personal data (GDPR): feeds the data inventory and subject requests.
    #[serde(default)]
    pub personal: bool,
    /// Never shown in clear outside the record itself (audit, logs).
    #[serde(default)]
    pub sensitive: bool,
    #[serde(
        default,
        deserialize_with = "crate::json::present",
        skip_serializing_if = "Option::is_none"
    )]
    pub options: Option<Vec<String>>,
    /// File fields: largest file in bytes (default 25 MiB).
    #[serde(
        default,
        deserialize_with = "crate::json::present",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_size: Option<u64>,
    /// File fields: how many files the field holds (default 1).
    #[serde(
        default,
        deserialize_with = "crate::json::present",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_files: Option<u32>,
    /// File fields: content types allowed, as sniffed from the bytes.
    #[serde(
        default,
        deserialize_with = "crate::json::present",
        skip_serializing_if = "Option::is_none"
    )]
    pub accept: Option<Vec<String>>,
}

impl Field {
    /// Whether the field's values are kept in `record_keys`.
    pub fn is_keyed(&self) -> bool {
        self.unique || self.indexed
    }

    /// Values of sensitive and personal fields are stored encrypted (ENC-2).
    pub fn is_encrypted(&self) -> bool {
        self.sensitive || self.personal
    }

    pub fn max_file_bytes(&self) -> u64 {
        self.max_size.unwrap_or(DEFAULT_MAX_FILE_BYTES)
    }

    pub fn max_files(&self) -> u32 {
        self.max_files.unwrap_or(1)
    }
}

/// Checks a whole field list: names, duplicates, options, flags.
pub fn validate_fields(fields: &[Field]) -> Result<(), RecordError> {
    if fields.len() > MAX_FIELDS {
        return Err(RecordError::InvalidSchema(format!(
            "a collection has at most {MAX_FIELDS} fields"
        )));
    }
    for (i, field) in fields.iter().enumerate() {
        let bad = |why: &str| RecordError::InvalidSchema(format!("field {:?}: {why}", field.name));
        if !is_identifier(&field.name) {
            return Err(bad("name must match [a-z][a-z0-9_]{0,62}"));
        }
        if RESERVED.contains(&field.name.as_str()) {
            return Err(bad("this name is reserved"));
        }
        if fields[..i].iter().any(|f| f.name == field.name) {
            return Err(bad("defined twice"));
        }
        match (&field.kind, &field.options) {
            (FieldType::Select, None) => return Err(bad("a select field needs options")),
            (FieldType::Select, Some(options)) => {
                if options.is_empty() || options.len() > MAX_OPTIONS {
                    return Err(bad("a select field needs 1-500 options"));
                }
                if options
                    .iter()
                    .any(|o| o.is_empty() || o.chars().count() > 200)
                {
                    return Err(bad("options must be 1-200 characters"));
                }
            }
            (_, Some(_)) => return Err(bad("only select fields take options")),
            (_, None) => {}
        }
        if matches!(field.kind, FieldType::Json | FieldType::File) && field.is_keyed() {
            return Err(bad("json and file fields cannot be unique or indexed"));
        }
        if field.is_encrypted() && field.is_keyed() {
            return Err(bad(
                "sensitive and personal fields are stored encrypted, so they cannot be unique or indexed",
            ));
        }
        let file_settings =
            field.max_size.is_some() || field.max_files.is_some() || field.accept.is_some();
        if field.kind != FieldType::File && file_settings {
            return Err(bad("only file fields take max_size, max_files and accept"));
        }
        if field.kind == FieldType::File {
            if field.required {
                return Err(bad(
                    "file fields cannot be required (files are added after the record)",
                ));
            }
            if !(1..=MAX_FILE_BYTES).contains(&field.max_file_bytes()) {
                return Err(bad("max_size must be between 1 byte and 5 GiB"));
            }
            if !(1..=MAX_FILES_PER_FIELD).contains(&field.max_files()) {
                return Err(bad("max_files must be between 1 and 100"));
            }
            if let Some(accept) = &field.accept
                && (accept.is_empty() || accept.iter().any(|t| !is_known_type(t)))
            {
                return Err(bad(&format!(
                    "accept must list content types from: {}",
                    KNOWN_TYPES.join(", ")
                )));
            }
        }
    }
    Ok(())
}

/// Checks one value against its field and returns it normalised (e-mail
/// lower-cased, times in UTC).
pub fn check_value(field: &Field, value: &Value) -> Result<Value, RecordError> {
    let wrong = |expected: &str| RecordError::InvalidField {
        field: field.name.clone(),
        reason: format!("expected {expected}"),
    };
    match field.kind {
        // A NUL character is refused everywhere: PostgreSQL can store none,
        // and a value must mean the same on both backends.
        _ if has_nul(value) => Err(RecordError::InvalidField {
            field: field.name.clone(),
            reason: "text must not contain the NUL character (U+0000)".into(),
        }),
        FieldType::Text => match value.as_str() {
            Some(s) if s.chars().count() <= MAX_TEXT_CHARS => Ok(value.clone()),
            Some(_) => Err(wrong("text of at most 65536 characters")),
            None => Err(wrong("a string")),
        },
        FieldType::Integer => value
            .as_i64()
            .map(Value::from)
            .ok_or_else(|| wrong("an integer between -2^63 and 2^63-1")),
        FieldType::Number => value
            .as_f64()
            .filter(|_| value.is_number())
            .map(|_| value.clone())
            .ok_or_else(|| wrong("a number")),
        FieldType::Boolean => value
            .as_bool()
            .map(Value::from)
            .ok_or_else(|| wrong("true or false")),
        FieldType::Datetime => value
            .as_str()
            .and_then(crate::clock::parse_rfc3339)
            .map(|t| Value::String(crate::clock::format(t)))
            .ok_or_else(|| wrong("an RFC 3339 date-time such as 2026-01-31T12:00:00Z")),
        FieldType::Email => value
            .as_str()
            .and_then(|s| crate::identity::Email::parse(s).ok())
            .map(|e| Value::String(e.as_str().to_owned()))
            .ok_or_else(|| wrong("an e-mail address")),
        FieldType::Select => {
            let options = field.options.as_deref().unwrap_or_default();
            match value.as_str() {
                Some(s) if options.iter().any(|o| o == s) => Ok(value.clone()),
                _ => Err(wrong(&format!("one of {}", options.join(", ")))),
            }
        }
        FieldType::Json => Ok(value.clone()),
        FieldType::File => Err(RecordError::InvalidField {
            field: field.name.clone(),
            reason: "file fields change by uploading or deleting files, not in the record body"
                .into(),
        }),
    }
}

/// Whether a string anywhere in `value` (keys included) holds a NUL.
fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Validates a new record, or a patch merged onto an existing one (`base`).
/// `null` in a patch removes the field.
pub fn validate_record(
    fields: &[Field],
    input: &Value,
    base: Option<&Map<String, Value>>,
) -> Result<Map<String, Value>, RecordError> {
    let input = input.as_object().ok_or(RecordError::NotAnObject)?;
    let mut data = base.cloned().unwrap_or_default();
    for (name, value) in input {
        let field = fields
            .iter()
            .find(|f| &f.name == name)
            .ok_or_else(|| RecordError::UnknownField(name.clone()))?;
        if field.kind == FieldType::File {
            // Always a refusal: files change through their own endpoints.
            check_value(field, value)?;
        }
        if value.is_null() {
            data.remove(name);
        } else {
            data.insert(name.clone(), check_value(field, value)?);
        }
    }
    if let Some(missing) = fields
        .iter()
        .find(|f| f.required && !data.contains_key(&f.name))
    {
        return Err(RecordError::MissingField(missing.name.clone()));
    }
    Ok(data)
}

/// Parses a query-string filter value into the field's canonical JSON text,
/// which is how stored values are compared.
pub fn filter_value(field: &Field, text: &str) -> Result<String, RecordError> {
    let invalid = |why: String| RecordError::InvalidQuery(format!("filter[{}]: {why}", field.name));
    if field.is_encrypted() {
        return Err(invalid(
            "sensitive and personal fields are stored encrypted and cannot be filtered on".into(),
        ));
    }
    let value = match field.kind {
        FieldType::Json | FieldType::File => {
            return Err(invalid("json and file fields cannot be filtered on".into()));
        }
        FieldType::Integer => Value::from(
            text.parse::<i64>()
                .map_err(|_| invalid("expected an integer".into()))?,
        ),
        FieldType::Number => serde_json::from_str::<serde_json::Number>(text)
            .map(Value::Number)
            .map_err(|_| invalid("expected a number".into()))?,
        FieldType::Boolean => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(invalid("expected true or false".into())),
        },
        _ => check_value(field, &Value::String(text.to_owned()))
            .map_err(|e| invalid(e.to_string()))?,
    };
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields() -> Vec<Field> {
        serde_json::from_value(json!([
            {"name": "title", "type": "text", "required": true},
            {"name": "status", "type": "select", "options": ["open", "done"]},
            {"name": "priority", "type": "integer"},
            {"name": "due", "type": "datetime"},
        ]))
        .unwrap()
    }

    #[test]
    fn records_are_checked_field_by_field() {
        let f = fields();
        assert!(validate_record(&f, &json!({"title": "Pump", "priority": 3}), None).is_ok());
        assert!(matches!(
            validate_record(&f, &json!({"priority": 3}), None),
            Err(RecordError::MissingField(name)) if name == "title"
        ));
        assert!(matches!(
            validate_record(&f, &json!({"title": "x", "priority": "high"}), None),
            Err(RecordError::InvalidField { field, .. }) if field == "priority"
        ));
        assert!(matches!(
            validate_record(&f, &json!({"title": "x", "colour": 1}), None),
            Err(RecordError::UnknownField(name)) if name == "colour"
        ));
        assert!(matches!(
            validate_record(&f, &json!({"title": "x", "status": "lost"}), None),
            Err(RecordError::InvalidField { field, .. }) if field == "status"
        ));
        let due = validate_record(
            &f,
            &json!({"title": "x", "due": "2026-01-31T14:00:00+02:00"}),
            None,
        )
        .unwrap();
        assert_eq!(due["due"], json!("2026-01-31T12:00:00.000000Z"));
    }

    #[test]
    fn schemas_refuse_bad_names_duplicates_and_option_mistakes() {
        let bad: Vec<Value> = vec![
            json!([{"name": "Title", "type": "text"}]),
            json!([{"name": "id", "type": "text"}]),
            json!([{"name": "a", "type": "text"}, {"name": "a", "type": "integer"}]),
            json!([{"name": "s", "type": "select"}]),
            json!([{"name": "s", "type": "text", "options": ["x"]}]),
            json!([{"name": "s", "type": "text", "sensitive": true, "unique": true}]),
            json!([{"name": "s", "type": "email", "personal": true, "indexed": true}]),
            json!([{"name": "f", "type": "file", "unique": true}]),
            json!([{"name": "f", "type": "file", "max_size": 0}]),
            json!([{"name": "f", "type": "file", "accept": ["text/html"]}]),
            json!([{"name": "t", "type": "text", "max_files": 2}]),
        ];
        for fields in bad {
            let parsed: Vec<Field> = serde_json::from_value(fields.clone()).unwrap();
            assert!(validate_fields(&parsed).is_err(), "{fields} accepted");
        }
        assert!(
            serde_json::from_value::<Vec<Field>>(json!([{"name": "a", "type": "blob"}])).is_err()
        );
    }
}
