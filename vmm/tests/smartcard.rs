//! Smart-card login, card-bound LUKS keyslots and card removal against
//! SoftHSM2 tokens that each test creates (`softhsm2-util`, and
//! `pkcs11-tool` from OpenSC for keys). SoftHSM2 is one library state per
//! process, so the tests take turns; its token directory comes from a
//! private SOFTHSM2_CONF in a scratch directory.
//!
//! Without softhsm2 or opensc installed the tests say so and pass
//! (`apt-get install softhsm2 opensc`; CI installs both).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use common::{Scratch, SECUREVM};
use guest_policy::model::SmartCardBinding;
use securevm::audit::Audit;
use securevm::confined::Confinement;
use securevm::console::ConsoleGate;
use securevm::console::ConsoleWriter;
use securevm::console::PromptPhrase;
use securevm::identity::smartcard::disk;
use securevm::identity::smartcard::login::CardCredential;
use securevm::identity::smartcard::monitor::watch_session;
use securevm::identity::smartcard::{
    self, CardOptions, PinSource, Rejection, RetryPolicy, SmartCardError, REJECTED,
};
use securevm::storage::luks::{self, FormatOptions, KdfSettings};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "246810";
const SO_PIN: &str = "13579135";

/// The SoftHSM2 configuration every test shares, and the lock they take.
struct Hsm {
    _dir: Scratch,
    tokens: PathBuf,
    conf: PathBuf,
}

fn hsm() -> Option<(MutexGuard<'static, ()>, &'static Hsm)> {
    static LOCK: Mutex<()> = Mutex::new(());
    static HSM: OnceLock<Option<Hsm>> = OnceLock::new();
    let guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let hsm = HSM.get_or_init(|| {
        let tools = Path::new(MODULE).exists() && which("softhsm2-util") && which("pkcs11-tool");
        if !tools {
            eprintln!(
                "SKIPPED: softhsm2 or opensc is not installed (apt-get install softhsm2 opensc)"
            );
            return None;
        }
        let dir = Scratch::new("softhsm");
        let tokens = dir.path("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.path("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        std::env::set_var("SOFTHSM2_CONF", &conf);
        Some(Hsm {
            _dir: dir,
            tokens,
            conf,
        })
    });
    hsm.as_ref().map(|hsm| (guard, hsm))
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|out| out.status.success())
}

fn run(command: &mut Command) -> Vec<u8> {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// A token with one key pair, as a card issuer would make it.
struct Card {
    label: String,
    /// The token's own directory in SoftHSM's token directory.
    dir: PathBuf,
    fingerprint: [u8; 32],
}

#[derive(Clone, Copy)]
enum KeyType {
    Ec,
    Rsa,
}

impl Hsm {
    fn card(&self, label: &str, key: KeyType) -> Card {
        let before: Vec<_> = self.token_dirs();
        run(Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &self.conf)
            .args(["--init-token", "--free", "--label", label])
            .args(["--so-pin", SO_PIN, "--pin", PIN]));
        let dir = self
            .token_dirs()
            .into_iter()
            .find(|dir| !before.contains(dir))
            .expect("softhsm2-util made a token directory");
        let (key_type, usage): (&str, &[&str]) = match key {
            KeyType::Ec => ("EC:prime256v1", &["--usage-sign"]),
            KeyType::Rsa => ("rsa:2048", &["--usage-sign", "--usage-decrypt"]),
        };
        run(self
            .tool(label)
            .args([
                "--login",
                "--pin",
                PIN,
                "--keypairgen",
                "--key-type",
                key_type,
            ])
            .args(["--id", "01", "--label", "key"])
            .args(usage));
        let spki_file = self._dir.path(&format!("{label}.pub.der"));
        run(self
            .tool(label)
            .args(["--read-object", "--type", "pubkey", "--id", "01", "-o"])
            .arg(&spki_file));
        let fingerprint = openssl::sha::sha256(&std::fs::read(&spki_file).unwrap());
        Card {
            label: label.to_string(),
            dir,
            fingerprint,
        }
    }

    /// A token holding an RSA key and its self-signed certificate, imported
    /// the way an issuer provisions a card (systemd-cryptenroll needs the
    /// certificate).
    fn card_with_certificate(&self, label: &str) -> [u8; 32] {
        run(Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &self.conf)
            .args(["--init-token", "--free", "--label", label])
            .args(["--so-pin", SO_PIN, "--pin", PIN]));
        let key =
            openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
        let mut name = openssl::x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", label).unwrap();
        let name = name.build();
        let mut builder = openssl::x509::X509Builder::new().unwrap();
        builder.set_version(2).unwrap();
        builder.set_subject_name(&name).unwrap();
        builder.set_issuer_name(&name).unwrap();
        builder.set_pubkey(&key).unwrap();
        builder
            .set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        builder
            .set_not_after(&openssl::asn1::Asn1Time::days_from_now(30).unwrap())
            .unwrap();
        builder
            .sign(&key, openssl::hash::MessageDigest::sha256())
            .unwrap();
        let key_file = self._dir.path(&format!("{label}.key.der"));
        let cert_file = self._dir.path(&format!("{label}.crt.der"));
        std::fs::write(&key_file, key.private_key_to_pkcs8().unwrap()).unwrap();
        std::fs::write(&cert_file, builder.build().to_der().unwrap()).unwrap();
        for (file, kind) in [(&key_file, "privkey"), (&cert_file, "cert")] {
            run(self
                .tool(label)
                .args(["--login", "--pin", PIN, "--write-object"])
                .arg(file)
                .args([
                    "--type",
                    kind,
                    "--id",
                    "02",
                    "--label",
                    "key",
                    "--usage-decrypt",
                ]));
        }
        openssl::sha::sha256(&std::fs::read(&cert_file).unwrap())
    }

    fn tool(&self, label: &str) -> Command {
        let mut command = Command::new("pkcs11-tool");
        command
            .env("SOFTHSM2_CONF", &self.conf)
            .args(["--module", MODULE, "--token-label", label]);
        command
    }

    fn token_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.tokens)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.is_dir())
            .collect()
    }
}

