//! securevm: a minimal KVM virtual machine monitor that runs one unmodified
//! guest OS and enforces storage encryption, network access control and ID
//! management below it, where the guest cannot switch them off.
//!
//! The binary (`main.rs`) is a thin CLI over this library. `vmm` holds the
//! boot sequence, read top to bottom; `arch` knows x86-64 and nothing else;
//! `devices` owns each emulated device and its event handling; `vstate`
//! wraps the KVM VM and vCPUs.

pub mod api;
pub mod arch;
pub mod audit;
pub mod bench;
pub mod block;
pub mod config;
pub mod console;
pub mod devices;
pub mod exit;
pub mod external_media;
pub mod identity;
pub mod loader;
pub mod netfilter;
pub mod policy;
pub mod seccomp;
pub mod storage;
pub mod vmm;
pub mod vpn;
pub mod vstate;
