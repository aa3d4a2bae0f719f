//! One connection to a Modbus TCP device/gateway or one serial line, shared by every source
//! (unit id) behind it. The mutex serialises requests, so units on one RS-485 line or behind
//! one TCP gateway never talk over each other; a failed connect backs the whole line off so
//! several sources do not hammer a dead endpoint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_modbus::client::Context;
use tokio_modbus::prelude::*;

use super::address::Area;
use super::config::{Parity, Transport};
use crate::backoff::Backoff;

/// The lines of one pipeline, by [`Transport::key`].
#[derive(Default)]
pub struct Lines {
    map: Mutex<HashMap<String, Arc<Line>>>,
}

impl Lines {
    /// The line for `transport`, created on first use. Sources sharing a serial device use
    /// the settings of the first one (a mismatch is logged).
    pub fn get(&self, transport: &Transport, initial: Duration, max: Duration) -> Arc<Line> {
        let mut map = match self.map.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let line = map
            .entry(transport.key())
            .or_insert_with(|| {
                Arc::new(Line {
                    transport: transport.clone(),
                    state: tokio::sync::Mutex::new(LineState {
                        ctx: None,
                        backoff: Backoff::new(initial, max),
                        retry_at: None,
                        sent: None,
                    }),
                })
            })
            .clone();
        if line.transport != *transport {
            tracing::warn!(line = %transport.key(), "sources on this serial line disagree on its settings; using the first source's");
        }
        line
    }
}

impl Lines {
    /// Drops the line registered under `key`: sources started later open a new connection
    /// with their own settings (used when a reload changed a line's settings).
    pub fn forget(&self, key: &str) {
        let mut map = match self.map.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.remove(key);
    }
}

pub struct Line {
    transport: Transport,
    state: tokio::sync::Mutex<LineState>,
}

struct LineState {
    ctx: Option<Context>,
    backoff: Backoff,
    retry_at: Option<Instant>,
    /// When the last request went out.
    sent: Option<Sent>,
}

/// When a request went out: the gateway clock (the samples' timestamp) and the monotonic
/// instant of the same moment (what report by exception measures silence with, so a re-send
/// is `max_silence` after the last in the timestamps consumers see, whatever the latencies).
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub ms: i64,
    pub at: Instant,
}

impl Sent {
    pub fn now() -> Sent {
        Sent {
            ms: crate::time::now_ms(),
            at: Instant::now(),
        }
    }
}

/// A response: bits for coils and discrete inputs, words for registers.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    Bits(Vec<bool>),
    Words(Vec<u16>),
}

/// Why a connect to a Modbus device failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no connection within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Tcp(#[from] std::io::Error),
    #[error("{0}")]
    Serial(#[from] tokio_serial::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The device answered with an exception: about the request, not the connection.
    #[error("device exception {0}")]
    Exception(ExceptionCode),
    /// The line is backing off after a failed connect; try again after `until`.
    #[error("connection is backing off after a failure")]
    Down { until: Instant },
    #[error("cannot connect to {line}: {reason}")]
    Connect { line: String, reason: ConnectError },
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("transport error: {0}")]
    Transport(String),
    /// The device answered, in a well-framed response, something that is not an answer to
    /// the request (another register count than asked). About this read, not the connection:
    /// the connection is kept and only the tags of this read are affected.
    #[error("malformed answer: {0}")]
    Malformed(String),
}

impl ReadError {
    /// Errors about one read (the request or the device's answer to it), which leave the
    /// connection and the other tags alone.
    pub fn per_read(&self) -> bool {
        matches!(self, ReadError::Exception(_) | ReadError::Malformed(_))
    }
}

impl Line {
    pub fn key(&self) -> String {
        self.transport.key()
    }

    async fn connect(&self, timeout: Duration) -> Result<Context, ConnectError> {
        match &self.transport {
            Transport::Tcp {
                host,
                port,
                ignore_reply_unit_id,
            } => {
                let stream = tokio::time::timeout(
                    timeout,
                    tokio::net::TcpStream::connect((host.as_str(), *port)),
                )
                .await
                .map_err(|_| ConnectError::Timeout(timeout))??;
                // Requests are small and answered one at a time: Nagle would only add delay.
                let _ = stream.set_nodelay(true);
                if *ignore_reply_unit_id {
                    return Ok(tokio_modbus::client::tcp::attach(
                        super::unit::SameUnit::new(stream),
                    ));
                }
                Ok(tokio_modbus::client::tcp::attach(stream))
            }
            Transport::Rtu {
                device,
                baud,
                parity,
                data_bits,
                stop_bits,
            } => {
                let builder = tokio_serial::new(device.as_str(), *baud)
                    .parity(match parity {
                        Parity::None => tokio_serial::Parity::None,
                        Parity::Even => tokio_serial::Parity::Even,
                        Parity::Odd => tokio_serial::Parity::Odd,
                    })
                    .data_bits(if *data_bits == 7 {
                        tokio_serial::DataBits::Seven
                    } else {
                        tokio_serial::DataBits::Eight
                    })
                    .stop_bits(if *stop_bits == 2 {
                        tokio_serial::StopBits::Two
                    } else {
                        tokio_serial::StopBits::One
                    });
                let port = tokio_serial::SerialStream::open(&builder)?;
                Ok(tokio_modbus::client::rtu::attach(port))
            }
        }
    }

