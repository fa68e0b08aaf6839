//! Erlang's External Term Format (version 131) as Discord's gateway speaks it with
//! `encoding=etf`, converted to and from JSON values.
//!
//! Encoding follows what Discord sends and `erlpack` (Discord's own codec, used by the
//! JavaScript and Python clients) reads: maps with atom keys (`SMALL_ATOM_EXT`), strings as
//! binaries, `null` as the atom `nil`, booleans as atoms, integers as small, 32-bit or small-big
//! integers, floats as `NEW_FLOAT_EXT`, arrays as lists (`NIL_EXT` when empty). Only Latin-1
//! atoms are written, since `erlpack` reads no UTF-8 atom tags.
//!
//! Decoding takes what clients send: every tag above, UTF-8 atoms, tuples (as arrays), integer
//! map keys (as strings) and `STRING_EXT`. Compressed terms are refused, as Discord refuses them,
//! and so is anything deeper than [`MAX_DEPTH`], an integer wider than 64 bits, a string that is
//! not UTF-8 or trailing bytes: a client's frame is hostile until it decodes.

use serde_json::{Map, Number, Value};

/// The format's version byte, first in every term.
pub const VERSION: u8 = 131;
/// Deepest nesting [`decode`] accepts.
pub const MAX_DEPTH: usize = 32;

const NEW_FLOAT_EXT: u8 = 70;
const COMPRESSED: u8 = 80;
const SMALL_INTEGER_EXT: u8 = 97;
const INTEGER_EXT: u8 = 98;
const FLOAT_EXT: u8 = 99;
const ATOM_EXT: u8 = 100;
const SMALL_TUPLE_EXT: u8 = 104;
const LARGE_TUPLE_EXT: u8 = 105;
const NIL_EXT: u8 = 106;
const STRING_EXT: u8 = 107;
const LIST_EXT: u8 = 108;
const BINARY_EXT: u8 = 109;
const SMALL_BIG_EXT: u8 = 110;
const LARGE_BIG_EXT: u8 = 111;
const SMALL_ATOM_EXT: u8 = 115;
const MAP_EXT: u8 = 116;
const ATOM_UTF8_EXT: u8 = 118;
const SMALL_ATOM_UTF8_EXT: u8 = 119;

/// Why a term did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EtfError {
    /// The first byte is not [`VERSION`].
    #[error("not an ETF term: version byte {0}, expected 131")]
    Version(u8),
    /// The term ends early.
    #[error("the term ends early")]
    Truncated,
    /// A tag the gateway does not take (pids, references, funs...).
    #[error("ETF tag {0} is not accepted")]
    Tag(u8),
    /// A compressed term: clients must not send them.
    #[error("compressed ETF is not accepted from clients")]
    Compressed,
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("nested deeper than {MAX_DEPTH}")]
    TooDeep,
    /// An integer wider than 64 bits, or a float that is not finite.
    #[error("a number out of range")]
    Number,
    /// A string or atom that is not UTF-8.
    #[error("a string that is not UTF-8")]
    Utf8,
    /// A map key that is not a string, an atom or an integer.
    #[error("a map key that is not a string, an atom or an integer")]
    Key,
    /// Bytes after the term.
    #[error("{0} bytes after the term")]
    Trailing(usize),
}

/// Encodes a JSON value as an ETF term, version byte first.
#[must_use]
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(VERSION);
    encode_into(value, &mut out);
    out
}

fn encode_into(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => atom("nil", out),
        Value::Bool(true) => atom("true", out),
        Value::Bool(false) => atom("false", out),
        Value::Number(n) => number(n, out),
        Value::String(s) => binary(s.as_bytes(), out),
        Value::Array(items) => {
            if !items.is_empty() {
                out.push(LIST_EXT);
                out.extend_from_slice(&len32(items.len()).to_be_bytes());
                for item in items {
                    encode_into(item, out);
                }
            }
            out.push(NIL_EXT);
        }
        Value::Object(map) => {
            out.push(MAP_EXT);
            out.extend_from_slice(&len32(map.len()).to_be_bytes());
            for (key, value) in map {
                if key.len() <= 255 && key.is_ascii() {
                    atom(key, out);
                } else {
                    binary(key.as_bytes(), out);
                }
                encode_into(value, out);
            }
        }
    }
}

