//! Checking a log against the audit key: every record's MAC, the sequence
//! numbers and the chain. The first problem found is reported with its
//! line number and sequence number; `securevm audit verify` prints it and
//! securevm refuses to append to a log that has one.
//!
//! A line cut by a crash mid-write is not a record. When securevm opens
//! such a log again it ends the partial line, then writes a `log-opened`
//! record naming the line and the SHA-256 of its bytes, so the cut line
//! is bound into the chain and stays visible: verification accepts it only
//! with that acknowledgement. A cut last line (nobody has opened the log
//! since the crash) is reported as truncation. Whole records removed from
//! the end leave no trace in the chain itself; a copy of the log kept
//! elsewhere is the defence against that.

use std::fmt;

use openssl::sha::sha256;
use serde_json::{Map, Value};

use super::key::AuditKey;
use super::record::{hex, mac_of, parse_mac, GENESIS_MAC, MAC_BYTES};

/// The first thing wrong with a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The record's MAC does not verify: its content was changed (or the
    /// key is not the one that wrote the log).
    Altered { line: u64, seq: u64 },
    /// A line in the middle that is no record and was never acknowledged.
    NotARecord { line: u64 },
    /// Sequence numbers jump: records were removed before this line.
    Removed { line: u64, seq: u64, expected: u64 },
    /// A record appears out of order (or twice).
    Reordered { line: u64, seq: u64, expected: u64 },
    /// The sequence number fits but the record does not chain to the one
    /// before it (that one was replaced or removed and renumbered).
    Unlinked { line: u64, seq: u64 },
    /// The last line is a partial record (cut mid-write).
    TruncatedTail { line: u64, after_seq: u64 },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Problem::Altered { line, seq } => write!(
                f,
                "line {line} (seq {seq}): record altered: its MAC does not verify (or the log was written with another audit key)"
            ),
            Problem::NotARecord { line } => write!(
                f,
                "line {line}: not an audit record (altered or cut, and never acknowledged by securevm)"
            ),
            Problem::Removed {
                line,
                seq,
                expected,
            } => write!(
                f,
                "line {line} (seq {seq}): record(s) removed before it: seq {expected} to {} are missing",
                seq - 1
            ),
            Problem::Reordered {
                line,
                seq,
                expected,
            } => write!(
                f,
                "line {line} (seq {seq}): records reordered or repeated: seq {expected} belongs here"
            ),
            Problem::Unlinked { line, seq } => write!(
                f,
                "line {line} (seq {seq}): does not chain to the record before it (a record was removed or replaced)"
            ),
            Problem::TruncatedTail { line, after_seq } => write!(
                f,
                "line {line}: the log is truncated: the last record (after seq {after_seq}) is cut off"
            ),
        }
    }
}

/// A line cut by a crash and acknowledged by a later `log-opened` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredLine {
    pub line: u64,
    /// The record that acknowledged it.
    pub by_seq: u64,
}

/// Where a verified log ends, for appending to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainEnd {
    /// Whole records in the log.
    pub records: u64,
    /// Sequence number of the last record (0 for an empty log).
    pub last_seq: u64,
    pub last_mac: [u8; MAC_BYTES],
    /// Lines in the file, counting a final partial line.
    pub lines: u64,
}

/// What verifying a log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every record verifies.
    Intact {
        end: ChainEnd,
        recovered: Vec<RecoveredLine>,
    },
    /// Every whole record verifies but the last line is partial: what a
    /// crash mid-write leaves. `torn` holds its bytes.
    TornTail {
        end: ChainEnd,
        recovered: Vec<RecoveredLine>,
        torn: Vec<u8>,
    },
    Broken(Problem),
}

struct Parsed {
    seq: u64,
    prev: [u8; MAC_BYTES],
    mac: [u8; MAC_BYTES],
    object: Map<String, Value>,
}

