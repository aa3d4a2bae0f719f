//! The S7 client on tokio: one TCP connection, one job in flight, a timeout on every step.

use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::codec::{self, CodecError, Item, ItemResult, TPKT_LEN};

#[derive(Debug, Error)]
pub enum S7Error {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(#[from] CodecError),
    #[error("the PLC sent an S7 PDU above 64 KiB")]
    TooLarge,
    #[error("the PLC granted a PDU of {0} bytes; at least 64 are needed")]
    PduTooSmall(u16),
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub host: String,
    pub port: u16,
    pub local_tsap: u16,
    pub remote_tsap: u16,
    pub pdu_size: u16,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

/// A connected S7 client.
pub struct Client {
    stream: TcpStream,
    pdu_size: u16,
    next_ref: u16,
    request_timeout: Duration,
    /// Jobs sent since connecting (the benchmark and tests read it).
    requests: u64,
}

/// Largest reassembled S7 PDU accepted (the largest S7 PDU is 960; leave room).
const MAX_PDU_BYTES: usize = 64 * 1024;

impl Client {
    /// TCP connect, COTP connection request, setup communication.
    pub async fn connect(options: &ConnectOptions) -> Result<Client, S7Error> {
        let addr = format!("{}:{}", options.host, options.port);
        let stream = tokio::time::timeout(options.connect_timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| S7Error::Timeout("TCP connect"))?
            .map_err(|source| S7Error::Connect {
                addr: addr.clone(),
                source,
            })?;
        stream.set_nodelay(true)?;
        let mut client = Client {
            stream,
            pdu_size: options.pdu_size,
            next_ref: 0,
            request_timeout: options.request_timeout,
            requests: 0,
        };
        let within = options.connect_timeout;
        tokio::time::timeout(within, client.handshake(options))
            .await
            .map_err(|_| S7Error::Timeout("ISO/S7 connection setup"))??;
        Ok(client)
    }

    async fn handshake(&mut self, options: &ConnectOptions) -> Result<(), S7Error> {
        let cr = codec::connection_request(options.local_tsap, options.remote_tsap);
        self.stream.write_all(&cr).await?;
        let cc = self.read_frame().await?;
        codec::parse_connection_confirm(&cc)?;
        let pdu_ref = self.take_ref();
        self.send(&codec::setup_communication(pdu_ref, options.pdu_size))
            .await?;
        let answer = self.receive().await?;
        let granted = codec::parse_setup_communication(&answer, pdu_ref)?;
        if granted < 64 {
            return Err(S7Error::PduTooSmall(granted));
        }
        // Never more than asked for, even if a PLC grants more.
        self.pdu_size = granted.min(options.pdu_size);
        Ok(())
    }

    /// The PDU size the PLC granted.
    pub fn pdu_size(&self) -> u16 {
        self.pdu_size
    }

    pub fn requests(&self) -> u64 {
        self.requests
    }

    fn take_ref(&mut self) -> u16 {
        self.next_ref = self.next_ref.wrapping_add(1);
        self.next_ref
    }

    /// Reads `items` in one read-var job. Per item: its bytes or the PLC's return code.
    pub async fn read(&mut self, items: &[Item]) -> Result<Vec<ItemResult>, S7Error> {
        let pdu_ref = self.take_ref();
        let job = codec::read_var(pdu_ref, items);
        let answer = self.exchange(&job, "read var").await?;
        let mut results = codec::parse_read_var(&answer, pdu_ref, items)?;
        // An item answered with fewer bytes than asked is a failure of that item, not a value.
        for (result, item) in results.iter_mut().zip(items) {
            if let Ok(bytes) = result
                && bytes.len() < usize::from(item.len)
            {
                *result = Err(0x05);
            }
        }
        Ok(results)
    }

    /// Reads the system status list `id` at `index` (the first answer's records).
    pub async fn read_szl(&mut self, id: u16, index: u16) -> Result<codec::Szl, S7Error> {
        let pdu_ref = self.take_ref();
        let job = codec::read_szl(pdu_ref, id, index);
        let answer = self.exchange(&job, "read SZL").await?;
        Ok(codec::parse_szl(&answer, pdu_ref)?)
    }

    /// Writes `bytes` at one item; returns the PLC's return code (0xFF = success).
    pub async fn write(&mut self, item: &Item, bytes: &[u8]) -> Result<u8, S7Error> {
        let pdu_ref = self.take_ref();
        let job = codec::write_var(pdu_ref, item, bytes);
        let answer = self.exchange(&job, "write var").await?;
        Ok(codec::parse_write_var(&answer, pdu_ref)?)
    }

    async fn exchange(&mut self, job: &[u8], what: &'static str) -> Result<Vec<u8>, S7Error> {
        self.requests += 1;
        tokio::time::timeout(self.request_timeout, async {
            self.send(job).await?;
            self.receive().await
        })
        .await
        .map_err(|_| S7Error::Timeout(what))?
    }

    async fn send(&mut self, s7: &[u8]) -> Result<(), S7Error> {
        self.stream.write_all(&codec::data_frame(s7)).await?;
        Ok(())
    }

    /// One TPKT frame's payload (the COTP PDU).
    async fn read_frame(&mut self) -> Result<Vec<u8>, S7Error> {
        let mut header = [0u8; TPKT_LEN];
        self.stream.read_exact(&mut header).await?;
        let len = codec::tpkt_length(&header)?;
        let mut body = vec![0u8; len - TPKT_LEN];
        self.stream.read_exact(&mut body).await?;
        Ok(body)
    }

    /// One S7 PDU, reassembled from COTP DT fragments.
    async fn receive(&mut self) -> Result<Vec<u8>, S7Error> {
        let mut pdu = Vec::new();
        loop {
            let frame = self.read_frame().await?;
            let (payload, last) = codec::parse_data(&frame)?;
            pdu.extend_from_slice(payload);
            if pdu.len() > MAX_PDU_BYTES {
                return Err(S7Error::TooLarge);
            }
            if last {
                return Ok(pdu);
            }
        }
    }
}
