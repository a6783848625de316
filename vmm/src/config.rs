//! What a user asks `securevm run` for, parsed and checked before anything
//! touches KVM.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::audit::AuditConfig;
use crate::external_media::ExternalMediaPolicy;
use crate::policy::PolicyConfig;

/// Kernel command line used when the user gives none: console on COM1,
/// ACPI reboot, and reboot (which securevm reports) rather than hang on a
/// panic.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=acpi panic=-1";

/// Guest RAM used when the user gives none.
pub const DEFAULT_MEMORY_MIB: u64 = 512;

/// The smallest guest securevm will build: room for the boot structures,
/// ACPI tables and a small kernel.
pub const MIN_MEMORY_MIB: u64 = 16;

/// xAPIC ids are 8 bits and 0xff is the broadcast id.
pub const MAX_VCPUS: u16 = 254;

/// Largest guest RAM accepted (1 TiB): far beyond these machines, but a
/// bound that keeps address arithmetic honest.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RebootAction {
    /// Stop and exit with [`crate::exit::EXIT_REBOOT`].
    #[default]
    Exit,
    /// Build a fresh VM from the same configuration and boot it again.
    Restart,
}

/// `--disk PATH[,readonly]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
}

impl FromStr for DiskConfig {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let mut parts = spec.split(',');
        let path = parts.next().unwrap_or_default();
        if path.is_empty() {
            return Err("a disk needs a path, e.g. --disk /var/lib/images/root.img".into());
        }
        let mut read_only = false;
        for option in parts {
            match option {
                "readonly" | "ro" => read_only = true,
                "" => {}
                other => {
                    return Err(format!(
                        "unknown disk option '{other}' in '{spec}'; valid options: readonly"
                    ))
                }
            }
        }
        Ok(DiskConfig {
            path: PathBuf::from(path),
            read_only,
        })
    }
}

impl fmt::Display for DiskConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if self.read_only {
            write!(f, ",readonly")?;
        }
        Ok(())
    }
}

/// `--net tap=NAME[,mac=MAC]`: a virtio-net device on host TAP `NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub tap: String,
    /// `None`: use [`NetConfig::effective_mac`]'s default.
    pub mac: Option<[u8; 6]>,
    /// The guest's addresses (`ip=`, repeatable): the only source
    /// addresses its frames may carry.
    pub addresses: Vec<std::net::IpAddr>,
}

impl NetConfig {
    /// The guest's MAC: the one given, or one derived from the TAP name
    /// so that it stays the same from run to run (DHCP leases and
    /// anti-spoofing rules keep matching): `02` (locally administered,
    /// unicast) followed by the first five bytes of the 64-bit FNV-1a
    /// hash of the name.
    pub fn effective_mac(&self) -> [u8; 6] {
        self.mac.unwrap_or_else(|| default_mac(&self.tap))
    }
}

fn default_mac(tap: &str) -> [u8; 6] {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = tap.bytes().fold(FNV_OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    });
    let h = hash.to_be_bytes();
    [0x02, h[0], h[1], h[2], h[3], h[4]]
}

/// `aa:bb:cc:dd:ee:ff`, unicast (a guest cannot own a multicast address).
fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bad =
        || format!("'{text}' is not a MAC address; write six hex bytes like 52:54:00:12:34:56");
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 != 0 {
        return Err(format!(
            "MAC {text} is a multicast address; the guest needs a unicast one (even first byte)"
        ));
    }
    Ok(mac)
}

impl FromStr for NetConfig {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let mut tap = None;
        let mut mac = None;
        let mut addresses = Vec::new();
        for option in spec.split(',').filter(|o| !o.is_empty()) {
            match option.split_once('=') {
                Some(("tap", name)) => {
                    crate::devices::virtio::net::check_interface_name(name)
                        .map_err(|e| format!("--net {spec}: {e}"))?;
                    tap = Some(name.to_string());
                }
                Some(("mac", text)) => mac = Some(parse_mac(text)?),
                Some(("ip", text)) => addresses.push(text.parse().map_err(|_| {
                    format!("--net {spec}: '{text}' is not an IPv4 or IPv6 address")
                })?),
                _ => {
                    return Err(format!(
                    "unknown net option '{option}' in '{spec}'; valid options: tap=NAME, mac=MAC, ip=ADDRESS"
                ))
                }
            }
        }
        let tap = tap.ok_or_else(|| {
            format!("--net {spec}: name the host TAP device, e.g. --net tap=svm0")
        })?;
        Ok(NetConfig {
            tap,
            mac,
            addresses,
        })
    }
}

