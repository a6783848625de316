//! The seam between virtio-net and network access control: every frame
//! the guest sends, and every frame about to reach it, is shown to a
//! [`FrameFilter`] first. Frames here are plain Ethernet frames (no
//! virtio header). The filter runs on the device's I/O thread. The
//! policy filter implements it outside the device
//! (`crate::network::PolicyFilter`).

/// Decides, frame by frame, what may pass. `true` lets the frame pass.
pub trait FrameFilter: Send {
    /// A frame the guest wants to send.
    fn outbound(&mut self, frame: &[u8]) -> bool;
    /// A frame from the host network on its way to the guest.
    fn inbound(&mut self, frame: &[u8]) -> bool;
}

/// Lets everything through: for tests and for measuring the filter's cost.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl FrameFilter for AllowAll {
    fn outbound(&mut self, _frame: &[u8]) -> bool {
        true
    }

    fn inbound(&mut self, _frame: &[u8]) -> bool {
        true
    }
}
