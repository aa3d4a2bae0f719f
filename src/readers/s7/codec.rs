//! Frame codecs of S7comm over ISO-on-TCP, as pure functions over byte slices:
//! TPKT (RFC 1006) -> COTP (ISO 8073 class 0: CR, CC, DT) -> S7comm (setup communication,
//! read var, write var). Written from the protocol descriptions (RFC 1006, ISO 8073, the
//! Wireshark s7comm dissector's field tables); no code was taken from other clients.

use thiserror::Error;

/// TPKT header: version 3, reserved, 16-bit length including the header.
pub const TPKT_LEN: usize = 4;
/// COTP DT header: length indicator 2, type 0xF0, EOT bit + TPDU number 0.
pub const COTP_DT_LEN: usize = 3;
/// S7 header of a job (ROSCTR 1).
pub const JOB_HEADER_LEN: usize = 10;
/// S7 header of an ack-data (ROSCTR 3): a job header plus error class and code.
pub const ACK_HEADER_LEN: usize = 12;
/// Read-var parameter header: function code and item count.
pub const READ_PARAM_LEN: usize = 2;
/// One S7-ANY item specification in a read/write request.
pub const ITEM_SPEC_LEN: usize = 12;
/// Return code, transport size, 16-bit length before each item's data in a response.
pub const ITEM_DATA_HEADER_LEN: usize = 4;

const COTP_CR: u8 = 0xE0;
const COTP_CC: u8 = 0xD0;
const COTP_DR: u8 = 0x80;
const COTP_DT: u8 = 0xF0;
const S7_PROTOCOL_ID: u8 = 0x32;
const ROSCTR_JOB: u8 = 0x01;
const ROSCTR_ACK: u8 = 0x02;
const ROSCTR_ACK_DATA: u8 = 0x03;
const FN_SETUP_COMMUNICATION: u8 = 0xF0;
const FN_READ_VAR: u8 = 0x04;
const FN_WRITE_VAR: u8 = 0x05;
/// Item return code of success.
pub const RETURN_OK: u8 = 0xFF;
/// TPDU size code 0x0A = 1024 bytes: room for the largest S7 PDU (960) plus headers.
const TPDU_SIZE_1024: u8 = 0x0A;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("frame too short: {0}")]
    Short(&'static str),
    #[error("unexpected {what}: 0x{got:02X}")]
    Unexpected { what: &'static str, got: u8 },
    #[error("the PLC refused the connection (COTP disconnect request, reason 0x{0:02X})")]
    Disconnected(u8),
    #[error("the PLC rejected the job: {0}")]
    Rejected(HeaderError),
    #[error("response to request {got} while waiting for {want}")]
    Reference { want: u16, got: u16 },
    #[error("response has {got} items, the request had {want}")]
    ItemCount { want: usize, got: usize },
}

/// The error class and code of an S7 ack header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderError {
    pub class: u8,
    pub code: u8,
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.class {
            0x81 => "application relationship error",
            0x82 => "object definition error",
            0x83 => "no resources available",
            0x84 => "error on service processing",
            0x85 => "error on supplies",
            0x87 => "access error",
            _ => "error",
        };
        write!(
            f,
            "{name} (class 0x{:02X}, code 0x{:02X})",
            self.class, self.code
        )
    }
}

/// The name of an item return code, as the S7 documentation calls it.
pub fn return_code_name(code: u8) -> &'static str {
    match code {
        0x00 => "reserved",
        0x01 => "hardware fault",
        0x03 => "access to object not allowed",
        0x05 => "address out of range",
        0x06 => "data type not supported",
        0x07 => "data type inconsistent",
        0x0A => "object does not exist",
        RETURN_OK => "success",
        _ => "unknown return code",
    }
}

