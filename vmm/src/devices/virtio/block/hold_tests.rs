//! virtio-blk under a full ring: a reset (and so a pause or a stop that
//! waits for a vCPU doing one) waits for one bounded unit of requests, not
//! for everything the guest queued; the rest is served without another
//! kick; and a closed I/O gate (paused or locked VM) stops the disk until
//! it opens.

// Test code narrows small known values; a wrong one fails the test.
#![allow(clippy::cast_possible_truncation)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH};

use super::*;
use crate::devices::virtio::test_driver::{Segment, TestDriver, QUEUE_SIZE};
use crate::devices::virtio::{IoGate, STATUS_DRIVER_OK};

/// A disk whose FLUSH takes `delay` and is counted when it starts.
struct SlowFlush {
    delay: Duration,
    flushes: Arc<AtomicUsize>,
}

impl BlockBackend for SlowFlush {
    fn read_at(&self, _: u64, buf: &mut [u8]) -> std::io::Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn write_at(&self, _: u64, _: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        Ok(())
    }
    fn capacity_bytes(&self) -> u64 {
        1 << 20
    }
    fn read_only(&self) -> bool {
        false
    }
}

fn slow_disk(delay: Duration, gate: IoGate) -> (TestDriver, Arc<AtomicUsize>) {
    let flushes = Arc::new(AtomicUsize::new(0));
    let backend = SlowFlush {
        delay,
        flushes: flushes.clone(),
    };
    let block = Block::new(Box::new(backend), "slow").unwrap();
    let mut driver = TestDriver::with_io_gate(Box::new(block), gate);
    driver.enable_msix();
    assert_ne!(driver.init(!F_EVENT_IDX) & STATUS_DRIVER_OK, 0);
    (driver, flushes)
}

/// One FLUSH chain (header, status), published `count` times: a guest
/// may list the same chain in every ring slot.
fn queue_flushes(driver: &mut TestDriver, count: u16) -> Segment {
    let header = driver.alloc(16);
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(&VIRTIO_BLK_T_FLUSH.to_le_bytes());
    driver.write_guest(header, &bytes);
    let status = (driver.alloc(1), 1, true);
    let head = driver.push_chain(&[(header, 16, false), status]);
    for _ in 1..count {
        driver.publish(head);
    }
    status
}

fn wait_until(what: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !what() {
        assert!(Instant::now() < deadline, "condition not reached in 10 s");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_reset_waits_for_one_bounded_unit_not_for_a_full_ring() {
    let (mut driver, flushes) = slow_disk(Duration::from_millis(2), IoGate::default());
    queue_flushes(&mut driver, QUEUE_SIZE);
    driver.kick();
    wait_until(|| flushes.load(Ordering::SeqCst) > 0);

    // The vCPU's reset takes the worker away from the I/O thread.
    driver.set_status(0);
    let served = flushes.load(Ordering::SeqCst);
    // The unit in progress, and at most one more that started before the
    // reset asked for the worker.
    assert!(
        served <= 2 * REQUESTS_PER_CALL,
        "the reset waited for {served} of {QUEUE_SIZE} queued requests"
    );
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        flushes.load(Ordering::SeqCst),
        served,
        "a reset device serves nothing"
    );
}

#[test]
fn a_full_ring_is_served_in_bounded_units_without_another_kick() {
    let (mut driver, flushes) = slow_disk(Duration::ZERO, IoGate::default());
    let status = queue_flushes(&mut driver, QUEUE_SIZE);
    driver.kick();
    wait_until(|| driver.used_idx() == QUEUE_SIZE);
    assert_eq!(flushes.load(Ordering::SeqCst), usize::from(QUEUE_SIZE));
    assert_eq!(driver.read_guest(status.0, 1), [VIRTIO_BLK_S_OK as u8]);
}

#[test]
fn a_closed_gate_stops_the_disk_until_it_opens() {
    let gate = IoGate::default();
    let (mut driver, flushes) = slow_disk(Duration::from_millis(1), gate.clone());
    queue_flushes(&mut driver, QUEUE_SIZE);
    driver.kick();
    wait_until(|| flushes.load(Ordering::SeqCst) > 0);
    gate.close();
    assert!(gate.wait_quiet(Instant::now() + Duration::from_secs(10)));
    let served = flushes.load(Ordering::SeqCst);
    assert!(
        served < usize::from(QUEUE_SIZE),
        "served all before the pause"
    );
    // Kicks while closed are noted, not served.
    driver.kick();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(flushes.load(Ordering::SeqCst), served, "I/O while paused");
    assert_eq!(usize::from(driver.used_idx()), served);

    // Opening serves the rest without the guest kicking again.
    gate.open();
    wait_until(|| driver.used_idx() == QUEUE_SIZE);
    assert_eq!(flushes.load(Ordering::SeqCst), usize::from(QUEUE_SIZE));
}
