//! Our S7 codec fed whatever a PLC (or anything listening on port 102) might send back:
//! TPKT headers, COTP connection confirms and data frames, setup-communication, read-var and
//! write-var answers. Never a panic; a read-var answer that parses has one result per item;
//! an S7 address parsed from arbitrary text has a sane size and fits the ANY pointer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamgate::readers::s7::{address, codec};

/// Input layout (so seeds can be real frames): PDU reference (2 bytes, big-endian), item count
/// n (1 byte, at most 40), n items of (start: 1 byte, length: 2 bytes big-endian), then the
/// answer: a TPKT frame. The answer is also parsed as an S7 address (text).
struct Input<'a> {
    pdu_ref: u16,
    items: Vec<(u8, u16)>,
    frame: &'a [u8],
    address: String,
}

fn input(data: &[u8]) -> Option<Input<'_>> {
    let (head, rest) = data.split_at_checked(3)?;
    let n = usize::from(head[2] % 41);
    let (items, tpkt) = rest.split_at_checked(3 * n)?;
    Some(Input {
        pdu_ref: u16::from_be_bytes([head[0], head[1]]),
        items: items
            .chunks(3)
            .map(|c| (c[0], u16::from_be_bytes([c[1], c[2]])))
            .collect(),
        frame: tpkt.get(codec::TPKT_LEN..).unwrap_or(&[]),
        address: String::from_utf8_lossy(tpkt).into_owned(),
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = input(data) else { return };
    if let Some(header) = data
        .get(3 + 3 * input.items.len()..)
        .and_then(|t| t.get(..4))
    {
        let header: [u8; 4] = [header[0], header[1], header[2], header[3]];
        if let Ok(len) = codec::tpkt_length(&header) {
            assert!((codec::TPKT_LEN + 2..=usize::from(u16::MAX)).contains(&len));
        }
    }
    let _ = codec::parse_connection_confirm(input.frame);
    let s7 = match codec::parse_data(input.frame) {
        Ok((payload, _last)) => payload,
        // Also parse the bytes as a bare S7 PDU, as if reassembled.
        Err(_) => input.frame,
    };
    let _ = codec::parse_setup_communication(s7, input.pdu_ref);
    let _ = codec::parse_write_var(s7, input.pdu_ref);
    let items: Vec<codec::Item> = input
        .items
        .iter()
        .take(40)
        .map(|&(start, len)| codec::Item {
            area: 0x84,
            db: 1,
            start: u32::from(start),
            len,
        })
        .collect();
    if let Ok(results) = codec::parse_read_var(s7, input.pdu_ref, &items) {
        assert_eq!(results.len(), items.len());
    }
    // Requests we build for these items parse as what they are (the codec's own frames).
    let job = codec::read_var(input.pdu_ref, &items);
    let framed = codec::data_frame(&job);
    let header: [u8; 4] = [framed[0], framed[1], framed[2], framed[3]];
    if framed.len() <= usize::from(u16::MAX) {
        assert_eq!(codec::tpkt_length(&header), Ok(framed.len()));
        let (payload, last) = codec::parse_data(&framed[4..]).expect("our DT frame");
        assert!(last);
        assert_eq!(payload, job.as_slice());
    }

    if let Ok(a) = address::parse(&input.address) {
        assert!(a.data_type.size() >= 1 && a.data_type.size() <= 256);
        assert!(a.byte + a.data_type.size() - 1 <= address::MAX_BYTE_OFFSET);
        if let address::DataType::Bool(bit) = a.data_type {
            assert!(bit <= 7);
        }
    }
});