impl Card {
    fn binding(&self) -> SmartCardBinding {
        SmartCardBinding {
            token_label: Some(self.label.clone()),
            token_serial: None,
            manufacturer: None,
            public_key_sha256: self.fingerprint,
        }
    }

    /// Pull the card: its token directory leaves SoftHSM's directory.
    fn remove(&self) -> PathBuf {
        // Outside the token directory: SoftHSM2 takes every directory in
        // it for a token, whatever its name.
        let tokens = self.dir.parent().expect("tokens live in a directory");
        let away = tokens
            .with_file_name("removed")
            .join(self.dir.file_name().expect("a token directory name"));
        std::fs::create_dir_all(away.parent().expect("a parent")).unwrap();
        std::fs::rename(&self.dir, &away).unwrap();
        away
    }

    fn insert(&self, away: &Path) {
        std::fs::rename(away, &self.dir).unwrap();
    }
}

fn options(scratch: &Scratch, label: &str, pin: &str) -> CardOptions {
    let pin_file = scratch.path(&format!("{label}.pin"));
    std::fs::write(&pin_file, format!("{pin}\n")).unwrap();
    CardOptions {
        module: PathBuf::from(MODULE),
        token_label: Some(label.to_string()),
        pins: PinSource::File(pin_file),
        retry: RetryPolicy {
            max_attempts: 3,
            first_delay: Duration::from_millis(10),
        },
    }
}

#[test]
fn ec_and_rsa_cards_log_in_with_the_right_pin() {
    let Some((_lock, hsm)) = hsm() else { return };
    let scratch = Scratch::new("login");
    for (label, key) in [("ec-card", KeyType::Ec), ("rsa-card", KeyType::Rsa)] {
        let card = hsm.card(label, key);
        let login = smartcard::authenticate(&options(&scratch, label, PIN), &card.binding())
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(login.token.token().label, label);
        assert_eq!(login.key.spki_sha256, card.fingerprint);
    }
}

#[test]
fn a_wrong_pin_is_rejected_without_saying_so() {
    let Some((_lock, hsm)) = hsm() else { return };
    let scratch = Scratch::new("wrong-pin");
    let card = hsm.card("pin-card", KeyType::Ec);
    let error = smartcard::authenticate(&options(&scratch, "pin-card", "999999"), &card.binding())
        .expect_err("a wrong PIN must not log in");
    assert!(matches!(
        error,
        SmartCardError::Rejected(Rejection::WrongPin)
    ));
    assert_eq!(error.to_string(), REJECTED);
    assert_eq!(error.reason(), "wrong-pin");
}

