//! The subset of CBOR (RFC 8949) a WebAuthn authenticator speaks: integers,
//! byte and text strings, arrays, maps, booleans and null, all of definite
//! length (CTAP2's canonical form has no other). Input comes from clients,
//! so every length is checked against the bytes left and nesting is bounded.

/// A decoded CBOR item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cbor {
    /// An integer: major types 0 and 1 (−2⁶⁴ … 2⁶⁴−1).
    Int(i128),
    Bytes(Vec<u8>),
    Text(String),
    Array(Vec<Cbor>),
    Map(Vec<(Cbor, Cbor)>),
    Bool(bool),
    Null,
}

/// Why bytes are not the CBOR expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed CBOR: {0}")]
pub struct CborError(pub &'static str);

/// Deeper than any attestation object or COSE key nests.
const MAX_DEPTH: usize = 8;

impl Cbor {
    /// The item at the start of `bytes`, and how many bytes it took.
    pub fn decode_prefix(bytes: &[u8]) -> Result<(Cbor, usize), CborError> {
        let mut reader = Reader { bytes, at: 0 };
        let item = reader.item(0)?;
        Ok((item, reader.at))
    }

    /// `bytes` as exactly one item.
    pub fn decode(bytes: &[u8]) -> Result<Cbor, CborError> {
        let (item, used) = Cbor::decode_prefix(bytes)?;
        if used != bytes.len() {
            return Err(CborError("bytes after the item"));
        }
        Ok(item)
    }

    /// The value of a map's entry whose key is the integer `key`.
    pub fn int_key(&self, key: i128) -> Option<&Cbor> {
        self.entry(|k| *k == Cbor::Int(key))
    }

    /// The value of a map's entry whose key is the text `key`.
    pub fn text_key(&self, key: &str) -> Option<&Cbor> {
        self.entry(|k| matches!(k, Cbor::Text(t) if t == key))
    }

    fn entry(&self, is_key: impl Fn(&Cbor) -> bool) -> Option<&Cbor> {
        match self {
            Cbor::Map(entries) => entries.iter().find(|(k, _)| is_key(k)).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Cbor::Bytes(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i128> {
        match self {
            Cbor::Int(n) => Some(*n),
            _ => None,
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], CborError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(CborError("truncated"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    /// The argument of an item's head (RFC 8949 §3).
    fn argument(&mut self, info: u8) -> Result<u64, CborError> {
        Ok(match info {
            0..=23 => u64::from(info),
            24 => u64::from(self.take(1)?[0]),
            25 => u64::from(u16::from_be_bytes(
                self.take(2)?.try_into().unwrap_or([0; 2]),
            )),
            26 => u64::from(u32::from_be_bytes(
                self.take(4)?.try_into().unwrap_or([0; 4]),
            )),
            27 => u64::from_be_bytes(self.take(8)?.try_into().unwrap_or([0; 8])),
            31 => return Err(CborError("indefinite lengths are not allowed")),
            _ => return Err(CborError("reserved additional information")),
        })
    }

    /// A length that must fit in what is left (each element takes a byte
    /// at least, so a count larger than the rest is a lie).
    fn length(&mut self, info: u8) -> Result<usize, CborError> {
        let n = self.argument(info)?;
        let left = (self.bytes.len() - self.at) as u64;
        if n > left {
            return Err(CborError("a length beyond the input"));
        }
        Ok(n as usize)
    }

    fn item(&mut self, depth: usize) -> Result<Cbor, CborError> {
        if depth > MAX_DEPTH {
            return Err(CborError("nested too deeply"));
        }
        let head = self.take(1)?[0];
        let (major, info) = (head >> 5, head & 0x1f);
        Ok(match major {
            0 => Cbor::Int(i128::from(self.argument(info)?)),
            1 => Cbor::Int(-1 - i128::from(self.argument(info)?)),
            2 => {
                let n = self.length(info)?;
                Cbor::Bytes(self.take(n)?.to_vec())
            }
            3 => {
                let n = self.length(info)?;
                let text = std::str::from_utf8(self.take(n)?)
                    .map_err(|_| CborError("text that is not UTF-8"))?;
                Cbor::Text(text.to_owned())
            }
            4 => {
                let n = self.length(info)?;
                let mut items = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    items.push(self.item(depth + 1)?);
                }
                Cbor::Array(items)
            }
            5 => {
                let n = self.length(info)?;
                let mut entries = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    let key = self.item(depth + 1)?;
                    if entries.iter().any(|(k, _)| *k == key) {
                        return Err(CborError("a map key given twice"));
                    }
                    let value = self.item(depth + 1)?;
                    entries.push((key, value));
                }
                Cbor::Map(entries)
            }
            6 => {
                // A tag: the tagged item stands for itself here.
                self.argument(info)?;
                self.item(depth + 1)?
            }
            _ => match info {
                20 => Cbor::Bool(false),
                21 => Cbor::Bool(true),
                22 => Cbor::Null,
                _ => return Err(CborError("an unsupported simple value or float")),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_rfc_8949_examples_and_refuses_malformed_input() {
        // RFC 8949 appendix A.
        assert_eq!(Cbor::decode(&[0x17]), Ok(Cbor::Int(23)));
        assert_eq!(Cbor::decode(&[0x19, 0x03, 0xe8]), Ok(Cbor::Int(1000)));
        assert_eq!(Cbor::decode(&[0x38, 0x63]), Ok(Cbor::Int(-100)));
        assert_eq!(
            Cbor::decode(&[0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Ok(Cbor::Int(-18446744073709551616))
        );
        assert_eq!(
            Cbor::decode(&[0x44, 1, 2, 3, 4]),
            Ok(Cbor::Bytes(vec![1, 2, 3, 4]))
        );
        assert_eq!(
            Cbor::decode(&[0x62, 0x22, 0x5c]),
            Ok(Cbor::Text("\"\\".into()))
        );
        let map = Cbor::decode(&[0xa2, 0x01, 0x02, 0x61, 0x61, 0x82, 0x02, 0x03]).unwrap();
        assert_eq!(map.int_key(1), Some(&Cbor::Int(2)));
        assert_eq!(
            map.text_key("a"),
            Some(&Cbor::Array(vec![Cbor::Int(2), Cbor::Int(3)]))
        );
        for bad in [
            &[0x44, 1, 2][..],                                           // truncated bytes
            &[0x5f, 0x41, 0x01, 0xff][..],                               // indefinite length
            &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..], // huge count
            &[0xa2, 0x01, 0x02, 0x01, 0x03][..],                         // a key twice
            &[0x62, 0xff, 0xfe][..],                                     // not UTF-8
            &[0xf9, 0x3c, 0x00][..],                                     // a float
            &[0x01, 0x02][..],                                           // trailing bytes
            &[0x81; 20][..],                                             // too deep
        ] {
            assert!(Cbor::decode(bad).is_err(), "{bad:02x?}");
        }
    }
}
