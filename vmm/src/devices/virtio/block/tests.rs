//! End-to-end tests of virtio-blk through the PCI transport: a test
//! driver programs the device through ECAM and the BAR, builds real
//! descriptor chains in guest memory and kicks the doorbell; the device's
//! I/O thread serves them from a raw image file.

// Test code narrows small known values; a wrong one fails the test.
#![allow(clippy::cast_possible_truncation)]

use std::path::PathBuf;

use super::*;
use crate::block::RawFileBackend;
use crate::devices::virtio::test_driver::{
    Segment, TestDriver, CONFIG_MSI, DESC_F_INDIRECT, DESC_F_NEXT, QUEUE_MSI,
};
use crate::devices::virtio::{STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};

const DISK_SECTORS: u64 = 64;
const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const ALL_FEATURES: u64 = !F_EVENT_IDX;

fn image(test: &str, contents: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("securevm-blk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{test}.img"));
    std::fs::write(&path, contents).unwrap();
    path
}

fn patterned_disk() -> Vec<u8> {
    (0..DISK_SECTORS * SECTOR_SIZE)
        .map(|i| (i / SECTOR_SIZE) as u8)
        .collect()
}

fn driver_for(path: &std::path::Path, read_only: bool) -> TestDriver {
    let backend = RawFileBackend::open(path, read_only).unwrap();
    let block = Block::new(Box::new(backend), &disk_id_from_path(path)).unwrap();
    let mut driver = TestDriver::new(Box::new(block));
    driver.enable_msix();
    let status = driver.init(ALL_FEATURES);
    assert_ne!(
        status & STATUS_DRIVER_OK,
        0,
        "device did not accept DRIVER_OK"
    );
    driver
}

enum Data<'a> {
    None,
    FromDevice(u32),
    ToDevice(&'a [u8]),
}

struct Completion {
    status: u8,
    used_len: u32,
    data: Vec<u8>,
}

fn header(driver: &mut TestDriver, request_type: u32, sector: u64) -> Segment {
    let address = driver.alloc(16);
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(&request_type.to_le_bytes());
    bytes[8..].copy_from_slice(&sector.to_le_bytes());
    driver.write_guest(address, &bytes);
    (address, 16, false)
}

fn status_byte(driver: &mut TestDriver) -> Segment {
    let address = driver.alloc(1);
    driver.write_guest(address, &[0xee]);
    (address, 1, true)
}

fn submit(driver: &mut TestDriver, segments: &[Segment]) -> (u16, u32) {
    let head = driver.push_chain(segments);
    driver.kick();
    let (used_head, used_len) = driver.wait_used();
    assert_eq!(used_head, head, "completions arrive in order here");
    (used_head, used_len)
}

fn request(driver: &mut TestDriver, request_type: u32, sector: u64, data: Data) -> Completion {
    let mut segments = vec![header(driver, request_type, sector)];
    let data_segment = match data {
        Data::None => None,
        Data::FromDevice(len) => Some((driver.alloc(u64::from(len)), len, true)),
        Data::ToDevice(bytes) => {
            let address = driver.alloc(bytes.len() as u64);
            driver.write_guest(address, bytes);
            Some((address, bytes.len() as u32, false))
        }
    };
    segments.extend(data_segment);
    let status = status_byte(driver);
    segments.push(status);
    let (_, used_len) = submit(driver, &segments);
    Completion {
        status: driver.read_guest(status.0, 1)[0],
        used_len,
        data: data_segment
            .filter(|s| s.2)
            .map(|s| driver.read_guest(s.0, s.1 as usize))
            .unwrap_or_default(),
    }
}

fn assert_still_serving(driver: &mut TestDriver) {
    let read = request(driver, VIRTIO_BLK_T_IN, 5, Data::FromDevice(512));
    assert_eq!(read.status, OK);
    assert!(
        read.data.iter().all(|&b| b == 5),
        "sector 5 reads back its pattern"
    );
}

#[test]
fn write_then_read_back_through_the_transport() {
    let path = image("rw", &patterned_disk());
    let mut driver = driver_for(&path, false);
    let written: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();

    let write = request(&mut driver, VIRTIO_BLK_T_OUT, 3, Data::ToDevice(&written));
    assert_eq!(write.status, OK);
    assert_eq!(write.used_len, 1);
    let read = request(&mut driver, VIRTIO_BLK_T_IN, 3, Data::FromDevice(1024));
    assert_eq!(read.status, OK);
    assert_eq!(read.used_len, 1025);
    assert_eq!(read.data, written);

    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(&on_disk[1536..2560], &written[..]);
    assert!(on_disk[2560..3072].iter().all(|&b| b == 5));
    assert!(driver.vm.msis().iter().all(|&msi| msi == QUEUE_MSI));
    assert!(driver.vm.wait_for_msis(2), "one MSI per completed request");
}