#[test]
fn a_card_without_the_bound_key_is_rejected() {
    let Some((_lock, hsm)) = hsm() else { return };
    let scratch = Scratch::new("wrong-key");
    let bound = hsm.card("bound-card", KeyType::Ec);
    let other = hsm.card("other-card", KeyType::Rsa);
    // The other card, with its right PIN, but the policy binds bound-card's key.
    let mut binding = bound.binding();
    binding.token_label = Some(other.label.clone());
    let error = smartcard::authenticate(&options(&scratch, "other-card", PIN), &binding)
        .expect_err("a foreign key must not log in");
    assert!(matches!(
        error,
        SmartCardError::Rejected(Rejection::KeyNotBound)
    ));
    assert_eq!(error.to_string(), REJECTED);

    // A binding naming another token label: the PIN is still asked, then refused alike.
    let mut binding = other.binding();
    binding.token_label = Some("someone-elses-card".into());
    let options = CardOptions {
        token_label: None,
        ..options(&scratch, "other-card", PIN)
    };
    let error = smartcard::authenticate(
        &CardOptions {
            token_label: Some("other-card".into()),
            ..options
        },
        &binding,
    )
    .expect_err("a token the policy does not name must not log in");
    assert_eq!(error.to_string(), REJECTED);
}

fn luks_image(scratch: &Scratch, passphrase: &[u8]) -> PathBuf {
    let image = scratch.path("disk.luks");
    let options = FormatOptions {
        sector_size: 4096,
        kdf: KdfSettings::Fixed {
            memory_kib: 1024,
            time_cost: 4,
            parallel: 1,
        },
        force: false,
    };
    luks::format(&image, 4 << 20, &options, passphrase).unwrap();
    image
}

#[test]
fn a_card_keyslot_opens_with_the_card_and_not_without() {
    let Some((_lock, hsm)) = hsm() else { return };
    let scratch = Scratch::new("enroll");
    hsm.card("disk-card", KeyType::Rsa);
    hsm.card("stranger-card", KeyType::Rsa);
    let image = luks_image(&scratch, b"first passphrase");
    let by_passphrase = luks::unlock(&image, b"first passphrase").unwrap();

    let enrolled = {
        let card = smartcard::open_token(&options(&scratch, "disk-card", PIN)).unwrap();
        let key = disk::decryption_key(&card, None).unwrap();
        disk::enroll(&image, b"first passphrase", &card, &key).unwrap()
    };
    assert_ne!(enrolled.keyslot, by_passphrase.keyslot);
    assert!(enrolled.uri.contains("token=disk-card"), "{}", enrolled.uri);
    assert!(
        enrolled.uri.ends_with("id=%01;type=private"),
        "{}",
        enrolled.uri
    );

    let tokens = disk::card_tokens(&image).unwrap();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].1.keyslots, vec![enrolled.keyslot.to_string()]);

    {
        let card = smartcard::open_token(&options(&scratch, "disk-card", PIN)).unwrap();
        let volume = disk::unlock(&image, &card).unwrap();
        assert_eq!(volume.keyslot, enrolled.keyslot);
        assert_eq!(volume.key.as_bytes(), by_passphrase.key.as_bytes());
    }
    {
        let stranger = smartcard::open_token(&options(&scratch, "stranger-card", PIN)).unwrap();
        assert!(matches!(
            disk::unlock(&image, &stranger),
            Err(SmartCardError::NoCardKeyslot { .. })
        ));
    }
    // Without the card nothing else opens the slot, and the passphrase slot still works.
    assert!(luks::unlock(&image, b"wrong").is_err());
    assert_eq!(
        luks::unlock(&image, b"first passphrase").unwrap().keyslot,
        by_passphrase.keyslot
    );
    cryptsetup_sees_a_systemd_token(&image, enrolled.keyslot, &hsm.conf);
}

