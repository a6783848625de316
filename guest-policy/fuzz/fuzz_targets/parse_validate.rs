//! Fuzzes the policy parser and validator, the minisign signature and key
//! parsers and the trusted-comment reader: none may panic on any input, and
//! a policy that validates must summarise and decide a connection without
//! panicking.

#![no_main]

use guest_policy::signing::{PublicKey, SecretKey, SignatureFile};
use guest_policy::summary::summarise;
use guest_policy::{validate, version_in_trusted_comment, Connection, Direction, Protocol};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(validated) = validate("fuzz.toml", text) {
        let summary = summarise(&validated.policy);
        assert!(summary.starts_with("Policy version "));
        let connection = Connection {
            direction: Direction::Out,
            protocol: Protocol::Tcp,
            remote: std::net::IpAddr::from([198, 51, 100, 7]),
            port: Some(443),
            host: Some("www.example.org"),
        };
        for role in validated.policy.roles.values() {
            let _ = role.network.decide(&connection);
        }
    }
    let _ = SignatureFile::from_text(text);
    let _ = PublicKey::from_text(text);
    let _ = SecretKey::from_text(text, || None);
    let _ = version_in_trusted_comment(text);
});
