//! The mail templates: one TOML file per language in `templates/mail/`,
//! compiled into the binary by `build.rs`. Each has every template of
//! [`TEMPLATES`], each with a subject, a plain-text and an HTML body.
//! `{{name}}` is a placeholder; in HTML its value is escaped.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;

include!(concat!(env!("OUT_DIR"), "/mail_languages.rs"));

/// The language a tenant has unless it chose another.
pub const DEFAULT_LANGUAGE: &str = "en";

/// Every template, with the placeholders it may use.
pub const TEMPLATES: &[(&str, &[&str])] = &[
    ("invitation", &["tenant", "email", "link", "expires_at"]),
    ("password_reset", &["tenant", "email", "link", "expires_at"]),
    ("password_temporary", &["tenant", "email", "password"]),
    ("password_changed", &["tenant", "email", "changed_at"]),
    ("mfa_code", &["tenant", "email", "code", "minutes"]),
    // A text message: only its `text` is sent.
    ("sms_code", &["tenant", "code", "minutes"]),
    (
        "new_device",
        &["tenant", "email", "when", "device", "address", "link"],
    ),
    (
        "support_request",
        &[
            "tenant",
            "operator",
            "reason",
            "collections",
            "access",
            "hours",
            "grant",
            "reference",
            "authority",
        ],
    ),
    (
        "support_legal_order",
        &[
            "tenant",
            "operator",
            "reason",
            "collections",
            "access",
            "hours",
            "grant",
            "reference",
            "authority",
        ],
    ),
];

/// A language's file: its name, and every other table a template (serde's
/// `flatten` cannot deny unknown fields; the tests refuse a template no
/// code sends).
#[derive(Debug, Deserialize)]
struct LanguageFile {
    name: String,
    #[serde(flatten)]
    templates: HashMap<String, Template>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Template {
    subject: String,
    text: String,
    html: String,
}

/// A message ready to send.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("no mail template {0:?}")]
    UnknownTemplate(String),
    #[error("template {template:?} uses {{{{{name}}}}}, which it does not declare")]
    UndeclaredPlaceholder { template: String, name: String },
    #[error("template {template:?} misses the value of {{{{{name}}}}}")]
    MissingValue { template: String, name: String },
    #[error("template {0:?} has a `{{{{` without its `}}}}`")]
    Unclosed(String),
    #[error("the mail templates of {language:?} do not parse: {error}")]
    BadFile { language: String, error: String },
}

fn parsed() -> &'static Result<HashMap<&'static str, LanguageFile>, TemplateError> {
    static PARSED: OnceLock<Result<HashMap<&'static str, LanguageFile>, TemplateError>> =
        OnceLock::new();
    PARSED.get_or_init(|| {
        LANGUAGES
            .iter()
            .map(|(code, text)| {
                toml::from_str::<LanguageFile>(text)
                    .map(|file| (*code, file))
                    .map_err(|e| TemplateError::BadFile {
                        language: (*code).to_owned(),
                        error: e.to_string(),
                    })
            })
            .collect()
    })
}

/// The languages there are templates for: (code, name), by code.
pub fn languages() -> Vec<(&'static str, &'static str)> {
    match parsed() {
        Ok(files) => {
            let mut out: Vec<_> = files
                .iter()
                .map(|(code, file)| (*code, file.name.as_str()))
                .collect();
            out.sort();
            out
        }
        Err(_) => Vec::new(),
    }
}

/// Whether `code` is a language there are templates for.
pub fn is_language(code: &str) -> bool {
    languages().iter().any(|(c, _)| *c == code)
}

