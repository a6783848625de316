//! The seam between a guest disk and the storage behind it: the
//! [`BlockBackend`] trait, the raw-file backend, and the guest-memory
//! extents a backend reads into and writes from.
//!
//! It sits below both sides on purpose. The virtio-blk device
//! (`devices::virtio::block`) serves requests through the trait and never
//! learns what implements it; `storage` implements it (the LUKS2 backend)
//! without knowing the device. Neither imports the other, so the device
//! model builds and fuzzes without the crypto, and the crypto is tested
//! without a virtio queue.

mod backend;
pub mod guest_io;
mod pullable;

pub use backend::{BlockBackend, BlockError, RawFileBackend, SECTOR_SIZE};
pub use guest_io::{ExtentRange, GuestExtent};
pub use pullable::{PullSwitch, PullableBackend};
