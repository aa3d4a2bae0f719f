//! `streamgate scan modbus`: which addresses of one area of one unit answer, found with few
//! requests. The range is read in the largest requests the protocol allows; a request the
//! device refuses (illegal address, or no answer from a device that answered before) is split
//! in two until the holes are single addresses. [`Scan`] is the plan, without I/O; [`run`]
//! drives it over the reader's own [`Line`].

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tokio_modbus::ExceptionCode;

use super::address::Area;
use super::line::{Data, Line, ReadError};

/// Registers per read (the protocol's limit for function codes 3 and 4).
pub const MAX_REGISTERS: u16 = 125;
/// Bits per read (the limit for function codes 1 and 2).
pub const MAX_BITS: u16 = 2000;

/// What one address holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum Found {
    Word(u16),
    Bit(bool),
}

/// The plan of a scan: requests still to make, what answered, what did not.
#[derive(Debug)]
pub struct Scan {
    todo: VecDeque<(u16, u16)>,
    found: BTreeMap<u16, Found>,
    absent: Vec<u16>,
    requests: u32,
    answered: u32,
}

impl Scan {
    /// Addresses `first..=last` (0-based) of `area`.
    pub fn new(area: Area, first: u16, last: u16) -> Scan {
        let max = if area.is_bits() {
            MAX_BITS
        } else {
            MAX_REGISTERS
        };
        let mut todo = VecDeque::new();
        let mut at = u32::from(first);
        while at <= u32::from(last) {
            let count = (u32::from(last) - at + 1).min(u32::from(max));
            todo.push_back((at as u16, count as u16));
            at += count;
        }
        Scan {
            todo,
            found: BTreeMap::new(),
            absent: Vec::new(),
            requests: 0,
            answered: 0,
        }
    }

    /// The next read: (address, count).
    pub fn next_read(&mut self) -> Option<(u16, u16)> {
        let next = self.todo.pop_front();
        if next.is_some() {
            self.requests += 1;
        }
        next
    }

    /// The device answered the read at `start`.
    pub fn answered(&mut self, start: u16, count: u16, data: &Data) {
        self.answered += 1;
        let values: Vec<Found> = match data {
            Data::Words(w) => w.iter().map(|v| Found::Word(*v)).collect(),
            Data::Bits(b) => b.iter().map(|v| Found::Bit(*v)).collect(),
        };
        for (i, v) in values.into_iter().take(usize::from(count)).enumerate() {
            self.found.insert(start + i as u16, v);
        }
    }

    /// The device refused the read at `start`: split it in two, or, for one address, note it
    /// as absent.
    pub fn refused(&mut self, start: u16, count: u16) {
        if count <= 1 {
            self.absent.push(start);
            return;
        }
        let half = count / 2;
        self.todo.push_front((start + half, count - half));
        self.todo.push_front((start, half));
    }

    pub fn found(&self) -> &BTreeMap<u16, Found> {
        &self.found
    }

    /// Reads made so far.
    pub fn requests(&self) -> u32 {
        self.requests
    }

    /// Reads the device answered (the others were refused or split).
    pub fn answered_requests(&self) -> u32 {
        self.answered
    }

    /// The addresses that did not answer, as inclusive ranges, in order.
    pub fn absent(&self) -> Vec<(u16, u16)> {
        let mut all = self.absent.clone();
        all.sort_unstable();
        let mut ranges: Vec<(u16, u16)> = Vec::new();
        for a in all {
            match ranges.last_mut() {
                Some((_, end)) if u32::from(*end) + 1 == u32::from(a) => *end = a,
                _ => ranges.push((a, a)),
            }
        }
        ranges
    }
}

/// Why a scan stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("{0}")]
    Read(ReadError),
    #[error(
        "the device does not serve {area}s (illegal function): try another --area, or another --unit"
    )]
    Area { area: &'static str },
    #[error("no answer from unit {unit} to the first read ({error}); is the unit id right?")]
    Silent { unit: u8, error: ReadError },
}

/// What the device said to one read.
enum Verdict {
    Answered(Data),
    /// About the addresses asked for: split the read.
    Refused,
    Stop(ScanError),
}

