//! What a user asks `securevm run` for, parsed and checked before anything
//! touches KVM.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::storage::external::ExternalMediaPolicy;

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

/// What happens to external media (`--external`), until the user's role
/// decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalMediaConfig {
    pub media: Vec<PathBuf>,
    pub policy: ExternalMediaPolicy,
    /// The organisation's medium passphrase, for `encrypt`.
    pub passphrase_file: Option<PathBuf>,
    /// Format a blank medium (all zeros at its start) under `encrypt`.
    pub format_blank: bool,
}

/// Everything one VM is built from.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub cpus: u16,
    pub memory_mib: u64,
    pub disks: Vec<DiskConfig>,
    /// Passphrase of the LUKS disks among `disks`; the terminal is asked
    /// when absent.
    pub passphrase_file: Option<PathBuf>,
    pub external: ExternalMediaConfig,
    pub seccomp: bool,
    pub on_reboot: RebootAction,
    pub kvm_device: PathBuf,
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
        if self.cmdline.trim().is_empty() {
            return Err(ConfigError::EmptyCmdline);
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
            kernel: "k".into(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.into(),
            cpus: 1,
            memory_mib: DEFAULT_MEMORY_MIB,
            disks: vec![],
            passphrase_file: None,
            external: ExternalMediaConfig {
                media: vec![],
                policy: ExternalMediaPolicy::Deny,
                passphrase_file: None,
                format_blank: false,
            },
            seccomp: true,
            on_reboot: RebootAction::Exit,
            kvm_device: "/dev/kvm".into(),
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
            cmdline: "  ".into(),
            ..config()
        };
        assert_eq!(c.validate(), Err(ConfigError::EmptyCmdline));
    }
}
