//! Framing: each frame is a 4-byte big-endian length followed by a `MessagePack` body with named
//! fields (`rmp_serde::to_vec_named`), so fields can be added without breaking older peers. Frames
//! over the configured maximum are refused on both ends.

use bytes::Bytes;
use futures::{SinkExt, StreamExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

/// Default maximum frame size: 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The peer closed the connection.
    #[error("connection closed")]
    Closed,
    /// The socket failed, or a frame exceeded the maximum size.
    #[error("frame i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A frame body was not a valid message.
    #[error("malformed frame: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// A message could not be encoded.
    #[error("unencodable message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// A message encoded larger than the maximum frame size.
    #[error("message of {size} bytes exceeds the {max}-byte frame limit")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(max_frame)
        .new_codec()
}

/// Encodes a message as a frame body.
pub fn encode<T: Serialize>(message: &T, max_frame: usize) -> Result<Bytes, FrameError> {
    // Most frames are small: one allocation rather than a few growing ones.
    let mut body = Vec::with_capacity(128);
    rmp_serde::encode::write_named(&mut body, message)?;
    if body.len() > max_frame {
        return Err(FrameError::TooLarge {
            size: body.len(),
            max: max_frame,
        });
    }
    Ok(Bytes::from(body))
}

/// Decodes a frame body.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    Ok(rmp_serde::from_slice(body)?)
}

/// Reads frames from one half of a connection.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: FramedRead<R, LengthDelimitedCodec>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a reader.
    pub fn new(reader: R, max_frame: usize) -> Self {
        Self {
            inner: FramedRead::new(reader, codec(max_frame)),
        }
    }

    /// Changes the maximum frame size for the frames still to come (the admiral reads a
    /// stranger's first frame with a small limit, and raises it once the peer has proved itself).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.inner.decoder_mut().set_max_frame_length(max_frame);
    }

    /// Whether a whole next frame is already buffered, so [`next`](Self::next) will not wait for
    /// the socket. Valid between frames (the codec parses a length only when it reads a frame).
    #[must_use]
    pub fn frame_buffered(&self) -> bool {
        let buffered = self.inner.read_buffer();
        buffered.len() >= 4 && {
            let len = u32::from_be_bytes([buffered[0], buffered[1], buffered[2], buffered[3]]);
            buffered.len() - 4 >= len as usize
        }
    }

    /// The next message; [`FrameError::Closed`] at a clean end of stream.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<T, FrameError> {
        match self.inner.next().await {
            Some(Ok(body)) => decode(&body),
            Some(Err(error)) => Err(FrameError::Io(error)),
            None => Err(FrameError::Closed),
        }
    }
}

/// Writes frames to one half of a connection.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: FramedWrite<W, LengthDelimitedCodec>,
    max_frame: usize,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps a writer.
    pub fn new(writer: W, max_frame: usize) -> Self {
        Self {
            inner: FramedWrite::new(writer, codec(max_frame)),
            max_frame,
        }
    }

    /// The maximum frame size.
    #[must_use]
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Encodes and writes one message, flushing.
    pub async fn send<T: Serialize>(&mut self, message: &T) -> Result<(), FrameError> {
        let body = encode(message, self.max_frame)?;
        self.inner.send(body).await?;
        Ok(())
    }

    /// The underlying writer (frames written but not flushed are lost).
    pub fn into_inner(self) -> W {
        self.inner.into_inner()
    }

    /// Writes an encoded body without flushing; call [`flush`](Self::flush) after a batch.
    pub async fn feed(&mut self, body: Bytes) -> Result<(), FrameError> {
        self.inner.feed(body).await?;
        Ok(())
    }

    /// Flushes written frames.
    pub async fn flush(&mut self) -> Result<(), FrameError> {
        SinkExt::<Bytes>::flush(&mut self.inner).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use tokio::io::AsyncWriteExt as _;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Ping {
        n: u64,
        text: String,
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let (a, b) = tokio::io::duplex(1024);
        let mut writer = FrameWriter::new(a, 1024);
        let mut reader = FrameReader::new(b, 1024);
        let ping = Ping {
            n: u64::MAX,
            text: "hi".into(),
        };
        writer.send(&ping).await.unwrap();
        assert_eq!(reader.next::<Ping>().await.unwrap(), ping);
        drop(writer);
        assert!(matches!(
            reader.next::<Ping>().await,
            Err(FrameError::Closed)
        ));
    }

    #[tokio::test]
    async fn a_reader_knows_whether_a_whole_frame_waits() {
        let (mut raw, b) = tokio::io::duplex(4096);
        let mut reader = FrameReader::new(b, 1024);
        let body = encode(
            &Ping {
                n: 1,
                text: "a".into(),
            },
            1024,
        )
        .unwrap();
        let frame = [&(body.len() as u32).to_be_bytes()[..], &body].concat();
        // Two whole frames and half of a third arrive at once.
        let half = frame.len() / 2;
        raw.write_all(&[&frame[..], &frame, &frame[..half]].concat())
            .await
            .unwrap();
        assert!(!reader.frame_buffered(), "nothing read yet");
        reader.next::<Ping>().await.unwrap();
        assert!(reader.frame_buffered());
        reader.next::<Ping>().await.unwrap();
        assert!(!reader.frame_buffered(), "only half a frame left");
        raw.write_all(&frame[half..]).await.unwrap();
        reader.next::<Ping>().await.unwrap();
        assert!(!reader.frame_buffered());
    }

    #[tokio::test]
    async fn oversized_and_malformed_frames_are_refused() {
        let (a, b) = tokio::io::duplex(4096);
        let mut writer = FrameWriter::new(a, 64);
        let big = Ping {
            n: 1,
            text: "x".repeat(100),
        };
        assert!(matches!(
            writer.send(&big).await,
            Err(FrameError::TooLarge { .. })
        ));

        let (mut raw, b2) = tokio::io::duplex(4096);
        let mut reader = FrameReader::new(b2, 64);
        raw.write_all(&1000u32.to_be_bytes()).await.unwrap();
        assert!(matches!(
            reader.next::<Ping>().await,
            Err(FrameError::Io(_))
        ));

        let (mut raw, b3) = tokio::io::duplex(4096);
        let mut reader = FrameReader::new(b3, 64);
        raw.write_all(&3u32.to_be_bytes()).await.unwrap();
        raw.write_all(&[0xc1, 0xc1, 0xc1]).await.unwrap();
        assert!(matches!(
            reader.next::<Ping>().await,
            Err(FrameError::Decode(_))
        ));
        drop(b);
    }
}