impl fmt::Display for NetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tap={}", self.tap)?;
        if let Some(m) = self.mac {
            write!(
                f,
                ",mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            )?;
        }
        for address in &self.addresses {
            write!(f, ",ip={address}")?;
        }
        Ok(())
    }
}

/// What happens to external media (`--external`), until the user's role
/// decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalMediaConfig {
    pub media: Vec<PathBuf>,
    /// From `--external-policy`, which only exists without a policy;
    /// `None` takes the role's rule (or `deny` without a policy).
    pub policy: Option<ExternalMediaPolicy>,
    /// The organisation's medium passphrase, for `encrypt`.
    pub passphrase_file: Option<PathBuf>,
    /// Format a blank medium (all zeros at its start) under `encrypt`.
    pub format_blank: bool,
    /// `--watch-removable`: sticks plugged into the host are judged and
    /// attached by themselves (a role can ask for it too).
    pub watch_removable: bool,
}

/// What the guest boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootSource {
    /// `--kernel` (with `--initrd`, `--cmdline`): a kernel from the host,
    /// entered directly.
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
    /// `--firmware`: UEFI firmware, which boots the OS installed on the
    /// disk with that OS's own bootloader, kernel and command line.
    Firmware {
        firmware: PathBuf,
        /// `--firmware-log`: where the firmware's debug console goes.
        log: Option<PathBuf>,
    },
}

impl BootSource {
    /// The file the guest's first instruction comes from.
    pub fn image(&self) -> &Path {
        match self {
            BootSource::Kernel { kernel, .. } => kernel,
            BootSource::Firmware { firmware, .. } => firmware,
        }
    }
}

/// The boot flags of `securevm run` as given; [`BootFlags::source`]
/// checks that they describe one way to boot.
#[derive(Debug, Clone, Default)]
pub struct BootFlags {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// `None`: not given, [`DEFAULT_CMDLINE`] applies to a kernel boot.
    pub cmdline: Option<String>,
    pub firmware: Option<PathBuf>,
    pub firmware_log: Option<PathBuf>,
}

/// Boot flags that do not fit together (a usage error).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootFlagsError {
    #[error("nothing to boot: give --kernel PATH to boot a kernel from the host, or --firmware PATH to boot the OS installed on the disk through UEFI firmware")]
    NoBootSource,
    #[error("--kernel and --firmware exclude each other: give --kernel to boot a kernel from the host, or --firmware to boot the OS installed on the disk")]
    KernelAndFirmware,
    #[error("--{flag} cannot be used with --firmware: the firmware starts the disk's own bootloader, which loads the installed OS's kernel, initrd and command line; drop --{flag}")]
    KernelFlagWithFirmware { flag: &'static str },
    #[error("--firmware-log records the debug console of UEFI firmware and needs --firmware; drop it for a --kernel boot")]
    FirmwareLogWithoutFirmware,
}

impl BootFlags {
    /// What the guest boots, or why these flags name no single way to boot.
    pub fn source(self) -> Result<BootSource, BootFlagsError> {
        match (self.kernel, self.firmware) {
            (Some(_), Some(_)) => Err(BootFlagsError::KernelAndFirmware),
            (None, None) => Err(BootFlagsError::NoBootSource),
            (Some(kernel), None) => {
                if self.firmware_log.is_some() {
                    return Err(BootFlagsError::FirmwareLogWithoutFirmware);
                }
                Ok(BootSource::Kernel {
                    kernel,
                    initrd: self.initrd,
                    cmdline: self.cmdline.unwrap_or_else(|| DEFAULT_CMDLINE.into()),
                })
            }
            (None, Some(firmware)) => {
                if self.initrd.is_some() {
                    return Err(BootFlagsError::KernelFlagWithFirmware { flag: "initrd" });
                }
                if self.cmdline.is_some() {
                    return Err(BootFlagsError::KernelFlagWithFirmware { flag: "cmdline" });
                }
                Ok(BootSource::Firmware {
                    firmware,
                    log: self.firmware_log,
                })
            }
        }
    }
}

