//! One connection's wire format, sans I/O: the gateway core speaks JSON text, and this turns it
//! into the frames the client asked for in its URL and IDENTIFY, and the client's frames back.
//!
//! - `encoding=json` (the default): text frames. `encoding=etf`: binary frames of Erlang's
//!   External Term Format ([`crate::etf`]), both ways.
//! - `compress=zlib-stream`: one zlib context for the whole connection; every message is a binary
//!   frame that ends in a sync flush (`00 00 ff ff`), so a client feeds frames to one inflater.
//! - `compress=zstd-stream`: one Zstandard frame for the whole connection; every message is one
//!   or more blocks of it, so a client feeds frames to one streaming decoder. The blocks are stored
//!   (uncompressed) blocks: valid Zstandard that any decoder reads, with no compression gained.
//! - `compress: true` in IDENTIFY, without transport compression: each payload after it is a
//!   binary frame holding one complete zlib stream.
//!
//! Client frames are never compressed. A JSON connection takes text frames; an ETF connection
//! takes binary ETF frames (compressed terms refused).

use std::io::Write as _;

use flate2::{Compression as Level, write::ZlibEncoder};

use crate::etf;

/// `encoding` in the gateway URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// JSON text frames.
    #[default]
    Json,
    /// Binary ETF frames.
    Etf,
}

/// `compress` in the gateway URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// None asked for (IDENTIFY's `compress` may still ask for per-payload zlib).
    #[default]
    None,
    /// `zlib-stream`.
    ZlibStream,
    /// `zstd-stream`.
    ZstdStream,
}

/// What a connection's URL asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WireOptions {
    /// The API version (`v`), if given.
    pub version: Option<u8>,
    /// The encoding.
    pub encoding: Encoding,
    /// Transport compression.
    pub compression: Compression,
}

/// A URL query the gateway does not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// `v` is not a number.
    #[error("API version {0:?} is not a number")]
    Version(String),
    /// `encoding` is neither `json` nor `etf`.
    #[error("encoding {0:?} is not json or etf")]
    Encoding(String),
    /// `compress` is neither `zlib-stream` nor `zstd-stream`.
    #[error("compress {0:?} is not zlib-stream or zstd-stream")]
    Compression(String),
}

impl WireOptions {
    /// Reads `v`, `encoding` and `compress` from a URL query (`v=10&encoding=json`); other keys
    /// are ignored, and the last of a repeated key wins.
    pub fn from_query(query: Option<&str>) -> Result<Self, QueryError> {
        let mut options = Self::default();
        for pair in query.unwrap_or("").split('&') {
            match pair.split_once('=') {
                Some(("v", v)) => {
                    options.version =
                        Some(v.parse().map_err(|_| QueryError::Version(v.to_owned()))?);
                }
                Some(("encoding", "json")) => options.encoding = Encoding::Json,
                Some(("encoding", "etf")) => options.encoding = Encoding::Etf,
                Some(("encoding", other)) => return Err(QueryError::Encoding(other.to_owned())),
                Some(("compress", "zlib-stream")) => options.compression = Compression::ZlibStream,
                Some(("compress", "zstd-stream")) => options.compression = Compression::ZstdStream,
                Some(("compress", other)) => {
                    return Err(QueryError::Compression(other.to_owned()));
                }
                _ => {}
            }
        }
        Ok(options)
    }
}

/// A websocket frame's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
}

/// A client frame that does not decode on this connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A binary frame on a JSON connection, or a text frame on an ETF one.
    #[error("a {0} frame on a connection that speaks {1}")]
    FrameKind(&'static str, &'static str),
    /// Bad ETF.
    #[error("bad ETF: {0}")]
    Etf(#[from] etf::EtfError),
}

/// The Zstandard frame header of a zstd stream: magic number, then a descriptor with no content
/// size, no checksum and no dictionary, and a window of 2 MiB (exponent 11 + 10).
const ZSTD_HEADER: [u8; 6] = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x58];
/// The largest block Zstandard allows.
const ZSTD_MAX_BLOCK: usize = 128 * 1024;

enum Stream {
    None,
    Zlib(Box<ZlibEncoder<Vec<u8>>>),
    /// Whether the frame header went out yet.
    Zstd(bool),
}