#[test]
fn data_split_over_several_descriptors() {
    let path = image("split", &patterned_disk());
    let mut driver = driver_for(&path, false);
    let hdr = header(&mut driver, VIRTIO_BLK_T_IN, 8);
    let first = (driver.alloc(512), 512, true);
    let second = (driver.alloc(1024), 1024, true);
    let status = status_byte(&mut driver);
    let (_, used_len) = submit(&mut driver, &[hdr, first, second, status]);
    assert_eq!(used_len, 1537);
    assert_eq!(driver.read_guest(status.0, 1), [OK]);
    assert!(driver.read_guest(first.0, 512).iter().all(|&b| b == 8));
    let tail = driver.read_guest(second.0, 1024);
    assert!(tail[..512].iter().all(|&b| b == 9) && tail[512..].iter().all(|&b| b == 10));
}

#[test]
fn header_with_data_and_data_with_status_in_one_buffer() {
    // Framing is the driver's choice (virtio 1.x 2.6.4): the write's header
    // and data share one buffer, the read's data and status another.
    let path = image("framing", &patterned_disk());
    let mut driver = driver_for(&path, false);
    let written: Vec<u8> = (0..1024u32).map(|i| (i * 13) as u8).collect();
    let mut header_and_data = vec![0u8; 16];
    header_and_data[..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
    header_and_data[8..].copy_from_slice(&6u64.to_le_bytes());
    header_and_data.extend_from_slice(&written);
    let out = driver.alloc(header_and_data.len() as u64);
    driver.write_guest(out, &header_and_data);
    let status = status_byte(&mut driver);
    submit(
        &mut driver,
        &[(out, header_and_data.len() as u32, false), status],
    );
    assert_eq!(driver.read_guest(status.0, 1), [OK]);
    assert_eq!(&std::fs::read(&path).unwrap()[3072..4096], &written[..]);

    let hdr = header(&mut driver, VIRTIO_BLK_T_IN, 6);
    let data_and_status = driver.alloc(1025);
    let (_, used_len) = submit(&mut driver, &[hdr, (data_and_status, 1025, true)]);
    assert_eq!(used_len, 1025);
    let back = driver.read_guest(data_and_status, 1025);
    assert_eq!(&back[..1024], &written[..]);
    assert_eq!(back[1024], OK);
}

#[test]
fn flush_and_get_id() {
    let path = image("flush-and-id", &patterned_disk());
    let mut driver = driver_for(&path, false);
    let flush = request(&mut driver, VIRTIO_BLK_T_FLUSH, 0, Data::None);
    assert_eq!((flush.status, flush.used_len), (OK, 1));
    let id = request(&mut driver, VIRTIO_BLK_T_GET_ID, 0, Data::FromDevice(20));
    assert_eq!(id.status, OK);
    assert_eq!(id.used_len, 21);
    assert_eq!(&id.data[..16], b"flush-and-id.img");
    assert_eq!(&id.data[16..], &[0; 4]);
}

#[test]
fn read_only_disk_refuses_writes_and_keeps_the_file() {
    let original = patterned_disk();
    let path = image("ro", &original);
    let mut driver = driver_for(&path, true);
    assert_ne!(driver.device_features() & 1 << VIRTIO_BLK_F_RO, 0);
    let write = request(
        &mut driver,
        VIRTIO_BLK_T_OUT,
        0,
        Data::ToDevice(&[0xab; 512]),
    );
    assert_eq!(write.status, IOERR);
    let flush = request(&mut driver, VIRTIO_BLK_T_FLUSH, 0, Data::None);
    assert_eq!(flush.status, OK);
    assert_still_serving(&mut driver);
    assert_eq!(std::fs::read(&path).unwrap(), original);
}

#[test]
fn requests_beyond_capacity_fail() {
    let path = image("beyond", &patterned_disk());
    let mut driver = driver_for(&path, false);
    let past_end = request(
        &mut driver,
        VIRTIO_BLK_T_IN,
        DISK_SECTORS,
        Data::FromDevice(512),
    );
    assert_eq!(past_end.status, IOERR);
    assert_eq!(past_end.used_len, 1, "no data counted as written");
    let straddling = request(
        &mut driver,
        VIRTIO_BLK_T_OUT,
        DISK_SECTORS - 1,
        Data::ToDevice(&[1; 1024]),
    );
    assert_eq!(straddling.status, IOERR);
    let overflowing = request(
        &mut driver,
        VIRTIO_BLK_T_IN,
        u64::MAX / 2,
        Data::FromDevice(512),
    );
    assert_eq!(overflowing.status, IOERR);
    assert_eq!(std::fs::read(&path).unwrap(), patterned_disk());
    assert_still_serving(&mut driver);
}

/// One descriptor longer than the SIZE_MAX the device advertises is
/// refused before any I/O, so no single request can hold the disk for
/// longer than SEG_MAX full segments take; the same bytes split to fit
/// are served.
#[test]
fn buffers_longer_than_size_max_are_refused() {
    let big = SIZE_MAX as usize + 4096;
    let path = image("size-max", &vec![7u8; big]);
    let mut driver = driver_for(&path, false);
    let whole = request(
        &mut driver,
        VIRTIO_BLK_T_IN,
        0,
        Data::FromDevice(big as u32),
    );
    assert_eq!(whole.status, IOERR);
    assert_eq!(whole.used_len, 1, "no data counted as written");
    assert!(whole.data.iter().all(|&b| b == 0), "nothing was read");
    let write = request(
        &mut driver,
        VIRTIO_BLK_T_OUT,
        0,
        Data::ToDevice(&vec![9u8; big]),
    );
    assert_eq!(write.status, IOERR);
    assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; big]);

    let header = header(&mut driver, VIRTIO_BLK_T_IN, 0);
    let first = (driver.alloc(u64::from(SIZE_MAX)), SIZE_MAX, true);
    let rest = (driver.alloc(4096), 4096, true);
    let status = status_byte(&mut driver);
    let (_, used_len) = submit(&mut driver, &[header, first, rest, status]);
    assert_eq!(driver.read_guest(status.0, 1)[0], OK);
    assert_eq!(used_len as usize, big + 1);
}