/// Everything one VM is built from.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub boot: BootSource,
    pub cpus: u16,
    pub memory_mib: u64,
    pub disks: Vec<DiskConfig>,
    pub nets: Vec<NetConfig>,
    /// With `user`: that user's login passphrase, which also opens their
    /// keyslots. Without: the passphrase of the LUKS disks among `disks`.
    /// The terminal is asked when absent.
    pub passphrase_file: Option<PathBuf>,
    pub external: ExternalMediaConfig,
    /// The signed machine policy.
    pub policy: Option<PolicyConfig>,
    /// This machine's WireGuard private key, for a role with a VPN.
    pub vpn_key: Option<PathBuf>,
    /// A smart card that opens LUKS disks (and whose removal locks the VM).
    pub card: Option<crate::identity::smartcard::CardOptions>,
    /// `--user ID`: the policy user who logs in (required with a policy).
    pub user: Option<String>,
    /// `--audit-log` / `--audit-key`.
    pub audit: AuditConfig,
    pub seccomp: bool,
    pub on_reboot: RebootAction,
    /// `--stop-timeout`: how long the guest has to power off after
    /// SIGTERM pressed its power button.
    pub stop_timeout: Duration,
    pub kvm_device: PathBuf,
    /// `--api-socket PATH`: where the control API listens.
    pub api_socket: Option<PathBuf>,
    /// `--display`: the guest's screen, keyboard and pointer, and where
    /// viewers reach them.
    pub display: Option<crate::display::DisplayConfig>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--memory {0} MiB is too small; give at least {MIN_MEMORY_MIB} MiB")]
    MemoryTooSmall(u64),
    #[error("--memory {0} MiB is more than securevm supports ({MAX_MEMORY_MIB} MiB)")]
    MemoryTooLarge(u64),
    #[error("--cpus 0: a VM needs at least one vCPU")]
    NoVcpus,
    #[error("--cpus {0}: securevm supports at most {MAX_VCPUS} vCPUs")]
    TooManyVcpus(u16),
    #[error("the kernel command line is empty after trimming; omit --cmdline to use the default")]
    EmptyCmdline,
}

