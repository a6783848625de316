//! The virtio-pci modern transport (virtio 1.x, 4.1): one 64-bit memory
//! BAR holding the common configuration, ISR, device configuration,
//! notification doorbells and the MSI-X table and PBA, each announced by
//! a capability. Guest kicks are registered as ioeventfds so that they
//! wake the device's I/O thread without a trip through a vCPU.

use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::interrupt::VirtioInterrupt;
use super::io_gate::IoGate;
use super::io_thread::IoThread;
use super::msix::{MsixTable, ENTRY_SIZE};
use super::{
    ActivateError, Activation, ActiveQueue, VirtioDevice, F_VERSION_1, MSI_NO_VECTOR,
    STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET,
};
use crate::devices::pci::{
    PciConfiguration, PciDevice, PciError, PciHeader, CAPABILITY_ID_MSIX,
    CAPABILITY_ID_VENDOR_SPECIFIC,
};
use crate::devices::VmInterface;
use crate::sync::Unpoisoned;

const VIRTIO_VENDOR_ID: u16 = 0x1af4;
const VIRTIO_MODERN_DEVICE_ID_BASE: u16 = 0x1040;
/// Subsystem device IDs >= 0x40 mark a modern-only device.
const VIRTIO_SUBSYSTEM_ID: u16 = 0x40;

/// The one BAR and its layout. 4 KiB per region keeps each one page
/// aligned, which guests may rely on when mapping them separately.
const BAR_INDEX: usize = 0;
const BAR_SIZE: u64 = 0x8000;
const COMMON_OFFSET: u64 = 0x0000;
const COMMON_LEN: u64 = 0x38;
const ISR_OFFSET: u64 = 0x1000;
const ISR_LEN: u64 = 4;
const DEVICE_OFFSET: u64 = 0x2000;
const DEVICE_LEN: u64 = 0x1000;
const NOTIFY_OFFSET: u64 = 0x3000;
const NOTIFY_OFF_MULTIPLIER: u32 = 4;
const MSIX_TABLE_OFFSET: u64 = 0x4000;
const MSIX_PBA_OFFSET: u64 = 0x5000;
const REGION_LEN: u64 = 0x1000;

/// `cfg_type` of the virtio vendor-specific capabilities.
const CAP_COMMON_CFG: u8 = 1;
const CAP_NOTIFY_CFG: u8 = 2;
const CAP_ISR_CFG: u8 = 3;
const CAP_DEVICE_CFG: u8 = 4;
/// A window into the BAR through configuration space, for drivers that
/// cannot map the BAR yet (firmware).
const CAP_PCI_CFG: u8 = 5;
/// Offset of `pci_cfg_data` in `struct virtio_pci_cfg_cap`.
const PCI_CFG_DATA: usize = 16;

/// MSI-X message control: enable and function mask bits.
const MSIX_ENABLE: u16 = 1 << 15;
const MSIX_FUNCTION_MASK: u16 = 1 << 14;

/// Offsets in `struct virtio_pci_common_cfg`.
mod common {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DEVICE: u64 = 0x30;
}