fn len32(len: usize) -> u32 {
    u32::try_from(len).expect("a gateway payload is far below 4 GiB")
}

/// A Latin-1 (here: ASCII) atom of at most 255 bytes.
fn atom(name: &str, out: &mut Vec<u8>) {
    out.push(SMALL_ATOM_EXT);
    out.push(u8::try_from(name.len()).expect("atoms are short"));
    out.extend_from_slice(name.as_bytes());
}

fn binary(bytes: &[u8], out: &mut Vec<u8>) {
    out.push(BINARY_EXT);
    out.extend_from_slice(&len32(bytes.len()).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn number(n: &Number, out: &mut Vec<u8>) {
    if let Some(u) = n.as_u64() {
        if let Ok(small) = u8::try_from(u) {
            out.extend_from_slice(&[SMALL_INTEGER_EXT, small]);
        } else if let Ok(int) = i32::try_from(u) {
            out.push(INTEGER_EXT);
            out.extend_from_slice(&int.to_be_bytes());
        } else {
            big(u, false, out);
        }
    } else if let Some(i) = n.as_i64() {
        if let Ok(int) = i32::try_from(i) {
            out.push(INTEGER_EXT);
            out.extend_from_slice(&int.to_be_bytes());
        } else {
            big(i.unsigned_abs(), true, out);
        }
    } else {
        out.push(NEW_FLOAT_EXT);
        out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_bits().to_be_bytes());
    }
}

fn big(magnitude: u64, negative: bool, out: &mut Vec<u8>) {
    let bytes = magnitude.to_le_bytes();
    let digits = 8 - (magnitude.leading_zeros() / 8) as usize;
    out.extend_from_slice(&[
        SMALL_BIG_EXT,
        u8::try_from(digits).expect("at most 8"),
        u8::from(negative),
    ]);
    out.extend_from_slice(&bytes[..digits]);
}

/// Decodes one ETF term (version byte first) into a JSON value. See the module docs for what
/// is refused.
pub fn decode(bytes: &[u8]) -> Result<Value, EtfError> {
    let mut reader = Reader { bytes, at: 0 };
    let version = reader.u8()?;
    if version != VERSION {
        return Err(EtfError::Version(version));
    }
    let value = reader.term(0)?;
    match bytes.len() - reader.at {
        0 => Ok(value),
        rest => Err(EtfError::Trailing(rest)),
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EtfError> {
        let end = self.at.checked_add(n).ok_or(EtfError::Truncated)?;
        let slice = self.bytes.get(self.at..end).ok_or(EtfError::Truncated)?;
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, EtfError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<usize, EtfError> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn u32(&mut self) -> Result<usize, EtfError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn text(&mut self, n: usize) -> Result<&'a str, EtfError> {
        std::str::from_utf8(self.take(n)?).map_err(|_| EtfError::Utf8)
    }

    /// A count of items that each take at least `min` bytes: more than the bytes left is a lie.
    fn count(&mut self, n: usize, min: usize) -> Result<usize, EtfError> {
        if n.saturating_mul(min) > self.bytes.len() - self.at {
            return Err(EtfError::Truncated);
        }
        Ok(n)
    }

    fn term(&mut self, depth: usize) -> Result<Value, EtfError> {
        if depth > MAX_DEPTH {
            return Err(EtfError::TooDeep);
        }
        let tag = self.u8()?;
        Ok(match tag {
            SMALL_INTEGER_EXT => Value::from(self.u8()?),
            INTEGER_EXT => {
                let b = self.take(4)?;
                Value::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            }
            SMALL_BIG_EXT | LARGE_BIG_EXT => {
                let digits = if tag == SMALL_BIG_EXT {
                    usize::from(self.u8()?)
                } else {
                    self.u32()?
                };
                let negative = self.u8()? != 0;
                let digits = self.take(digits)?;
                if digits.len() > 8 {
                    return Err(EtfError::Number);
                }
                let mut le = [0u8; 8];
                le[..digits.len()].copy_from_slice(digits);
                let magnitude = u64::from_le_bytes(le);
                if negative {
                    let value = 0i64
                        .checked_sub_unsigned(magnitude)
                        .ok_or(EtfError::Number)?;
                    Value::from(value)
                } else {
                    Value::from(magnitude)
                }
            }
            NEW_FLOAT_EXT => {
                let b = self.take(8)?;
                let float = f64::from_be_bytes(b.try_into().expect("8 bytes"));
                Value::Number(Number::from_f64(float).ok_or(EtfError::Number)?)
            }
            FLOAT_EXT => {
                let text = self.text(31)?;
                let float: f64 = text
                    .trim_end_matches('\0')
                    .trim()
                    .parse()
                    .map_err(|_| EtfError::Number)?;
                Value::Number(Number::from_f64(float).ok_or(EtfError::Number)?)
            }
            ATOM_EXT | ATOM_UTF8_EXT => {
                let n = self.u16()?;
                atom_value(self.text(n)?)
            }
            SMALL_ATOM_EXT | SMALL_ATOM_UTF8_EXT => {
                let n = usize::from(self.u8()?);
                atom_value(self.text(n)?)
            }
            BINARY_EXT => {
                let n = self.u32()?;
                Value::String(self.text(n)?.to_owned())
            }
            STRING_EXT => {
                let n = self.u16()?;
                Value::String(self.text(n)?.to_owned())
            }
            NIL_EXT => Value::Array(Vec::new()),
            LIST_EXT => {
                let n = self.u32()?;
                let n = self.count(n, 1)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.term(depth + 1)?);
                }
                // A proper list ends in NIL_EXT; an improper tail is not JSON.
                if self.u8()? != NIL_EXT {
                    return Err(EtfError::Tag(LIST_EXT));
                }
                Value::Array(items)
            }
            SMALL_TUPLE_EXT | LARGE_TUPLE_EXT => {
                let n = if tag == SMALL_TUPLE_EXT {
                    usize::from(self.u8()?)
                } else {
                    self.u32()?
                };
                let n = self.count(n, 1)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.term(depth + 1)?);
                }
                Value::Array(items)
            }
            MAP_EXT => {
                let n = self.u32()?;
                let n = self.count(n, 2)?;
                let mut map = Map::new();
                for _ in 0..n {
                    let key = match self.term(depth + 1)? {
                        Value::String(key) => key,
                        Value::Number(n) if !n.is_f64() => n.to_string(),
                        // `nil`, `true` and `false` as keys are atoms too.
                        Value::Null => "nil".to_owned(),
                        Value::Bool(b) => b.to_string(),
                        _ => return Err(EtfError::Key),
                    };
                    let value = self.term(depth + 1)?;
                    map.insert(key, value);
                }
                Value::Object(map)
            }
            COMPRESSED => return Err(EtfError::Compressed),
            other => return Err(EtfError::Tag(other)),
        })
    }
}