impl VmConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::MemoryTooSmall(self.memory_mib));
        }
        if self.memory_mib > MAX_MEMORY_MIB {
            return Err(ConfigError::MemoryTooLarge(self.memory_mib));
        }
        if self.cpus == 0 {
            return Err(ConfigError::NoVcpus);
        }
        if self.cpus > MAX_VCPUS {
            return Err(ConfigError::TooManyVcpus(self.cpus));
        }
        if let BootSource::Kernel { cmdline, .. } = &self.boot {
            if cmdline.trim().is_empty() {
                return Err(ConfigError::EmptyCmdline);
            }
        }
        Ok(())
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            boot: BootSource::Kernel {
                kernel: "k".into(),
                initrd: None,
                cmdline: DEFAULT_CMDLINE.into(),
            },
            cpus: 1,
            memory_mib: DEFAULT_MEMORY_MIB,
            disks: vec![],
            nets: vec![],
            passphrase_file: None,
            external: ExternalMediaConfig {
                media: vec![],
                policy: None,
                passphrase_file: None,
                format_blank: false,
                watch_removable: false,
            },
            policy: None,
            vpn_key: None,
            card: None,
            user: None,
            audit: AuditConfig::default(),
            seccomp: true,
            on_reboot: RebootAction::Exit,
            stop_timeout: crate::service::DEFAULT_STOP_TIMEOUT,
            kvm_device: "/dev/kvm".into(),
            api_socket: None,
            display: None,
        }
    }

    #[test]
    fn disk_specs() {
        assert_eq!(
            "a.img".parse::<DiskConfig>().unwrap(),
            DiskConfig {
                path: "a.img".into(),
                read_only: false
            }
        );
        assert!("a.img,readonly".parse::<DiskConfig>().unwrap().read_only);
        assert!("a.img,ro".parse::<DiskConfig>().unwrap().read_only);
        let err = "a.img,rw".parse::<DiskConfig>().unwrap_err();
        assert!(err.contains("unknown disk option 'rw'"), "{err}");
        assert!(",readonly".parse::<DiskConfig>().is_err());
        assert_eq!(
            "a.img,readonly".parse::<DiskConfig>().unwrap().to_string(),
            "a.img,readonly"
        );
    }

    #[test]
    fn net_specs() {
        assert_eq!(
            "tap=svm0".parse::<NetConfig>().unwrap(),
            NetConfig {
                tap: "svm0".into(),
                mac: None,
                addresses: vec![],
            }
        );
        let with_ips = "tap=svm0,ip=192.0.2.10,ip=2001:db8::10"
            .parse::<NetConfig>()
            .unwrap();
        assert_eq!(
            with_ips.addresses,
            vec![
                "192.0.2.10".parse::<std::net::IpAddr>().unwrap(),
                "2001:db8::10".parse().unwrap()
            ]
        );
        assert_eq!(
            with_ips.to_string(),
            "tap=svm0,ip=192.0.2.10,ip=2001:db8::10"
        );
        let with_mac = "tap=svm0,mac=52:54:00:AB:cd:0f"
            .parse::<NetConfig>()
            .unwrap();
        assert_eq!(with_mac.mac, Some([0x52, 0x54, 0x00, 0xab, 0xcd, 0x0f]));
        assert_eq!(
            with_mac.effective_mac(),
            [0x52, 0x54, 0x00, 0xab, 0xcd, 0x0f]
        );
        assert_eq!(with_mac.to_string(), "tap=svm0,mac=52:54:00:ab:cd:0f");
        assert_eq!(
            "mac=52:54:00:00:00:01,tap=x"
                .parse::<NetConfig>()
                .unwrap()
                .tap,
            "x"
        );
    }

    #[test]
    fn bad_net_specs_say_what_is_wrong() {
        let err = |spec: &str| spec.parse::<NetConfig>().unwrap_err();
        assert!(err("mac=52:54:00:00:00:01").contains("name the host TAP"));
        assert!(err("").contains("name the host TAP"));
        assert!(err("tap=svm0,speed=10").contains("unknown net option 'speed=10'"));
        assert!(err("svm0").contains("unknown net option 'svm0'"));
        for mac in [
            "52:54:00:00:00",
            "52:54:00:00:00:01:02",
            "52:54:00:00:00:1",
            "52:54:00:00:00:zz",
            "525400000001",
            "52-54-00-00-00-01",
        ] {
            let e = err(&format!("tap=svm0,mac={mac}"));
            assert!(e.contains("is not a MAC address"), "{mac}: {e}");
        }
        assert!(err("tap=svm0,mac=01:00:5e:00:00:01").contains("multicast"));
        assert!(err("tap=svm0,ip=192.0.2.300").contains("not an IPv4 or IPv6 address"));
        assert!(err("tap=").contains("empty"));
        assert!(err("tap=a-name-that-is-too-long").contains("15 bytes"));
        assert!(err("tap=a/b").contains("'/'"));
    }

    #[test]
    fn default_mac_is_stable_local_and_unicast() {
        let mac = |tap: &str| {
            NetConfig {
                tap: tap.into(),
                mac: None,
                addresses: vec![],
            }
            .effective_mac()
        };
        assert_eq!(mac("svm0"), mac("svm0"));
        assert_ne!(mac("svm0"), mac("svm1"));
        for name in ["svm0", "svm1", "tap0", "x"] {
            assert_eq!(mac(name)[0], 0x02, "locally administered unicast");
        }
        // FNV-1a is fixed by its definition, so the address never drifts
        // between releases; the empty name hashes to the offset basis.
        assert_eq!(default_mac(""), [0x02, 0xcb, 0xf2, 0x9c, 0xe4, 0x84]);
    }

    #[test]
    fn boot_flags_name_one_way_to_boot() {
        let kernel = BootFlags {
            kernel: Some("vmlinuz".into()),
            initrd: Some("initrd.img".into()),
            ..BootFlags::default()
        };
        assert_eq!(
            kernel.source(),
            Ok(BootSource::Kernel {
                kernel: "vmlinuz".into(),
                initrd: Some("initrd.img".into()),
                cmdline: DEFAULT_CMDLINE.into(),
            })
        );
        let custom = BootFlags {
            kernel: Some("vmlinuz".into()),
            cmdline: Some("console=ttyS0".into()),
            ..BootFlags::default()
        };
        assert!(matches!(
            custom.source(),
            Ok(BootSource::Kernel { cmdline, .. }) if cmdline == "console=ttyS0"
        ));
        let firmware = BootFlags {
            firmware: Some("CLOUDHV.fd".into()),
            firmware_log: Some("fw.log".into()),
            ..BootFlags::default()
        };
        let source = firmware.source().unwrap();
        assert_eq!(
            source,
            BootSource::Firmware {
                firmware: "CLOUDHV.fd".into(),
                log: Some("fw.log".into()),
            }
        );
        assert_eq!(source.image(), Path::new("CLOUDHV.fd"));
    }

    #[test]
    fn boot_flags_that_do_not_fit_together_say_why() {
        let firmware = || BootFlags {
            firmware: Some("CLOUDHV.fd".into()),
            ..BootFlags::default()
        };
        assert_eq!(
            BootFlags::default().source(),
            Err(BootFlagsError::NoBootSource)
        );
        let both = BootFlags {
            kernel: Some("vmlinuz".into()),
            ..firmware()
        };
        assert_eq!(both.source(), Err(BootFlagsError::KernelAndFirmware));
        let with_initrd = BootFlags {
            initrd: Some("initrd.img".into()),
            ..firmware()
        };
        let err = with_initrd.source().unwrap_err();
        assert_eq!(
            err,
            BootFlagsError::KernelFlagWithFirmware { flag: "initrd" }
        );
        assert!(err.to_string().contains("disk's own bootloader"), "{err}");
        let with_cmdline = BootFlags {
            cmdline: Some("quiet".into()),
            ..firmware()
        };
        assert_eq!(
            with_cmdline.source(),
            Err(BootFlagsError::KernelFlagWithFirmware { flag: "cmdline" })
        );
        let log_without_firmware = BootFlags {
            kernel: Some("vmlinuz".into()),
            firmware_log: Some("fw.log".into()),
            ..BootFlags::default()
        };
        assert_eq!(
            log_without_firmware.source(),
            Err(BootFlagsError::FirmwareLogWithoutFirmware)
        );
    }

    #[test]
    fn a_firmware_boot_has_no_command_line_to_check() {
        let c = VmConfig {
            boot: BootSource::Firmware {
                firmware: "CLOUDHV.fd".into(),
                log: None,
            },
            ..config()
        };
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn limits() {
        assert_eq!(config().validate(), Ok(()));
        let c = VmConfig {
            memory_mib: 1,
            ..config()
        };
        assert_eq!(c.validate(), Err(ConfigError::MemoryTooSmall(1)));
        let c = VmConfig {
            memory_mib: MAX_MEMORY_MIB + 1,
            ..config()
        };
        assert!(matches!(c.validate(), Err(ConfigError::MemoryTooLarge(_))));
        let c = VmConfig {
            cpus: 0,
            ..config()
        };
        assert_eq!(c.validate(), Err(ConfigError::NoVcpus));
        let c = VmConfig {
            cpus: 255,
            ..config()
        };
        assert_eq!(c.validate(), Err(ConfigError::TooManyVcpus(255)));
        let c = VmConfig {
            boot: BootSource::Kernel {
                kernel: "k".into(),
                initrd: None,
                cmdline: "  ".into(),
            },
            ..config()
        };
        assert_eq!(c.validate(), Err(ConfigError::EmptyCmdline));
    }
}
