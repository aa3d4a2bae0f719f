//! `ignore_reply_unit_id`: Modbus TCP devices that answer every request with unit id 0 or 255
//! (whatever was asked) fail tokio-modbus's header check. This stream wrapper rewrites the
//! unit id of every reply frame to the one of the last request before tokio-modbus reads it.
//!
//! [`Frames`] is the frame tracker (no I/O): fed the bytes of one direction as they pass, split
//! anywhere, it finds each MBAP header (transaction id 2, protocol id 2, length 2, unit id 1)
//! and its unit id byte; the length field says where the next frame starts.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Tracks the MBAP frames of one direction of a byte stream.
#[derive(Debug, Default)]
pub struct Frames {
    /// Position in the current frame (0 = its first byte).
    pos: usize,
    /// The length field's high byte, once read.
    len_hi: u8,
    /// Bytes of the current frame (header included), once its length field is read.
    frame_len: Option<usize>,
}

impl Frames {
    /// The indexes in `bytes` (the next bytes of the stream) of every frame's unit id byte.
    pub fn unit_bytes(&mut self, bytes: &[u8]) -> Vec<usize> {
        let mut units = Vec::new();
        for (i, &b) in bytes.iter().enumerate() {
            match self.pos {
                4 => self.len_hi = b,
                5 => self.frame_len = Some(6 + usize::from(u16::from_be_bytes([self.len_hi, b]))),
                6 => units.push(i),
                _ => {}
            }
            self.pos += 1;
            if self.frame_len.is_some_and(|len| self.pos >= len.max(7)) {
                self.pos = 0;
                self.frame_len = None;
            }
        }
        units
    }
}

/// A TCP stream whose replies carry the unit id of the request they answer.
#[derive(Debug)]
pub struct SameUnit<S> {
    inner: S,
    /// The unit id of the last request written.
    unit: u8,
    requests: Frames,
    replies: Frames,
}

impl<S> SameUnit<S> {
    pub fn new(inner: S) -> SameUnit<S> {
        SameUnit {
            inner,
            unit: 0,
            requests: Frames::default(),
            replies: Frames::default(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SameUnit<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let start = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            let unit = self.unit;
            let read = &mut buf.filled_mut()[start..];
            for i in self.replies.unit_bytes(read) {
                read[i] = unit;
            }
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SameUnit<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, bytes);
        if let Poll::Ready(Ok(n)) = poll
            && let Some(&i) = self.requests.unit_bytes(&bytes[..n]).last()
        {
            self.unit = bytes[i];
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply frame: transaction id, protocol 0, length, unit, then the PDU.
    fn frame(tid: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
        let mut f = tid.to_be_bytes().to_vec();
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&((pdu.len() + 1) as u16).to_be_bytes());
        f.push(unit);
        f.extend_from_slice(pdu);
        f
    }

    #[test]
    fn every_header_is_rewritten_however_the_bytes_are_split() {
        let mut stream = frame(1, 255, &[3, 2, 0, 7]);
        stream.extend(frame(2, 0, &[3, 4, 0, 1, 0, 2]));
        stream.extend(frame(3, 9, &[0x83, 2])); // an exception reply
        let mut want = frame(1, 17, &[3, 2, 0, 7]);
        want.extend(frame(2, 17, &[3, 4, 0, 1, 0, 2]));
        want.extend(frame(3, 17, &[0x83, 2]));
        for chunk in 1..=stream.len() {
            let mut bytes = stream.clone();
            let mut frames = Frames::default();
            for part in bytes.chunks_mut(chunk) {
                for i in frames.unit_bytes(part) {
                    part[i] = 17;
                }
            }
            assert_eq!(bytes, want, "split every {chunk} bytes");
        }
    }

    #[tokio::test]
    async fn replies_carry_the_unit_of_the_request() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, mut device) = tokio::io::duplex(256);
        let mut s = SameUnit::new(client);
        s.write_all(&frame(5, 42, &[3, 0, 0, 0, 1])).await.unwrap();
        let mut req = [0u8; 12];
        device.read_exact(&mut req).await.unwrap();
        assert_eq!(req[6], 42, "the request goes out unchanged");
        device.write_all(&frame(5, 0, &[3, 2, 0, 9])).await.unwrap();
        let mut reply = [0u8; 11];
        s.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply.to_vec(), frame(5, 42, &[3, 2, 0, 9]));
    }
}
