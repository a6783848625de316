//! Learning host names from DNS answers.
//!
//! The filter reads the answers that the policy's resolvers send back on
//! flows the guest opened, and remembers which addresses each queried name
//! resolved to, so rules written with host names can match those addresses.
//! Only A/AAAA records on the chain of CNAMEs starting at the question
//! count, and they are recorded under the name the guest asked for. TTLs
//! are clamped to [`MIN_TTL`, `MAX_TTL`]; the map is bounded, and when it is
//! full the entry closest to expiry is forgotten (forgetting only ever
//! refuses more).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shortest time an answer is remembered, so a zero TTL still lets the guest connect.
pub(crate) const MIN_TTL: Duration = Duration::from_secs(30);
/// Longest time an answer is remembered.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(60 * 60);
/// Most addresses remembered.
pub(crate) const MAX_ADDRESSES: usize = 16_384;
/// Most names remembered for one address.
pub(crate) const MAX_NAMES_PER_ADDRESS: usize = 8;

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const MAX_NAME_LEN: usize = 253;
const MAX_CNAME_CHAIN: usize = 16;

/// One address from an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) address: IpAddr,
    pub(crate) ttl: u32,
}

/// A parsed DNS response: the question's name and its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    /// Lowercase, without a trailing dot.
    pub(crate) name: String,
    pub(crate) answers: Vec<Answer>,
}

fn be16(message: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(
        message.get(at..at + 2)?.try_into().ok()?,
    ))
}

fn be32(message: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        message.get(at..at + 4)?.try_into().ok()?,
    ))
}

/// Reads a possibly compressed name at `at`; returns it (lowercase, dotted)
/// and the offset just after it in the record. Pointers must point backwards,
/// which rules out loops.
fn read_name(message: &[u8], at: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    let mut position = at;
    let mut end_in_record = None;
    loop {
        let length = *message.get(position)?;
        match length & 0xc0 {
            0x00 => {
                if length == 0 {
                    return Some((name, end_in_record.unwrap_or(position + 1)));
                }
                let label = message.get(position + 1..position + 1 + usize::from(length))?;
                if !label
                    .iter()
                    .all(|byte| byte.is_ascii_alphanumeric() || *byte == b'-' || *byte == b'_')
                {
                    return None;
                }
                if !name.is_empty() {
                    name.push('.');
                }
                name.extend(
                    label
                        .iter()
                        .map(|byte| char::from(byte.to_ascii_lowercase())),
                );
                if name.len() > MAX_NAME_LEN {
                    return None;
                }
                position += 1 + usize::from(length);
            }
            0xc0 => {
                let target = usize::from(be16(message, position)? & 0x3fff);
                if target >= position {
                    return None;
                }
                end_in_record.get_or_insert(position + 2);
                position = target;
            }
            _ => return None,
        }
    }
}

/// Parses a DNS response. Returns `None` for anything that is not a
/// well-formed, successful answer to exactly one IN question.
pub(crate) fn parse_response(message: &[u8]) -> Option<Response> {
    let flags = be16(message, 2)?;
    let is_response = flags & 0x8000 != 0;
    let opcode = (flags >> 11) & 0x0f;
    let rcode = flags & 0x000f;
    if !is_response || opcode != 0 || rcode != 0 || be16(message, 4)? != 1 {
        return None;
    }
    let answer_count = be16(message, 6)?;
    let (question, after_name) = read_name(message, 12)?;
    if be16(message, after_name + 2)? != CLASS_IN {
        return None;
    }
    let mut position = after_name + 4;
    let mut records = Vec::new();
    for _ in 0..answer_count {
        let (owner, after_owner) = read_name(message, position)?;
        let kind = be16(message, after_owner)?;
        let class = be16(message, after_owner + 2)?;
        let ttl = be32(message, after_owner + 4)?;
        let data_len = usize::from(be16(message, after_owner + 8)?);
        let data_at = after_owner + 10;
        let data = message.get(data_at..data_at + data_len)?;
        position = data_at + data_len;
        if class != CLASS_IN {
            continue;
        }
        let record = match (kind, data.len()) {
            (TYPE_A, 4) => Record::Address(
                IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(data).ok()?)),
                ttl,
            ),
            (TYPE_AAAA, 16) => Record::Address(
                IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(data).ok()?)),
                ttl,
            ),
            (TYPE_CNAME, _) => Record::Alias(read_name(message, data_at)?.0),
            (TYPE_A | TYPE_AAAA, _) => return None,
            _ => continue,
        };
        records.push((owner, record));
    }
    let mut chain = vec![question.clone()];
    for _ in 0..MAX_CNAME_CHAIN {
        let current = chain.last()?;
        let alias = records.iter().find_map(|(owner, record)| match record {
            Record::Alias(target) if owner == current && !chain.contains(target) => {
                Some(target.clone())
            }
            _ => None,
        });
        match alias {
            Some(target) => chain.push(target),
            None => break,
        }
    }
    let answers = records
        .into_iter()
        .filter_map(|(owner, record)| match record {
            Record::Address(address, ttl) if chain.contains(&owner) => {
                Some(Answer { address, ttl })
            }
            _ => None,
        })
        .collect();
    Some(Response {
        name: question,
        answers,
    })
}

