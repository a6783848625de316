//! The remote destination: RFC 5425 syslog over TLS to the collector the
//! policy's `[audit.remote]` names. Each message is framed by its length
//! (`LEN SP MSG`). The collector's certificate must chain to the policy's
//! CA file, and only to it (the system's CAs are not trusted for this),
//! and carry the policy's server name; TLS 1.2 is the oldest accepted. A
//! client certificate, being per machine, comes from the machine's own
//! options (`--audit-client-cert`, `--audit-client-key`).
//!
//! Syslog has no acknowledgements, so nothing sent on a connection is
//! known to be stored until the connection ends in order: the collector
//! ends its side only after our close_notify, and the TCP connection then
//! closes without a reset. A collector that closes with records unread
//! makes its kernel reset the connection; one that ended its side before
//! our close_notify cut it. After a failure, sending starts again at the
//! first record of the failed connection: the collector may hold some
//! records twice, never miss one, and `securevm audit verify --collected`
//! accepts exact repeats. (A collector that half-closes and then never
//! reads cannot be told from one that read everything: RFC 5425 has no
//! acknowledgement to ask it.)
//!
//! Everything that touches files or names happens before the thread's
//! filter: the CA, certificate and key are loaded into the TLS context and
//! the host name is resolved when the session starts (a name that does
//! not resolve then is an error at start; use an address or an
//! /etc/hosts entry for machines that start offline).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslStream, SslVersion};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::X509;

use guest_policy::RemoteCollector;

use super::forward::{Transport, Undelivered};

/// How long a connection attempt, a write or the orderly close may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The machine's client certificate and key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteSetupError {
    #[error("the collector's CA file {}: {reason}", path.display())]
    Ca { path: PathBuf, reason: String },
    #[error("the audit client certificate or key: {0}")]
    Client(String),
    #[error("the collector host {host} does not resolve: {reason}")]
    Resolve { host: String, reason: String },
    #[error("setting up TLS: {0}")]
    Tls(openssl::error::ErrorStack),
}

pub(crate) struct TlsCollector {
    describe: String,
    addresses: Vec<SocketAddr>,
    server_name: String,
    connector: SslConnector,
    stream: Option<SslStream<TcpStream>>,
    /// The log offset of the first record sent on the current connection:
    /// everything before it went over a connection that ended in order,
    /// or is being sent again from here.
    connection_start: u64,
}

impl TlsCollector {
    /// Loads the CA, the client identity and resolves the host.
    pub fn new(
        collector: &RemoteCollector,
        client: Option<&ClientIdentity>,
    ) -> Result<TlsCollector, RemoteSetupError> {
        let connector = connector(&collector.ca_file, client)?;
        load_time_zone();
        let addresses: Vec<SocketAddr> = (collector.host.as_str(), collector.port)
            .to_socket_addrs()
            .map_err(|e| RemoteSetupError::Resolve {
                host: collector.host.clone(),
                reason: e.to_string(),
            })?
            .collect();
        if addresses.is_empty() {
            return Err(RemoteSetupError::Resolve {
                host: collector.host.clone(),
                reason: "no addresses".into(),
            });
        }
        Ok(TlsCollector {
            describe: format!("collector {}:{}", collector.host, collector.port),
            addresses,
            server_name: collector.server_name.clone(),
            connector,
            stream: None,
            connection_start: 0,
        })
    }