#[test]
fn unknown_request_type_is_unsupported() {
    let path = image("unsupp", &patterned_disk());
    let mut driver = driver_for(&path, false);
    let discard = request(&mut driver, 11, 0, Data::ToDevice(&[0; 16]));
    assert_eq!(discard.status, VIRTIO_BLK_S_UNSUPP as u8);
    assert_still_serving(&mut driver);
}

#[test]
fn malformed_chains_fail_and_the_device_keeps_serving() {
    let path = image("malformed", &patterned_disk());
    let mut driver = driver_for(&path, false);

    // Header shorter than 16 bytes.
    let short = (driver.alloc(8), 8, false);
    let status = status_byte(&mut driver);
    submit(&mut driver, &[short, status]);
    assert_eq!(driver.read_guest(status.0, 1), [IOERR]);
    assert_still_serving(&mut driver);

    // Read whose data buffer is device-readable.
    let hdr = header(&mut driver, VIRTIO_BLK_T_IN, 0);
    let data = (driver.alloc(512), 512, false);
    let status = status_byte(&mut driver);
    submit(&mut driver, &[hdr, data, status]);
    assert_eq!(driver.read_guest(status.0, 1), [IOERR]);

    // Write whose data buffer is device-writable: nothing reaches the disk.
    let hdr = header(&mut driver, VIRTIO_BLK_T_OUT, 0);
    let data = (driver.alloc(512), 512, true);
    let status = status_byte(&mut driver);
    submit(&mut driver, &[hdr, data, status]);
    assert_eq!(driver.read_guest(status.0, 1), [IOERR]);

    // Length not a multiple of 512.
    let odd = request(&mut driver, VIRTIO_BLK_T_IN, 0, Data::FromDevice(100));
    assert_eq!(odd.status, IOERR);

    // Readable descriptor after a writable one.
    let hdr = header(&mut driver, VIRTIO_BLK_T_IN, 0);
    let data = (driver.alloc(512), 512, true);
    let trailing = (driver.alloc(16), 16, false);
    let status = status_byte(&mut driver);
    submit(&mut driver, &[hdr, data, trailing, status]);
    assert_eq!(driver.read_guest(status.0, 1), [IOERR]);

    // Buffer outside guest memory.
    let hdr = header(&mut driver, VIRTIO_BLK_T_IN, 0);
    let status = status_byte(&mut driver);
    submit(&mut driver, &[hdr, (0xffff_0000_0000, 512, false), status]);
    assert_eq!(driver.read_guest(status.0, 1), [IOERR]);

    assert_eq!(std::fs::read(&path).unwrap(), patterned_disk());
    assert_still_serving(&mut driver);
}