/// Interoperability: cryptsetup reads the token as systemd's, and where
/// systemd's libcryptsetup token plugin is installed, it opens the
/// keyslot with the card and PIN exactly as systemd-cryptsetup would.
fn cryptsetup_sees_a_systemd_token(image: &Path, keyslot: u32, conf: &Path) {
    if !which("cryptsetup") {
        eprintln!("SKIPPED cryptsetup interop: cryptsetup is not installed");
        return;
    }
    let dump =
        String::from_utf8(run(Command::new("cryptsetup").arg("luksDump").arg(image))).unwrap();
    assert!(dump.contains("systemd-pkcs11"), "{dump}");
    assert!(dump.contains(&format!("Keyslot:    {keyslot}")), "{dump}");
    let plugin =
        Path::new("/usr/lib/x86_64-linux-gnu/cryptsetup/libcryptsetup-token-systemd-pkcs11.so");
    if !plugin.exists() {
        eprintln!(
            "SKIPPED systemd token plugin check: {} is missing",
            plugin.display()
        );
        return;
    }
    let mut child = Command::new("cryptsetup")
        .env("SOFTHSM2_CONF", conf)
        .args([
            "open",
            "--test-passphrase",
            "--token-only",
            "--token-type",
            "systemd-pkcs11",
        ])
        .arg(image)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PIN}\n").as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "systemd's token plugin could not open our keyslot: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A fresh audit key and log in `scratch`: the log's writer and its path.
fn audit_in(scratch: &Scratch) -> (Audit, PathBuf) {
    let audit_key = scratch.path("audit.key");
    assert!(
        common::securevm(&["audit", "init-key", audit_key.to_str().unwrap()])
            .status
            .success()
    );
    let audit_log = scratch.path("audit.jsonl");
    let audit = Audit::open(&audit_log, Some(&audit_key)).unwrap();
    (audit, audit_log)
}

const PROMPT_PHRASE: &str = "green kettle";