    /// Reads `count` registers or bits of `area` from `unit`, connecting first if needed.
    /// A timeout or transport error drops the connection (a late answer must not be taken
    /// for the next request's); only a failed connect backs the whole line off.
    ///
    /// Also returns when the request went out (gateway clock, ms): the samples' timestamp.
    /// Taken once the line is free (not when the caller started waiting for a shared line
    /// whose other units may be slow), so every tag is stamped at its own request.
    pub async fn read(
        &self,
        unit: u8,
        area: Area,
        address: u16,
        count: u16,
        timeout: Duration,
    ) -> (Sent, Result<Data, ReadError>) {
        let mut st = self.state.lock().await;
        let result = self
            .read_locked(&mut st, unit, area, address, count, timeout)
            .await;
        (st.sent.unwrap_or_else(Sent::now), result)
    }

    async fn read_locked(
        &self,
        st: &mut LineState,
        unit: u8,
        area: Area,
        address: u16,
        count: u16,
        timeout: Duration,
    ) -> Result<Data, ReadError> {
        st.sent = None;
        if st.ctx.is_none() {
            if let Some(until) = st.retry_at
                && Instant::now() < until
            {
                return Err(ReadError::Down { until });
            }
            match self.connect(timeout).await {
                Ok(ctx) => {
                    tracing::debug!(line = %self.key(), "connected");
                    st.ctx = Some(ctx);
                    st.retry_at = None;
                }
                Err(reason) => {
                    let delay = st.backoff.fail(rand::random::<f64>());
                    st.retry_at = Some(Instant::now() + delay);
                    return Err(ReadError::Connect {
                        line: self.key(),
                        reason,
                    });
                }
            }
        }
        st.sent = Some(Sent::now());
        let Some(ctx) = st.ctx.as_mut() else {
            return Err(ReadError::Transport("not connected".into()));
        };
        ctx.set_slave(Slave(unit));
        let request = async {
            match area {
                Area::Coil => ctx
                    .read_coils(address, count)
                    .await
                    .map(|r| r.map(Data::Bits)),
                Area::DiscreteInput => ctx
                    .read_discrete_inputs(address, count)
                    .await
                    .map(|r| r.map(Data::Bits)),
                Area::InputRegister => ctx
                    .read_input_registers(address, count)
                    .await
                    .map(|r| r.map(Data::Words)),
                Area::HoldingRegister => ctx
                    .read_holding_registers(address, count)
                    .await
                    .map(|r| r.map(Data::Words)),
            }
        };
        let result = tokio::time::timeout(timeout, request).await;
        match result {
            // tokio-modbus passes an answer with another register count than asked through
            // (it only debug-asserts). The frame itself was whole (TCP: its transaction id
            // matched; RTU: its CRC held), so the stream is still in step: keep the
            // connection, and let the reader mark this read's tags Bad without misreading
            // any value.
            Ok(Ok(Ok(data))) if short_or_long(&data, count) => {
                st.backoff.reset();
                let got = match &data {
                    Data::Bits(b) => b.len(),
                    Data::Words(w) => w.len(),
                };
                Err(ReadError::Malformed(format!(
                    "device answered {got} values to a read of {count}"
                )))
            }
            Ok(Ok(Ok(data))) => {
                st.backoff.reset();
                Ok(data)
            }
            Ok(Ok(Err(code))) => {
                st.backoff.reset();
                Err(ReadError::Exception(code))
            }
            Ok(Err(e)) => {
                st.ctx = None;
                Err(ReadError::Transport(explain(&e, unit)))
            }
            Err(_) => {
                st.ctx = None;
                Err(ReadError::Timeout(timeout))
            }
        }
    }
}

/// The transport error's text, with what to do when the device answered another unit id.
fn explain(e: &tokio_modbus::Error, unit: u8) -> String {
    let text = e.to_string();
    if let tokio_modbus::Error::Protocol(tokio_modbus::ProtocolError::HeaderMismatch {
        message,
        ..
    }) = e
        && let Some((_, response)) = message.split_once("actual/response")
        && response.contains("unit_id: ")
        && !response.contains(&format!("unit_id: {unit} "))
    {
        return format!(
            "{text} (the device answers with another unit id than asked: if it always does, set ignore_reply_unit_id = true)"
        );
    }
    text
}

/// Registers must come back exactly as many as asked; bits in whole bytes (at least as many).
fn short_or_long(data: &Data, count: u16) -> bool {
    let count = usize::from(count);
    match data {
        Data::Words(w) => w.len() != count,
        Data::Bits(b) => b.len() < count || b.len() > count.div_ceil(8) * 8,
    }
}