#[test]
fn buffers_outside_guest_memory_fail_with_ioerr_when_the_status_byte_is_in_memory() {
    use crate::devices::virtio::test_driver::MEM_SIZE;
    let path = image("outside", &patterned_disk());
    let mut driver = driver_for(&path, false);
    let mem_end = MEM_SIZE as u64;
    let beyond = (0xffff_0000_0000, 512, true);
    let straddling = (mem_end - 256, 512, true);
    for (request_type, data) in [
        (VIRTIO_BLK_T_IN, beyond),
        (VIRTIO_BLK_T_IN, straddling),
        (VIRTIO_BLK_T_GET_ID, straddling),
        (VIRTIO_BLK_T_OUT, (straddling.0, 512, false)),
    ] {
        let hdr = header(&mut driver, request_type, 0);
        let status = status_byte(&mut driver);
        let (_, used_len) = submit(&mut driver, &[hdr, data, status]);
        assert_eq!(
            driver.read_guest(status.0, 1),
            [IOERR],
            "request type {request_type}, buffer at {:#x}",
            data.0
        );
        assert_eq!(used_len, 1, "only the status byte was written");
    }
    // Data and status in one buffer that runs out of memory: the status
    // byte is not in memory, so the chain comes back empty.
    let hdr = header(&mut driver, VIRTIO_BLK_T_IN, 0);
    assert_eq!(submit(&mut driver, &[hdr, (mem_end - 1, 2, true)]).1, 0);
    assert_eq!(std::fs::read(&path).unwrap(), patterned_disk());
    assert_still_serving(&mut driver);
}

#[test]
fn chains_without_a_status_byte_are_returned_empty() {
    let path = image("no-status", &patterned_disk());
    let mut driver = driver_for(&path, false);

    // Status descriptor not writable.
    let hdr = header(&mut driver, VIRTIO_BLK_T_OUT, 0);
    let data = (driver.alloc(512), 512, false);
    let status = (driver.alloc(1), 1, false);
    let (_, used_len) = submit(&mut driver, &[hdr, data, status]);
    assert_eq!(used_len, 0);

    // A descriptor that points at itself.
    let hdr = header(&mut driver, VIRTIO_BLK_T_IN, 0);
    let head = driver.next_descriptor();
    driver.write_descriptor(driver.desc_table(), head, hdr, DESC_F_NEXT, head);
    driver.push_raw(head, 1);
    driver.kick();
    assert_eq!(driver.wait_used(), (head, 0));

    // A `next` index outside the table.
    let head = driver.next_descriptor();
    driver.write_descriptor(driver.desc_table(), head, hdr, DESC_F_NEXT, 999);
    driver.push_raw(head, 1);
    driver.kick();
    assert_eq!(driver.wait_used(), (head, 0));

    assert_eq!(std::fs::read(&path).unwrap(), patterned_disk());
    assert_still_serving(&mut driver);
}

/// Put an indirect table of `entries` descriptors in guest memory: a
/// read of the whole disk with the header first, the data spread over
/// all but the last entry, and the status byte last. Returns the table's
/// address, the data buffer's and the status byte's.
fn indirect_read(driver: &mut TestDriver, entries: u16) -> (u64, u64, u64) {
    let disk_len = DISK_SECTORS * SECTOR_SIZE;
    let table = driver.alloc(u64::from(entries) * 16);
    let hdr = header(driver, VIRTIO_BLK_T_IN, 0);
    driver.write_descriptor(table, 0, hdr, DESC_F_NEXT, 1);
    let data = driver.alloc(disk_len);
    let pieces = u64::from(entries - 2);
    for i in 1..entries - 1 {
        let piece = u64::from(i - 1);
        let start = disk_len * piece / pieces;
        let end = disk_len * (piece + 1) / pieces;
        let segment = (data + start, (end - start) as u32, true);
        driver.write_descriptor(table, i, segment, DESC_F_NEXT, i + 1);
    }
    let status = status_byte(driver);
    driver.write_descriptor(table, entries - 1, status, 0, 0);
    (table, data, status.0)
}

fn submit_indirect(driver: &mut TestDriver, table: u64, entries: u16) -> (u16, u32) {
    let head = driver.next_descriptor();
    let table_segment = (table, u32::from(entries) * 16, false);
    driver.write_descriptor(driver.desc_table(), head, table_segment, DESC_F_INDIRECT, 0);
    driver.push_raw(head, 1);
    driver.kick();
    let used = driver.wait_used();
    assert_eq!(used.0, head);
    used
}