/// Wraps a payload in a TPKT header.
pub fn tpkt(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() + TPKT_LEN) as u16;
    let mut out = Vec::with_capacity(payload.len() + TPKT_LEN);
    out.extend_from_slice(&[3, 0]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The total frame length a TPKT header announces.
pub fn tpkt_length(header: &[u8; TPKT_LEN]) -> Result<usize, CodecError> {
    if header[0] != 3 {
        return Err(CodecError::Unexpected {
            what: "TPKT version",
            got: header[0],
        });
    }
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if len < TPKT_LEN + 2 {
        return Err(CodecError::Short("TPKT length below 6"));
    }
    Ok(len)
}

/// COTP connection request (in a TPKT frame) with the calling (local) and called (remote) TSAP.
pub fn connection_request(local_tsap: u16, remote_tsap: u16) -> Vec<u8> {
    let l = local_tsap.to_be_bytes();
    let r = remote_tsap.to_be_bytes();
    tpkt(&[
        17, // length indicator: the 17 bytes that follow
        COTP_CR,
        0x00,
        0x00, // destination reference
        0x00,
        0x01, // source reference
        0x00, // class 0
        0xC0,
        1,
        TPDU_SIZE_1024,
        0xC1,
        2,
        l[0],
        l[1],
        0xC2,
        2,
        r[0],
        r[1],
    ])
}

/// Checks a COTP connection confirm (the frame without its TPKT header).
pub fn parse_connection_confirm(cotp: &[u8]) -> Result<(), CodecError> {
    if cotp.len() < 7 {
        return Err(CodecError::Short("COTP CC"));
    }
    match cotp[1] & 0xF0 {
        COTP_CC => Ok(()),
        COTP_DR => Err(CodecError::Disconnected(*cotp.get(6).unwrap_or(&0))),
        other => Err(CodecError::Unexpected {
            what: "COTP PDU type (want CC 0xD0)",
            got: other,
        }),
    }
}

/// An S7 PDU in a COTP DT in a TPKT frame.
pub fn data_frame(s7: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(s7.len() + COTP_DT_LEN);
    payload.extend_from_slice(&[2, COTP_DT, 0x80]);
    payload.extend_from_slice(s7);
    tpkt(&payload)
}

/// The S7 payload of a COTP DT (the frame without its TPKT header), and whether it is the
/// last fragment (EOT).
pub fn parse_data(cotp: &[u8]) -> Result<(&[u8], bool), CodecError> {
    if cotp.len() < 2 {
        return Err(CodecError::Short("COTP header"));
    }
    let li = usize::from(cotp[0]);
    match cotp[1] & 0xF0 {
        COTP_DT => {}
        COTP_DR => return Err(CodecError::Disconnected(*cotp.get(6).unwrap_or(&0))),
        other => {
            return Err(CodecError::Unexpected {
                what: "COTP PDU type (want DT 0xF0)",
                got: other,
            });
        }
    }
    if cotp.len() < li + 1 || li < 2 {
        return Err(CodecError::Short("COTP DT"));
    }
    Ok((&cotp[li + 1..], cotp[2] & 0x80 != 0))
}

fn job_header(pdu_ref: u16, param_len: usize, data_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(JOB_HEADER_LEN + param_len + data_len);
    out.extend_from_slice(&[S7_PROTOCOL_ID, ROSCTR_JOB, 0, 0]);
    out.extend_from_slice(&pdu_ref.to_be_bytes());
    out.extend_from_slice(&(param_len as u16).to_be_bytes());
    out.extend_from_slice(&(data_len as u16).to_be_bytes());
    out
}

/// S7 message type of user data (CPU functions such as reading the SZL).
const ROSCTR_USERDATA: u8 = 0x07;

/// A userdata request reading the system status list `id` at `index` (CPU functions,
/// subfunction "read SZL"): what the PLC says about itself.
pub fn read_szl(pdu_ref: u16, id: u16, index: u16) -> Vec<u8> {
    let mut out = vec![S7_PROTOCOL_ID, ROSCTR_USERDATA, 0, 0];
    out.extend_from_slice(&pdu_ref.to_be_bytes());
    out.extend_from_slice(&8u16.to_be_bytes()); // parameter length
    out.extend_from_slice(&8u16.to_be_bytes()); // data length
    // Parameter head, length 4, request, type request + group CPU functions, read SZL, seq 0.
    out.extend_from_slice(&[0x00, 0x01, 0x12, 0x04, 0x11, 0x44, 0x01, 0x00]);
    // Return code (request), octet string, 4 bytes: the SZL id and index.
    out.extend_from_slice(&[0xFF, 0x09, 0x00, 0x04]);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&index.to_be_bytes());
    out
}

