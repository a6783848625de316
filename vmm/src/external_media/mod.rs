//! External (removable) media: a USB stick or an image given with
//! `--external` at start or attached with `ctl attach-external` while the
//! guest runs, judged by the same rules either way.
//!
//! - `decision`: the role's allow-list of serials, then its rule, each
//!   decision recorded in the audit log before it takes effect;
//! - `open`: what each rule does to the medium (`encrypt` unlocks, or
//!   formats a blank medium, with the organisation's key; `read-only`
//!   attaches it raw; `deny` refuses);
//! - `hotplug`: the thread that attaches and detaches media while the
//!   guest runs (PCI hot-plug of a virtio-blk device);
//! - `watch`: `--watch-removable`, the thread that finds sticks plugged
//!   into the host and hands them to the VM.

pub mod decision;
pub mod hotplug;
pub mod open;
pub mod watch;

pub use decision::{
    allowed_serials, decide_medium, media_policy, MediaRules, Medium, MediumError, MediumOutcome,
    MediumSerial,
};
pub use hotplug::{HostStick, MediaError, MediaHotplug, MediaHotplugParts, EJECT_TIMEOUT};
pub use open::ExternalMediaPolicy;