#[test]
fn chain_longer_than_seg_max_is_refused_without_walking_it() {
    let path = image("too-long", &patterned_disk());
    let mut driver = driver_for(&path, false);
    // SEG_MAX data descriptors with the header and status: served.
    let longest = SEG_MAX as u16 + 2;
    let (table, data, status) = indirect_read(&mut driver, longest);
    let disk_len = (DISK_SECTORS * SECTOR_SIZE) as usize;
    assert_eq!(
        submit_indirect(&mut driver, table, longest).1,
        disk_len as u32 + 1
    );
    assert_eq!(driver.read_guest(status, 1), [OK]);
    assert_eq!(driver.read_guest(data, disk_len), patterned_disk());
    // One more, and the largest table there is: refused before any entry
    // is read, so the status byte at the end is never found.
    for entries in [longest + 1, u16::MAX] {
        let (table, _, status) = indirect_read(&mut driver, entries);
        assert_eq!(submit_indirect(&mut driver, table, entries).1, 0);
        assert_eq!(driver.read_guest(status, 1), [0xee]);
    }
    assert_still_serving(&mut driver);
}

#[test]
fn indirect_chain_within_limits_is_served() {
    let path = image("indirect", &patterned_disk());
    let mut driver = driver_for(&path, false);
    let table = driver.alloc(3 * 16);
    let hdr = header(&mut driver, VIRTIO_BLK_T_IN, 2);
    let data = (driver.alloc(512), 512, true);
    let status = status_byte(&mut driver);
    driver.write_descriptor(table, 0, hdr, DESC_F_NEXT, 1);
    driver.write_descriptor(table, 1, data, DESC_F_NEXT, 2);
    driver.write_descriptor(table, 2, status, 0, 0);
    let head = driver.next_descriptor();
    driver.write_descriptor(
        driver.desc_table(),
        head,
        (table, 48, false),
        DESC_F_INDIRECT,
        0,
    );
    driver.push_raw(head, 1);
    driver.kick();
    assert_eq!(driver.wait_used(), (head, 513));
    assert_eq!(driver.read_guest(status.0, 1), [OK]);
    assert!(driver.read_guest(data.0, 512).iter().all(|&b| b == 2));
}

#[test]
fn corrupt_avail_index_sets_needs_reset() {
    let path = image("corrupt-ring", &patterned_disk());
    let mut driver = driver_for(&path, false);
    assert_still_serving(&mut driver);
    let msis_before = driver.vm.msis().len();
    driver.set_avail_idx(driver.used_idx().wrapping_add(1000));
    driver.kick();
    assert!(driver.vm.wait_for_msis(msis_before + 1));
    assert_eq!(driver.vm.msis().last(), Some(&CONFIG_MSI));
    assert_ne!(driver.status() & STATUS_NEEDS_RESET, 0);
    // A reset and a fresh initialisation bring the device back.
    assert_ne!(driver.init(ALL_FEATURES) & STATUS_DRIVER_OK, 0);
    assert_eq!(driver.status() & STATUS_NEEDS_RESET, 0);
    assert_still_serving(&mut driver);
}