/// One connection's codec. See the module docs.
pub struct Transport {
    encoding: Encoding,
    stream: Stream,
    per_payload: bool,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("encoding", &self.encoding)
            .field("per_payload", &self.per_payload)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// A codec for a connection opened with these options.
    #[must_use]
    pub fn new(options: WireOptions) -> Self {
        let stream = match options.compression {
            Compression::None => Stream::None,
            Compression::ZlibStream => {
                Stream::Zlib(Box::new(ZlibEncoder::new(Vec::new(), Level::fast())))
            }
            Compression::ZstdStream => Stream::Zstd(false),
        };
        Self {
            encoding: options.encoding,
            stream,
            per_payload: false,
        }
    }

    /// The client's IDENTIFY asked for `compress: true`: each later payload is zlib-compressed on
    /// its own, unless the connection already has transport compression.
    pub fn compress_payloads(&mut self) {
        if matches!(self.stream, Stream::None) {
            self.per_payload = true;
        }
    }

    /// The frame that carries one JSON payload of the gateway core.
    ///
    /// # Panics
    /// If `json` is not JSON on an ETF connection (the core writes only JSON).
    #[must_use]
    pub fn encode(&mut self, json: &str) -> Frame {
        let bytes = match self.encoding {
            Encoding::Json => {
                if matches!(self.stream, Stream::None) && !self.per_payload {
                    return Frame::Text(json.to_owned());
                }
                json.as_bytes().to_vec()
            }
            Encoding::Etf => {
                let value: serde_json::Value =
                    serde_json::from_str(json).expect("the gateway core writes JSON");
                etf::encode(&value)
            }
        };
        Frame::Binary(match &mut self.stream {
            Stream::Zlib(encoder) => {
                // `flush` is a sync flush: the output ends in 00 00 ff ff.
                encoder
                    .write_all(&bytes)
                    .and_then(|()| encoder.flush())
                    .expect("writing to a Vec cannot fail");
                std::mem::take(encoder.get_mut())
            }
            Stream::Zstd(started) => zstd_blocks(&bytes, started),
            Stream::None if self.per_payload => {
                let mut encoder = ZlibEncoder::new(Vec::new(), Level::fast());
                encoder
                    .write_all(&bytes)
                    .expect("writing to a Vec cannot fail");
                encoder.finish().expect("writing to a Vec cannot fail")
            }
            Stream::None => bytes,
        })
    }

    /// The JSON text of a client's text frame.
    pub fn decode_text<'a>(&self, text: &'a str) -> Result<std::borrow::Cow<'a, str>, DecodeError> {
        match self.encoding {
            Encoding::Json => Ok(std::borrow::Cow::Borrowed(text)),
            Encoding::Etf => Err(DecodeError::FrameKind("text", "ETF")),
        }
    }

    /// The JSON text of a client's binary frame.
    pub fn decode_binary(&self, bytes: &[u8]) -> Result<String, DecodeError> {
        match self.encoding {
            Encoding::Json => Err(DecodeError::FrameKind("binary", "JSON")),
            Encoding::Etf => Ok(etf::decode(bytes)?.to_string()),
        }
    }
}