    fn connect(&self) -> io::Result<SslStream<TcpStream>> {
        let mut last_error = io::Error::other("no address to connect to");
        for address in &self.addresses {
            match TcpStream::connect_timeout(address, CONNECT_TIMEOUT) {
                Ok(tcp) => {
                    tcp.set_write_timeout(Some(WRITE_TIMEOUT))?;
                    tcp.set_read_timeout(Some(CONNECT_TIMEOUT))?;
                    let config = self.connector.configure().map_err(io::Error::other)?;
                    return config
                        .connect(&self.server_name, tcp)
                        .map_err(|e| io::Error::other(format!("TLS handshake: {e}")));
                }
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }
}

/// Has glibc read the time zone now, before the thread's filter: checking
/// a certificate's dates converts times (gmtime_r), which reads
/// /etc/localtime the first time any thread of the process converts one.
fn load_time_zone() {
    let now: libc::time_t = 0;
    // SAFETY: `tm` is plain data that gmtime_r fills; `now` outlives the call.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::gmtime_r(&now, &mut tm);
    }
}

/// A client context trusting only the certificates in `ca_file`.
fn connector(
    ca_file: &Path,
    client: Option<&ClientIdentity>,
) -> Result<SslConnector, RemoteSetupError> {
    let ca_error = |reason: String| RemoteSetupError::Ca {
        path: ca_file.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(ca_file).map_err(|e| ca_error(e.to_string()))?;
    let cas = X509::stack_from_pem(&pem).map_err(|e| ca_error(e.to_string()))?;
    if cas.is_empty() {
        return Err(ca_error("holds no PEM certificate".into()));
    }
    let mut store = X509StoreBuilder::new().map_err(RemoteSetupError::Tls)?;
    for ca in cas {
        store.add_cert(ca).map_err(|e| ca_error(e.to_string()))?;
    }
    let mut builder =
        SslConnector::builder(SslMethod::tls_client()).map_err(RemoteSetupError::Tls)?;
    // Replaces the default store (the system's CAs) with the policy's.
    builder.set_cert_store(store.build());
    builder
        .set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(RemoteSetupError::Tls)?;
    if let Some(client) = client {
        let client_error = |e: openssl::error::ErrorStack| RemoteSetupError::Client(e.to_string());
        builder
            .set_certificate_chain_file(&client.certificate)
            .map_err(client_error)?;
        builder
            .set_private_key_file(&client.key, SslFiletype::PEM)
            .map_err(client_error)?;
        builder.check_private_key().map_err(client_error)?;
    }
    Ok(builder.build())
}

/// `LEN SP MSG` (RFC 5425 octet counting).
pub(crate) fn frame(message: &[u8]) -> Vec<u8> {
    let mut framed = format!("{} ", message.len()).into_bytes();
    framed.extend_from_slice(message);
    framed
}

impl Transport for TlsCollector {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn send(&mut self, record_start: u64, message: &[u8]) -> Result<(), Undelivered> {
        if self.stream.is_none() {
            // Nothing is pending: what came before went over a connection
            // that ended in order, or is being sent again from here.
            self.connection_start = record_start;
            let stream = self.connect().map_err(|error| Undelivered {
                error,
                resend_from: record_start,
            })?;
            self.stream = Some(stream);
        }
        let sent = match self.stream.as_mut() {
            Some(stream) => stream
                .write_all(&frame(message))
                .and_then(|()| stream.flush()),
            None => Err(io::Error::other("not connected")),
        };
        sent.map_err(|error| {
            self.stream = None;
            Undelivered {
                error,
                resend_from: self.connection_start,
            }
        })
    }

    fn held(&self, _sent_end: u64) -> u64 {
        self.connection_start
    }

    fn close(&mut self) -> bool {
        let Some(mut stream) = self.stream.take() else {
            // Nothing was sent on a connection this session.
            return true;
        };
        // A collector that ended its side before seeing our close_notify
        // cut the connection, whatever it read of it.
        if tcp_state(stream.get_ref()) != Some(TCP_ESTABLISHED) {
            return false;
        }
        if stream.shutdown().is_err() {
            return false;
        }
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        let _ = stream.get_ref().set_read_timeout(Some(CLOSE_TIMEOUT));
        let _ = stream.get_ref().shutdown(Shutdown::Write);
        let mut rest = [0u8; 512];
        loop {
            match stream.read(&mut rest) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The stream ended after our close_notify without one of
                // the collector's own: the TLS layer reports that as its
                // own error, not a socket's.
                Err(e)
                    if e.get_ref()
                        .and_then(|inner| inner.downcast_ref::<openssl::ssl::Error>())
                        .is_some_and(|tls| tls.io_error().is_none()) =>
                {
                    break
                }
                Err(_) => return false,
            }
        }
        // The end of the stream alone proves nothing: a collector that
        // closed with records unread resets the connection, and that reset
        // may come after its end of stream was read.
        closed_without_reset(stream.get_ref(), deadline)
    }
}

const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE: u8 = 7;

/// The kernel's state of a TCP connection (`TCP_ESTABLISHED`, ...).
fn tcp_state(tcp: &TcpStream) -> Option<u8> {
    let mut length = libc::socklen_t::try_from(std::mem::size_of::<libc::tcp_info>()).ok()?;
    // SAFETY: tcp_info is plain data the kernel fills up to `length`
    // bytes; both outlive the call and `length` is its size.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let done = libc::getsockopt(
            tcp.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut length,
        );
        (done == 0).then_some(info.tcpi_state)
    }
}