#[test]
fn rings_outside_guest_memory_set_needs_reset_at_driver_ok() {
    let path = image("bad-rings", &patterned_disk());
    let backend = RawFileBackend::open(&path, false).unwrap();
    let mut driver = TestDriver::new(Box::new(Block::new(Box::new(backend), "x").unwrap()));
    driver.enable_msix();
    driver.init(ALL_FEATURES);
    driver.set_status(0);
    driver.set_status(1 | 2);
    driver.common_write(0x0c, 0, 4);
    driver.common_write(0x08, 1, 4);
    driver.common_write(0x0c, 1, 4);
    driver.set_status(1 | 2 | STATUS_FEATURES_OK);
    driver.common_write(0x10, 0, 2);
    driver.set_queue_addresses(0x7fff_f000_0000, 0x7fff_f000_1000, 0x7fff_f000_2000);
    driver.common_write(0x1c, 1, 2);
    driver.set_status(1 | 2 | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    assert_ne!(driver.status() & STATUS_NEEDS_RESET, 0);
    assert_eq!(driver.vm.msis(), vec![CONFIG_MSI]);
}

#[test]
fn driver_without_version_1_cannot_reach_features_ok() {
    let path = image("legacy-driver", &patterned_disk());
    let backend = RawFileBackend::open(&path, false).unwrap();
    let mut driver = TestDriver::new(Box::new(Block::new(Box::new(backend), "x").unwrap()));
    let status = driver.init(ALL_FEATURES & !F_VERSION_1);
    assert_eq!(status & (STATUS_FEATURES_OK | STATUS_DRIVER_OK), 0);
    // Offering a feature the device does not have fails the same way.
    driver.set_status(0);
    driver.set_status(1 | 2);
    driver.common_write(0x08, 1, 4);
    driver.common_write(0x0c, 1 | 1 << 30, 4);
    driver.set_status(1 | 2 | STATUS_FEATURES_OK);
    assert_eq!(driver.status() & STATUS_FEATURES_OK, 0);
}

#[test]
fn event_idx_suppresses_and_requests_interrupts() {
    let path = image("event-idx", &patterned_disk());
    let backend = RawFileBackend::open(&path, false).unwrap();
    let mut driver = TestDriver::new(Box::new(Block::new(Box::new(backend), "x").unwrap()));
    driver.enable_msix();
    assert_ne!(driver.init(u64::MAX) & STATUS_DRIVER_OK, 0);
    driver.set_used_event(0);
    assert_still_serving(&mut driver);
    assert!(driver.vm.wait_for_msis(1));
    // used_event still 0: the driver did not ask about entry 1.
    assert_still_serving(&mut driver);
    assert_eq!(driver.vm.msis().len(), 1);
    driver.set_used_event(2);
    assert_still_serving(&mut driver);
    assert!(driver.vm.wait_for_msis(2));
}

#[test]
fn no_interrupt_flag_is_honoured() {
    let path = image("no-interrupt", &patterned_disk());
    let mut driver = driver_for(&path, false);
    driver.set_avail_flags(1);
    assert_still_serving(&mut driver);
    assert!(driver.vm.msis().is_empty());
    driver.set_avail_flags(0);
    assert_still_serving(&mut driver);
    assert!(driver.vm.wait_for_msis(1));
}

#[test]
fn masked_queue_vector_pends_until_unmasked() {
    let path = image("masked", &patterned_disk());
    let mut driver = driver_for(&path, false);
    let queue_entry_control = driver.layout.msix_table + 16 + 12;
    driver.write_bar(queue_entry_control, 1, 4);
    assert_still_serving(&mut driver);
    assert!(driver.vm.msis().is_empty());
    assert_eq!(driver.read_bar(driver.layout.msix_pba, 8), 0b10);
    driver.write_bar(queue_entry_control, 0, 4);
    assert_eq!(driver.vm.msis(), vec![QUEUE_MSI]);
    assert_eq!(driver.read_bar(driver.layout.msix_pba, 8), 0);
}

#[test]
fn device_config_reports_capacity_and_geometry() {
    let path = image("config", &patterned_disk());
    let driver = driver_for(&path, false);
    let config = driver.layout.device;
    assert_eq!(driver.read_bar(config, 8), DISK_SECTORS);
    assert_eq!(driver.read_bar(config + 8, 4), u64::from(SIZE_MAX));
    assert_eq!(driver.read_bar(config + 12, 4), u64::from(SEG_MAX));
    assert_eq!(driver.read_bar(config + 20, 4), 512);
    assert_eq!(driver.read_bar(config + 0x100, 4), 0);
}

/// Count threads called `name`, waiting up to 10 s for the count to
/// become `expected` (a new thread names itself asynchronously).
fn io_threads_named(name: &str, expected: usize) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let count = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim_end() == name)
            .count();
        if count == expected || std::time::Instant::now() > deadline {
            return count;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn io_thread_lives_with_the_device_and_reset_stops_serving() {
    let path = image("reset", &patterned_disk());
    let backend = RawFileBackend::open(&path, false).unwrap();
    let block = Block::new(Box::new(backend), "x").unwrap();
    let name = block.thread_name().to_string();
    let mut driver = TestDriver::new(Box::new(block));
    assert_eq!(io_threads_named(&name, 1), 1, "started with the device");
    driver.enable_msix();
    driver.init(ALL_FEATURES);
    assert_still_serving(&mut driver);

    driver.set_status(0);
    assert_eq!(driver.status(), 0);
    assert_eq!(driver.common_read(0x1c, 2), 0, "queue disabled by reset");
    assert_eq!(driver.common_read(0x1a, 2), 0xffff, "vector forgotten");
    // The old ring is still in guest memory, but a reset device must not
    // touch it.
    let used_before = driver.used_idx();
    let hdr = header(&mut driver, VIRTIO_BLK_T_IN, 1);
    let data = (driver.alloc(512), 512, true);
    let status = status_byte(&mut driver);
    driver.push_chain(&[hdr, data, status]);
    driver.kick();
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(driver.used_idx(), used_before);
    assert_eq!(driver.read_guest(status.0, 1), [0xee]);

    driver.init(ALL_FEATURES);
    assert_still_serving(&mut driver);
    drop(driver);
    assert_eq!(
        io_threads_named(&name, 0),
        0,
        "dropping the device joins its thread"
    );
}

/// The I/O thread serves requests under its own seccomp filter (a
/// missing syscall would end the test process with SIGSYS's message).
#[test]
fn io_thread_serves_under_the_block_io_seccomp_filter() {
    let path = image("confined", &patterned_disk());
    let backend = RawFileBackend::open(&path, false).unwrap();
    let mut block = Block::new(Box::new(backend), "x").unwrap();
    let name = block.thread_name().to_string();
    block.set_confinement(Confinement::Seccomp(crate::seccomp::ThreadKind::BlockIo));
    let mut driver = TestDriver::new(Box::new(block));
    assert_eq!(seccomp_modes_of_threads_named(&name), ["2"]);
    driver.enable_msix();
    driver.init(ALL_FEATURES);
    assert_still_serving(&mut driver);
}

/// The `Seccomp:` field of each thread of this process called `name`.
fn seccomp_modes_of_threads_named(name: &str) -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| {
            let task = task.ok()?.path();
            let comm = std::fs::read_to_string(task.join("comm")).ok()?;
            (comm.trim_end() == name).then_some(())?;
            let status = std::fs::read_to_string(task.join("status")).ok()?;
            let mode = status
                .lines()
                .find_map(|line| line.strip_prefix("Seccomp:"))?;
            Some(mode.trim().to_string())
        })
        .collect()
}

