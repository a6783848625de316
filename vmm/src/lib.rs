//! securevm: a minimal KVM virtual machine monitor that runs one unmodified
//! guest OS and enforces storage encryption, network access control and ID
//! management below it, where the guest cannot switch them off.
//!
//! The binary (`main.rs`) is a thin CLI over this library. `vm` holds the
//! boot sequence as a list of named steps (`vm::builder`) and the running
//! machine that owns every thread and device until it stops
//! (`vm::running`); `arch` knows x86-64 and nothing else; `devices` owns
//! each emulated device and its event handling; `kvm` wraps the KVM VM and
//! vCPUs; `confined` starts each thread under its seccomp filter.

pub mod api;
pub mod arch;
pub mod audit;
pub mod config;
pub mod confined;
pub mod console;
pub mod console_gate;
pub mod devices;
pub mod exit;
pub mod external_media;
pub mod identity;
pub mod kvm;
pub mod loader;
pub mod media_hotplug;
pub mod narrow;
pub mod network;
pub mod notice;
pub mod policy;
pub mod prompt_phrase;
pub mod rate_limit;
pub mod seccomp;
pub mod storage;
pub mod sync;
pub mod vm;
pub mod vpn;
