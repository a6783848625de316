//! The `securevm disk ...` commands as clap pieces for `main.rs`:
//! [`DiskCommand`] (a subcommand enum) and [`run_disk_command`].
//!
//! Passphrases come from the terminal without echo, or from
//! `--passphrase-file` / `--new-passphrase-file` (one trailing newline
//! removed). `remove-key` refuses to remove the last keyslot unless
//! `--force`, because that makes the data unrecoverable.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::block::BlockBackend;
use crate::narrow::usize_from_u64;

use super::backend::EncryptedBackend;
use super::error::StorageError;
use super::gpt_probe::{self, GptFinding};
use super::header;
use super::info::volume_info;
use super::luks::{self, FormatOptions, KdfSettings};
use super::passphrase_input::{read_passphrase, PassphraseSource};
use super::secret::SecretBuf;
use super::size::parse_size;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum DiskCommand {
    /// Create an encrypted LUKS2 disk image (aes-xts-plain64, 512-bit key,
    /// Argon2id), empty (--size) or holding a copy of a raw image (--from).
    Create(CreateArgs),
    /// Add a passphrase (a new keyslot) to an encrypted image.
    AddKey(AddKeyArgs),
    /// Remove a keyslot from an encrypted image.
    RemoveKey(RemoveKeyArgs),
    /// Show an encrypted image's cipher, layout and keyslots (no secrets).
    Info(InfoArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    /// Size of the disk the guest sees, e.g. 64M or 10G.
    #[arg(long, value_parser = parse_size_arg, required_unless_present = "from", conflicts_with = "from")]
    pub size: Option<u64>,
    /// Encrypt a copy of this raw image into OUT (the raw image is not changed).
    #[arg(long, value_name = "RAW")]
    pub from: Option<PathBuf>,
    /// Encryption sector size in bytes.
    #[arg(long, default_value_t = 4096, value_parser = parse_sector_size)]
    pub sector_size: u32,
    #[command(flatten)]
    pub kdf: KdfArgs,
    /// Read the passphrase from FILE (one trailing newline is removed)
    /// instead of asking twice on the terminal.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Overwrite OUT if it exists.
    #[arg(long)]
    pub force: bool,
    /// The encrypted image to write.
    #[arg(value_name = "OUT")]
    pub output: PathBuf,
}

#[derive(Debug, Clone, clap::Args)]
pub struct AddKeyArgs {
    /// A passphrase the image already opens with, from FILE.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// The passphrase to add, from FILE.
    #[arg(long, value_name = "FILE")]
    pub new_passphrase_file: Option<PathBuf>,
    #[command(flatten)]
    pub kdf: KdfArgs,
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RemoveKeyArgs {
    /// Remove this keyslot (authorised by any passphrase of the image);
    /// without it, the keyslot of the given passphrase is removed.
    #[arg(long)]
    pub slot: Option<u32>,
    /// Passphrase from FILE.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Allow removing the last keyslot (the data becomes unrecoverable).
    #[arg(long)]
    pub force: bool,
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
}

#[derive(Debug, Clone, clap::Args)]
pub struct InfoArgs {
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
}

/// Argon2id cost options. Without them libcryptsetup benchmarks the host
/// (about 2 s, at most 1 GiB), as cryptsetup does.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KdfArgs {
    /// Argon2id memory cost, e.g. 1G or 256M (default with --kdf-time: 1G).
    #[arg(long, value_parser = parse_size_arg)]
    pub kdf_memory: Option<u64>,
    /// Argon2id time cost in passes (default with --kdf-memory: 4).
    #[arg(long)]
    pub kdf_time: Option<u32>,
    /// Argon2id parallelism.
    #[arg(long, default_value_t = 4)]
    pub kdf_parallel: u32,
}

impl KdfArgs {
    pub(crate) fn settings(&self) -> Result<KdfSettings, StorageError> {
        if self.kdf_memory.is_none() && self.kdf_time.is_none() {
            return Ok(KdfSettings::Benchmarked);
        }
        let memory_kib = self.kdf_memory.unwrap_or(1 << 30) / 1024;
        let in_range = |kib: &u32| (32..=luks::MAX_KDF_MEMORY_KIB).contains(&u64::from(*kib));
        let Some(memory_kib) = u32::try_from(memory_kib).ok().filter(in_range) else {
            return Err(StorageError::InvalidOption(format!(
                "--kdf-memory must be between 32K and {}M",
                luks::MAX_KDF_MEMORY_KIB / 1024
            )));
        };
        // libcryptsetup's own lower bound for Argon2 passes.
        let time_cost = self.kdf_time.unwrap_or(4);
        if time_cost < 4 {
            return Err(StorageError::InvalidOption(
                "--kdf-time must be at least 4 passes (libcryptsetup's minimum for Argon2id)"
                    .into(),
            ));
        }
        // securevm refuses to open keyslots costlier than this.
        let work = u64::from(time_cost) * u64::from(memory_kib);
        if u64::from(time_cost) > header::MAX_ARGON2_TIME_COST
            || work > header::MAX_ARGON2_WORK_KIB_PASSES
        {
            return Err(StorageError::InvalidOption(format!(
                "--kdf-time must be at most {} passes, and passes times --kdf-memory at most \
                 {} GiB: securevm refuses to open costlier keyslots",
                header::MAX_ARGON2_TIME_COST,
                header::MAX_ARGON2_WORK_KIB_PASSES >> 20
            )));
        }
        if !(1..=16).contains(&self.kdf_parallel) {
            return Err(StorageError::InvalidOption(
                "--kdf-parallel must be between 1 and 16".into(),
            ));
        }
        let settings = KdfSettings::Fixed {
            memory_kib,
            time_cost,
            parallel: self.kdf_parallel,
        };
        if settings.is_weak() {
            eprintln!(
                "warning: these Argon2id costs are weak (below 256M memory); \
                 fine for tests, not for a real passphrase"
            );
        }
        Ok(settings)
    }
}

fn parse_sector_size(text: &str) -> Result<u32, String> {
    match text {
        "512" => Ok(512),
        "4096" => Ok(4096),
        _ => Err("the sector size must be 512 or 4096".to_string()),
    }
}

fn parse_size_arg(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|e| e.to_string())
}