/// Where a console gate's prompts went.
#[derive(Clone, Default)]
struct Prompts(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Prompts {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A console gate over a guest console that writes nowhere, with its
/// prompts in the returned [`Prompts`]; keep the writer while the gate is used.
fn console_gate() -> (ConsoleGate, ConsoleWriter, Prompts) {
    let (writer, _guest) = ConsoleWriter::spawn(std::io::sink(), Confinement::Unfiltered).unwrap();
    let prompts = Prompts::default();
    let gate = ConsoleGate::with_prompt_output(
        PromptPhrase::parse(PROMPT_PHRASE.as_bytes()).unwrap(),
        writer.hold(),
        Box::new(prompts.clone()),
    );
    (gate, writer, prompts)
}

#[test]
fn pulling_the_card_pauses_and_reinserting_it_with_the_pin_resumes() {
    let Some((_lock, hsm)) = hsm() else { return };
    let scratch = Scratch::new("removal");
    let card = hsm.card("removable-card", KeyType::Ec);
    let options = options(&scratch, "removable-card", PIN);
    let login = smartcard::authenticate(&options, &card.binding()).unwrap();
    let mut credential = CardCredential::new(login, options.pins.clone(), options.retry);
    credential.card.poll = Duration::from_millis(100);
    let (audit, audit_log) = audit_in(&scratch);
    let (sender, events) = mpsc::channel();
    let (pause, resume) = (sender.clone(), sender);
    let (console, _console_writer, _prompts) = console_gate();
    let monitor = watch_session(
        &credential,
        "bob",
        audit,
        console,
        Box::new(move || pause.send("pause").unwrap()),
        Box::new(move || resume.send("resume").unwrap()),
    )
    .unwrap();
    let audited = |what: &str| {
        std::fs::read_to_string(&audit_log)
            .unwrap()
            .matches(what)
            .count()
    };
    let wait = || events.recv_timeout(Duration::from_secs(10));
    assert!(
        events.recv_timeout(Duration::from_millis(500)).is_err(),
        "nothing happens while the card stays"
    );

    let away = card.remove();
    assert_eq!(wait(), Ok("pause"));
    card.insert(&away);
    assert_eq!(wait(), Ok("resume"));

    // Back with a wrong PIN: the session stays locked until the card is
    // pulled and inserted again, then the right PIN unlocks it.
    let away = card.remove();
    assert_eq!(wait(), Ok("pause"));
    let PinSource::File(pin_file) = &options.pins else {
        unreachable!("the tests use PIN files")
    };
    std::fs::write(pin_file, "000000\n").unwrap();
    card.insert(&away);
    let mut waited = 0;
    while audited(r#""reason":"wrong-pin""#) == 0 && waited < 100 {
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }
    assert_eq!(
        audited(r#""reason":"wrong-pin""#),
        1,
        "the failed PIN is audited"
    );
    assert!(
        events.recv_timeout(Duration::from_millis(500)).is_err(),
        "a failed PIN is not retried while the card stays in"
    );
    std::fs::write(pin_file, format!("{PIN}\n")).unwrap();
    let away = card.remove();
    std::thread::sleep(Duration::from_millis(400));
    card.insert(&away);
    assert_eq!(wait(), Ok("resume"));
    monitor.stop();
    assert_eq!(audited(r#""event":"session-locked""#), 2);
    assert_eq!(audited(r#""event":"session-unlocked""#), 2);
}

#[test]
fn a_pin_asked_on_the_terminal_at_login_is_typed_on_the_console_after_reinsertion() {
    let Some((_lock, hsm)) = hsm() else { return };
    let scratch = Scratch::new("console-pin");
    let card = hsm.card("console-card", KeyType::Ec);
    let options = options(&scratch, "console-card", PIN);
    let login = smartcard::authenticate(&options, &card.binding()).unwrap();
    let mut credential = CardCredential::new(login, PinSource::Terminal, options.retry);
    credential.card.poll = Duration::from_millis(100);
    let (audit, audit_log) = audit_in(&scratch);
    let (console, _console_writer, prompts) = console_gate();
    let (sender, events) = mpsc::channel();
    let (pause, resume) = (sender.clone(), sender);
    let monitor = watch_session(
        &credential,
        "bob",
        audit,
        console.clone(),
        Box::new(move || pause.send("pause").unwrap()),
        Box::new(move || resume.send("resume").unwrap()),
    )
    .unwrap();
    let wait = || events.recv_timeout(Duration::from_secs(10));
    let type_when_asked = |typed: &[u8]| {
        let mut waited = 0;
        while !console.is_asking() && waited < 200 {
            std::thread::sleep(Duration::from_millis(50));
            waited += 1;
        }
        assert!(console.is_asking(), "no PIN was asked on the console");
        assert!(
            console.filter_input(typed).is_empty(),
            "the PIN reached the guest"
        );
    };

    let away = card.remove();
    assert_eq!(wait(), Ok("pause"));
    assert!(
        console.filter_input(b"typed while locked").is_empty(),
        "input reached the guest while the session was locked"
    );
    card.insert(&away);
    type_when_asked(b"000000\r");
    type_when_asked(format!("{PIN}\r").as_bytes());
    assert_eq!(wait(), Ok("resume"));
    assert_eq!(console.filter_input(b"ls\r"), b"ls\r");
    let shown = String::from_utf8_lossy(&prompts.0.lock().unwrap()).into_owned();
    assert_eq!(
        shown
            .matches(&format!(
                "[securevm: {PROMPT_PHRASE}] PIN for smart card 'console-card': "
            ))
            .count(),
        2,
        "each PIN prompt shows the prompt phrase: {shown:?}"
    );
    monitor.stop();
    let audited = std::fs::read_to_string(&audit_log).unwrap();
    assert!(
        audited.contains(r#""event":"session-unlocked""#),
        "{audited}"
    );
}

#[test]
fn disk_enroll_command_adds_a_card_slot() {
    let Some((_lock, hsm)) = hsm() else { return };
    let scratch = Scratch::new("enroll-cli");
    hsm.card("cli-card", KeyType::Rsa);
    let image = luks_image(&scratch, b"existing");
    let passphrase_file = scratch.path("existing.pass");
    std::fs::write(&passphrase_file, "existing\n").unwrap();
    let options = options(&scratch, "cli-card", PIN);
    let PinSource::File(pin_file) = &options.pins else {
        unreachable!("the tests use PIN files")
    };
    let output = Command::new(SECUREVM)
        .env("SOFTHSM2_CONF", &hsm.conf)
        .args([
            "disk",
            "enroll-card",
            "--pkcs11-module",
            MODULE,
            "--token-label",
            "cli-card",
        ])
        .arg("--pin-file")
        .arg(pin_file)
        .arg("--passphrase-file")
        .arg(&passphrase_file)
        .arg(&image)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("keyslot"), "{stdout}");
    let card = smartcard::open_token(&options).unwrap();
    assert!(disk::unlock(&image, &card).is_ok());
}

/// Interoperability the other way: a keyslot systemd-cryptenroll bound to
/// a card opens in securevm with the same card.
#[test]
fn systemd_cryptenroll_keyslots_open_with_securevm() {
    let Some((_lock, hsm)) = hsm() else { return };
    let p11kit = Command::new("systemd-cryptenroll")
        .arg("--version")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("+P11KIT"));
    if !p11kit {
        eprintln!("SKIPPED: systemd-cryptenroll with PKCS#11 support is not installed");
        return;
    }
    let scratch = Scratch::new("cryptenroll");
    let certificate_sha256 = hsm.card_with_certificate("systemd-card");
    let image = luks_image(&scratch, b"existing");
    run(Command::new("systemd-cryptenroll")
        .env("SOFTHSM2_CONF", &hsm.conf)
        .env("PASSWORD", "existing")
        .env("PIN", PIN)
        .arg("--pkcs11-token-uri=pkcs11:token=systemd-card")
        .arg(&image));
    let card = smartcard::open_token(&options(&scratch, "systemd-card", PIN)).unwrap();
    let volume = disk::unlock(&image, &card).unwrap();
    assert_eq!(
        volume.key.as_bytes(),
        luks::unlock(&image, b"existing").unwrap().key.as_bytes()
    );
    drop(card);

    // The policy may bind the certificate's fingerprint instead of the key's.
    let binding = SmartCardBinding {
        token_label: Some("systemd-card".into()),
        token_serial: None,
        manufacturer: None,
        public_key_sha256: certificate_sha256,
    };
    let login = smartcard::authenticate(&options(&scratch, "systemd-card", PIN), &binding).unwrap();
    assert_eq!(login.key.certificate_sha256, vec![certificate_sha256]);
}

/// `securevm run` opens a LUKS disk with the card and its PIN file alone;
/// with another card it falls back to the passphrase (none here: refused).
#[test]
fn run_opens_a_card_enrolled_disk_with_the_card() {
    let Some((_lock, hsm)) = hsm() else { return };
    if !common::kvm_usable() {
        eprintln!("SKIPPED: /dev/kvm is not usable on this host");
        return;
    }
    let scratch = Scratch::new("run-card");
    hsm.card("boot-card", KeyType::Rsa);
    hsm.card("spare-card", KeyType::Rsa);
    let image = luks_image(&scratch, b"existing");
    {
        let card = smartcard::open_token(&options(&scratch, "boot-card", PIN)).unwrap();
        let key = disk::decryption_key(&card, None).unwrap();
        disk::enroll(&image, b"existing", &card, &key).unwrap();
    }
    let kernel = common::tiny_kernel("hello", &scratch);
    let boot = |label: &str| {
        let options = options(&scratch, label, PIN);
        let PinSource::File(pin_file) = &options.pins else {
            unreachable!("the tests use PIN files")
        };
        common::securevm(&[
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--memory",
            "64",
            "--disk",
            image.to_str().unwrap(),
            "--pkcs11-module",
            MODULE,
            "--token-label",
            label,
            "--pin-file",
            pin_file.to_str().unwrap(),
        ])
    };
    let out = boot("boot-card");
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        common::stderr(&out)
    );
    assert_eq!(common::stdout(&out), "securevm-tiny-guest: hello\n");
    let out = boot("spare-card");
    assert_eq!(
        out.status.code(),
        Some(1),
        "stderr: {}",
        common::stderr(&out)
    );
    assert!(
        common::stderr(&out).contains("passphrase"),
        "{}",
        common::stderr(&out)
    );
}

/// The example policy with bob's `[users.smartcard]` bound to `label` and
/// `fingerprint`, signed with a fresh key; returns (policy, public key).
fn policy_binding_bob_to(
    scratch: &Scratch,
    label: &str,
    fingerprint: &[u8; 32],
) -> (String, String) {
    use guest_policy::{
        signature_path_for, trusted_comment_for, validate, SecretKey, SignatureFile,
    };
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../guest-policy/examples/policy.toml"
    ))
    .unwrap();
    let hex: String = fingerprint.iter().map(|b| format!("{b:02x}")).collect();
    let text: String = text
        .lines()
        .filter(|line| !line.starts_with("token_serial") && !line.starts_with("manufacturer"))
        .map(|line| match line {
            l if l.starts_with("token_label") => format!("token_label = \"{label}\""),
            l if l.starts_with("public_key_sha256") => format!("public_key_sha256 = \"{hex}\""),
            l => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let key = SecretKey::generate().unwrap();
    let policy_path = scratch.path("policy.toml");
    let pub_path = scratch.path("org.pub");
    std::fs::write(&policy_path, &text).unwrap();
    std::fs::write(&pub_path, key.public_key().to_text()).unwrap();
    let policy = validate("policy.toml", &text).unwrap().policy;
    let comment = trusted_comment_for(&policy, "policy.toml", std::time::SystemTime::now());
    let signature = SignatureFile::sign(&key, text.as_bytes(), &comment).unwrap();
    std::fs::write(signature_path_for(&policy_path), signature.to_text()).unwrap();
    (
        policy_path.to_str().unwrap().to_owned(),
        pub_path.to_str().unwrap().to_owned(),
    )
}

/// A policy user logs in with their card (`--user bob --pkcs11-module`):
/// the bound key boots the guest; a wrong PIN, and a user the card is not
/// bound to, are refused with the passphrase login's words and status,
/// and the audit log keeps the exact reason.
#[test]
fn policy_users_log_in_with_their_card() {
    let Some((_lock, hsm)) = hsm() else { return };
    if !common::kvm_usable() {
        eprintln!("SKIPPED: /dev/kvm is not usable on this host");
        return;
    }
    let scratch = Scratch::new("policy-card");
    let card = hsm.card("bob-card", KeyType::Rsa);
    let (policy, key) = policy_binding_bob_to(&scratch, "bob-card", &card.fingerprint);
    let kernel = common::tiny_kernel("hello", &scratch);
    let audit = common::audit_args(&scratch);
    let image = luks_image(&scratch, b"existing");
    {
        let token = smartcard::open_token(&options(&scratch, "bob-card", PIN)).unwrap();
        let key = disk::decryption_key(&token, None).unwrap();
        disk::enroll(&image, b"existing", &token, &key).unwrap();
    }
    let boot = |user: &str, pin: &str| {
        let options = options(&scratch, "bob-card", pin);
        let PinSource::File(pin_file) = &options.pins else {
            unreachable!("the tests use PIN files")
        };
        let mut args = vec![
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--memory",
            "64",
            "--disk",
            image.to_str().unwrap(),
            "--policy",
            &policy,
            "--policy-key",
            &key,
            "--user",
            user,
            "--pkcs11-module",
            MODULE,
            "--token-label",
            "bob-card",
            "--pin-file",
            pin_file.to_str().unwrap(),
        ];
        args.extend(audit.iter().map(String::as_str));
        common::securevm(&args)
    };
    let out = boot("bob", PIN);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        common::stderr(&out)
    );
    assert_eq!(common::stdout(&out), "securevm-tiny-guest: hello\n");

    // The card's own state ("a wrong PIN was entered before") may be
    // warned about ahead of the prompt; the refusal itself reads the same
    // for a wrong PIN and for a user the card is not bound to.
    let refusal = |user: &str, pin: &str| {
        let out = boot(user, pin);
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(5), "{user}: {err}");
        assert!(common::stdout(&out).is_empty(), "{user}: no guest output");
        let lines: Vec<String> = err
            .lines()
            .filter(|line| !line.starts_with("securevm: warning:"))
            .map(str::to_owned)
            .collect();
        assert!(
            lines
                .iter()
                .any(|l| l.contains("the user id or the credential is wrong")),
            "{user}: {err}"
        );
        assert!(!lines.iter().any(|l| l.contains("PIN")), "{user}: {err}");
        lines
    };
    assert_eq!(refusal("bob", "999999"), refusal("alice", PIN));
    let log = std::fs::read_to_string(scratch.path("audit.jsonl")).unwrap();
    assert!(log.contains(r#""method":"smartcard""#), "{log}");
    assert!(log.contains(r#""reason":"wrong-pin""#), "{log}");
    assert!(log.contains(r#""reason":"token-not-bound""#), "{log}");
    assert!(!log.contains(PIN), "the PIN never reaches the audit log");
}
