//! MSI-X table and pending-bit array (PCI 3.0, 6.8.2): per-vector
//! address/data and mask, a function-wide mask and enable, and pending
//! bits for interrupts raised while masked, delivered on unmask.

use std::sync::Arc;

use crate::devices::VmInterface;

pub const ENTRY_SIZE: u64 = 16;
const VECTOR_CONTROL_MASKED: u32 = 1;

#[derive(Clone, Copy)]
struct Entry {
    /// address low, address high, data, vector control
    words: [u32; 4],
}

impl Entry {
    fn masked(&self) -> bool {
        self.words[3] & VECTOR_CONTROL_MASKED != 0
    }

    fn address(&self) -> u64 {
        u64::from(self.words[1]) << 32 | u64::from(self.words[0])
    }
}

pub struct MsixTable {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    enabled: bool,
    function_masked: bool,
    vm: Arc<dyn VmInterface>,
}

impl MsixTable {
    /// A table of `vector_count` entries, all masked, as after reset.
    pub fn new(vector_count: u16, vm: Arc<dyn VmInterface>) -> Self {
        let masked = Entry {
            words: [0, 0, 0, VECTOR_CONTROL_MASKED],
        };
        Self {
            entries: vec![masked; usize::from(vector_count)],
            pending: vec![false; usize::from(vector_count)],
            enabled: false,
            function_masked: false,
            vm,
        }
    }

    pub fn vector_count(&self) -> u16 {
        #[allow(clippy::cast_possible_truncation)] // sized from a u16 in `new`, never resized
        let count = self.entries.len() as u16;
        count
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Follow the MSI-X Enable and Function Mask bits of the capability.
    pub fn set_control(&mut self, enabled: bool, function_masked: bool) {
        self.enabled = enabled;
        self.function_masked = function_masked;
        self.deliver_pending();
    }

    /// Raise `vector`: delivered now, or remembered while masked.
    /// Without MSI-X enabled there is no way to interrupt (no INTx).
    pub fn signal(&mut self, vector: u16) {
        let index = usize::from(vector);
        let Some(entry) = self.entries.get(index).copied() else {
            return;
        };
        if !self.enabled {
            return;
        }
        if self.function_masked || entry.masked() {
            self.pending[index] = true;
        } else {
            self.deliver(entry);
        }
    }

    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|at| self.table_byte(at))
                .unwrap_or(0);
        }
    }

    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        for (i, &value) in data.iter().enumerate() {
            let Some(at) = offset.checked_add(i as u64) else {
                break;
            };
            let (index, word, byte) = split_offset(at);
            if let Some(entry) = self.entries.get_mut(index) {
                let mut bytes = entry.words[word].to_le_bytes();
                bytes[byte] = value;
                entry.words[word] = u32::from_le_bytes(bytes);
            }
        }
        self.deliver_pending();
    }

    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let first_vector = offset
                .checked_add(i as u64)
                .and_then(|pba_byte| pba_byte.checked_mul(8));
            *byte = (0..8u64)
                .filter(|bit| {
                    first_vector
                        .and_then(|first| first.checked_add(*bit))
                        .and_then(|vector| usize::try_from(vector).ok())
                        .and_then(|v| self.pending.get(v))
                        .copied()
                        .unwrap_or(false)
                })
                .fold(0u8, |acc, bit| acc | 1 << bit);
        }
    }

    fn table_byte(&self, offset: u64) -> Option<u8> {
        let (index, word, byte) = split_offset(offset);
        let entry = self.entries.get(index)?;
        Some(entry.words[word].to_le_bytes()[byte])
    }

    fn deliver_pending(&mut self) {
        if !self.enabled || self.function_masked {
            return;
        }
        for index in 0..self.entries.len() {
            let entry = self.entries[index];
            if self.pending[index] && !entry.masked() {
                self.pending[index] = false;
                self.deliver(entry);
            }
        }
    }

    fn deliver(&self, entry: Entry) {
        if let Err(e) = self.vm.signal_msi(entry.address(), entry.words[2]) {
            crate::rate_limited!(
                log::Level::Warn,
                "cannot deliver MSI to {:#x}: {e}",
                entry.address()
            );
        }
    }
}

