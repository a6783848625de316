//! The prompt phrase: a line of text chosen by the machine's administrator
//! that every securevm prompt shows (`[securevm: <phrase>] PIN for ...`).
//!
//! The guest's console output goes to the same terminal as securevm's
//! prompts, escape sequences included, so a guest can print a perfect copy
//! of any prompt and collect what is typed into it. The phrase is what the
//! guest cannot copy: it lives in a file only root (or the user running
//! securevm) can read, it is never put in guest memory, on a disk, on the
//! kernel command line, in a log or in the audit trail, and securevm only
//! writes it to the terminal while guest output is held back. A prompt
//! without the phrase is a forgery.
//!
//! A file that exists but is not private (wrong owner, group or other
//! permission bits), or that does not hold one short printable line, is
//! refused: a phrase others can read protects nothing, and a bad phrase
//! is an administrator's mistake to fix, not to guess around. A missing
//! file does not stop securevm (a fresh installation must still be able
//! to ask for a PIN), but then every prompt says, in the place of the
//! phrase, that it cannot be told from a forgery.

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use zeroize::Zeroizing;

/// Where the phrase is read from unless `--prompt-phrase FILE` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/securevm/prompt-phrase";
/// Longest phrase in bytes (one trailing newline not counted): a prompt
/// must stay on one line of a terminal.
pub const MAX_PHRASE_BYTES: usize = 128;

/// Puts the terminal's character attributes, character set, insert mode
/// and cursor back to normal before a prompt, so that guest output before
/// it cannot make the prompt (or the phrase) invisible or garbled: SGR
/// reset, shift-in, G0 = ASCII, replace mode, cursor visible.
pub const TERMINAL_SANE: &str = "\x1b[0m\x0f\x1b(B\x1b[4l\x1b[?25h";

/// How to make a phrase file, quoted in every refusal.
const HOW_TO_CREATE: &str = "create it with `install -d -m 0755 /etc/securevm && (umask 077 && printf '%s\\n' 'a phrase of your own' > /etc/securevm/prompt-phrase)` as root, or pass --prompt-phrase FILE (a file owned by you, mode 0600)";

static CONFIGURED_PATH: OnceLock<PathBuf> = OnceLock::new();

/// Sets the phrase file for this process (`--prompt-phrase`); the first
/// call wins. Without a call, [`DEFAULT_PATH`] is used.
pub fn set_path(path: PathBuf) {
    let _ = CONFIGURED_PATH.set(path);
}

/// The phrase file this process uses.
pub fn configured_path() -> &'static Path {
    CONFIGURED_PATH
        .get()
        .map(PathBuf::as_path)
        .unwrap_or(Path::new(DEFAULT_PATH))
}

/// Why a phrase file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PhraseError {
    #[error("cannot read the prompt phrase file {}: {source}; {HOW_TO_CREATE}", path.display())]
    Unreadable { path: PathBuf, source: io::Error },
    #[error("the prompt phrase file {} is not a regular file; {HOW_TO_CREATE}", path.display())]
    NotAFile { path: PathBuf },
    #[error("the prompt phrase file {} belongs to uid {owner}, not to root or to the user running securevm; run `chown root {}` (or give --prompt-phrase a file of your own)", path.display(), path.display())]
    WrongOwner { path: PathBuf, owner: u32 },
    #[error("the prompt phrase file {} can be read or written by group or others (mode {mode:04o}), so the phrase is no secret; run `chmod 600 {}` and choose a new phrase", path.display(), path.display())]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("the prompt phrase file {}: {problem}; it must hold one line of at most {MAX_PHRASE_BYTES} bytes of printable UTF-8 text", path.display())]
    Invalid {
        path: PathBuf,
        problem: InvalidPhrase,
    },
}

/// What is wrong with a phrase's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPhrase {
    #[error("the phrase is empty")]
    Empty,
    #[error("the phrase is longer than {MAX_PHRASE_BYTES} bytes")]
    TooLong,
    #[error("the phrase is not UTF-8 text")]
    NotUtf8,
    #[error("the phrase holds a control or invisible character (or more than one line)")]
    NotPrintable,
}

/// The phrase, or the fact that this machine has none.
#[derive(Clone, PartialEq, Eq)]
pub enum PromptPhrase {
    Set(Zeroizing<String>),
    /// No file at this path: prompts carry a warning instead.
    Missing(PathBuf),
}