/// Run one `securevm disk` command; results go to stdout, progress and
/// warnings to stderr.
pub fn run_disk_command(command: DiskCommand) -> Result<(), StorageError> {
    match command {
        DiskCommand::Create(args) => create(&args),
        DiskCommand::AddKey(args) => {
            let kdf = args.kdf.settings()?;
            let current = passphrase(
                args.passphrase_file.as_deref(),
                "Existing passphrase: ",
                false,
            )?;
            let new = passphrase(
                args.new_passphrase_file.as_deref(),
                "New passphrase: ",
                true,
            )?;
            let slot = luks::add_key(&args.image, current.as_bytes(), new.as_bytes(), &kdf)?;
            println!("added keyslot {slot} to {}", args.image.display());
            Ok(())
        }
        DiskCommand::RemoveKey(args) => {
            let prompt = if args.slot.is_some() {
                "Any passphrase of the image: "
            } else {
                "Passphrase to remove: "
            };
            let pass = passphrase(args.passphrase_file.as_deref(), prompt, false)?;
            let slot = luks::remove_key(&args.image, pass.as_bytes(), args.slot, args.force)?;
            println!("removed keyslot {slot} from {}", args.image.display());
            Ok(())
        }
        DiskCommand::Info(args) => {
            print!("{}", volume_info(&args.image)?);
            Ok(())
        }
    }
}

fn passphrase(file: Option<&Path>, prompt: &str, confirm: bool) -> Result<SecretBuf, StorageError> {
    read_passphrase(match file {
        Some(path) => PassphraseSource::File(path),
        None => PassphraseSource::Terminal { prompt, confirm },
    })
}

fn create(args: &CreateArgs) -> Result<(), StorageError> {
    let options = FormatOptions {
        sector_size: args.sector_size,
        kdf: args.kdf.settings()?,
        force: args.force,
    };
    let source = match &args.from {
        Some(raw) => {
            let file = File::open(raw).map_err(StorageError::io(raw))?;
            let len = super::luks::medium_len(&file).map_err(StorageError::io(raw))?;
            check_partition_table(raw, &file, len, args.sector_size)?;
            if !len.is_multiple_of(u64::from(args.sector_size)) || len == 0 {
                return Err(StorageError::InvalidOption(format!(
                    "{} is {len} bytes, not a positive multiple of the {}-byte sector size; \
                     pad it with `truncate -s` or pass --sector-size 512",
                    raw.display(),
                    args.sector_size
                )));
            }
            Some((file, len))
        }
        None => None,
    };
    let size = match (&source, args.size) {
        (Some((_, len)), _) => *len,
        (None, Some(size)) => size,
        (None, None) => {
            return Err(StorageError::InvalidOption(
                "give --size SIZE or --from RAW".to_string(),
            ))
        }
    };
    let pass = passphrase(args.passphrase_file.as_deref(), "New passphrase: ", true)?;
    luks::format(&args.output, size, &options, pass.as_bytes())?;
    if let Some((raw, len)) = source {
        let copied = EncryptedBackend::open(&args.output, pass.as_bytes(), false)
            .and_then(|disk| copy_into(&raw, len, &disk, &args.output));
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&args.output);
            return Err(e);
        }
    }
    println!(
        "created {}: {size} bytes, aes-xts-plain64, {}-byte sectors",
        args.output.display(),
        args.sector_size
    );
    Ok(())
}