#[test]
fn bar_relocation_moves_the_doorbell() {
    let path = image("relocate", &patterned_disk());
    let mut driver = driver_for(&path, false);
    let old_bar = driver.layout.bar;
    let new_bar = old_bar + 0x10_0000;
    driver.config_write(0x04, 0, 2);
    assert!(
        driver.vm.doorbell_addresses().is_empty(),
        "decode off: no doorbell"
    );
    driver.config_write(0x10, new_bar & 0xffff_ffff, 4);
    driver.config_write(0x14, new_bar >> 32, 4);
    driver.config_write(0x04, 0x6, 2);
    driver.probe();
    assert_eq!(driver.layout.bar, new_bar);
    assert_eq!(driver.vm.doorbell_addresses(), vec![driver.layout.notify]);
    let mut probe = [0u8; 4];
    assert!(!driver.mmio.read(old_bar, &mut probe), "old range unmapped");
    assert_still_serving(&mut driver);
}

#[test]
fn notify_write_without_ioeventfd_still_kicks() {
    let path = image("trapped-kick", &patterned_disk());
    let mut driver = driver_for(&path, false);
    let hdr = header(&mut driver, VIRTIO_BLK_T_IN, 1);
    let data = (driver.alloc(512), 512, true);
    let status = status_byte(&mut driver);
    driver.push_chain(&[hdr, data, status]);
    driver.write_bar(driver.layout.notify, 0, 2);
    driver.wait_used();
    assert_eq!(driver.read_guest(status.0, 1), [OK]);
}