fn parse(line: &[u8]) -> Option<Parsed> {
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(line) else {
        return None;
    };
    Some(Parsed {
        seq: object.get("seq")?.as_u64()?,
        prev: parse_mac(object.get("prev")?.as_str()?)?,
        mac: parse_mac(object.get("mac")?.as_str()?)?,
        object,
    })
}

/// Whether `record` is the `log-opened` record acknowledging `line` with
/// these bytes.
fn acknowledges(record: &Map<String, Value>, line: u64, bytes: &[u8]) -> bool {
    record.get("event").and_then(Value::as_str) == Some("log-opened")
        && record.get("recovered_torn_line").and_then(Value::as_u64) == Some(line)
        && record.get("torn_sha256").and_then(Value::as_str) == Some(hex(&sha256(bytes)).as_str())
}

/// Verifies the whole content of a log file.
pub fn verify_log(content: &[u8], key: &AuditKey) -> Verdict {
    let mut pieces: Vec<&[u8]> = content.split(|&b| b == b'\n').collect();
    // split() yields an empty piece after a final newline: not a line.
    let ends_with_newline = pieces.last().is_some_and(|last| last.is_empty());
    if ends_with_newline {
        pieces.pop();
    }
    let seqs: Vec<Option<u64>> = pieces
        .iter()
        .map(|piece| parse(piece).map(|parsed| parsed.seq))
        .collect();
    let mut end = ChainEnd {
        records: 0,
        last_seq: 0,
        last_mac: GENESIS_MAC,
        lines: pieces.len() as u64,
    };
    let mut recovered = Vec::new();
    let mut pending_torn: Option<(u64, &[u8])> = None;
    for (index, piece) in pieces.iter().enumerate() {
        let line = index as u64 + 1;
        let is_last = index + 1 == pieces.len();
        let Some(record) = parse(piece) else {
            if is_last && !ends_with_newline {
                return Verdict::TornTail {
                    end,
                    recovered,
                    torn: piece.to_vec(),
                };
            }
            if let Some((torn_line, _)) = pending_torn {
                return Verdict::Broken(Problem::NotARecord { line: torn_line });
            }
            pending_torn = Some((line, piece));
            continue;
        };
        let seq = record.seq;
        // A line that is no record comes first in the file: it is the
        // first problem unless this record acknowledges it (which the MAC
        // check below then vouches for).
        let acknowledged = match pending_torn.take() {
            Some((torn_line, bytes)) if acknowledges(&record.object, torn_line, bytes) => {
                Some(torn_line)
            }
            Some((torn_line, _)) => {
                return Verdict::Broken(Problem::NotARecord { line: torn_line })
            }
            None => None,
        };
        match mac_of(key, &record.prev, &record.object) {
            Ok(mac) if openssl::memcmp::eq(&mac, &record.mac) => {}
            _ => return Verdict::Broken(Problem::Altered { line, seq }),
        }
        let expected = end.last_seq + 1;
        if seq > expected {
            let comes_later = seqs[index + 1..].contains(&Some(expected));
            return Verdict::Broken(if comes_later {
                Problem::Reordered {
                    line,
                    seq,
                    expected,
                }
            } else {
                Problem::Removed {
                    line,
                    seq,
                    expected,
                }
            });
        }
        if seq < expected {
            return Verdict::Broken(Problem::Reordered {
                line,
                seq,
                expected,
            });
        }
        if !openssl::memcmp::eq(&record.prev, &end.last_mac) {
            return Verdict::Broken(Problem::Unlinked { line, seq });
        }
        if let Some(torn_line) = acknowledged {
            recovered.push(RecoveredLine {
                line: torn_line,
                by_seq: seq,
            });
        }
        end.records += 1;
        end.last_seq = seq;
        end.last_mac = record.mac;
    }
    if let Some((torn_line, _)) = pending_torn {
        return Verdict::Broken(Problem::NotARecord { line: torn_line });
    }
    Verdict::Intact { end, recovered }
}