/// Table offset to (entry, word within entry, byte within the
/// little-endian word).
fn split_offset(offset: u64) -> (usize, usize, usize) {
    let index = usize::try_from(offset / ENTRY_SIZE).unwrap_or(usize::MAX);
    let word = ((offset % ENTRY_SIZE) / 4) as usize;
    (index, word, (offset % 4) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::pci::test_support::FakeVm;

    fn programmed(vm: &Arc<FakeVm>) -> MsixTable {
        let mut table = MsixTable::new(2, vm.clone());
        table.write_table(16, &0xfee0_1000u64.to_le_bytes());
        table.write_table(24, &0x4041u32.to_le_bytes());
        table
    }

    #[test]
    fn entries_start_masked_and_disabled() {
        let vm = Arc::new(FakeVm::default());
        let mut table = programmed(&vm);
        let mut control = [0u8; 4];
        table.read_table(28, &mut control);
        assert_eq!(u32::from_le_bytes(control), VECTOR_CONTROL_MASKED);
        table.signal(1);
        assert!(vm.msis().is_empty());
        let mut pba = [0u8; 8];
        table.read_pba(0, &mut pba);
        assert_eq!(pba, [0; 8], "nothing pends while MSI-X is disabled");
    }

    #[test]
    fn masked_vector_pends_and_fires_on_unmask() {
        let vm = Arc::new(FakeVm::default());
        let mut table = programmed(&vm);
        table.set_control(true, false);
        table.signal(1);
        assert!(vm.msis().is_empty());
        let mut pba = [0u8; 8];
        table.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0b10);
        table.write_table(28, &0u32.to_le_bytes());
        assert_eq!(vm.msis(), vec![(0xfee0_1000, 0x4041)]);
        table.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0);
    }

    #[test]
    fn function_mask_holds_all_vectors() {
        let vm = Arc::new(FakeVm::default());
        let mut table = programmed(&vm);
        table.write_table(28, &0u32.to_le_bytes());
        table.set_control(true, true);
        table.signal(1);
        assert!(vm.msis().is_empty());
        table.set_control(true, false);
        assert_eq!(vm.msis(), vec![(0xfee0_1000, 0x4041)]);
        table.signal(1);
        assert_eq!(vm.msis().len(), 2);
    }

    /// Single-byte accesses reach the byte they name within a word.
    #[test]
    fn byte_accesses_address_each_byte_of_a_word() {
        let vm = Arc::new(FakeVm::default());
        let mut table = programmed(&vm);
        for (offset, value) in (16..20).zip([0x11, 0x22, 0x33, 0x44]) {
            table.write_table(offset, &[value]);
        }
        let mut word = [0u8; 4];
        table.read_table(16, &mut word);
        assert_eq!(u32::from_le_bytes(word), 0x4433_2211);
        let mut byte = [0u8];
        table.read_table(18, &mut byte);
        assert_eq!(byte, [0x33]);
        table.read_table(24 + 1, &mut byte);
        assert_eq!(byte, [0x40], "message data 0x4041, second byte");
    }

    #[test]
    fn out_of_range_accesses_are_harmless() {
        let vm = Arc::new(FakeVm::default());
        let mut table = programmed(&vm);
        table.set_control(true, false);
        table.signal(7);
        table.write_table(0x1000, &[0xff; 4]);
        let mut data = [0xaa; 4];
        table.read_table(0x1000, &mut data);
        assert_eq!(data, [0; 4]);
        assert!(vm.msis().is_empty());
    }

    /// Offsets near the top of the address space read as zero and change
    /// nothing rather than wrap around onto entry 0.
    #[test]
    fn accesses_at_the_largest_offsets_do_not_wrap() {
        let vm = Arc::new(FakeVm::default());
        let mut table = programmed(&vm);
        let mut before = [0u8; 16];
        table.read_table(0, &mut before);
        table.write_table(u64::MAX - 1, &[0xff; 4]);
        let mut after = [0u8; 16];
        table.read_table(0, &mut after);
        assert_eq!(before, after);
        let mut data = [0xaa; 4];
        table.read_table(u64::MAX - 1, &mut data);
        assert_eq!(data, [0; 4]);
        table.signal(0);
        let mut pending = [0xaa; 4];
        table.read_pba(u64::MAX / 8, &mut pending);
        assert_eq!(pending, [0; 4]);
    }
}