/// The records of an SZL answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Szl {
    pub id: u16,
    pub index: u16,
    /// The records, each `record_len` bytes.
    pub records: Vec<Vec<u8>>,
    /// The PLC has more records than this first answer carried.
    pub more: bool,
}

/// Parses the answer to [`read_szl`].
pub fn parse_szl(s7: &[u8], pdu_ref: u16) -> Result<Szl, CodecError> {
    check_header(
        s7,
        |t| t == ROSCTR_USERDATA,
        "S7 message type (want userdata 0x07)",
    )?;
    let got = u16::from_be_bytes([s7[4], s7[5]]);
    if got != pdu_ref {
        return Err(CodecError::Reference { want: pdu_ref, got });
    }
    let param_len = usize::from(u16::from_be_bytes([s7[6], s7[7]]));
    let data_len = usize::from(u16::from_be_bytes([s7[8], s7[9]]));
    let body = &s7[JOB_HEADER_LEN..];
    if body.len() < param_len + data_len || param_len < 12 {
        return Err(CodecError::Short("S7 userdata sections"));
    }
    let param = &body[..param_len];
    let data = &body[param_len..param_len + data_len];
    let (class, code) = (param[10], param[11]);
    if class != 0 || code != 0 {
        return Err(CodecError::Rejected(HeaderError { class, code }));
    }
    let more = param[9] != 0;
    if data.len() < 4 {
        return Err(CodecError::Short("SZL data header"));
    }
    if data[0] != RETURN_OK {
        return Err(CodecError::Unexpected {
            what: "SZL return code",
            got: data[0],
        });
    }
    let szl = &data[4..];
    if szl.len() < 8 {
        return Err(CodecError::Short("SZL header"));
    }
    let id = u16::from_be_bytes([szl[0], szl[1]]);
    let index = u16::from_be_bytes([szl[2], szl[3]]);
    let record_len = usize::from(u16::from_be_bytes([szl[4], szl[5]]));
    let count = usize::from(u16::from_be_bytes([szl[6], szl[7]]));
    let records = if record_len == 0 {
        Vec::new()
    } else {
        szl[8..]
            .chunks_exact(record_len)
            .take(count)
            .map(<[u8]>::to_vec)
            .collect()
    };
    Ok(Szl {
        id,
        index,
        records,
        more,
    })
}

/// The setup-communication job: one job in flight each way, the PDU size we ask for.
pub fn setup_communication(pdu_ref: u16, pdu_size: u16) -> Vec<u8> {
    let mut out = job_header(pdu_ref, 8, 0);
    out.extend_from_slice(&[FN_SETUP_COMMUNICATION, 0, 0, 1, 0, 1]);
    out.extend_from_slice(&pdu_size.to_be_bytes());
    out
}

/// A parsed ack-data header: its reference and where its parameter and data sections are.
struct Ack<'a> {
    pdu_ref: u16,
    param: &'a [u8],
    data: &'a [u8],
}

/// The first bytes of an S7 header: long enough, the protocol id, a message type `want`s.
fn check_header(
    s7: &[u8],
    want: impl Fn(u8) -> bool,
    what: &'static str,
) -> Result<(), CodecError> {
    if s7.len() < JOB_HEADER_LEN {
        return Err(CodecError::Short("S7 header"));
    }
    if s7[0] != S7_PROTOCOL_ID {
        return Err(CodecError::Unexpected {
            what: "S7 protocol id",
            got: s7[0],
        });
    }
    if !want(s7[1]) {
        return Err(CodecError::Unexpected { what, got: s7[1] });
    }
    Ok(())
}