/// `bytes` as stored blocks of the connection's one Zstandard frame (never the last block: the
/// frame stays open for the next message), after the frame header if it has not gone out yet.
fn zstd_blocks(bytes: &[u8], started: &mut bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 16);
    if !*started {
        out.extend_from_slice(&ZSTD_HEADER);
        *started = true;
    }
    for block in bytes.chunks(ZSTD_MAX_BLOCK) {
        // Block header, 3 bytes little-endian: last-block bit 0, type 0 (raw), size << 3.
        let header = u32::try_from(block.len()).expect("at most 128 KiB") << 3;
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.extend_from_slice(block);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn binary(frame: Frame) -> Vec<u8> {
        match frame {
            Frame::Binary(bytes) => bytes,
            Frame::Text(text) => panic!("a text frame: {text}"),
        }
    }

    #[test]
    fn the_query_names_version_encoding_and_compression() {
        let options =
            WireOptions::from_query(Some("v=9&encoding=etf&compress=zlib-stream")).unwrap();
        assert_eq!(
            options,
            WireOptions {
                version: Some(9),
                encoding: Encoding::Etf,
                compression: Compression::ZlibStream
            }
        );
        assert_eq!(
            WireOptions::from_query(None).unwrap(),
            WireOptions::default()
        );
        assert_eq!(
            WireOptions::from_query(Some("encoding=xml")),
            Err(QueryError::Encoding("xml".to_owned()))
        );
        assert_eq!(
            WireOptions::from_query(Some("compress=gzip")),
            Err(QueryError::Compression("gzip".to_owned()))
        );
        assert!(WireOptions::from_query(Some("v=ten")).is_err());
    }

    #[test]
    fn plain_json_is_text_both_ways() {
        let mut t = Transport::new(WireOptions::default());
        assert_eq!(
            t.encode(r#"{"op":11}"#),
            Frame::Text(r#"{"op":11}"#.to_owned())
        );
        assert_eq!(t.decode_text("{}").unwrap(), "{}");
        assert!(t.decode_binary(b"{}").is_err());
    }

    #[test]
    fn zlib_stream_shares_one_context_and_ends_every_message_in_a_sync_flush() {
        let mut t = Transport::new(WireOptions {
            compression: Compression::ZlibStream,
            ..WireOptions::default()
        });
        let messages = [
            r#"{"op":10,"d":{"heartbeat_interval":41250}}"#,
            r#"{"op":11}"#,
        ];
        let mut inflater = flate2::Decompress::new(true);
        for message in messages {
            let frame = binary(t.encode(message));
            assert_eq!(&frame[frame.len() - 4..], &[0, 0, 0xff, 0xff]);
            let mut out = Vec::with_capacity(4096);
            inflater
                .decompress_vec(&frame, &mut out, flate2::FlushDecompress::Sync)
                .unwrap();
            assert_eq!(out, message.as_bytes());
        }
        // The second message leans on the first's context: a fresh inflater cannot read it.
        let mut t = Transport::new(WireOptions {
            compression: Compression::ZlibStream,
            ..WireOptions::default()
        });
        let _ = t.encode(messages[0]);
        let second = binary(t.encode(messages[0]));
        let mut fresh = flate2::Decompress::new(true);
        let mut out = Vec::with_capacity(4096);
        assert!(
            fresh
                .decompress_vec(&second, &mut out, flate2::FlushDecompress::Sync)
                .is_err()
        );
    }

    #[test]
    fn compress_true_in_identify_zlibs_each_payload_on_its_own() {
        let mut t = Transport::new(WireOptions::default());
        t.compress_payloads();
        for message in [r#"{"t":"READY"}"#, r#"{"op":11}"#] {
            let frame = binary(t.encode(message));
            let mut text = String::new();
            flate2::read::ZlibDecoder::new(&frame[..])
                .read_to_string(&mut text)
                .unwrap();
            assert_eq!(text, message);
        }
        // Transport compression wins over it.
        let mut t = Transport::new(WireOptions {
            compression: Compression::ZstdStream,
            ..WireOptions::default()
        });
        t.compress_payloads();
        assert!(!t.per_payload);
    }

    #[test]
    fn zstd_stream_opens_one_frame_and_adds_blocks_per_message() {
        let mut t = Transport::new(WireOptions {
            compression: Compression::ZstdStream,
            ..WireOptions::default()
        });
        let first = binary(t.encode("abc"));
        assert_eq!(&first[..6], &ZSTD_HEADER);
        assert_eq!(&first[6..], &[3 << 3, 0, 0, b'a', b'b', b'c']);
        let big = "x".repeat(ZSTD_MAX_BLOCK + 1);
        let second = binary(t.encode(&big));
        assert_eq!(second.len(), 3 + ZSTD_MAX_BLOCK + 3 + 1);
        assert_eq!(
            &second[..3],
            &((ZSTD_MAX_BLOCK as u32) << 3).to_le_bytes()[..3]
        );
    }

    #[test]
    fn etf_connections_send_and_take_binary_terms() {
        let mut t = Transport::new(WireOptions {
            encoding: Encoding::Etf,
            ..WireOptions::default()
        });
        let frame = binary(t.encode(r#"{"op":11,"d":null}"#));
        assert_eq!(
            etf::decode(&frame).unwrap(),
            serde_json::json!({"op": 11, "d": null})
        );
        assert_eq!(t.decode_binary(&frame).unwrap(), r#"{"d":null,"op":11}"#);
        assert!(t.decode_text(r#"{"op":1}"#).is_err());
        assert!(matches!(
            t.decode_binary(&[131, 80, 0, 0, 0, 0]),
            Err(DecodeError::Etf(etf::EtfError::Compressed))
        ));
    }
}