/// Renders `template` in `language` (the default language if there is no
/// file for it) with `values`.
pub fn render(
    template: &str,
    language: &str,
    values: &[(&str, &str)],
) -> Result<Rendered, TemplateError> {
    let files = parsed().as_ref().map_err(Clone::clone)?;
    let declared = TEMPLATES
        .iter()
        .find(|(name, _)| *name == template)
        .map(|(_, vars)| *vars)
        .ok_or_else(|| TemplateError::UnknownTemplate(template.to_owned()))?;
    let file = files
        .get(language)
        .or_else(|| files.get(DEFAULT_LANGUAGE))
        .ok_or_else(|| TemplateError::UnknownTemplate(template.to_owned()))?;
    let source = file
        .templates
        .get(template)
        .ok_or_else(|| TemplateError::UnknownTemplate(template.to_owned()))?;
    let fill = |text: &str, html: bool| fill(template, text, declared, values, html);
    Ok(Rendered {
        subject: fill(&source.subject, false)?.trim().to_owned(),
        text: fill(&source.text, false)?.trim_start().to_owned(),
        html: format!(
            "<!doctype html>\n<html lang=\"{}\"><head><meta charset=\"utf-8\"></head><body>\n{}</body></html>\n",
            if files.contains_key(language) {
                language
            } else {
                DEFAULT_LANGUAGE
            },
            fill(&source.html, true)?.trim_start()
        ),
    })
}

fn fill(
    template: &str,
    text: &str,
    declared: &[&str],
    values: &[(&str, &str)],
    html: bool,
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(text.len() + 64);
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| TemplateError::Unclosed(template.to_owned()))?;
        let name = after[..end].trim();
        if !declared.contains(&name) {
            return Err(TemplateError::UndeclaredPlaceholder {
                template: template.to_owned(),
                name: name.to_owned(),
            });
        }
        let value = values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| TemplateError::MissingValue {
                template: template.to_owned(),
                name: name.to_owned(),
            })?;
        if html {
            escape_into(&mut out, value);
        } else {
            out.push_str(value);
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values_for(vars: &[&'static str]) -> Vec<(&'static str, &'static str)> {
        vars.iter().map(|v| (*v, "<v&\"'>")).collect()
    }

    #[test]
    fn every_language_has_every_template_and_each_renders() {
        assert!(parsed().is_ok(), "{:?}", parsed().as_ref().err());
        let languages = languages();
        assert!(languages.iter().any(|(c, _)| *c == "en"));
        assert!(languages.iter().any(|(c, _)| *c == "cs"));
        for (code, _) in &languages {
            let file = &parsed().as_ref().unwrap()[code];
            for name in file.templates.keys() {
                assert!(
                    TEMPLATES.iter().any(|(t, _)| t == name),
                    "{code}.toml has {name}, which no code sends"
                );
            }
            for (template, vars) in TEMPLATES {
                assert!(
                    file.templates.contains_key(*template),
                    "{code}.toml misses {template}"
                );
                let rendered = render(template, code, &values_for(vars)).unwrap();
                assert!(!rendered.subject.is_empty() && !rendered.text.is_empty());
                assert!(!rendered.html.contains("<v&"), "{code}/{template} escapes");
                assert!(rendered.html.contains("&lt;v&amp;&quot;&#39;&gt;"));
                assert!(!rendered.text.contains("{{") && !rendered.html.contains("{{"));
            }
        }
    }

    #[test]
    fn a_missing_value_or_an_unknown_template_is_an_error() {
        assert!(matches!(
            render("invitation", "en", &[("tenant", "Acme")]),
            Err(TemplateError::MissingValue { .. })
        ));
        assert!(matches!(
            render("nope", "en", &[]),
            Err(TemplateError::UnknownTemplate(_))
        ));
        assert_eq!(
            fill("t", "a {{b}}", &["c"], &[], false),
            Err(TemplateError::UndeclaredPlaceholder {
                template: "t".into(),
                name: "b".into()
            })
        );
        assert_eq!(
            fill("t", "a {{b", &["b"], &[("b", "x")], false),
            Err(TemplateError::Unclosed("t".into()))
        );
    }

    #[test]
    fn an_unknown_language_falls_back_to_english() {
        let values = [
            ("tenant", "Acme"),
            ("email", "a@b.c"),
            ("changed_at", "now"),
        ];
        let rendered = render("password_changed", "xx", &values).unwrap();
        assert_eq!(rendered, render("password_changed", "en", &values).unwrap());
        assert!(rendered.html.contains("lang=\"en\""));
    }
}