fn parse_ack(s7: &[u8]) -> Result<Ack<'_>, CodecError> {
    check_header(
        s7,
        |t| t == ROSCTR_ACK_DATA || t == ROSCTR_ACK,
        "S7 message type (want ack-data 0x03)",
    )?;
    if s7.len() < ACK_HEADER_LEN {
        return Err(CodecError::Short("S7 ack header"));
    }
    let pdu_ref = u16::from_be_bytes([s7[4], s7[5]]);
    let param_len = usize::from(u16::from_be_bytes([s7[6], s7[7]]));
    let data_len = usize::from(u16::from_be_bytes([s7[8], s7[9]]));
    let (class, code) = (s7[10], s7[11]);
    if class != 0 || code != 0 {
        return Err(CodecError::Rejected(HeaderError { class, code }));
    }
    let body = &s7[ACK_HEADER_LEN..];
    if body.len() < param_len + data_len {
        return Err(CodecError::Short("S7 parameter and data sections"));
    }
    Ok(Ack {
        pdu_ref,
        param: &body[..param_len],
        data: &body[param_len..param_len + data_len],
    })
}

fn check_ref(ack: &Ack<'_>, want: u16) -> Result<(), CodecError> {
    if ack.pdu_ref != want {
        return Err(CodecError::Reference {
            want,
            got: ack.pdu_ref,
        });
    }
    Ok(())
}

/// The PDU size the PLC granted in its setup-communication answer.
pub fn parse_setup_communication(s7: &[u8], pdu_ref: u16) -> Result<u16, CodecError> {
    let ack = parse_ack(s7)?;
    check_ref(&ack, pdu_ref)?;
    if ack.param.len() < 8 {
        return Err(CodecError::Short("setup communication parameters"));
    }
    if ack.param[0] != FN_SETUP_COMMUNICATION {
        return Err(CodecError::Unexpected {
            what: "function (want setup communication 0xF0)",
            got: ack.param[0],
        });
    }
    Ok(u16::from_be_bytes([ack.param[6], ack.param[7]]))
}

/// One item of a read or write: `len` bytes from byte `start` of an area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Item {
    /// S7 area code (0x81 inputs, 0x82 outputs, 0x83 merkers, 0x84 data blocks).
    pub area: u8,
    pub db: u16,
    pub start: u32,
    pub len: u16,
}

fn item_spec(out: &mut Vec<u8>, item: &Item) {
    let bit_address = item.start * 8;
    out.extend_from_slice(&[0x12, 0x0A, 0x10, 0x02]); // S7-ANY, transport size BYTE
    out.extend_from_slice(&item.len.to_be_bytes());
    out.extend_from_slice(&item.db.to_be_bytes());
    out.push(item.area);
    out.extend_from_slice(&bit_address.to_be_bytes()[1..]);
}

/// A read-var job for `items`, each read as a byte range.
pub fn read_var(pdu_ref: u16, items: &[Item]) -> Vec<u8> {
    let param_len = READ_PARAM_LEN + ITEM_SPEC_LEN * items.len();
    let mut out = job_header(pdu_ref, param_len, 0);
    out.extend_from_slice(&[FN_READ_VAR, items.len() as u8]);
    for item in items {
        item_spec(&mut out, item);
    }
    out
}

/// The outcome of one item: its bytes or the PLC's return code.
pub type ItemResult = Result<Vec<u8>, u8>;

