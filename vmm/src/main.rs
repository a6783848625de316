//! The `securevm` command: a thin CLI over the library. Errors are one
//! line on stderr saying what is wrong and what to do; the exit status
//! says how the VM ended (see `securevm::exit`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use securevm::api::client::CtlArgs;
use securevm::audit::cli::{run_audit_command, AuditCommand};
use securevm::audit::{AuditConfig, ClientIdentity};
use securevm::bench::disk::{run_disk_bench, BenchDiskArgs};
use securevm::config::{
    BootFlags, BootFlagsError, DiskConfig, ExternalMediaConfig, NetConfig, RebootAction, VmConfig,
    DEFAULT_CMDLINE, DEFAULT_MEMORY_MIB,
};
use securevm::console::prompt_phrase;
use securevm::display::DisplayConfig;
use securevm::exit::{ExitReason, EXIT_ERROR, EXIT_LOGIN_REFUSED, EXIT_USAGE};
use securevm::external_media::ExternalMediaPolicy;
use securevm::identity::enroll::{run_enroll_command, EnrollCommand};
use securevm::identity::smartcard::cli::{run_enroll, CardArgs, CardEnrollArgs};
use securevm::policy::PolicyConfig;
use securevm::storage::{run_disk_command, DiskCommand};
use securevm::vm::VmmError;

#[derive(Parser)]
#[command(
    name = "securevm",
    version,
    about = "Runs one unmodified guest OS under KVM with storage encryption, network access control and ID management enforced below it"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The machine's prompt phrase (one line, owned by root or you, mode 0600):
    /// every securevm prompt shows it, so a prompt the guest forged, lacking it,
    /// gives itself away. Without the file, prompts carry a warning instead.
    #[arg(long, global = true, value_name = "FILE", default_value = prompt_phrase::DEFAULT_PATH)]
    prompt_phrase: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a guest: a kernel from the host (--kernel), or the OS installed on its disk
    /// through UEFI firmware (--firmware). The guest console is this terminal (Ctrl-A x quits).
    ///
    /// Exit status: 0 guest powered off, 1 error, 2 usage error, 3 guest
    /// rebooted, 4 guest crashed, 5 login refused, 31 a syscall outside the
    /// seccomp filter, 70 securevm panicked (both bugs), 130 stopped with
    /// Ctrl-A x.
    Run(Box<RunArgs>),
    /// Create and manage LUKS2-encrypted disk images and their users' keyslots.
    #[command(subcommand)]
    Disk(DiskCli),
    /// The audit log: create the machine audit key, verify a log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Measure securevm's own costs (figures for the README).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Control a running securevm through its --api-socket.
    ///
    /// Exit status: 0 success, 1 the command failed (one line on stderr
    /// says why), 2 usage error.
    Ctl(CtlArgs),
}