enum Record {
    Address(IpAddr, u32),
    Alias(String),
}

/// A name learned for an address, valid until `expires`.
#[derive(Debug, Clone)]
struct LearnedName {
    name: Arc<str>,
    expires: Instant,
}

/// Address -> names learned from the resolvers.
#[derive(Debug, Default)]
pub(crate) struct LearnedNames {
    by_address: HashMap<IpAddr, Vec<LearnedName>>,
}

impl LearnedNames {
    /// Records every answer of `response`.
    pub(crate) fn learn(&mut self, response: &Response, now: Instant) {
        if response.name.is_empty() {
            return;
        }
        let name: Arc<str> = Arc::from(response.name.as_str());
        for answer in &response.answers {
            let ttl = Duration::from_secs(u64::from(answer.ttl)).clamp(MIN_TTL, MAX_TTL);
            let expires = now + ttl;
            if !self.by_address.contains_key(&answer.address)
                && self.by_address.len() >= MAX_ADDRESSES
            {
                self.forget_expired(now);
                if self.by_address.len() >= MAX_ADDRESSES {
                    self.forget_soonest_expiring();
                }
            }
            let names = self.by_address.entry(answer.address).or_default();
            names.retain(|learned| learned.expires > now);
            match names.iter_mut().find(|learned| learned.name == name) {
                Some(learned) => learned.expires = learned.expires.max(expires),
                None => {
                    if names.len() >= MAX_NAMES_PER_ADDRESS {
                        if let Some(oldest) = names
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, learned)| learned.expires)
                            .map(|(index, _)| index)
                        {
                            names.swap_remove(oldest);
                        }
                    }
                    names.push(LearnedName {
                        name: name.clone(),
                        expires,
                    });
                }
            }
        }
    }

    /// Live names for `address`, appended to `into`.
    pub(crate) fn names_into(&self, address: IpAddr, now: Instant, into: &mut Vec<Arc<str>>) {
        if let Some(names) = self.by_address.get(&address) {
            into.extend(
                names
                    .iter()
                    .filter(|learned| learned.expires > now)
                    .map(|learned| learned.name.clone()),
            );
        }
    }

    /// Drops expired names and addresses left without names.
    pub(crate) fn forget_expired(&mut self, now: Instant) {
        self.by_address.retain(|_, names| {
            names.retain(|learned| learned.expires > now);
            !names.is_empty()
        });
    }

    fn forget_soonest_expiring(&mut self) {
        let soonest = self
            .by_address
            .iter()
            .filter_map(|(address, names)| {
                names
                    .iter()
                    .map(|learned| learned.expires)
                    .max()
                    .map(|expires| (expires, *address))
            })
            .min();
        if let Some((_, address)) = soonest {
            self.by_address.remove(&address);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::cast_possible_truncation,
        reason = "test inputs are small lengths and counters built to fit their wire fields"
    )]

    use super::*;

    fn name(text: &str) -> Vec<u8> {
        let mut encoded = Vec::new();
        for label in text.split('.') {
            encoded.push(label.len() as u8);
            encoded.extend_from_slice(label.as_bytes());
        }
        encoded.push(0);
        encoded
    }

    fn header(answers: u16, rcode: u8) -> Vec<u8> {
        let mut message = vec![0xab, 0xcd, 0x81, 0x80 | rcode, 0, 1];
        message.extend_from_slice(&answers.to_be_bytes());
        message.extend_from_slice(&[0, 0, 0, 0]);
        message
    }

    fn record(owner: &[u8], kind: u16, ttl: u32, data: &[u8]) -> Vec<u8> {
        let mut record = owner.to_vec();
        record.extend_from_slice(&kind.to_be_bytes());
        record.extend_from_slice(&[0, 1]);
        record.extend_from_slice(&ttl.to_be_bytes());
        record.extend_from_slice(&(data.len() as u16).to_be_bytes());
        record.extend_from_slice(data);
        record
    }

    /// www.example.org CNAME cdn.example.net, cdn A 192.0.2.7, other A 192.0.2.8.
    fn cname_response() -> Vec<u8> {
        let mut message = header(3, 0);
        message.extend_from_slice(&name("WWW.example.org"));
        message.extend_from_slice(&[0, 1, 0, 1]);
        let cname_at = message.len() + 12;
        message.extend_from_slice(&record(
            &[0xc0, 12],
            TYPE_CNAME,
            300,
            &name("cdn.example.net"),
        ));
        message.extend_from_slice(&record(
            &[0xc0, cname_at as u8],
            TYPE_A,
            60,
            &[192, 0, 2, 7],
        ));
        message.extend_from_slice(&record(&name("other.test"), TYPE_A, 60, &[192, 0, 2, 8]));
        message
    }

    #[test]
    fn addresses_on_the_cname_chain_count_for_the_question() {
        let response = parse_response(&cname_response()).unwrap();
        assert_eq!(response.name, "www.example.org");
        assert_eq!(
            response.answers,
            vec![Answer {
                address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
                ttl: 60
            }]
        );
    }

    #[test]
    fn broken_messages_are_ignored() {
        let message = cname_response();
        for length in 0..message.len() {
            assert_eq!(
                parse_response(&message[..length]),
                None,
                "prefix of {length} bytes"
            );
        }
        let mut loop_message = header(1, 0);
        loop_message.extend_from_slice(&name("a.test"));
        loop_message.extend_from_slice(&[0, 1, 0, 1]);
        let self_pointer = loop_message.len() as u8;
        loop_message.extend_from_slice(&record(&[0xc0, self_pointer], TYPE_A, 60, &[1, 2, 3, 4]));
        assert_eq!(parse_response(&loop_message), None);
        let mut failure = header(0, 3);
        failure.extend_from_slice(&name("a.test"));
        failure.extend_from_slice(&[0, 1, 0, 1]);
        assert_eq!(parse_response(&failure), None);
        let mut bad_length = header(1, 0);
        bad_length.extend_from_slice(&name("a.test"));
        bad_length.extend_from_slice(&[0, 1, 0, 1]);
        bad_length.extend_from_slice(&record(&[0xc0, 12], TYPE_A, 60, &[1, 2, 3]));
        assert_eq!(parse_response(&bad_length), None);
    }

    #[test]
    fn ttls_are_clamped_and_names_expire() {
        let mut names = LearnedNames::default();
        let start = Instant::now();
        let address = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let response = |name: &str, ttl| Response {
            name: name.into(),
            answers: vec![Answer { address, ttl }],
        };
        names.learn(&response("zero.test", 0), start);
        names.learn(&response("huge.test", u32::MAX), start);
        let live = |at: Instant| {
            let mut found = Vec::new();
            names.names_into(address, at, &mut found);
            let mut found: Vec<String> = found.iter().map(|name| name.to_string()).collect();
            found.sort();
            found
        };
        assert_eq!(
            live(start + MIN_TTL - Duration::from_secs(1)),
            ["huge.test", "zero.test"]
        );
        assert_eq!(live(start + MIN_TTL), ["huge.test"]);
        assert_eq!(live(start + MAX_TTL), Vec::<String>::new());
    }

    #[test]
    fn names_per_address_are_bounded() {
        let mut names = LearnedNames::default();
        let now = Instant::now();
        let address = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        for index in 0..3 * MAX_NAMES_PER_ADDRESS {
            names.learn(
                &Response {
                    name: format!("n{index}.test"),
                    answers: vec![Answer {
                        address,
                        ttl: 60 + index as u32,
                    }],
                },
                now,
            );
        }
        let mut found = Vec::new();
        names.names_into(address, now, &mut found);
        assert_eq!(found.len(), MAX_NAMES_PER_ADDRESS);
        assert!(found.iter().any(|name| &**name == "n23.test"));
    }
}