fn verdict(
    result: Result<Data, ReadError>,
    area: Area,
    unit: u8,
    answered_before: bool,
) -> Verdict {
    match result {
        Ok(data) => Verdict::Answered(data),
        Err(ReadError::Exception(ExceptionCode::IllegalFunction)) => {
            Verdict::Stop(ScanError::Area { area: area.name() })
        }
        Err(
            ReadError::Exception(
                ExceptionCode::IllegalDataAddress | ExceptionCode::IllegalDataValue,
            )
            | ReadError::Malformed(_),
        ) => Verdict::Refused,
        // Some devices stay silent instead of answering an exception: once the device has
        // answered something, silence is about the addresses.
        Err(ReadError::Timeout(_)) if answered_before => Verdict::Refused,
        Err(error @ ReadError::Timeout(_)) => Verdict::Stop(ScanError::Silent { unit, error }),
        Err(e) => Verdict::Stop(ScanError::Read(e)),
    }
}

/// Scans `first..=last` of `area`. `Err`: what stopped it, with what was found until then.
pub async fn run(
    line: &Line,
    unit: u8,
    area: Area,
    first: u16,
    last: u16,
    timeout: Duration,
) -> (Scan, Option<ScanError>) {
    let mut scan = Scan::new(area, first, last);
    let mut answered_before = false;
    while let Some((start, count)) = scan.next_read() {
        let (_, result) = line.read(unit, area, start, count, timeout).await;
        // A line backing off after a dropped connection (a timeout drops it) is waited for.
        let result = match result {
            Err(ReadError::Down { until }) => {
                tokio::time::sleep_until(until).await;
                line.read(unit, area, start, count, timeout).await.1
            }
            other => other,
        };
        match verdict(result, area, unit, answered_before) {
            Verdict::Answered(data) => {
                answered_before = true;
                scan.answered(start, count, &data);
            }
            Verdict::Refused => scan.refused(start, count),
            Verdict::Stop(e) => return (scan, Some(e)),
        }
    }
    (scan, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a scan against a map of present addresses: a read answers when every address
    /// in it is present, else it is refused (as an illegal data address).
    fn against(present: &dyn Fn(u16) -> bool, first: u16, last: u16, area: Area) -> Scan {
        let mut scan = Scan::new(area, first, last);
        while let Some((start, count)) = scan.next_read() {
            if (start..start + count).all(present) {
                let words = (start..start + count).collect();
                scan.answered(start, count, &Data::Words(words));
            } else {
                scan.refused(start, count);
            }
        }
        scan
    }

    #[test]
    fn a_full_map_is_read_in_the_largest_requests() {
        let scan = against(&|_| true, 0, 299, Area::HoldingRegister);
        assert_eq!(scan.requests(), 3); // 125 + 125 + 50
        assert_eq!(scan.found().len(), 300);
        assert_eq!(scan.found()[&299], Found::Word(299));
        assert!(scan.absent().is_empty());
    }

    #[test]
    fn holes_are_found_by_bisection_with_few_requests() {
        let present = |a: u16| !(10..=19).contains(&a) && a != 57;
        let scan = against(&present, 0, 99, Area::HoldingRegister);
        assert_eq!(scan.absent(), vec![(10, 19), (57, 57)]);
        assert_eq!(scan.found().len(), 89);
        assert!(scan.found().keys().all(|a| present(*a)));
        // One request per address would be 100; bisection needs far fewer.
        assert!(scan.requests() < 50, "{} requests", scan.requests());
    }

    #[test]
    fn bits_go_2000_per_request_and_the_range_end_is_inclusive() {
        let mut scan = Scan::new(Area::Coil, 0, 4000);
        assert_eq!(scan.next_read(), Some((0, 2000)));
        assert_eq!(scan.next_read(), Some((2000, 2000)));
        assert_eq!(scan.next_read(), Some((4000, 1)));
        assert_eq!(scan.next_read(), None);
        let mut top = Scan::new(Area::InputRegister, 65535, 65535);
        assert_eq!(top.next_read(), Some((65535, 1)));
        assert_eq!(top.next_read(), None);
    }

    #[test]
    fn what_stops_a_scan_and_what_splits_a_read() {
        let t = || ReadError::Timeout(Duration::from_millis(5));
        let e = |c| Err(ReadError::Exception(c));
        let area = Area::HoldingRegister;
        assert!(matches!(
            verdict(e(ExceptionCode::IllegalDataAddress), area, 1, false),
            Verdict::Refused
        ));
        assert!(matches!(
            verdict(e(ExceptionCode::IllegalFunction), area, 1, true),
            Verdict::Stop(ScanError::Area { .. })
        ));
        assert!(matches!(verdict(Err(t()), area, 1, true), Verdict::Refused));
        assert!(matches!(
            verdict(Err(t()), area, 1, false),
            Verdict::Stop(ScanError::Silent { .. })
        ));
        assert!(matches!(
            verdict(e(ExceptionCode::ServerDeviceBusy), area, 1, true),
            Verdict::Stop(ScanError::Read(_))
        ));
    }
}