/// Splits a read-var answer into one result per requested item, in request order.
pub fn parse_read_var(
    s7: &[u8],
    pdu_ref: u16,
    items: &[Item],
) -> Result<Vec<ItemResult>, CodecError> {
    let ack = parse_ack(s7)?;
    check_ref(&ack, pdu_ref)?;
    if ack.param.len() < 2 || ack.param[0] != FN_READ_VAR {
        return Err(CodecError::Unexpected {
            what: "function (want read var 0x04)",
            got: ack.param.first().copied().unwrap_or(0),
        });
    }
    let count = usize::from(ack.param[1]);
    if count != items.len() {
        return Err(CodecError::ItemCount {
            want: items.len(),
            got: count,
        });
    }
    let mut data = ack.data;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        if data.len() < ITEM_DATA_HEADER_LEN {
            // A failed last item may be sent as a bare return code.
            if let Some(&code) = data.first()
                && code != RETURN_OK
            {
                out.push(Err(code));
                data = &data[data.len()..];
                continue;
            }
            return Err(CodecError::Short("read var item header"));
        }
        let (code, transport) = (data[0], data[1]);
        let raw_len = usize::from(u16::from_be_bytes([data[2], data[3]]));
        // Lengths are in bits for BIT, BYTE/WORD/DWORD and INTEGER, in bytes otherwise.
        let len = match transport {
            0x03..=0x05 => raw_len.div_ceil(8),
            _ => raw_len,
        };
        data = &data[ITEM_DATA_HEADER_LEN..];
        if code != RETURN_OK {
            out.push(Err(code));
            continue;
        }
        if data.len() < len {
            return Err(CodecError::Short("read var item data"));
        }
        out.push(Ok(data[..len].to_vec()));
        // Every item but the last is padded to an even length.
        let padded = if i + 1 < count { len + (len & 1) } else { len };
        data = &data[padded.min(data.len())..];
    }
    Ok(out)
}