fn atom_value(name: &str) -> Value {
    match name {
        "nil" | "null" => Value::Null,
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        other => Value::String(other.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_gateway_payload_round_trips() {
        let value = json!({
            "op": 0, "s": 70000, "t": "MESSAGE_CREATE",
            "d": {"id": "1234567890123456789", "content": "héllo", "tts": false, "pinned": true,
                  "nonce": null, "embeds": [], "mentions": [{"id": "1"}], "ratio": 0.5,
                  "big": 18_446_744_073_709_551_615u64, "negative": -5, "very_negative": -9_000_000_000i64},
        });
        assert_eq!(decode(&encode(&value)).unwrap(), value);
    }

    #[test]
    fn encoding_matches_erlpack_byte_for_byte() {
        // `erlpack.pack({op: 1, d: null})` with atom keys, as Discord sends it.
        let bytes = encode(&json!({"op": 1, "d": null}));
        let mut expected = vec![131, 116, 0, 0, 0, 2];
        expected.extend_from_slice(&[115, 1, b'd', 115, 3, b'n', b'i', b'l']);
        expected.extend_from_slice(&[115, 2, b'o', b'p', 97, 1]);
        assert_eq!(bytes, expected);
        assert_eq!(encode(&json!([])), vec![131, 106]);
        assert_eq!(encode(&json!("ab")), vec![131, 109, 0, 0, 0, 2, b'a', b'b']);
        assert_eq!(encode(&json!(256)), vec![131, 98, 0, 0, 1, 0]);
        assert_eq!(
            encode(&json!(1u64 << 40)),
            vec![131, 110, 6, 0, 0, 0, 0, 0, 0, 1]
        );
    }

    #[test]
    fn what_clients_send_decodes() {
        // A heartbeat as erlpack packs it from JavaScript: binary keys, an integer.
        let mut heartbeat = vec![131, 116, 0, 0, 0, 2];
        heartbeat.extend_from_slice(&[109, 0, 0, 0, 2, b'o', b'p', 97, 1]);
        heartbeat.extend_from_slice(&[109, 0, 0, 0, 1, b'd', 98, 0, 0, 1, 0]);
        assert_eq!(decode(&heartbeat).unwrap(), json!({"op": 1, "d": 256}));
        // UTF-8 atoms, a tuple, STRING_EXT and an integer key.
        let mut other = vec![131, 116, 0, 0, 0, 3];
        other.extend_from_slice(&[119, 1, b'a', 104, 2, 97, 1, 119, 4]);
        other.extend_from_slice(b"true");
        other.extend_from_slice(&[118, 0, 1, b'b', 107, 0, 2, b'h', b'i']);
        other.extend_from_slice(&[97, 7, 106]);
        assert_eq!(
            decode(&other).unwrap(),
            json!({"a": [1, true], "b": "hi", "7": []})
        );
    }

    #[test]
    fn hostile_terms_are_refused() {
        assert_eq!(decode(&[]), Err(EtfError::Truncated));
        assert_eq!(decode(&[130, 97, 1]), Err(EtfError::Version(130)));
        assert_eq!(decode(&[131, 80, 0, 0, 0, 1]), Err(EtfError::Compressed));
        assert_eq!(decode(&[131, 103]), Err(EtfError::Tag(103)));
        assert_eq!(decode(&[131, 97, 1, 0]), Err(EtfError::Trailing(1)));
        assert_eq!(
            decode(&[131, 109, 0, 0, 0, 2, 0xff, 0xfe]),
            Err(EtfError::Utf8)
        );
        // A list claiming four billion items in a few bytes allocates nothing.
        assert_eq!(
            decode(&[131, 108, 0xff, 0xff, 0xff, 0xff, 106]),
            Err(EtfError::Truncated)
        );
        assert_eq!(
            decode(&[131, 110, 9, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
            Err(EtfError::Number)
        );
        let mut deep = vec![131];
        for _ in 0..=MAX_DEPTH + 1 {
            deep.extend_from_slice(&[108, 0, 0, 0, 1]);
        }
        assert_eq!(decode(&deep), Err(EtfError::TooDeep));
        // A float key is no key.
        assert_eq!(
            decode(&[131, 116, 0, 0, 0, 1, 70, 0, 0, 0, 0, 0, 0, 0, 0, 97, 1]),
            Err(EtfError::Key)
        );
    }
}