/// The `securevm audit verify` report: the text to print and whether the
/// log verifies.
pub fn report(content: &[u8], key: &AuditKey) -> (String, bool) {
    let notes = |recovered: &[RecoveredLine]| -> String {
        recovered
            .iter()
            .map(|r| {
                format!(
                    "audit: note: line {} was cut by a crash; record seq {} acknowledges it\n",
                    r.line, r.by_seq
                )
            })
            .collect()
    };
    match verify_log(content, key) {
        Verdict::Intact { end, recovered } => (
            format!(
                "{}audit: all {} records verify",
                notes(&recovered),
                end.records
            ),
            true,
        ),
        Verdict::TornTail { end, recovered, .. } => (
            format!(
                "{}audit: {}",
                notes(&recovered),
                Problem::TruncatedTail {
                    line: end.lines,
                    after_seq: end.last_seq
                }
            ),
            false,
        ),
        Verdict::Broken(problem) => (format!("audit: {problem}"), false),
    }
}

/// The `securevm audit verify --collected` report, for a collector's copy
/// of a machine's log (what forwarding delivered, at least once, in
/// order): every record's MAC and its chain link are checked as in the
/// machine's own log, a record received again exactly as before is a
/// repeat and accepted, and every gap (records the copy lacks) is
/// reported, as is everything else that is wrong. Lines the machine's log
/// holds that are no record (cut by a crash) are never forwarded, so their
/// acknowledgements are not checked here. The text to print and whether
/// the copy is whole.
pub fn report_collected(content: &[u8], key: &AuditKey) -> (String, bool) {
    let mut out = String::new();
    let mut problems = 0u64;
    let mut records = 0u64;
    let mut repeats = 0u64;
    let mut last_seq = 0u64;
    let mut last_mac = GENESIS_MAC;
    let mut seen: std::collections::HashMap<u64, [u8; MAC_BYTES]> = Default::default();
    let mut note = |text: String| {
        out.push_str("audit: ");
        out.push_str(&text);
        out.push('\n');
    };
    let mut pieces: Vec<&[u8]> = content.split(|&b| b == b'\n').collect();
    if pieces.last().is_some_and(|last| last.is_empty()) {
        pieces.pop();
    }
    for (index, piece) in pieces.iter().enumerate() {
        let line = index as u64 + 1;
        let Some(record) = parse(piece) else {
            note(Problem::NotARecord { line }.to_string());
            problems += 1;
            continue;
        };
        let seq = record.seq;
        match mac_of(key, &record.prev, &record.object) {
            Ok(mac) if openssl::memcmp::eq(&mac, &record.mac) => {}
            _ => {
                note(Problem::Altered { line, seq }.to_string());
                problems += 1;
                continue;
            }
        }
        if seq <= last_seq {
            match seen.get(&seq) {
                Some(mac) if openssl::memcmp::eq(mac, &record.mac) => repeats += 1,
                Some(_) => {
                    note(format!("line {line} (seq {seq}): differs from the record seq {seq} received before"));
                    problems += 1;
                }
                None => {
                    note(format!(
                        "line {line} (seq {seq}): arrives after seq {last_seq}, out of order"
                    ));
                    problems += 1;
                }
            }
            continue;
        }
        if seq > last_seq + 1 {
            note(format!(
                "line {line} (seq {seq}): gap: seq {} to {} are missing",
                last_seq + 1,
                seq - 1
            ));
            problems += 1;
        } else if !openssl::memcmp::eq(&record.prev, &last_mac) {
            note(Problem::Unlinked { line, seq }.to_string());
            problems += 1;
        }
        seen.insert(seq, record.mac);
        records += 1;
        last_seq = seq;
        last_mac = record.mac;
    }
    let summary = if problems == 0 {
        format!("audit: all {records} records verify ({repeats} exact repeats), up to seq {last_seq}, no gap")
    } else {
        format!("audit: {problems} problem(s) in {records} records ({repeats} exact repeats), up to seq {last_seq}")
    };
    out.push_str(&summary);
    (out, problems == 0)
}