#[derive(Subcommand)]
enum DiskCli {
    #[command(flatten)]
    Volume(DiskCommand),
    #[command(flatten)]
    Users(EnrollCommand),
    /// Add a keyslot that a smart card opens (systemd-cryptenroll's
    /// systemd-pkcs11 layout: systemd-cryptsetup opens it with the same card).
    EnrollCard(CardEnrollArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Throughput of the virtio-blk request path: plain, LUKS2, QEMU's LUKS, OpenSSL's ceiling.
    Disk(BenchDiskArgs),
    /// The packet filter's cost per packet for 10, 1 000 and 10 000 rules.
    Net,
}

#[derive(Clone, Copy, ValueEnum)]
enum ExternalPolicyArg {
    /// Attach only LUKS volumes opened with the organisation's passphrase.
    Encrypt,
    /// Attach read-only; the guest cannot change the medium.
    ReadOnly,
    /// Do not attach; the refusal is reported.
    Deny,
}

#[derive(Clone, Copy, ValueEnum)]
enum OnReboot {
    /// Exit with status 3.
    Exit,
    /// Boot the guest again.
    Restart,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Guest kernel: a bzImage, or an ELF vmlinux with a PVH entry note.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk handed to the kernel.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    #[arg(long, value_name = "STR", help = cmdline_help())]
    cmdline: Option<String>,
    /// UEFI firmware (edk2's Cloud Hypervisor build of OVMF, CLOUDHV.fd) that boots the OS
    /// installed on the --disk, instead of --kernel.
    #[arg(long, value_name = "PATH")]
    firmware: Option<PathBuf>,
    /// With --firmware: write the firmware's debug console (port 0x402) to FILE (mode 0600).
    #[arg(long, value_name = "FILE")]
    firmware_log: Option<PathBuf>,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    cpus: u16,
    /// Guest RAM in MiB.
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_MEMORY_MIB)]
    memory: u64,
    /// A raw disk image as a virtio-blk device (repeatable; /dev/vda, /dev/vdb, ... in order).
    #[arg(long = "disk", value_name = "PATH[,readonly]")]
    disks: Vec<DiskConfig>,
    /// A virtio-net device on host TAP NAME, created if missing (repeatable).
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]")]
    nets: Vec<NetConfig>,
    /// Passphrase file (one trailing newline is ignored); else the terminal asks. With --user:
    /// the user's login passphrase (it also opens their disk keyslot); without: the disks'.
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// A removable medium (image or block device), attached under --external-policy (repeatable).
    #[arg(long = "external", value_name = "PATH")]
    external: Vec<PathBuf>,
    /// What happens to external media without a policy [default: deny]; with
    /// --policy the role decides, and a user may not override it.
    #[arg(long, value_enum, conflicts_with = "policy")]
    external_policy: Option<ExternalPolicyArg>,
    /// The organisation's passphrase for external media under `encrypt`.
    #[arg(long, value_name = "FILE")]
    external_passphrase_file: Option<PathBuf>,
    /// Under `encrypt`, format a blank medium (zeros at its start) as a LUKS2 volume.
    #[arg(long)]
    format_blank_external: bool,
    /// Watch the host for USB sticks and SD cards (those present at start too) and attach or
    /// refuse each under the external-media rules as it is plugged in; a pulled stick leaves
    /// the guest at once.
    #[arg(long)]
    watch_removable: bool,
    /// The signed machine policy (its signature is FILE.minisig).
    #[arg(long, value_name = "FILE", requires_all = ["policy_key", "user"])]
    policy: Option<PathBuf>,
    /// The organisation's public key (minisign format) that must have signed the policy.
    #[arg(long, value_name = "PUB", requires = "policy")]
    policy_key: Option<PathBuf>,
    /// State file recording the installed policy version (refuses rollback).
    #[arg(long, value_name = "FILE", requires = "policy")]
    policy_state: Option<PathBuf>,
    /// Watch this directory and push each newer signed policy dropped there to the running VM,
    /// as `ctl push-policy` does: NAME.toml.minisig is renamed in first, NAME.toml last.
    /// Needs --policy-state: whoever writes DIR could otherwise roll the policy back to any
    /// signed version above --policy's after each restart.
    #[arg(
        long,
        value_name = "DIR",
        requires_all = ["policy", "policy_state"],
        value_parser = existing_dir
    )]
    policy_dir: Option<PathBuf>,
    /// The policy user who logs in (passphrase from --passphrase-file or the
    /// terminal); their role's rules apply.
    #[arg(long, value_name = "ID", requires = "policy")]
    user: Option<String>,
    /// Refused: the role comes from the user who logs in (kept to say so).
    #[arg(long, value_name = "NAME", hide = true)]
    role: Option<String>,
    /// This machine's WireGuard private key (as `wg genkey` prints it, mode 0600),
    /// for a role whose policy forces a VPN.
    #[arg(long, value_name = "FILE")]
    vpn_key: Option<PathBuf>,
    /// Where audit records go (overrides the policy's [audit] sink).
    #[arg(long, value_name = "FILE")]
    audit_log: Option<PathBuf>,
    /// The machine audit key (32 bytes, mode 0600) that MACs the records.
    #[arg(long, value_name = "FILE")]
    audit_key: Option<PathBuf>,
    /// The syslog socket records are forwarded to when the policy forwards to syslog.
    #[arg(long, value_name = "PATH", default_value = securevm::audit::DEFAULT_SYSLOG_SOCKET)]
    audit_syslog_socket: PathBuf,
    /// This machine's client certificate (PEM) for the policy's TLS audit collector.
    #[arg(long, value_name = "FILE", requires = "audit_client_key")]
    audit_client_cert: Option<PathBuf>,
    /// The private key (PEM) of --audit-client-cert.
    #[arg(long, value_name = "FILE", requires = "audit_client_cert")]
    audit_client_key: Option<PathBuf>,
    /// What a guest reboot does.
    #[arg(long, value_enum, default_value = "exit")]
    on_reboot: OnReboot,
    /// Seconds the guest has to power off after SIGTERM (systemd's stop) pressed its ACPI power
    /// button; then securevm stops it. Keep the unit's TimeoutStopSec at least 10 s above it.
    #[arg(long, value_name = "SECONDS", default_value_t = securevm::service::DEFAULT_STOP_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    stop_timeout: u64,
    /// Run without seccomp filters (debugging only: weakens isolation).
    #[arg(long)]
    no_seccomp: bool,
    /// The KVM device to use.
    #[arg(long, value_name = "PATH", default_value = "/dev/kvm")]
    kvm_device: PathBuf,
    /// Serve the control API (`securevm ctl`) on this Unix socket (created mode 0600).
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Give the guest a screen, keyboard and pointer, shown by an RFB (VNC) server on this Unix
    /// socket (created mode 0600); with a policy the login is asked on that screen. SIZE like 64M
    /// caps the guest's display memory.
    #[arg(long, value_name = "vnc=unix:PATH[,size=WxH][,max-mem=SIZE]")]
    display: Option<DisplayConfig>,
    #[command(flatten)]
    card: CardArgs,
}

