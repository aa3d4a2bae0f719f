//! A TCP connector for async-opcua that refuses oversized messages before they are buffered.
//!
//! async-opcua 0.19's `TcpCodec` reads the 8-byte message header (3-byte type, 1-byte chunk
//! type, u32 LE message size) and then waits until the whole announced message is buffered,
//! up to 4 GiB, before its own `max_message_size` check runs: a hostile or broken server that
//! announces a huge message and keeps sending grows the gateway without bound. [`LimitedRead`]
//! sits under the crate's codec, follows the message headers as bytes flow through
//! ([`HeaderScan`], pure) and fails the read as soon as a header announces more than the
//! client's `max_message_size` (or less than the header itself). The crate then closes the
//! transport and the reader reconnects with backoff.
//!
//! [`LimitedConnector`] opens the connection like the crate's `TcpConnector` and is used both
//! for GetEndpoints and, through [`LimitedSource`], for the session.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use opcua::client::ConnectionSource;
use opcua::client::transport::{
    Connector, RequestRecv, SecureChannelState, StreamConnection, StreamConnector, StreamTransport,
    TransportConfiguration,
};
use opcua::core::comms::tcp_codec::TcpCodec;
use opcua::core::comms::url::hostname_port_from_url;
use opcua::core::constants::DEFAULT_OPC_UA_SERVER_PORT;
use opcua::types::{DecodingOptions, EndpointDescription, Error, StatusCode};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::FramedRead;

/// The limit when the client configuration sets none (`max_message_size = 0`).
pub const FALLBACK_LIMIT: u32 = 16 * 1024 * 1024;
/// Every OPC UA TCP message starts with this many header bytes.
const HEADER_LEN: usize = 8;

/// The largest message the reader accepts, from the client's `max_message_size` (0: none).
pub fn limit_for(max_message_size: usize) -> u32 {
    if max_message_size == 0 {
        FALLBACK_LIMIT
    } else {
        u32::try_from(max_message_size).unwrap_or(u32::MAX)
    }
}

/// A message header the reader refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error(
        "OPC UA server announced a {size}-byte message, above the limit of {limit} (max_message_size)"
    )]
    TooLarge { size: u32, limit: u32 },
    #[error("OPC UA server announced a {size}-byte message, shorter than its 8-byte header")]
    TooSmall { size: u32 },
}

/// Follows OPC UA message boundaries through a byte stream and checks each announced size.
#[derive(Debug, Clone)]
pub struct HeaderScan {
    limit: u32,
    header: [u8; HEADER_LEN],
    /// Header bytes collected so far (0..8).
    have: usize,
    /// Body bytes of the current message still to pass.
    body_left: u64,
}

impl HeaderScan {
    pub fn new(limit: u32) -> HeaderScan {
        HeaderScan {
            limit,
            header: [0; HEADER_LEN],
            have: 0,
            body_left: 0,
        }
    }

    /// Passes `data`, the next bytes of the stream. On a refused header returns the offset in
    /// `data` where that header starts (0 if it started in an earlier call) and why; the
    /// scanner must not be fed again after that.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), (usize, FrameError)> {
        let mut i = 0;
        while i < data.len() {
            if self.body_left > 0 {
                let skip = self.body_left.min((data.len() - i) as u64);
                self.body_left -= skip;
                i += skip as usize;
                continue;
            }
            let start = i.saturating_sub(self.have);
            let take = (HEADER_LEN - self.have).min(data.len() - i);
            self.header[self.have..self.have + take].copy_from_slice(&data[i..i + take]);
            self.have += take;
            i += take;
            if self.have == HEADER_LEN {
                self.have = 0;
                let size = u32::from_le_bytes([
                    self.header[4],
                    self.header[5],
                    self.header[6],
                    self.header[7],
                ]);
                if size > self.limit {
                    return Err((
                        start,
                        FrameError::TooLarge {
                            size,
                            limit: self.limit,
                        },
                    ));
                }
                if (size as usize) < HEADER_LEN {
                    return Err((start, FrameError::TooSmall { size }));
                }
                self.body_left = u64::from(size) - HEADER_LEN as u64;
            }
        }
        Ok(())
    }
}

/// The read half of the connection, checked by a [`HeaderScan`]. Bytes before a refused
/// header are still delivered; the read after them fails with `InvalidData`.
pub struct LimitedRead<R> {
    inner: R,
    scan: HeaderScan,
    failed: Option<FrameError>,
    endpoint: Arc<str>,
}