/// What the driver programmed for one queue.
#[derive(Clone, Copy)]
struct QueueConfig {
    max_size: u16,
    size: u16,
    enabled: bool,
    msix_vector: u16,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            enabled: false,
            msix_vector: MSI_NO_VECTOR,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

pub struct VirtioPciDevice {
    config: PciConfiguration,
    msix_capability: usize,
    pci_cfg_capability: usize,
    device: Box<dyn VirtioDevice>,
    mem: Arc<GuestMemoryMmap>,
    vm: Arc<dyn VmInterface>,
    msix: Arc<Mutex<MsixTable>>,
    interrupt: Arc<VirtioInterrupt>,
    queues: Vec<QueueConfig>,
    kicks: Vec<EventFd>,
    io_thread: IoThread,
    bar_base: Option<u64>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    queue_select: u16,
}

impl VirtioPciDevice {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: Arc<GuestMemoryMmap>,
        vm: Arc<dyn VmInterface>,
        io_gate: IoGate,
    ) -> Result<Self, PciError> {
        let queue_count = device.queue_max_sizes().len();
        let table_fits = (queue_count as u64 + 1) * ENTRY_SIZE <= REGION_LEN;
        if queue_count == 0 || !table_fits {
            return Err(PciError::Transport(format!(
                "device type {} has {queue_count} queues",
                device.device_type()
            )));
        }
        let vector_count = (queue_count + 1) as u16;
        let mut config = PciConfiguration::new(&PciHeader {
            vendor_id: VIRTIO_VENDOR_ID,
            device_id: VIRTIO_MODERN_DEVICE_ID_BASE + device.device_type(),
            revision_id: 1,
            class_code: class_for(device.device_type()).0,
            subclass: class_for(device.device_type()).1,
            prog_if: 0,
            subsystem_vendor_id: VIRTIO_VENDOR_ID,
            subsystem_id: VIRTIO_SUBSYSTEM_ID,
        });
        config.add_memory_bar(BAR_INDEX, BAR_SIZE, true)?;
        for (cfg_type, offset, len) in [
            (CAP_COMMON_CFG, COMMON_OFFSET, COMMON_LEN),
            (CAP_ISR_CFG, ISR_OFFSET, ISR_LEN),
            (CAP_DEVICE_CFG, DEVICE_OFFSET, DEVICE_LEN),
        ] {
            config.add_capability(&virtio_capability(cfg_type, offset, len, 16), &[])?;
        }
        let notify_len = queue_count as u64 * u64::from(NOTIFY_OFF_MULTIPLIER);
        let mut notify = virtio_capability(CAP_NOTIFY_CFG, NOTIFY_OFFSET, notify_len, 20);
        notify[16..20].copy_from_slice(&NOTIFY_OFF_MULTIPLIER.to_le_bytes());
        config.add_capability(&notify, &[])?;
        let mut pci_cfg_writable = [0u8; 20];
        pci_cfg_writable[4] = 0xff;
        pci_cfg_writable[8..20].fill(0xff);
        let pci_cfg_capability =
            config.add_capability(&virtio_capability(CAP_PCI_CFG, 0, 0, 20), &pci_cfg_writable)?;
        let msix_capability = config.add_capability(
            &msix_capability_body(vector_count),
            &[
                0,
                0,
                0,
                (MSIX_ENABLE | MSIX_FUNCTION_MASK).to_le_bytes()[1],
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ],
        )?;

        let kicks = (0..queue_count)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PciError::Transport(format!("cannot create queue eventfd: {e}")))?;
        let thread_kicks = kicks
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PciError::Transport(format!("cannot share queue eventfd: {e}")))?;
        let io_thread = IoThread::spawn(
            device.io_thread_name(),
            thread_kicks,
            io_gate,
            device.io_thread_confinement(),
        )
        .map_err(|e| PciError::Transport(e.to_string()))?;
        let msix = Arc::new(Mutex::new(MsixTable::new(vector_count, vm.clone())));
        let interrupt = Arc::new(VirtioInterrupt::new(msix.clone()));
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| QueueConfig::new(max))
            .collect();
        Ok(Self {
            config,
            msix_capability,
            pci_cfg_capability,
            device,
            mem,
            vm,
            msix,
            interrupt,
            queues,
            kicks,
            io_thread,
            bar_base: None,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            queue_select: 0,
        })
    }

    fn msix(&self) -> MutexGuard<'_, MsixTable> {
        self.msix.lock().unpoisoned()
    }

    fn status(&self) -> u8 {
        let needs_reset = if self.interrupt.needs_reset() {
            STATUS_NEEDS_RESET
        } else {
            0
        };
        self.status | needs_reset
    }

    fn selected_queue(&self) -> Option<&QueueConfig> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// Queue registers may change only while the driver sets the device
    /// up, not while the I/O thread uses them.
    fn selected_queue_mut(&mut self) -> Option<&mut QueueConfig> {
        if self.status & STATUS_DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn valid_vector(&self, vector: u16) -> u16 {
        if vector < self.msix().vector_count() {
            vector
        } else {
            MSI_NO_VECTOR
        }
    }

    fn read_common(&self, offset: u64, data: &mut [u8]) {
        let queue = self.selected_queue();
        let value: u64 = match offset {
            common::DEVICE_FEATURE_SELECT => u64::from(self.device_feature_select),
            common::DEVICE_FEATURE => match self.device_feature_select {
                0 => self.device.features() & 0xffff_ffff,
                1 => self.device.features() >> 32,
                _ => 0,
            },
            common::DRIVER_FEATURE_SELECT => u64::from(self.driver_feature_select),
            common::DRIVER_FEATURE => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            common::CONFIG_MSIX_VECTOR => u64::from(self.interrupt.config_vector()),
            common::NUM_QUEUES => self.queues.len() as u64,
            common::DEVICE_STATUS => u64::from(self.status()),
            // Our device configuration never changes under the driver.
            common::CONFIG_GENERATION => 0,
            common::QUEUE_SELECT => u64::from(self.queue_select),
            common::QUEUE_SIZE => queue.map_or(0, |q| u64::from(q.size)),
            common::QUEUE_MSIX_VECTOR => {
                queue.map_or(u64::from(MSI_NO_VECTOR), |q| u64::from(q.msix_vector))
            }
            common::QUEUE_ENABLE => queue.map_or(0, |q| u64::from(q.enabled)),
            common::QUEUE_NOTIFY_OFF => u64::from(self.queue_select),
            common::QUEUE_DESC => queue.map_or(0, |q| q.desc),
            0x24 => queue.map_or(0, |q| q.desc >> 32),
            common::QUEUE_DRIVER => queue.map_or(0, |q| q.driver),
            0x2c => queue.map_or(0, |q| q.driver >> 32),
            common::QUEUE_DEVICE => queue.map_or(0, |q| q.device),
            0x34 => queue.map_or(0, |q| q.device >> 32),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        let len = data.len().min(8);
        data[..len].copy_from_slice(&bytes[..len]);
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let mut bytes = [0u8; 8];
        let len = data.len().min(8);
        bytes[..len].copy_from_slice(&data[..len]);
        let value = u64::from_le_bytes(bytes);
        match offset {
            common::DEVICE_FEATURE_SELECT => self.device_feature_select = value as u32,
            common::DRIVER_FEATURE_SELECT => self.driver_feature_select = value as u32,
            common::DRIVER_FEATURE => self.write_driver_features(value as u32),
            common::CONFIG_MSIX_VECTOR => {
                let vector = self.valid_vector(value as u16);
                self.interrupt.set_config_vector(vector);
            }
            common::DEVICE_STATUS => self.write_status(value as u8),
            common::QUEUE_SELECT => self.queue_select = value as u16,
            common::QUEUE_SIZE => self.write_queue_size(value as u16),
            common::QUEUE_MSIX_VECTOR => {
                let vector = self.valid_vector(value as u16);
                if let Some(q) = self.selected_queue_mut() {
                    q.msix_vector = vector;
                }
            }
            common::QUEUE_ENABLE => {
                // Writing 0 is not how a driver disables a queue (it resets).
                if let (1, Some(q)) = (value, self.selected_queue_mut()) {
                    q.enabled = true;
                }
            }
            common::QUEUE_DESC..=0x37 => self.write_queue_address(offset, data.len(), value),
            _ => log::debug!("virtio: ignored write to common config {offset:#x}"),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & STATUS_FEATURES_OK != 0 {
            return;
        }
        self.driver_features = match self.driver_feature_select {
            0 => (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => (self.driver_features & 0xffff_ffff) | u64::from(value) << 32,
            _ => self.driver_features,
        };
    }

    fn write_queue_size(&mut self, size: u16) {
        if let Some(q) = self.selected_queue_mut() {
            if size.is_power_of_two() && size <= q.max_size {
                q.size = size;
            } else {
                log::debug!("virtio: driver asked for invalid queue size {size}");
            }
        }
    }

    /// The three 64-bit ring addresses, written as one qword or two dwords.
    fn write_queue_address(&mut self, offset: u64, len: usize, value: u64) {
        let Some(q) = self.selected_queue_mut() else {
            return;
        };
        let field_start = offset & !7;
        let field = match field_start {
            common::QUEUE_DESC => &mut q.desc,
            common::QUEUE_DRIVER => &mut q.driver,
            common::QUEUE_DEVICE => &mut q.device,
            _ => return,
        };
        *field = match (offset - field_start, len) {
            (0, 8) => value,
            (0, 4) => (*field & !0xffff_ffff) | (value & 0xffff_ffff),
            (4, 4) => (*field & 0xffff_ffff) | (value << 32),
            _ => *field,
        };
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.device.features();
        self.driver_features & !offered == 0 && self.driver_features & F_VERSION_1 != 0
    }

    /// Device status state machine (virtio 1.x, 3.1.1): bits only get
    /// added, FEATURES_OK only for a feature set we can honour (including
    /// VERSION_1), DRIVER_OK starts the device; 0 resets.
    fn write_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        if value & self.status != self.status {
            log::debug!(
                "virtio: driver tried to clear status bits ({:#x} -> {value:#x})",
                self.status
            );
            return;
        }
        let added = value & !self.status;
        let mut accepted = value;
        if added & STATUS_FEATURES_OK != 0 && !self.features_acceptable() {
            crate::rate_limited!(
                log::Level::Info,
                "virtio: refusing driver features {:#x} (offered {:#x}; VERSION_1 is required)",
                self.driver_features,
                self.device.features()
            );
            accepted &= !STATUS_FEATURES_OK;
        }
        if added & STATUS_DRIVER_OK != 0 {
            if accepted & STATUS_FEATURES_OK == 0 {
                accepted &= !STATUS_DRIVER_OK;
            } else {
                self.status = accepted;
                if let Err(e) = self.activate() {
                    crate::rate_limited!(
                        log::Level::Warn,
                        "virtio device type {}: {e}",
                        self.device.device_type()
                    );
                    self.interrupt.set_needs_reset();
                }
                return;
            }
        }
        self.status = accepted;
    }

    fn activate(&mut self) -> Result<(), ActivateError> {
        let event_idx = self.driver_features & super::F_EVENT_IDX != 0;
        let mut queues = Vec::new();
        for (index, config) in self.queues.iter().enumerate() {
            if !config.enabled {
                continue;
            }
            let index = index as u16;
            let queue = build_queue(config, event_idx, &self.mem)
                .map_err(|reason| ActivateError::BadQueue { index, reason })?;
            queues.push(ActiveQueue {
                index,
                queue,
                msix_vector: config.msix_vector,
            });
        }
        if queues.is_empty() {
            return Err(ActivateError::NoQueue);
        }
        let enabled: Vec<u16> = queues.iter().map(|q| q.index).collect();
        let worker = self.device.activate(Activation {
            mem: self.mem.clone(),
            features: self.driver_features,
            queues,
            interrupt: self.interrupt.clone(),
        })?;
        self.io_thread.serve(worker);
        // Look at each ring once: a driver may have filled one before
        // DRIVER_OK.
        for index in enabled {
            self.kicks[usize::from(index)]
                .write(1)
                .map_err(ActivateError::Io)?;
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.io_thread.idle();
        self.device.reset();
        for queue in &mut self.queues {
            *queue = QueueConfig::new(queue.max_size);
        }
        for kick in &self.kicks {
            // Drop kicks that arrived before the reset; EAGAIN means none.
            let _ = kick.read();
        }
        self.interrupt.reset();
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.queue_select = 0;
    }

    fn sync_msix_control(&mut self) {
        let mut control = [0u8; 2];
        self.config.read(self.msix_capability + 2, &mut control);
        let control = u16::from_le_bytes(control);
        self.msix().set_control(
            control & MSIX_ENABLE != 0,
            control & MSIX_FUNCTION_MASK != 0,
        );
    }

    /// The BAR window `pci_cfg_data` currently points at, if valid:
    /// BAR 0, a 1, 2 or 4 byte access, naturally aligned, inside the BAR.
    fn pci_cfg_window(&self) -> Option<(u64, usize)> {
        let cap = self.pci_cfg_capability;
        let mut field = [0u8; 4];
        self.config.read(cap + 4, &mut field[..1]);
        let bar = field[0];
        self.config.read(cap + 8, &mut field);
        let offset = u64::from(u32::from_le_bytes(field));
        self.config.read(cap + 12, &mut field);
        let length = u32::from_le_bytes(field) as usize;
        let aligned = matches!(length, 1 | 2 | 4) && offset % length as u64 == 0;
        let inside = offset + length as u64 <= BAR_SIZE;
        (usize::from(bar) == BAR_INDEX && aligned && inside).then_some((offset, length))
    }

    /// Bytes of a configuration access at `offset..offset+len` that fall
    /// on `pci_cfg_data`, as (index into the access, index into the data).
    fn pci_cfg_overlap(&self, offset: usize, len: usize) -> Vec<(usize, usize)> {
        let data_start = self.pci_cfg_capability + PCI_CFG_DATA;
        (0..len)
            .filter_map(|i| {
                let at = offset + i;
                (data_start..data_start + 4)
                    .contains(&at)
                    .then(|| (i, at - data_start))
            })
            .collect()
    }

    fn doorbell_address(base: u64, queue: usize) -> u64 {
        base + NOTIFY_OFFSET + queue as u64 * u64::from(NOTIFY_OFF_MULTIPLIER)
    }
}

/// Build and check the queue the driver described; the reason is for
/// the log when a driver gets it wrong.
fn build_queue(
    config: &QueueConfig,
    event_idx: bool,
    mem: &GuestMemoryMmap,
) -> Result<Queue, String> {
    let mut queue = Queue::new(config.max_size).map_err(|e| e.to_string())?;
    queue.try_set_size(config.size).map_err(|e| e.to_string())?;
    queue
        .try_set_desc_table_address(GuestAddress(config.desc))
        .map_err(|e| e.to_string())?;
    queue
        .try_set_avail_ring_address(GuestAddress(config.driver))
        .map_err(|e| e.to_string())?;
    queue
        .try_set_used_ring_address(GuestAddress(config.device))
        .map_err(|e| e.to_string())?;
    queue.set_event_idx(event_idx);
    queue.set_ready(true);
    if !queue.is_valid(mem) {
        return Err("rings are not inside guest memory".to_string());
    }
    Ok(queue)
}

/// PCI class for a virtio device type, as other VMMs report them.
fn class_for(device_type: u16) -> (u8, u8) {
    match device_type {
        1 => (0x02, 0x00), // network controller
        2 => (0x01, 0x80), // mass storage, other
        _ => (0xff, 0x00),
    }
}

/// `struct virtio_pci_cap` (plus room for the notify multiplier).
fn virtio_capability(cfg_type: u8, offset: u64, len: u64, cap_len: u8) -> Vec<u8> {
    let mut body = vec![0u8; usize::from(cap_len)];
    body[0] = CAPABILITY_ID_VENDOR_SPECIFIC;
    body[2] = cap_len;
    body[3] = cfg_type;
    body[4] = BAR_INDEX as u8;
    body[8..12].copy_from_slice(&(offset as u32).to_le_bytes());
    body[12..16].copy_from_slice(&(len as u32).to_le_bytes());
    body
}

fn msix_capability_body(vector_count: u16) -> Vec<u8> {
    let mut body = vec![0u8; 12];
    body[0] = CAPABILITY_ID_MSIX;
    body[2..4].copy_from_slice(&(vector_count - 1).to_le_bytes());
    body[4..8].copy_from_slice(&(MSIX_TABLE_OFFSET as u32 | BAR_INDEX as u32).to_le_bytes());
    body[8..12].copy_from_slice(&(MSIX_PBA_OFFSET as u32 | BAR_INDEX as u32).to_le_bytes());
    body
}

impl PciDevice for VirtioPciDevice {
    fn config(&self) -> &PciConfiguration {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }

    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
        let overlap = self.pci_cfg_overlap(offset, data.len());
        if overlap.is_empty() {
            return;
        }
        if let Some((bar_offset, length)) = self.pci_cfg_window() {
            let mut window = [0u8; 4];
            self.bar_read(BAR_INDEX, bar_offset, &mut window[..length]);
            for (i, k) in overlap {
                data[i] = window[k];
            }
        }
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        let control = self.msix_capability + 2..self.msix_capability + 4;
        if offset < control.end && offset + data.len() > control.start {
            self.sync_msix_control();
        }
        if self.pci_cfg_overlap(offset, data.len()).is_empty() {
            return;
        }
        if let Some((bar_offset, length)) = self.pci_cfg_window() {
            let mut window = [0u8; 4];
            self.config
                .read(self.pci_cfg_capability + PCI_CFG_DATA, &mut window);
            self.bar_write(BAR_INDEX, bar_offset, &window[..length]);
        }
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != BAR_INDEX {
            return;
        }
        let Some(end) = offset.checked_add(data.len() as u64) else {
            return;
        };
        match offset {
            o if end <= COMMON_OFFSET + COMMON_LEN => self.read_common(o - COMMON_OFFSET, data),
            o if (ISR_OFFSET..ISR_OFFSET + ISR_LEN).contains(&o) => {
                if let Some(first) = data.first_mut() {
                    *first = self.interrupt.take_isr();
                }
            }
            o if o >= DEVICE_OFFSET && end <= DEVICE_OFFSET + DEVICE_LEN => {
                self.device.read_config(o - DEVICE_OFFSET, data)
            }
            o if o >= MSIX_TABLE_OFFSET && end <= MSIX_TABLE_OFFSET + REGION_LEN => {
                self.msix().read_table(o - MSIX_TABLE_OFFSET, data)
            }
            o if o >= MSIX_PBA_OFFSET && end <= MSIX_PBA_OFFSET + REGION_LEN => {
                self.msix().read_pba(o - MSIX_PBA_OFFSET, data)
            }
            _ => {}
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != BAR_INDEX {
            return;
        }
        let Some(end) = offset.checked_add(data.len() as u64) else {
            return;
        };
        match offset {
            o if end <= COMMON_OFFSET + COMMON_LEN => self.write_common(o - COMMON_OFFSET, data),
            o if o >= DEVICE_OFFSET && end <= DEVICE_OFFSET + DEVICE_LEN => {
                self.device.write_config(o - DEVICE_OFFSET, data)
            }
            o if o >= NOTIFY_OFFSET && end <= NOTIFY_OFFSET + REGION_LEN => {
                // Reached only when the doorbell is not an ioeventfd.
                let queue = (o - NOTIFY_OFFSET) / u64::from(NOTIFY_OFF_MULTIPLIER);
                if let Some(kick) = usize::try_from(queue).ok().and_then(|q| self.kicks.get(q)) {
                    if let Err(e) = kick.write(1) {
                        crate::rate_limited!(
                            log::Level::Warn,
                            "virtio: cannot signal queue {queue}: {e}"
                        );
                    }
                }
            }
            o if o >= MSIX_TABLE_OFFSET && end <= MSIX_TABLE_OFFSET + REGION_LEN => {
                self.msix().write_table(o - MSIX_TABLE_OFFSET, data)
            }
            _ => {}
        }
    }

    fn bar_mapped(&mut self, bar: usize, base: Option<u64>) {
        if bar != BAR_INDEX {
            return;
        }
        if let Some(old) = self.bar_base.take() {
            for (queue, kick) in self.kicks.iter().enumerate() {
                let address = Self::doorbell_address(old, queue);
                if let Err(e) = self.vm.unregister_mmio_doorbell(kick, address) {
                    crate::rate_limited!(
                        log::Level::Warn,
                        "virtio: cannot remove doorbell at {address:#x}: {e}"
                    );
                }
            }
        }
        if let Some(new) = base {
            for (queue, kick) in self.kicks.iter().enumerate() {
                let address = Self::doorbell_address(new, queue);
                // Without the ioeventfd, kicks still arrive through bar_write.
                if let Err(e) = self.vm.register_mmio_doorbell(kick, address) {
                    crate::rate_limited!(
                        log::Level::Warn,
                        "virtio: cannot register doorbell at {address:#x}: {e}"
                    );
                }
            }
        }
        self.bar_base = base;
    }
}

impl Drop for VirtioPciDevice {
    fn drop(&mut self) {
        self.io_thread.stop();
        self.device.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_driver::TestDriver;
    use super::super::{ActivateError, Activation, QueueWorker, VirtioDevice};
    use crate::confined::Confinement;

    /// A device with one queue that never activates: enough to reach the
    /// transport's registers.
    struct InertDevice;

    impl VirtioDevice for InertDevice {
        fn device_type(&self) -> u16 {
            2
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn features(&self) -> u64 {
            1 << 32
        }
        fn read_config(&self, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn io_thread_name(&self) -> String {
            "inert".into()
        }
        fn io_thread_confinement(&self) -> Confinement {
            Confinement::Unfiltered
        }
        fn activate(&mut self, _: Activation) -> Result<Box<dyn QueueWorker>, ActivateError> {
            Err(ActivateError::NoQueue)
        }
        fn reset(&mut self) {}
    }

    /// An access of no bytes at the interrupt status register reads
    /// nothing (and leaves the status for the next real read).
    #[test]
    fn an_empty_isr_read_reads_nothing() {
        let driver = TestDriver::new(Box::new(InertDevice));
        assert!(driver.mmio.read(driver.layout.isr, &mut []));
        let mut status = [0xaa];
        assert!(driver.mmio.read(driver.layout.isr, &mut status));
        assert_eq!(status, [0]);
    }
}
