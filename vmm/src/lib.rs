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
//!
//! Each feature has one module: `storage` (encrypted disks), `external_media`
//! (removable media under the role's rule), `netfilter` and `vpn` (the
//! network), `identity` (login), `policy` (the signed policy, at start and
//! pushed), `console` (the terminal the guest shares with securevm's
//! prompts), `audit`, `api` (the control socket). Dependencies point one
//! way: `arch` and `devices` import no feature; a device reaches what it
//! serves through a small trait, such as `block::BlockBackend`, which the
//! features implement; addresses and ports both sides need live in
//! `arch::layout`.

pub mod api;
pub mod arch;
pub mod audit;
pub mod bench;
pub mod block;
pub mod calendar;
pub mod config;
pub mod confined;
pub mod console;
pub mod devices;
pub mod display;
pub mod exit;
pub mod external_media;
pub mod identity;
pub mod kvm;
pub mod loader;
pub mod narrow;
pub mod network;
pub mod policy;
pub mod seccomp;
pub mod service;
pub mod storage;
pub mod sync;
pub mod vm;
pub mod vpn;