/// Waits until `deadline` for both sides' ends of stream to be
/// acknowledged, and says whether the connection then closed with no
/// reset (no pending socket error).
fn closed_without_reset(tcp: &TcpStream, deadline: Instant) -> bool {
    loop {
        match tcp_state(tcp) {
            Some(TCP_CLOSE) => return matches!(tcp.take_error(), Ok(None)),
            Some(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::forward::{ForwardJob, Forwarder};
    use crate::audit::key::AuditKey;
    use crate::audit::writer::AuditLog;
    use crate::audit::Event;
    use crate::confined::Confinement;
    use crate::seccomp::ThreadKind;
    use openssl::asn1::Asn1Time;
    use openssl::bn::{BigNum, MsbOption};
    use openssl::hash::MessageDigest;
    use openssl::pkey::{PKey, Private};
    use openssl::ssl::{SslAcceptor, SslVerifyMode};
    use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
    use openssl::x509::X509NameBuilder;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::sync::mpsc;

    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("securevm-remote-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A certificate for `name` signed by `issuer` (self-signed without one).
    fn certificate(name: &str, issuer: Option<(&X509, &PKey<Private>)>) -> (X509, PKey<Private>) {
        let key = PKey::generate_ed25519().unwrap();
        let mut subject = X509NameBuilder::new().unwrap();
        subject.append_entry_by_text("CN", name).unwrap();
        let subject = subject.build();
        let mut builder = X509::builder().unwrap();
        builder.set_version(2).unwrap();
        let mut serial = BigNum::new().unwrap();
        serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
        builder
            .set_serial_number(&serial.to_asn1_integer().unwrap())
            .unwrap();
        builder.set_subject_name(&subject).unwrap();
        builder
            .set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        builder
            .set_not_after(&Asn1Time::days_from_now(2).unwrap())
            .unwrap();
        builder.set_pubkey(&key).unwrap();
        match issuer {
            None => {
                builder
                    .append_extension(BasicConstraints::new().critical().ca().build().unwrap())
                    .unwrap();
                builder.set_issuer_name(&subject).unwrap();
                builder.sign(&key, MessageDigest::null()).unwrap();
            }
            Some((ca, ca_key)) => {
                let san = SubjectAlternativeName::new()
                    .dns(name)
                    .build(&builder.x509v3_context(Some(ca), None))
                    .unwrap();
                builder.append_extension(san).unwrap();
                builder.set_issuer_name(ca.subject_name()).unwrap();
                builder.sign(ca_key, MessageDigest::null()).unwrap();
            }
        }
        (builder.build(), key)
    }

    /// A one-connection-at-a-time collector on 127.0.0.1 presenting
    /// `cert`; each framed message received is sent to the returned
    /// channel. `drop_after`: the first connection is cut after that many
    /// messages.
    fn collector(
        cert: X509,
        key: PKey<Private>,
        drop_after: Option<usize>,
    ) -> (u16, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        acceptor.set_certificate(&cert).unwrap();
        acceptor.set_private_key(&key).unwrap();
        acceptor.set_verify(SslVerifyMode::NONE);
        let acceptor = acceptor.build();
        let (received, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut cut = drop_after;
            for tcp in listener.incoming() {
                let Ok(stream) = acceptor.accept(tcp.unwrap()) else {
                    continue;
                };
                let mut reader = io::BufReader::new(stream);
                let mut count = 0;
                loop {
                    if cut == Some(count) {
                        cut = None;
                        break;
                    }
                    let Some(message) = read_frame(&mut reader) else {
                        break;
                    };
                    count += 1;
                    let _ = received.send(String::from_utf8(message).unwrap());
                }
            }
        });
        (port, messages)
    }

    /// The policy's collector at 127.0.0.1:`port` with `ca` as its CA file.
    fn test_remote(scratch: &Scratch, ca: &X509, port: u16) -> RemoteCollector {
        let ca_file = scratch.0.join("ca.pem");
        std::fs::write(&ca_file, ca.to_pem().unwrap()).unwrap();
        RemoteCollector {
            host: "127.0.0.1".into(),
            port,
            ca_file,
            server_name: "collector.test".into(),
        }
    }

    /// One octet-counted message (`LEN SP MSG`); None at the end of the
    /// stream or on a malformed frame.
    fn read_frame(reader: &mut impl BufRead) -> Option<Vec<u8>> {
        let mut length = Vec::new();
        if reader.read_until(b' ', &mut length).ok()? == 0 {
            return None;
        }
        let length: usize = std::str::from_utf8(length.strip_suffix(b" ")?)
            .ok()?
            .parse()
            .ok()?;
        let mut message = vec![0u8; length];
        reader.read_exact(&mut message).ok()?;
        Some(message)
    }

    fn forward_session(
        scratch: &Scratch,
        port: u16,
        ca: &X509,
        records: usize,
        confinement: Confinement,
        limit: Duration,
    ) -> Vec<String> {
        let log_path = scratch.0.join("audit.jsonl");
        let log = AuditLog::open(&log_path, AuditKey::from_bytes([4; 32])).unwrap();
        let transport = TlsCollector::new(&test_remote(scratch, ca, port), None).unwrap();
        let job = ForwardJob::open("remote", &log_path, Box::new(transport)).unwrap();
        log.add_forwarder(Forwarder::start(job, confinement).unwrap());
        for n in 0..records {
            log.record(Event::VmStop {
                reason: format!("record {n}"),
            })
            .unwrap();
        }
        log.finish_forwarding(limit);
        std::fs::read_to_string(&log_path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn drain(messages: &mpsc::Receiver<String>) -> Vec<String> {
        let mut all = Vec::new();
        while let Ok(message) = messages.recv_timeout(Duration::from_millis(500)) {
            all.push(message);
        }
        all
    }

    /// Every record reaches the collector in order, framed, over TLS
    /// checked against the CA; a cut connection is resent from its start.
    fn records_reach_the_collector(confinement: Confinement) {
        let scratch = Scratch::new(&format!("tls-{confinement:?}"));
        let (ca, ca_key) = certificate("test CA", None);
        let (cert, key) = certificate("collector.test", Some((&ca, &ca_key)));
        let (port, messages) = collector(cert, key, Some(2));
        let lines = forward_session(&scratch, port, &ca, 3, confinement, Duration::from_secs(20));
        let received = drain(&messages);
        let records: Vec<&str> = received
            .iter()
            .map(|message| message.split_once(" - ").unwrap().1)
            .collect();
        // The first connection took two records and was cut; the second
        // connection starts again at the first.
        assert!(records.len() >= lines.len(), "{records:?}");
        let tail = &records[records.len() - lines.len()..];
        assert_eq!(tail, lines, "{records:?}");
        assert!(received[0].starts_with("<85>1 "), "{}", received[0]);
    }

    #[test]
    fn records_reach_the_collector_and_are_resent_after_a_cut() {
        records_reach_the_collector(Confinement::Unfiltered);
    }

    const FILTERED_CHILD: &str = "SECUREVM_TEST_FILTERED_TLS_FORWARD_CHILD";

    #[test]
    fn the_tls_forwarder_runs_under_its_filter() {
        crate::seccomp::test_support::run_in_fresh_process(
            "audit::remote::tests::filtered_tls_forwarding_in_child_process",
            FILTERED_CHILD,
        );
    }

    #[test]
    #[ignore = "runs as the child of the_tls_forwarder_runs_under_its_filter"]
    fn filtered_tls_forwarding_in_child_process() {
        if std::env::var_os(FILTERED_CHILD).is_none() {
            return the_tls_forwarder_runs_under_its_filter();
        }
        // As securevm's main does: a thread ending under its filter must
        // not make glibc read /proc/sys/vm/overcommit_memory to trim its arena.
        // SAFETY: mallopt only tunes the allocator.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
        records_reach_the_collector(Confinement::Seccomp(ThreadKind::AuditForward));
    }

    #[test]
    fn a_collector_the_ca_did_not_sign_gets_nothing() {
        let scratch = Scratch::new("tls-unsigned");
        let (ca, _) = certificate("test CA", None);
        let (other_ca, other_key) = certificate("other CA", None);
        let (cert, key) = certificate("collector.test", Some((&other_ca, &other_key)));
        let (port, messages) = collector(cert, key, None);
        forward_session(
            &scratch,
            port,
            &ca,
            2,
            Confinement::Unfiltered,
            Duration::from_secs(2),
        );
        assert_eq!(drain(&messages), Vec::<String>::new());
        // Nor one whose certificate names another server.
        let scratch = Scratch::new("tls-wrong-name");
        let (ca, ca_key) = certificate("test CA", None);
        let (cert, key) = certificate("elsewhere.test", Some((&ca, &ca_key)));
        let (port, messages) = collector(cert, key, None);
        forward_session(
            &scratch,
            port,
            &ca,
            2,
            Confinement::Unfiltered,
            Duration::from_secs(2),
        );
        assert_eq!(drain(&messages), Vec::<String>::new());
    }

    /// A collector that reads two records, then ends its side of the
    /// stream and reads nothing more (it stays open, so the third record
    /// and our close_notify are taken in by its kernel, unread).
    fn collector_ending_its_side_after_two(
        cert: X509,
        key: PKey<Private>,
    ) -> (u16, mpsc::Receiver<()>, mpsc::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        acceptor.set_certificate(&cert).unwrap();
        acceptor.set_private_key(&key).unwrap();
        let acceptor = acceptor.build();
        let (ended, ended_seen) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let stream = acceptor.accept(tcp).unwrap();
            let mut reader = io::BufReader::new(stream);
            for _ in 0..2 {
                read_frame(&mut reader).unwrap();
            }
            reader
                .get_ref()
                .get_ref()
                .shutdown(Shutdown::Write)
                .unwrap();
            ended.send(()).unwrap();
            let _ = released.recv_timeout(Duration::from_secs(30));
        });
        (port, ended_seen, release)
    }

    #[test]
    fn a_connection_the_collector_read_to_its_end_is_held() {
        let scratch = Scratch::new("tls-orderly");
        let (ca, ca_key) = certificate("test CA", None);
        let (cert, key) = certificate("collector.test", Some((&ca, &ca_key)));
        let (port, messages) = collector(cert, key, None);
        let mut transport = TlsCollector::new(&test_remote(&scratch, &ca, port), None).unwrap();
        transport.send(100, b"<85>1 first").unwrap();
        transport.send(200, b"<85>1 second").unwrap();
        assert!(transport.close());
        assert_eq!(drain(&messages), ["<85>1 first", "<85>1 second"]);
    }

    #[test]
    fn a_connection_the_collector_ended_before_our_close_is_not_held() {
        let scratch = Scratch::new("tls-half-closed");
        let (ca, ca_key) = certificate("test CA", None);
        let (cert, key) = certificate("collector.test", Some((&ca, &ca_key)));
        let (port, ended, release) = collector_ending_its_side_after_two(cert, key);
        let mut transport = TlsCollector::new(&test_remote(&scratch, &ca, port), None).unwrap();
        transport.send(100, b"<85>1 first").unwrap();
        transport.send(200, b"<85>1 second").unwrap();
        ended.recv_timeout(Duration::from_secs(10)).unwrap();
        // Our side has the collector's end of stream before going on.
        let tcp = transport.stream.as_ref().unwrap().get_ref();
        let waited = Instant::now();
        while tcp_state(tcp) == Some(TCP_ESTABLISHED) {
            assert!(waited.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(5));
        }
        // Its kernel still takes the third record in; nobody reads it.
        transport.send(300, b"<85>1 third").unwrap();
        assert!(!transport.close(), "a cut connection counted as held");
        assert_eq!(transport.held(400), 100);
        release.send(()).unwrap();
    }

    #[test]
    fn messages_are_octet_counted() {
        assert_eq!(frame(b"<85>1 x"), b"7 <85>1 x");
    }

    #[test]
    fn a_bad_ca_file_or_client_key_is_refused_at_start() {
        let scratch = Scratch::new("tls-setup");
        let ca_file = scratch.0.join("ca.pem");
        std::fs::write(&ca_file, "no certificate").unwrap();
        let remote = RemoteCollector {
            host: "127.0.0.1".into(),
            port: 6514,
            ca_file: ca_file.clone(),
            server_name: "collector.test".into(),
        };
        let error = TlsCollector::new(&remote, None).err().unwrap();
        assert!(matches!(error, RemoteSetupError::Ca { .. }), "{error}");
        let (ca, ca_key) = certificate("test CA", None);
        std::fs::write(&ca_file, ca.to_pem().unwrap()).unwrap();
        let (client, _) = certificate("pc-17", Some((&ca, &ca_key)));
        let (_, other_key) = certificate("pc-18", Some((&ca, &ca_key)));
        let (cert_path, key_path) = (scratch.0.join("client.pem"), scratch.0.join("client.key"));
        std::fs::write(&cert_path, client.to_pem().unwrap()).unwrap();
        std::fs::write(&key_path, other_key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        let identity = ClientIdentity {
            certificate: cert_path,
            key: key_path,
        };
        let error = TlsCollector::new(&remote, Some(&identity)).err().unwrap();
        assert!(matches!(error, RemoteSetupError::Client(_)), "{error}");
        let unresolvable = RemoteCollector {
            host: "no-such-host.invalid".into(),
            ..remote
        };
        let error = TlsCollector::new(&unresolvable, None).err().unwrap();
        assert!(matches!(error, RemoteSetupError::Resolve { .. }), "{error}");
    }
}
