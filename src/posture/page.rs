//! The trust page (POS-1): a tenant's signed posture report as one
//! self-contained, printable HTML page — no script, no external asset, a
//! Content-Security-Policy that allows only its own inline style (by
//! hash) — which the tenant's admin can save and hand to their customers
//! or auditors. The signed document is on the page, so a saved copy can be
//! checked with `strongroom posture check`.

use base64::Engine;
use serde_json::Value;
use sha2::{Digest, Sha256};

const STYLE: &str = "\
body{font:14px/1.45 system-ui,sans-serif;color:#1b1f24;margin:2rem auto;max-width:70rem;padding:0 1rem}\
h1{font-size:1.5rem;margin:0 0 .25rem}p.meta{color:#57606a;margin:0 0 1.25rem}\
.summary span{display:inline-block;margin-right:1.25rem;font-weight:600}\
table{border-collapse:collapse;width:100%;margin-top:1rem}\
th,td{border-bottom:1px solid #d0d7de;padding:.35rem .5rem;text-align:left;vertical-align:top}\
th{background:#f6f8fa}td.id{white-space:nowrap;font-family:ui-monospace,monospace}\
.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:700}.warn{color:#9a6700;font-weight:600}\
.none{color:#8c959f}pre{white-space:pre-wrap;word-break:break-all;font-size:11px;background:#f6f8fa;padding:.75rem}\
@media print{details{display:none}body{margin:0}}";

/// The page and the policy it must be served with.
pub struct Page {
    pub html: String,
    pub csp: String,
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Renders a signed report (`signed::sign`'s document).
pub fn render(document: &Value) -> Page {
    let report = &document["report"];
    let text = |v: &Value| escape(v.as_str().unwrap_or(""));
    let tenant = &report["scope"]["tenant"];
    let who = match tenant["name"].as_str() {
        Some(_) => format!("{} ({})", text(&tenant["name"]), text(&tenant["slug"])),
        None => "this instance".to_owned(),
    };
    let controls = report["controls"].as_array().cloned().unwrap_or_default();
    let count = |verdict: &str| {
        controls
            .iter()
            .filter(|c| c["verdict"].as_str() == Some(verdict))
            .count()
    };
    let mut rows = String::new();
    for control in &controls {
        let verdict = control["verdict"].as_str().unwrap_or("none");
        let status = control["status"].as_str().unwrap_or("").replace('_', " ");
        rows.push_str(&format!(
            "<tr><td class=\"id\">{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td></tr>\n",
            text(&control["id"]),
            text(&control["title"]),
            escape(&status),
            escape(verdict),
            match verdict {
                "none" => "—",
                v => v,
            },
            match control["evidence"].as_str() {
                Some(e) => escape(e),
                None => "no live check yet".to_owned(),
            }
        ));
    }
    let signed = serde_json::to_string_pretty(document).unwrap_or_default();
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Security posture — {who}</title><style>{STYLE}</style></head><body>\
<h1>Security posture of {who}</h1>\
<p class=\"meta\">Measured live by Strongroom {version} on {node} at {at}. \
Each control is checked against the running instance; the report is signed (Ed25519).</p>\
<p class=\"summary\"><span class=\"pass\">{pass} pass</span><span class=\"warn\">{warn} warn</span>\
<span class=\"fail\">{fail} fail</span><span class=\"none\">{none} without a live check</span></p>\
<table><thead><tr><th>Control</th><th>Promise</th><th>Status</th><th>Verdict</th><th>Evidence</th></tr></thead>\
<tbody>\n{rows}</tbody></table>\
<p class=\"meta\">Signature {signature} by public key {key} (also at /api/v1/posture/key). \
To check: save the document below as a file and run <code>strongroom posture check FILE --key {key}</code>.</p>\
<details><summary>Signed document</summary><pre>{document}</pre></details>\
</body></html>\n",
        version = text(&report["version"]),
        node = text(&report["node"]),
        at = text(&report["generated_at"]),
        pass = count("pass"),
        warn = count("warn"),
        fail = count("fail"),
        none = controls.iter().filter(|c| c["verdict"].is_null()).count(),
        signature = text(&document["signature"]),
        key = text(&document["public_key"]),
        document = escape(&signed),
    );
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(STYLE.as_bytes()));
    Page {
        html,
        csp: format!(
            "default-src 'none'; style-src 'sha256-{hash}'; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn evidence_is_escaped_and_the_style_is_allowed_by_its_hash() {
        let doc = json!({"report": {"scope": {"tenant": {"name": "<b>Acme</b>", "slug": "acme"}},
            "controls": [{"id": "AUD-7", "title": "t", "status": "enforced", "verdict": "pass",
            "evidence": "<script>alert(1)</script>"}]}, "signature": "s", "public_key": "k"});
        let page = render(&doc);
        assert!(!page.html.contains("<script>"));
        assert!(!page.html.contains("<b>Acme"));
        assert!(page.html.contains("&lt;script&gt;"));
        let hash =
            base64::engine::general_purpose::STANDARD.encode(Sha256::digest(STYLE.as_bytes()));
        assert!(page.csp.contains(&hash));
        assert!(page.html.contains(&format!("<style>{STYLE}</style>")));
    }
}