/// `--policy-dir DIR`: DIR must be a directory now, so a typo fails at start.
fn existing_dir(value: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(value);
    match std::fs::metadata(&path) {
        Ok(metadata) if metadata.is_dir() => Ok(path),
        Ok(_) => Err(format!("{value} is not a directory")),
        Err(e) => Err(format!("{value}: {e}")),
    }
}

/// `--cmdline`'s help, with the default a kernel boot gets without it.
fn cmdline_help() -> String {
    format!("Kernel command line (--kernel only) [default: {DEFAULT_CMDLINE}]")
}

impl TryFrom<RunArgs> for VmConfig {
    type Error = BootFlagsError;

    fn try_from(args: RunArgs) -> Result<VmConfig, BootFlagsError> {
        let boot = BootFlags {
            kernel: args.kernel,
            initrd: args.initrd,
            cmdline: args.cmdline,
            firmware: args.firmware,
            firmware_log: args.firmware_log,
        }
        .source()?;
        Ok(VmConfig {
            boot,
            cpus: args.cpus,
            memory_mib: args.memory,
            disks: args.disks,
            nets: args.nets,
            passphrase_file: args.passphrase_file,
            external: ExternalMediaConfig {
                media: args.external,
                policy: args.external_policy.map(|policy| match policy {
                    ExternalPolicyArg::Encrypt => ExternalMediaPolicy::Encrypt,
                    ExternalPolicyArg::ReadOnly => ExternalMediaPolicy::ReadOnly,
                    ExternalPolicyArg::Deny => ExternalMediaPolicy::Deny,
                }),
                passphrase_file: args.external_passphrase_file,
                format_blank: args.format_blank_external,
                watch_removable: args.watch_removable,
            },
            policy: match (args.policy, args.policy_key) {
                (Some(path), Some(public_key)) => Some(PolicyConfig {
                    path,
                    public_key,
                    state: args.policy_state,
                    dir: args.policy_dir,
                }),
                _ => None,
            },
            vpn_key: args.vpn_key,
            card: args.card.options(),
            user: args.user,
            audit: AuditConfig {
                log: args.audit_log,
                key: args.audit_key,
                syslog_socket: Some(args.audit_syslog_socket),
                client: match (args.audit_client_cert, args.audit_client_key) {
                    (Some(certificate), Some(key)) => Some(ClientIdentity { certificate, key }),
                    _ => None,
                },
            },
            seccomp: !args.no_seccomp,
            on_reboot: match args.on_reboot {
                OnReboot::Exit => RebootAction::Exit,
                OnReboot::Restart => RebootAction::Restart,
            },
            stop_timeout: Duration::from_secs(args.stop_timeout),
            kvm_device: args.kvm_device,
            api_socket: args.api_socket,
            display: args.display,
        })
    }
}