/// Never shows the phrase: it must not reach a log.
impl std::fmt::Debug for PromptPhrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PromptPhrase::Set(_) => f.write_str("PromptPhrase::Set(..)"),
            PromptPhrase::Missing(path) => write!(f, "PromptPhrase::Missing({})", path.display()),
        }
    }
}

impl PromptPhrase {
    /// The phrase of [`configured_path`].
    pub fn load_configured() -> Result<PromptPhrase, PhraseError> {
        PromptPhrase::load(configured_path())
    }

    /// Reads and checks the phrase file at `path`.
    pub fn load(path: &Path) -> Result<PromptPhrase, PhraseError> {
        let unreadable = |source| PhraseError::Unreadable {
            path: path.to_path_buf(),
            source,
        };
        // O_NONBLOCK: a FIFO planted at the path must not hang the open;
        // it is refused below as not a regular file.
        let mut file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(PromptPhrase::Missing(path.to_path_buf()))
            }
            Err(e) => return Err(unreadable(e)),
        };
        // The checks look at the file opened, not at the path again.
        let metadata = file.metadata().map_err(unreadable)?;
        if !metadata.is_file() {
            return Err(PhraseError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if metadata.uid() != 0 && metadata.uid() != euid {
            return Err(PhraseError::WrongOwner {
                path: path.to_path_buf(),
                owner: metadata.uid(),
            });
        }
        let mode = metadata.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(PhraseError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        // Room for the longest phrase, a "\r\n" and one byte to notice more.
        let limit = MAX_PHRASE_BYTES + 3;
        let mut bytes = Zeroizing::new(Vec::with_capacity(limit));
        (&mut file)
            .take(limit as u64)
            .read_to_end(&mut bytes)
            .map_err(unreadable)?;
        PromptPhrase::parse(&bytes).map_err(|problem| PhraseError::Invalid {
            path: path.to_path_buf(),
            problem,
        })
    }

    /// The phrase in `bytes`: one line (a trailing "\n" or "\r\n" is
    /// dropped) of printable UTF-8, not blank, at most [`MAX_PHRASE_BYTES`].
    pub fn parse(bytes: &[u8]) -> Result<PromptPhrase, InvalidPhrase> {
        let line = bytes
            .strip_suffix(b"\r\n")
            .or_else(|| bytes.strip_suffix(b"\n"))
            .unwrap_or(bytes);
        if line.len() > MAX_PHRASE_BYTES {
            return Err(InvalidPhrase::TooLong);
        }
        let text = std::str::from_utf8(line).map_err(|_| InvalidPhrase::NotUtf8)?;
        if text.trim().is_empty() {
            return Err(InvalidPhrase::Empty);
        }
        if text
            .chars()
            .any(|c| c.is_control() || is_invisible_format(c))
        {
            return Err(InvalidPhrase::NotPrintable);
        }
        Ok(PromptPhrase::Set(Zeroizing::new(text.to_string())))
    }

    /// What goes before a prompt's own text: the phrase, or a warning
    /// that there is none.
    pub fn banner(&self) -> Zeroizing<String> {
        Zeroizing::new(match self {
            PromptPhrase::Set(phrase) => format!("[securevm: {}] ", phrase.as_str()),
            PromptPhrase::Missing(path) => format!(
                "[securevm: WARNING: no prompt phrase ({} is missing), so this prompt cannot be told from one the guest forged] ",
                path.display()
            ),
        })
    }

    /// `prompt` as securevm shows it: the terminal reset, the banner,
    /// then the prompt.
    pub fn decorate(&self, prompt: &str) -> Zeroizing<String> {
        Zeroizing::new(format!("{TERMINAL_SANE}{}{prompt}", self.banner().as_str()))
    }
}

/// Characters that print nothing yet change how the text after them is
/// shown (bidirectional overrides and isolates, zero-width characters): a
/// phrase with them could hide what the terminal really displays.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fresh file in a scratch directory with `content` and `mode`.
    fn phrase_file(name: &str, content: &[u8], mode: u32) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "securevm-prompt-phrase-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("phrase");
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn phrase_text(phrase: &PromptPhrase) -> &str {
        match phrase {
            PromptPhrase::Set(text) => text.as_str(),
            PromptPhrase::Missing(_) => panic!("no phrase"),
        }
    }

    #[test]
    fn a_private_file_gives_its_line_without_the_newline() {
        for mode in [0o600, 0o400] {
            let path = phrase_file(&format!("ok{mode:o}"), b"blue heron at dawn\n", mode);
            let phrase = PromptPhrase::load(&path).unwrap();
            assert_eq!(phrase_text(&phrase), "blue heron at dawn");
            assert_eq!(
                phrase.decorate("PIN: ").as_str(),
                format!("{TERMINAL_SANE}[securevm: blue heron at dawn] PIN: ")
            );
        }
    }

    #[test]
    fn a_file_group_or_others_can_read_or_write_is_refused_with_the_fix() {
        for mode in [0o640, 0o604, 0o620, 0o602, 0o644] {
            let path = phrase_file(&format!("open{mode:o}"), b"blue heron\n", mode);
            let error = PromptPhrase::load(&path).unwrap_err();
            assert!(
                matches!(error, PhraseError::TooOpen { mode: m, .. } if m == mode),
                "{error:?}"
            );
            assert!(
                error
                    .to_string()
                    .contains(&format!("chmod 600 {}", path.display())),
                "{error}"
            );
        }
    }

    #[test]
    fn a_file_of_another_user_is_refused() {
        let path = phrase_file("owner", b"blue heron\n", 0o600);
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let stranger = if euid == 4242 { 4343 } else { 4242 };
        // Only root can give a file away; elsewhere the check is covered
        // by the owner being this user (accepted above).
        if std::os::unix::fs::chown(&path, Some(stranger), None).is_err() {
            return;
        }
        let error = PromptPhrase::load(&path).unwrap_err();
        assert!(
            matches!(error, PhraseError::WrongOwner { owner, .. } if owner == stranger),
            "{error:?}"
        );
    }

    #[test]
    fn a_missing_file_gives_a_warning_in_every_prompt() {
        let path = Path::new("/nonexistent/securevm/prompt-phrase");
        let phrase = PromptPhrase::load(path).unwrap();
        assert_eq!(phrase, PromptPhrase::Missing(path.to_path_buf()));
        let prompt = phrase.decorate("PIN: ");
        assert!(prompt.contains("WARNING: no prompt phrase"), "{}", *prompt);
        assert!(prompt.contains("/nonexistent/securevm/prompt-phrase"));
        assert!(prompt.ends_with("PIN: "));
    }

    #[test]
    fn a_directory_or_fifo_is_not_a_phrase_file() {
        let fifo = phrase_file("fifo", b"", 0o600);
        std::fs::remove_file(&fifo).unwrap();
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `name` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            PromptPhrase::load(&fifo),
            Err(PhraseError::NotAFile { .. })
        ));
        let dir = fifo.parent().unwrap();
        assert!(matches!(
            PromptPhrase::load(dir),
            Err(PhraseError::NotAFile { .. })
        ));
    }

    #[test]
    fn oversize_multiline_control_or_blank_phrases_are_refused() {
        let longest = vec![b'a'; MAX_PHRASE_BYTES];
        assert!(PromptPhrase::parse(&longest).is_ok());
        let too_long = vec![b'a'; MAX_PHRASE_BYTES + 1];
        assert_eq!(PromptPhrase::parse(&too_long), Err(InvalidPhrase::TooLong));
        for (text, problem) in [
            (&b"two\nlines\n"[..], InvalidPhrase::NotPrintable),
            (b"esc \x1b[8m hidden", InvalidPhrase::NotPrintable),
            (b"bell\x07", InvalidPhrase::NotPrintable),
            (b"tab\there", InvalidPhrase::NotPrintable),
            (
                "right\u{202e}to left".as_bytes(),
                InvalidPhrase::NotPrintable,
            ),
            (b"\xff\xfe", InvalidPhrase::NotUtf8),
            (b"", InvalidPhrase::Empty),
            (b"   \n", InvalidPhrase::Empty),
        ] {
            assert_eq!(PromptPhrase::parse(text), Err(problem), "{text:?}");
        }
        assert_eq!(
            phrase_text(&PromptPhrase::parse("héron bleu\r\n".as_bytes()).unwrap()),
            "héron bleu"
        );
        // An oversize file is refused from its first bytes.
        let path = phrase_file("big", &vec![b'b'; 10_000], 0o600);
        assert!(matches!(
            PromptPhrase::load(&path),
            Err(PhraseError::Invalid {
                problem: InvalidPhrase::TooLong,
                ..
            })
        ));
    }

    #[test]
    fn debug_output_never_shows_the_phrase() {
        let phrase = PromptPhrase::parse(b"blue heron").unwrap();
        assert!(!format!("{phrase:?}").contains("heron"));
    }
}