/// Refuse `raw` when its GPT was written for the other sector size only:
/// the guest sees the volume's sector size as its logical block size and
/// would find no partition table. A damaged header (which neither the
/// firmware nor Linux uses) is reported and otherwise ignored.
fn check_partition_table(
    raw: &Path,
    file: &File,
    len: u64,
    sector_size: u32,
) -> Result<(), StorageError> {
    let other_size = if sector_size == 512 { 4096 } else { 512 };
    let probe = |size| gpt_probe::probe(file, len, size).map_err(StorageError::io(raw));
    let (own, other) = (probe(sector_size)?, probe(other_size)?);
    if own == GptFinding::Valid {
        return Ok(());
    }
    if other == GptFinding::Valid {
        return Err(StorageError::GptSectorSizeMismatch {
            path: raw.to_path_buf(),
            gpt_sector_size: other_size,
            volume_sector_size: sector_size,
        });
    }
    for (size, finding) in [(sector_size, own), (other_size, other)] {
        if let GptFinding::Damaged(defect) = finding {
            eprintln!(
                "warning: {}: the GPT header at byte {size} (for {size}-byte sectors) is \
                 damaged ({defect}), and so is its backup; the guest will ignore it",
                raw.display()
            );
        }
    }
    Ok(())
}

/// Encrypt all of `raw` into `disk`, reporting progress on a terminal.
fn copy_into(
    raw: &File,
    len: u64,
    disk: &EncryptedBackend,
    output: &Path,
) -> Result<(), StorageError> {
    const CHUNK: u64 = 1 << 20;
    // SAFETY: isatty only inspects the descriptor.
    let show_progress = unsafe { libc::isatty(libc::STDERR_FILENO) } == 1;
    let mut buffer = vec![0u8; usize_from_u64(CHUNK)];
    let mut offset = 0;
    let mut last_percent = u64::MAX;
    while offset < len {
        let n = (len - offset).min(CHUNK) as usize;
        let chunk = &mut buffer[..n];
        raw.read_exact_at(chunk, offset)
            .map_err(StorageError::io(output))?;
        disk.write_at(offset, chunk)
            .map_err(StorageError::io(output))?;
        offset += n as u64;
        let percent = offset * 100 / len;
        if show_progress && percent != last_percent {
            last_percent = percent;
            eprint!(
                "\rencrypting: {percent:3}% ({} of {} MiB)",
                offset >> 20,
                len >> 20
            );
            let _ = std::io::stderr().flush();
        }
    }
    if show_progress {
        eprintln!();
    }
    disk.flush().map_err(StorageError::io(output))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::test_support::{scratch_path, ScratchPath, PASSPHRASE};
    use clap::Parser;
    use std::io::Read;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        disk: DiskCommand,
    }

    fn parse(args: &[&str]) -> Result<DiskCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("disk").chain(args.iter().copied())).map(|cli| cli.disk)
    }

    fn pass_file(content: &[u8]) -> ScratchPath {
        let path = scratch_path("pass");
        std::fs::write(&path, content).unwrap();
        path
    }

    fn arg(path: &Path) -> String {
        path.to_string_lossy().into_owned()
    }

    const FAST: [&str; 4] = ["--kdf-memory", "1M", "--kdf-time", "4"];

    #[test]
    fn create_add_remove_info_through_the_cli() {
        let image = scratch_path("cli.img");
        let image_arg = image.to_string_lossy().into_owned();
        let (first_file, second_file) = (
            pass_file(b"correct horse battery staple\n"),
            pass_file(b"second"),
        );
        let (first, second) = (arg(&first_file), arg(&second_file));
        let mut args = vec!["create", "--size", "8M", "--passphrase-file", &first];
        args.extend(FAST);
        args.push(&image_arg);
        run_disk_command(parse(&args).unwrap()).unwrap();
        assert!(luks::unlock(&image, PASSPHRASE).is_ok());
        let again = run_disk_command(parse(&args).unwrap()).unwrap_err();
        assert!(
            matches!(again, StorageError::AlreadyExists { .. }),
            "{again}"
        );

        let mut add = vec![
            "add-key",
            "--passphrase-file",
            &first,
            "--new-passphrase-file",
            &second,
        ];
        add.extend(FAST);
        add.push(&image_arg);
        run_disk_command(parse(&add).unwrap()).unwrap();
        assert!(luks::unlock(&image, b"second").is_ok());

        let info = volume_info(&image).unwrap();
        assert_eq!(info.keyslots.len(), 2);
        let shown = info.to_string();
        assert!(
            shown.contains("aes-xts-plain64") && shown.contains("argon2id"),
            "{shown}"
        );
        assert!(shown.contains("Data offset:   16777216"), "{shown}");

        let remove = ["remove-key", "--passphrase-file", &second, &image_arg];
        run_disk_command(parse(&remove).unwrap()).unwrap();
        assert!(luks::unlock(&image, b"second").is_err());
        let last = ["remove-key", "--passphrase-file", &first, &image_arg];
        let err = run_disk_command(parse(&last).unwrap()).unwrap_err();
        assert!(matches!(err, StorageError::LastKeyslot { .. }), "{err}");
    }

    #[test]
    fn create_from_a_raw_image_encrypts_its_contents() {
        let raw = scratch_path("raw.img");
        let content: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 253) as u8).collect();
        std::fs::write(&raw, &content).unwrap();
        let image = scratch_path("from.img");
        let pass_path = pass_file(PASSPHRASE);
        let pass = arg(&pass_path);
        let (raw_arg, image_arg) = (raw.to_string_lossy(), image.to_string_lossy());
        let mut args = vec!["create", "--from", &raw_arg, "--passphrase-file", &pass];
        args.extend(FAST);
        args.push(&image_arg);
        run_disk_command(parse(&args).unwrap()).unwrap();
        let disk = EncryptedBackend::open(&image, PASSPHRASE, true).unwrap();
        assert_eq!(disk.capacity_bytes(), content.len() as u64);
        let mut back = vec![0u8; content.len()];
        disk.read_at(0, &mut back).unwrap();
        assert!(back == content);
        let mut raw_image = Vec::new();
        File::open(&image)
            .unwrap()
            .read_to_end(&mut raw_image)
            .unwrap();
        assert!(!raw_image.windows(253).any(|w| w == &content[..253]));
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(parse(&["create", "out.img"]).is_err());
        assert!(parse(&["create", "--size", "1X", "out.img"]).is_err());
        assert!(parse(&["create", "--size", "1M", "--sector-size", "1024", "out.img"]).is_err());
        let raw = scratch_path("odd.raw");
        std::fs::write(&raw, vec![0u8; 1000]).unwrap();
        let pass_path = pass_file(PASSPHRASE);
        let pass = arg(&pass_path);
        let out = scratch_path("odd.img");
        let (raw_arg, out_arg) = (raw.to_string_lossy(), out.to_string_lossy());
        let cmd = parse(&[
            "create",
            "--from",
            &raw_arg,
            "--passphrase-file",
            &pass,
            &out_arg,
        ])
        .unwrap();
        assert!(matches!(
            run_disk_command(cmd),
            Err(StorageError::InvalidOption(_))
        ));
        assert!(!out.exists());
        let cmd = parse(&["create", "--size", "1M", "--kdf-memory", "8G", &out_arg]).unwrap();
        assert!(matches!(
            run_disk_command(cmd),
            Err(StorageError::InvalidOption(_))
        ));
        // Costs securevm itself would refuse to open.
        for (memory, time) in [("1M", "5000"), ("1G", "65")] {
            let cmd = parse(&[
                "create",
                "--size",
                "1M",
                "--kdf-memory",
                memory,
                "--kdf-time",
                time,
                &out_arg,
            ])
            .unwrap();
            assert!(
                matches!(run_disk_command(cmd), Err(StorageError::InvalidOption(ref why)) if why.contains("at most")),
                "--kdf-memory {memory} --kdf-time {time}"
            );
            assert!(!out.exists());
        }
    }

    /// A raw image with a GPT for `sector_size`-byte sectors: fdisk's when
    /// it is installed, else the headers as fdisk writes them.
    fn gpt_source(name: &str, sector_size: u32) -> ScratchPath {
        use crate::storage::gpt_probe::tests::{fdisk_image, gpt_image};
        fdisk_image(name, sector_size).unwrap_or_else(|| {
            let path = scratch_path(name);
            std::fs::write(&path, gpt_image(sector_size, 4 << 20)).unwrap();
            path
        })
    }

    /// `disk create --from raw [extra...] OUT`; OUT is a fresh path.
    fn create_from(raw: &Path, extra: &[&str]) -> (Result<(), StorageError>, ScratchPath) {
        let out = scratch_path("gpt.luks");
        let pass_path = pass_file(PASSPHRASE);
        let (raw_arg, pass, out_arg) = (arg(raw), arg(&pass_path), arg(&out));
        let mut args = vec!["create", "--from", &raw_arg, "--passphrase-file", &pass];
        args.extend(FAST);
        args.extend(extra);
        args.push(&out_arg);
        (run_disk_command(parse(&args).unwrap()), out)
    }

    /// The guest's view of a volume: its block size and whether its LBA 1
    /// starts with a GPT header.
    fn guest_sees_gpt(volume: &Path) -> (u32, bool) {
        let disk = EncryptedBackend::open(volume, PASSPHRASE, true).unwrap();
        let block = disk.block_size();
        let mut lba1 = vec![0u8; block as usize];
        disk.read_at(u64::from(block), &mut lba1).unwrap();
        (block, lba1.starts_with(b"EFI PART"))
    }

    #[test]
    fn a_gpt_of_the_other_sector_size_is_refused() {
        for (gpt_size, option, wanted) in [
            (512, &[][..], "--sector-size 512"),
            (4096, &["--sector-size", "512"][..], "--sector-size 4096"),
        ] {
            let raw = gpt_source("gpt.raw", gpt_size);
            let (result, out) = create_from(&raw, option);
            let err = result.unwrap_err();
            assert!(
                matches!(err, StorageError::GptSectorSizeMismatch { .. }),
                "{err}"
            );
            let message = err.to_string();
            assert!(
                message.ends_with(wanted) && !message.contains('\n'),
                "{message}"
            );
            assert!(!out.exists(), "{} was created", out.display());
        }
    }

    #[test]
    fn a_gpt_of_the_volume_sector_size_is_accepted_and_visible() {
        for (gpt_size, option) in [(512, &["--sector-size", "512"][..]), (4096, &[][..])] {
            let raw = gpt_source("gpt.raw", gpt_size);
            let (result, out) = create_from(&raw, option);
            result.unwrap();
            assert_eq!(guest_sees_gpt(&out), (gpt_size, true));
        }
    }

    #[test]
    fn a_damaged_gpt_header_does_not_block_creation() {
        // Neither the firmware nor Linux uses a header whose CRC fails, at
        // any sector size, so no choice hides it: proceed, with a warning.
        let raw = gpt_source("damaged.raw", 512);
        let file = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
        let len = file.metadata().unwrap().len();
        for header in [512, len - 512] {
            file.write_all_at(b"\xff", header + 60).unwrap();
        }
        let (result, out) = create_from(&raw, &[]);
        result.unwrap();
        assert_eq!(guest_sees_gpt(&out), (4096, false));
    }

    #[test]
    fn tiny_sources_are_judged_without_panicking() {
        use crate::storage::gpt_probe::tests::gpt_image;
        // The smallest 512-byte GPT: one sector of MBR, the header, six
        // more sectors.
        let raw = scratch_path("tiny.raw");
        std::fs::write(&raw, gpt_image(512, 4096)).unwrap();
        let (result, out) = create_from(&raw, &[]);
        assert!(matches!(
            result,
            Err(StorageError::GptSectorSizeMismatch { .. })
        ));
        assert!(!out.exists());
        // Shorter than a header, shorter than a sector.
        for content in [&b"EFI PART"[..], &[0u8; 512][..]] {
            std::fs::write(&raw, content).unwrap();
            let (result, out) = create_from(&raw, &[]);
            assert!(
                matches!(result, Err(StorageError::InvalidOption(ref why)) if why.contains("multiple")),
                "{} bytes",
                content.len()
            );
            assert!(!out.exists());
        }
        std::fs::write(&raw, [0u8; 512]).unwrap();
        let (result, _out) = create_from(&raw, &["--sector-size", "512"]);
        result.unwrap();
    }
}