impl<R> LimitedRead<R> {
    pub fn new(inner: R, limit: u32, endpoint: Arc<str>) -> LimitedRead<R> {
        LimitedRead {
            inner,
            scan: HeaderScan::new(limit),
            failed: None,
            endpoint,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for LimitedRead<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = &this.failed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                e.to_string(),
            )));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Err((at, e)) = this.scan.feed(&buf.filled()[before..]) {
            tracing::warn!(endpoint = %this.endpoint, "{e}; closing the connection");
            buf.set_filled(before + at);
            let error = io::Error::new(io::ErrorKind::InvalidData, e.to_string());
            this.failed = Some(e);
            if at == 0 {
                // Nothing to deliver: fail now (an empty Ok read would mean end of stream).
                return Poll::Ready(Err(error));
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The transport a [`LimitedConnector`] makes.
pub type LimitedTransport = StreamTransport<LimitedRead<OwnedReadHalf>, OwnedWriteHalf>;

/// Connects `opc.tcp` like async-opcua's `TcpConnector`, with the read half in a
/// [`LimitedRead`] whose limit is the client's `max_message_size`.
pub struct LimitedConnector {
    endpoint_url: String,
}

impl LimitedConnector {
    pub fn new(endpoint_url: &str) -> LimitedConnector {
        LimitedConnector {
            endpoint_url: endpoint_url.to_string(),
        }
    }
}

async fn connect_tcp(
    endpoint_url: String,
    decoding_options: DecodingOptions,
) -> Result<StreamConnection<LimitedRead<OwnedReadHalf>, OwnedWriteHalf>, Error> {
    let (host, port) = hostname_port_from_url(&endpoint_url, DEFAULT_OPC_UA_SERVER_PORT)
        .map_err(|e| Error::new(e, format!("cannot find host and port in {endpoint_url}")))?;
    let addr = tokio::net::lookup_host(format!("{host}:{port}"))
        .await
        .map_err(|e| {
            Error::new(
                StatusCode::BadTcpEndpointUrlInvalid,
                format!("cannot resolve {host}:{port}: {e}"),
            )
        })?
        .next()
        .ok_or_else(|| {
            Error::new(
                StatusCode::BadTcpEndpointUrlInvalid,
                format!("{host}:{port} resolves to no address"),
            )
        })?;
    let socket = TcpStream::connect(addr).await.map_err(|e| {
        Error::new(
            StatusCode::BadCommunicationError,
            format!("cannot connect to {addr}: {e}"),
        )
    })?;
    let (reader, writer) = socket.into_split();
    let limit = limit_for(decoding_options.max_message_size);
    let reader = LimitedRead::new(reader, limit, Arc::from(endpoint_url.as_str()));
    Ok(StreamConnection::new(
        FramedRead::new(reader, TcpCodec::new(decoding_options)),
        writer,
        endpoint_url,
    ))
}

impl Connector for LimitedConnector {
    type Transport = LimitedTransport;

    async fn connect(
        &self,
        channel: Arc<SecureChannelState>,
        outgoing_recv: RequestRecv,
        config: TransportConfiguration,
    ) -> Result<LimitedTransport, Error> {
        StreamConnector::new(connect_tcp, self.endpoint_url.clone())
            .connect(channel, outgoing_recv, config)
            .await
    }

    fn default_endpoint(&self) -> EndpointDescription {
        EndpointDescription::from(self.endpoint_url.as_str())
    }
}

/// The session's connection source: a [`LimitedConnector`] to the chosen endpoint.
pub struct LimitedSource;

impl ConnectionSource for LimitedSource {
    type Builder = LimitedConnector;

    fn get_connector(&self, endpoint: &EndpointDescription) -> Result<LimitedConnector, Error> {
        Ok(LimitedConnector::new(endpoint.endpoint_url.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut m = kind.to_vec();
        m.extend_from_slice(&((HEADER_LEN + body.len()) as u32).to_le_bytes());
        m.extend_from_slice(body);
        m
    }

    /// Feeds `data` cut at `cuts`; returns the absolute offset of the refused header.
    fn feed_split(limit: u32, data: &[u8], cuts: &[usize]) -> Result<(), (usize, FrameError)> {
        let mut scan = HeaderScan::new(limit);
        let mut from = 0;
        for &to in cuts.iter().chain(std::iter::once(&data.len())) {
            scan.feed(&data[from..to])
                .map_err(|(at, e)| (from + at, e))?;
            from = to;
        }
        Ok(())
    }

    fn traffic() -> Vec<u8> {
        let mut t = msg(b"ACKF", &[1; 20]);
        t.extend(msg(b"OPNF", &[2; 100]));
        t.extend(msg(b"MSGC", &[3; 300]));
        t.extend(msg(b"MSGF", &[]));
        t.extend(msg(b"MSGF", &[4; 1000 - HEADER_LEN]));
        t
    }

    #[test]
    fn normal_traffic_passes_split_anywhere() {
        let t = traffic();
        for a in 0..=t.len() {
            assert_eq!(feed_split(1000, &t, &[a]), Ok(()), "cut at {a}");
        }
        for a in (0..t.len()).step_by(7) {
            for b in a..t.len().min(a + 40) {
                assert_eq!(feed_split(1000, &t, &[a, b]), Ok(()), "cuts at {a}, {b}");
            }
        }
        let singles: Vec<usize> = (1..t.len()).collect();
        assert_eq!(feed_split(1000, &t, &singles), Ok(()));
    }

    #[test]
    fn refuses_an_oversized_header_at_its_first_byte() {
        let mut t = traffic();
        let bad_at = t.len();
        t.extend_from_slice(b"ACKF\xff\xff\xff\x7f");
        t.extend_from_slice(&[0u8; 64]);
        let want = FrameError::TooLarge {
            size: 0x7fff_ffff,
            limit: 1000,
        };
        assert_eq!(feed_split(1000, &t, &[]), Err((bad_at, want.clone())));
        for a in 0..=t.len() {
            let got = feed_split(1000, &t, &[a]);
            // Cut inside the bad header: the second piece reports it at its own offset 0.
            let expect_at = if a > bad_at && a < bad_at + HEADER_LEN {
                a
            } else {
                bad_at
            };
            assert_eq!(got, Err((expect_at, want.clone())), "cut at {a}");
        }
        // Up to the last header byte nothing is refused.
        assert_eq!(
            feed_split(1000, &t[..bad_at + HEADER_LEN - 1], &[bad_at + 3]),
            Ok(())
        );
    }

    #[test]
    fn the_limit_itself_passes_one_more_fails() {
        let ok = msg(b"MSGF", &[0; 92]);
        assert_eq!(feed_split(100, &ok, &[]), Ok(()));
        let big = msg(b"MSGF", &[0; 93]);
        assert_eq!(
            feed_split(100, &big, &[]),
            Err((
                0,
                FrameError::TooLarge {
                    size: 101,
                    limit: 100
                }
            ))
        );
    }

    #[test]
    fn refuses_a_size_below_the_header() {
        let mut t = msg(b"ACKF", &[1; 20]);
        let at = t.len();
        t.extend_from_slice(b"MSGF\x07\0\0\0");
        assert_eq!(
            feed_split(1000, &t, &[]),
            Err((at, FrameError::TooSmall { size: 7 }))
        );
    }

    #[test]
    fn limit_follows_the_config() {
        assert_eq!(limit_for(0), FALLBACK_LIMIT);
        assert_eq!(limit_for(327_675), 327_675);
        assert_eq!(limit_for(usize::MAX), u32::MAX);
    }

    #[test]
    fn the_message_names_size_and_limit() {
        let e = FrameError::TooLarge {
            size: 2_147_483_647,
            limit: 327_675,
        };
        assert_eq!(
            e.to_string(),
            "OPC UA server announced a 2147483647-byte message, above the limit of 327675 (max_message_size)"
        );
    }

    /// The adapter over an in-memory stream: good messages arrive, then the read fails.
    #[tokio::test]
    async fn adapter_delivers_good_bytes_then_fails() {
        use tokio::io::AsyncReadExt;
        let mut t = msg(b"ACKF", &[1; 20]);
        let good = t.len();
        t.extend_from_slice(b"MSGF\xff\xff\xff\x7f");
        t.extend_from_slice(&[9u8; 4096]);
        let mut r = LimitedRead::new(&t[..], 1000, Arc::from("opc.tcp://test:4840"));
        let mut got = Vec::new();
        let e = r.read_to_end(&mut got).await.expect_err("must fail");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("2147483647-byte"), "{e}");
        // Every good message; of the refused header at most the bytes before its size field
        // was complete (read_to_end reads in small pieces first).
        assert!(
            got.len() >= good && got.len() < good + HEADER_LEN,
            "{}",
            got.len()
        );
        assert_eq!(got, &t[..got.len()]);
    }
}