#[test]
fn block_new_validates_id_and_backend() {
    struct OddBackend(u32, u64);
    impl BlockBackend for OddBackend {
        fn read_at(&self, _: u64, _: &mut [u8]) -> std::io::Result<()> {
            Ok(())
        }
        fn write_at(&self, _: u64, _: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn capacity_bytes(&self) -> u64 {
            self.1
        }
        fn read_only(&self) -> bool {
            false
        }
        fn block_size(&self) -> u32 {
            self.0
        }
    }
    let too_long = Block::new(
        Box::new(OddBackend(512, 512)),
        "a-very-long-disk-identifier",
    );
    assert!(matches!(too_long, Err(BlockError::IdTooLong(_))));
    let odd_block = Block::new(Box::new(OddBackend(1000, 1000)), "x");
    assert!(matches!(
        odd_block,
        Err(BlockError::UnsupportedBlockSize(1000))
    ));
    let odd_capacity = Block::new(Box::new(OddBackend(4096, 4608)), "x");
    assert!(matches!(
        odd_capacity,
        Err(BlockError::UnalignedCapacity(4608))
    ));
    assert_eq!(
        disk_id_from_path(std::path::Path::new("/x/ein-sehr-langer-dateiname.img")),
        "ein-sehr-langer-date"
    );
    let multibyte = format!("/x/a{}", "ä".repeat(10));
    assert_eq!(
        disk_id_from_path(std::path::Path::new(&multibyte)),
        format!("a{}", "ä".repeat(9)),
        "cut at a character boundary"
    );
}

#[test]
fn pci_cfg_capability_reaches_the_bar() {
    let path = image("pci-cfg", &patterned_disk());
    let driver = driver_for(&path, false);
    let cap = driver.layout.pci_cfg_capability;
    assert_ne!(cap, 0, "VIRTIO_PCI_CAP_PCI_CFG present");
    // num_queues (common config offset 0x12), read as a word.
    driver.config_write(cap + 4, 0, 1);
    driver.config_write(cap + 8, 0x12, 4);
    driver.config_write(cap + 12, 2, 4);
    assert_eq!(driver.config_read(cap + 16, 2), 1);
    // Capacity from the device config region, as a dword.
    driver.config_write(cap + 8, driver.layout.device - driver.layout.bar, 4);
    driver.config_write(cap + 12, 4, 4);
    assert_eq!(driver.config_read(cap + 16, 4), DISK_SECTORS);
    // A write through the window: reset the device via device_status.
    driver.config_write(cap + 8, 0x14, 4);
    driver.config_write(cap + 12, 1, 4);
    driver.config_write(cap + 16, 0, 1);
    assert_eq!(driver.status(), 0);
    // A misaligned window reads back what was stored, touching nothing.
    driver.config_write(cap + 8, 0x13, 4);
    driver.config_write(cap + 12, 2, 4);
    driver.config_write(cap + 16, 0xabcd, 2);
    assert_eq!(driver.config_read(cap + 16, 2), 0xabcd);
}

/// xorshift64: deterministic noise for the robustness test.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_descriptor_tables_never_break_the_device() {
    use crate::devices::virtio::test_driver::{MEM_SIZE, QUEUE_SIZE};
    let path = image("noise", &patterned_disk());
    let mut driver = driver_for(&path, false);
    let mut noise = Noise(0x5eed_1234_abcd_0042);
    let mut resets = 0;
    for _ in 0..300 {
        let table = driver.desc_table();
        for index in 0..8u16 {
            let slot = u16::try_from(noise.next() % u64::from(QUEUE_SIZE)).unwrap();
            let address = match noise.next() % 4 {
                0 => noise.next(),
                _ => 0x100000 + noise.next() % (MEM_SIZE as u64 - 0x100000),
            };
            let len = match noise.next() % 4 {
                0 => noise.next() as u32,
                1 => 16,
                2 => 1,
                _ => (noise.next() % 4096) as u32,
            };
            let flags = (noise.next() % 8) as u16;
            let next = (noise.next() % (u64::from(QUEUE_SIZE) + 8)) as u16;
            driver.write_descriptor(table, slot, (address, len, false), flags, next);
            if index == 0 {
                // Sometimes a plausible header so requests get past parsing.
                let request_type = (noise.next() % 10) as u32;
                driver.write_guest(
                    address.min(MEM_SIZE as u64 - 16),
                    &request_type.to_le_bytes(),
                );
            }
        }
        let before = driver.used_idx();
        let head = (noise.next() % (u64::from(QUEUE_SIZE) + 4)) as u16;
        driver.publish(head);
        driver.kick();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if driver.status() & STATUS_NEEDS_RESET != 0 {
                resets += 1;
                assert_ne!(driver.init(ALL_FEATURES) & STATUS_DRIVER_OK, 0);
                break;
            }
            if driver.used_idx() != before {
                driver.wait_used();
                break;
            }
            assert!(std::time::Instant::now() < deadline, "device stalled");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    assert!(resets > 0, "out-of-range heads must have forced resets");
    assert_ne!(driver.init(ALL_FEATURES) & STATUS_DRIVER_OK, 0);
    assert_still_serving(&mut driver);
}

/// The device takes the LUKS2 backend at both sector sizes it serves.
#[test]
fn the_encrypted_backend_is_accepted() {
    use crate::storage::test_support::{new_volume, PASSPHRASE};
    use crate::storage::EncryptedBackend;
    for sector_size in [512, 4096] {
        let path = new_volume("device.img", 1 << 20, sector_size);
        let backend = EncryptedBackend::open(&path, PASSPHRASE, false).unwrap();
        assert!(Block::new(Box::new(backend), "encrypted").is_ok());
    }
}
