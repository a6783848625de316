//! Helpers shared by the integration tests: assembling the tiny guests in
//! `tests/guests/` with the system assembler, wrapping them in a minimal
//! bzImage (a Linux boot-protocol setup header in front of 64-bit code),
//! and running the `securevm` binary.

// Test code narrows small known values; a wrong one fails the test.
#![allow(clippy::cast_possible_truncation)]
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const SECUREVM: &str = env!("CARGO_BIN_EXE_securevm");

/// A scratch directory removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "securevm-test-{}-{unique}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn guests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests")
}

/// Assembles `tests/guests/NAME.S` into flat 64-bit code.
pub fn assemble(name: &str, scratch: &Scratch) -> Vec<u8> {
    assemble_for(name, scratch, "--64")
}

/// Assembles `tests/guests/NAME.S` into flat 32-bit code (a PVH entry).
pub fn assemble32(name: &str, scratch: &Scratch) -> Vec<u8> {
    assemble_for(name, scratch, "--32")
}

/// The platform's addresses the guests use, from securevm's own layout,
/// so that a guest cannot drift from where the devices are.
fn layout_symbols() -> Vec<String> {
    use securevm::arch::layout::{ACPI_RESET_PORT, ACPI_SLEEP_CONTROL_PORT, PCI_ECAM_START};
    vec![
        format!("ACPI_SLEEP_CONTROL={ACPI_SLEEP_CONTROL_PORT:#x}"),
        format!("ACPI_RESET={ACPI_RESET_PORT:#x}"),
        format!("ECAM_BASE={PCI_ECAM_START:#x}"),
    ]
}

fn assemble_for(name: &str, scratch: &Scratch, mode: &str) -> Vec<u8> {
    let object = scratch.path(&format!("{name}.o"));
    let flat = scratch.path(&format!("{name}.bin"));
    let mut command = Command::new("as");
    for symbol in layout_symbols() {
        command.arg("--defsym").arg(symbol);
    }
    let status = command
        .arg(mode)
        .arg("-I")
        .arg(guests_dir())
        .arg("-o")
        .arg(&object)
        .arg(guests_dir().join(format!("{name}.S")))
        .status()
        .expect("the GNU assembler `as` is needed (Debian package binutils)");
    assert!(status.success(), "assembling {name}.S failed");
    let status = Command::new("objcopy")
        .args(["-O", "binary", "-j", ".text"])
        .arg(&object)
        .arg(&flat)
        .status()
        .expect("objcopy is needed (Debian package binutils)");
    assert!(status.success(), "objcopy of {name}.o failed");
    std::fs::read(flat).unwrap()
}