/// A write-var job writing `bytes` at one item (transport size BYTE).
pub fn write_var(pdu_ref: u16, item: &Item, bytes: &[u8]) -> Vec<u8> {
    let param_len = READ_PARAM_LEN + ITEM_SPEC_LEN;
    let data_len = ITEM_DATA_HEADER_LEN + bytes.len();
    let mut out = job_header(pdu_ref, param_len, data_len);
    out.extend_from_slice(&[FN_WRITE_VAR, 1]);
    item_spec(&mut out, item);
    out.extend_from_slice(&[0x00, 0x04]); // reserved, transport size BYTE (length in bits)
    out.extend_from_slice(&((bytes.len() * 8) as u16).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

/// The return code of a one-item write-var answer.
pub fn parse_write_var(s7: &[u8], pdu_ref: u16) -> Result<u8, CodecError> {
    let ack = parse_ack(s7)?;
    check_ref(&ack, pdu_ref)?;
    if ack.param.len() < 2 || ack.param[0] != FN_WRITE_VAR {
        return Err(CodecError::Unexpected {
            what: "function (want write var 0x05)",
            got: ack.param.first().copied().unwrap_or(0),
        });
    }
    ack.data
        .first()
        .copied()
        .ok_or(CodecError::Short("write var return code"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_request_bytes() {
        // Rack 0, slot 2, PG: remote TSAP 0x0102; local 0x0100 (the usual S7 client values).
        assert_eq!(
            connection_request(0x0100, 0x0102),
            [
                0x03, 0x00, 0x00, 0x16, 0x11, 0xE0, 0x00, 0x00, 0x00, 0x01, 0x00, 0xC0, 0x01, 0x0A,
                0xC1, 0x02, 0x01, 0x00, 0xC2, 0x02, 0x01, 0x02
            ]
        );
    }

    #[test]
    fn connection_confirm() {
        let cc = [0x11, 0xD0, 0x00, 0x01, 0x00, 0x01, 0x00, 0xC0, 0x01, 0x0A];
        assert_eq!(parse_connection_confirm(&cc), Ok(()));
        let dr = [0x06, 0x80, 0x00, 0x01, 0x00, 0x01, 0x81];
        assert_eq!(
            parse_connection_confirm(&dr),
            Err(CodecError::Disconnected(0x81))
        );
        assert!(parse_connection_confirm(&[0x02, 0xD0]).is_err());
    }

    #[test]
    fn tpkt_framing() {
        assert_eq!(tpkt_length(&[3, 0, 0, 0x16]), Ok(22));
        assert!(tpkt_length(&[2, 0, 0, 0x16]).is_err());
        assert!(tpkt_length(&[3, 0, 0, 4]).is_err());
        let frame = data_frame(&[0x32, 0x01]);
        assert_eq!(frame, [3, 0, 0, 9, 2, 0xF0, 0x80, 0x32, 0x01]);
        assert_eq!(parse_data(&frame[4..]), Ok((&[0x32u8, 0x01][..], true)));
        assert_eq!(
            parse_data(&[2, 0xF0, 0x00, 0x32]),
            Ok((&[0x32u8][..], false))
        );
    }

    #[test]
    fn setup_communication_bytes() {
        // The classic job asking for 480 bytes (Wireshark: "Setup communication", PDU 480).
        assert_eq!(
            setup_communication(0, 480),
            [
                0x32, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0xF0, 0x00, 0x00, 0x01,
                0x00, 0x01, 0x01, 0xE0
            ]
        );
        let ack = [
            0x32, 0x03, 0x00, 0x00, 0x00, 0x07, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0xF0, 0x00,
            0x00, 0x01, 0x00, 0x01, 0x00, 0xF0,
        ];
        assert_eq!(parse_setup_communication(&ack, 7), Ok(240));
        assert_eq!(
            parse_setup_communication(&ack, 8),
            Err(CodecError::Reference { want: 8, got: 7 })
        );
        let mut refused = ack;
        refused[10] = 0x81;
        refused[11] = 0x04;
        assert_eq!(
            parse_setup_communication(&refused, 7),
            Err(CodecError::Rejected(HeaderError {
                class: 0x81,
                code: 0x04
            }))
        );
    }

    #[test]
    fn read_var_request_bytes() {
        // DB1.DBB4, 2 bytes, and MB10, 1 byte.
        let items = [
            Item {
                area: 0x84,
                db: 1,
                start: 4,
                len: 2,
            },
            Item {
                area: 0x83,
                db: 0,
                start: 10,
                len: 1,
            },
        ];
        assert_eq!(
            read_var(5, &items),
            [
                0x32, 0x01, 0x00, 0x00, 0x00, 0x05, 0x00, 0x1A, 0x00, 0x00, // header
                0x04, 0x02, // read var, 2 items
                0x12, 0x0A, 0x10, 0x02, 0x00, 0x02, 0x00, 0x01, 0x84, 0x00, 0x00, 0x20, //
                0x12, 0x0A, 0x10, 0x02, 0x00, 0x01, 0x00, 0x00, 0x83, 0x00, 0x00, 0x50,
            ]
        );
    }

    fn item(len: u16) -> Item {
        Item {
            area: 0x84,
            db: 1,
            start: 0,
            len,
        }
    }

    #[test]
    fn read_var_response_items() {
        // Three items: 3 bytes (padded), object does not exist, 2 bytes.
        let data = [
            0xFF, 0x04, 0x00, 0x18, 1, 2, 3, 0x00, // 24 bits + fill byte
            0x0A, 0x00, 0x00, 0x00, // error, no data
            0xFF, 0x04, 0x00, 0x10, 4, 5,
        ];
        let mut s7 = vec![
            0x32,
            0x03,
            0,
            0,
            0,
            9,
            0,
            2,
            0,
            data.len() as u8,
            0,
            0,
            0x04,
            3,
        ];
        s7.extend_from_slice(&data);
        let items = [item(3), item(1), item(2)];
        assert_eq!(
            parse_read_var(&s7, 9, &items),
            Ok(vec![Ok(vec![1, 2, 3]), Err(0x0A), Ok(vec![4, 5])])
        );
        assert_eq!(
            parse_read_var(&s7, 9, &items[..2]),
            Err(CodecError::ItemCount { want: 2, got: 3 })
        );
        // A bit read answered with transport size BIT: length 1 (bit), one byte of data.
        let s7 = [
            0x32, 0x03, 0, 0, 0, 1, 0, 2, 0, 5, 0, 0, 0x04, 1, 0xFF, 0x03, 0x00, 0x01, 0x01,
        ];
        assert_eq!(parse_read_var(&s7, 1, &[item(1)]), Ok(vec![Ok(vec![1])]));
        // Octet string: length in bytes.
        let s7 = [
            0x32, 0x03, 0, 0, 0, 1, 0, 2, 0, 6, 0, 0, 0x04, 1, 0xFF, 0x09, 0x00, 0x02, 7, 8,
        ];
        assert_eq!(parse_read_var(&s7, 1, &[item(2)]), Ok(vec![Ok(vec![7, 8])]));
        // Truncated data is an error, not a short value.
        let s7 = [
            0x32, 0x03, 0, 0, 0, 1, 0, 2, 0, 5, 0, 0, 0x04, 1, 0xFF, 0x04, 0x00, 0x10, 7,
        ];
        assert!(parse_read_var(&s7, 1, &[item(2)]).is_err());
    }

    #[test]
    fn write_var_bytes() {
        let it = Item {
            area: 0x84,
            db: 1,
            start: 2,
            len: 2,
        };
        assert_eq!(
            write_var(3, &it, &[0xAB, 0xCD]),
            [
                0x32, 0x01, 0x00, 0x00, 0x00, 0x03, 0x00, 0x0E, 0x00, 0x06, //
                0x05, 0x01, 0x12, 0x0A, 0x10, 0x02, 0x00, 0x02, 0x00, 0x01, 0x84, 0x00, 0x00,
                0x10, //
                0x00, 0x04, 0x00, 0x10, 0xAB, 0xCD
            ]
        );
        let ack = [0x32, 0x03, 0, 0, 0, 3, 0, 2, 0, 1, 0, 0, 0x05, 0x01, 0xFF];
        assert_eq!(parse_write_var(&ack, 3), Ok(0xFF));
    }

    #[test]
    fn return_codes() {
        assert_eq!(return_code_name(0x0A), "object does not exist");
        assert_eq!(return_code_name(0x05), "address out of range");
        assert_eq!(return_code_name(0x03), "access to object not allowed");
    }

    #[test]
    fn szl_request_and_answer() {
        let req = read_szl(7, 0x0011, 0x0000);
        assert_eq!(req.len(), 26);
        assert_eq!(&req[..10], &[0x32, 0x07, 0, 0, 0, 7, 0, 8, 0, 8]);
        assert_eq!(&req[22..], &[0x00, 0x11, 0x00, 0x00]);
        let mut answer = vec![0x32, 0x07, 0, 0, 0, 7, 0, 12, 0, 16];
        answer.extend_from_slice(&[0, 1, 0x12, 8, 0x12, 0x84, 1, 1, 0, 0, 0, 0]);
        answer.extend_from_slice(&[0xFF, 0x09, 0, 12]);
        answer.extend_from_slice(&[0x00, 0x11, 0x00, 0x00, 0, 2, 0, 2, 0xAB, 0xCD, 0x12, 0x34]);
        let szl = parse_szl(&answer, 7).unwrap();
        assert_eq!(szl.id, 0x0011);
        assert_eq!(szl.records, vec![vec![0xAB, 0xCD], vec![0x12, 0x34]]);
        assert!(!szl.more);
        answer[5] = 8;
        assert!(matches!(
            parse_szl(&answer, 7),
            Err(CodecError::Reference { .. })
        ));
        answer[5] = 7;
        answer[20] = 0x84;
        answer[21] = 0x04;
        assert!(matches!(
            parse_szl(&answer, 7),
            Err(CodecError::Rejected(_))
        ));
    }
}