fn main() -> ExitCode {
    securevm::exit::install_panic_hook("securevm");
    // One malloc arena: glibc shrinks the heaps of extra (per-thread)
    // arenas only after reading /proc/sys/vm/overcommit_memory, an open()
    // that the seccomp filters rightly forbid once the VM runs.
    // SAFETY: mallopt only tunes the allocator; called before any thread.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_target(false)
        .format_timestamp(None)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                exit_status(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    prompt_phrase::set_path(cli.prompt_phrase);
    match cli.command {
        Command::Run(args) => {
            if args.role.is_some() {
                eprintln!(
                    "securevm: error: --role is not accepted: the role comes from the policy's entry for the user who logs in; pass --user ID"
                );
                return exit_status(EXIT_USAGE);
            }
            match VmConfig::try_from(*args) {
                Ok(config) => run(config),
                Err(e) => {
                    eprintln!("securevm: error: {e}");
                    exit_status(EXIT_USAGE)
                }
            }
        }
        Command::Disk(DiskCli::Volume(command)) => match run_disk_command(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Command::Disk(DiskCli::Users(command)) => match run_enroll_command(&command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Command::Disk(DiskCli::EnrollCard(args)) => match run_enroll(&args) {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Command::Audit(command) => match run_audit_command(&command) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => exit_status(EXIT_ERROR),
            Err(e) => fail(&e),
        },
        Command::Bench(BenchCommand::Disk(args)) => match run_disk_bench(&args) {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Command::Ctl(args) => match securevm::api::client::run(&args) {
            Ok(output) => {
                println!("{output}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Command::Bench(BenchCommand::Net) => {
            bench_net();
            ExitCode::SUCCESS
        }
    }
}

fn bench_net() {
    netfilter::bench::run(|line| println!("{line}"));
}

fn run(config: VmConfig) -> ExitCode {
    match securevm::vm::run(&config) {
        Ok(reason) => {
            match &reason {
                ExitReason::GuestCrash(dump) => eprintln!("securevm: guest crashed: {dump}"),
                ExitReason::Internal(what) => eprintln!("securevm: error: {what}"),
                ExitReason::PowerOff | ExitReason::Reboot | ExitReason::UserQuit => {}
            }
            exit_status(reason.exit_code())
        }
        Err(VmmError::Session(e)) if e.is_login_refused() => {
            eprintln!("securevm: error: {e}");
            exit_status(EXIT_LOGIN_REFUSED)
        }
        Err(e) => fail(&e),
    }
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("securevm: error: {error}");
    exit_status(EXIT_ERROR)
}

/// The process exit status for one of `securevm::exit`'s codes.
fn exit_status(code: i32) -> ExitCode {
    // Every code is a constant in 0..=255 (exit.rs tests that); anything
    // else is a bug, reported as a plain failure rather than a wrapped status.
    u8::try_from(code).map_or(ExitCode::FAILURE, ExitCode::from)
}
