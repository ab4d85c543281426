//! Content types are read from a file's first bytes, never taken from the
//! client (FIL-4). Active content (HTML, SVG, XML) is recognised so it can
//! be refused: it could run script if a browser ever rendered it.

pub use crate::records::schema::{KNOWN_TYPES, is_known_type};

/// The type of a file from its first bytes (up to 512 are looked at).
pub fn sniff(head: &[u8]) -> &'static str {
    const MAGIC: &[(&[u8], &str)] = &[
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"\xff\xd8\xff", "image/jpeg"),
        (b"GIF87a", "image/gif"),
        (b"GIF89a", "image/gif"),
        (b"%PDF-", "application/pdf"),
        (b"PK\x03\x04", "application/zip"),
        (b"PK\x05\x06", "application/zip"),
    ];
    if let Some((_, kind)) = MAGIC.iter().find(|(magic, _)| head.starts_with(magic)) {
        return kind;
    }
    if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        return "image/webp";
    }
    if looks_like_text(head) {
        let text = String::from_utf8_lossy(head).to_ascii_lowercase();
        let text = text.trim_start_matches('\u{feff}').trim_start();
        const ACTIVE: &[(&str, &str)] = &[
            ("<!doctype html", "text/html"),
            ("<html", "text/html"),
            ("<head", "text/html"),
            ("<body", "text/html"),
            ("<script", "text/html"),
            ("<iframe", "text/html"),
            ("<svg", "image/svg+xml"),
            ("<?xml", "application/xml"),
        ];
        if let Some((_, kind)) = ACTIVE.iter().find(|(tag, _)| text.starts_with(tag)) {
            return kind;
        }
        if text.contains("<script") || text.contains("<svg") || text.contains("<html") {
            return "text/html";
        }
        return "text/plain";
    }
    "application/octet-stream"
}

/// UTF-8 without NUL or other binary control bytes (a character cut at the
/// end of the window is allowed).
fn looks_like_text(head: &[u8]) -> bool {
    if head.is_empty() {
        return true;
    }
    let valid = match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none() && e.valid_up_to() + 4 > head.len(),
    };
    valid
        && !head
            .iter()
            .any(|&b| b < 0x20 && !matches!(b, b'\n' | b'\r' | b'\t' | 0x0c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_come_from_the_bytes() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), "image/png");
        assert_eq!(sniff(b"%PDF-1.7\n"), "application/pdf");
        assert_eq!(sniff(b"RIFF\x10\0\0\0WEBPVP8 "), "image/webp");
        assert_eq!(sniff(b"name,qty\npump,2\n"), "text/plain");
        assert_eq!(sniff(b""), "text/plain");
        assert_eq!(sniff(b"\x7fELF\x02\x01\x01\0"), "application/octet-stream");
        assert_eq!(sniff(b"  <!DOCTYPE html><p>hi"), "text/html");
        assert_eq!(sniff(b"\xef\xbb\xbf<svg xmlns="), "image/svg+xml");
        assert_eq!(sniff(b"notes\n<script>alert(1)</script>"), "text/html");
        assert!(!is_known_type("text/html"));
        assert!(!is_known_type("image/svg+xml"));
    }
}