/// Wraps 64-bit code (whose entry point is at offset 0x200) in a bzImage
/// with boot protocol 2.15, one setup sector and XLF_KERNEL_64.
pub fn bzimage(payload: &[u8]) -> Vec<u8> {
    const SETUP_SECTS: usize = 1;
    let mut image = vec![0u8; (SETUP_SECTS + 1) * 512];
    let put = |image: &mut Vec<u8>, offset: usize, bytes: &[u8]| {
        image[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(&mut image, 0x1f1, &[SETUP_SECTS as u8]);
    put(
        &mut image,
        0x1f4,
        &(payload.len().div_ceil(16) as u32).to_le_bytes(),
    );
    put(&mut image, 0x1fe, &0xaa55u16.to_le_bytes());
    put(&mut image, 0x202, b"HdrS");
    put(&mut image, 0x206, &0x020fu16.to_le_bytes());
    put(&mut image, 0x211, &[0x01]); // LOADED_HIGH
    put(&mut image, 0x214, &0x10_0000u32.to_le_bytes());
    put(&mut image, 0x22c, &0x7fff_ffffu32.to_le_bytes());
    put(&mut image, 0x230, &0x20_0000u32.to_le_bytes());
    put(&mut image, 0x236, &0x1u16.to_le_bytes()); // XLF_KERNEL_64
    put(&mut image, 0x238, &0xffffu32.to_le_bytes());
    put(&mut image, 0x258, &0x10_0000u64.to_le_bytes());
    let init_size = payload.len().next_multiple_of(4096).max(0x10000) as u32;
    put(&mut image, 0x260, &init_size.to_le_bytes());
    image.extend_from_slice(payload);
    // syssize counts 16-byte paragraphs: pad the payload to a whole one.
    image.resize(image.len().next_multiple_of(16), 0);
    image
}

/// Builds `tests/guests/NAME.S` into a bzImage file and returns its path.
pub fn tiny_kernel(name: &str, scratch: &Scratch) -> PathBuf {
    let image = bzimage(&assemble(name, scratch));
    let path = scratch.path(&format!("{name}.bzImage"));
    std::fs::write(&path, image).unwrap();
    path
}

/// Whether this host can run the tiny guests at all.
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Runs `securevm ARGS...` with stdin closed and a time limit.
pub fn securevm(args: &[&str]) -> Output {
    let child = Command::new("timeout")
        .arg("60")
        .arg(SECUREVM)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.wait_with_output().unwrap()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Login passphrases the signed example policy of [`signed_example_policy`]
/// gives alice (role staff) and bob (role contractor).
pub const ALICE_PASSPHRASE: &str = "alice's long passphrase";
pub const BOB_PASSPHRASE: &str = "bob's long passphrase";

/// `guest-policy/examples/policy.toml` with passphrase hashes of
/// [`ALICE_PASSPHRASE`] and [`BOB_PASSPHRASE`], signed with a fresh key
/// (`policy.toml`, `policy.toml.minisig`, `org.pub` in `scratch`).
/// Returns the policy and public key paths.
pub fn signed_example_policy(scratch: &Scratch) -> (PathBuf, PathBuf) {
    use guest_policy::{
        passphrase_hash, signature_path_for, trusted_comment_for, validate, SecretKey,
        SignatureFile,
    };
    const EXAMPLE_ALICE_HASH: &str = "$argon2id$v=19$m=65536,t=3,p=1$A5OCxQAsircygJv5dXDVUA$ujqHB/OcTM3cjG0vVXTxYY5evQecWMs/jDY27IHDnWc";
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../guest-policy/examples/policy.toml"
    ))
    .unwrap();
    let alice = passphrase_hash::hash(ALICE_PASSPHRASE.as_bytes()).unwrap();
    let bob = passphrase_hash::hash(BOB_PASSPHRASE.as_bytes()).unwrap();
    let text = text.replace(EXAMPLE_ALICE_HASH, &alice).replacen(
        "role = \"contractor\"\n",
        &format!("role = \"contractor\"\npassphrase = \"{bob}\"\n"),
        1,
    );
    let key = SecretKey::generate().unwrap();
    let policy_path = scratch.path("policy.toml");
    let pub_path = scratch.path("org.pub");
    std::fs::write(&policy_path, &text).unwrap();
    std::fs::write(&pub_path, key.public_key().to_text()).unwrap();
    let policy = validate("policy.toml", &text).unwrap().policy;
    let comment = trusted_comment_for(&policy, "policy.toml", std::time::SystemTime::now());
    let signature = SignatureFile::sign(&key, text.as_bytes(), &comment).unwrap();
    std::fs::write(signature_path_for(&policy_path), signature.to_text()).unwrap();
    (policy_path, pub_path)
}

/// A file in `scratch` holding `content`.
pub fn write_file(scratch: &Scratch, name: &str, content: &str) -> String {
    let path = scratch.path(name);
    std::fs::write(&path, content).unwrap();
    path.to_str().unwrap().to_owned()
}

/// `--audit-log LOG --audit-key KEY` in `scratch`, with a fresh key.
pub fn audit_args(scratch: &Scratch) -> Vec<String> {
    let key = scratch.path("audit.key");
    if !key.exists() {
        let out = securevm(&["audit", "init-key", key.to_str().unwrap()]);
        assert!(out.status.success(), "init-key: {}", stderr(&out));
    }
    vec![
        "--audit-log".into(),
        scratch.path("audit.jsonl").to_str().unwrap().to_owned(),
        "--audit-key".into(),
        key.to_str().unwrap().to_owned(),
    ]
}
