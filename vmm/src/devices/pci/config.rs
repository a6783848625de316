//! A type-0 PCI configuration space: the header registers, BARs with the
//! sizing behaviour drivers rely on (write all ones, read back the size
//! mask), and a capability list. Devices own one and decide what is
//! writable; the guest-facing register semantics live here once.

use super::PciError;
use crate::narrow::low_u32;

/// PCI Express configuration space per function (what ECAM exposes).
pub const CONFIG_SPACE_SIZE: usize = 4096;
const REGISTER_COUNT: usize = CONFIG_SPACE_SIZE / 4;
/// The legacy header plus capabilities: everything below is reachable
/// through mechanism #1 as well as ECAM.
const LEGACY_SPACE_SIZE: usize = 256;
pub const BAR_COUNT: usize = 6;

const COMMAND_REGISTER: usize = 1;
const BAR0_REGISTER: usize = 4;
const SUBSYSTEM_REGISTER: usize = 11;
const CAPABILITY_POINTER_REGISTER: usize = 13;
const INTERRUPT_REGISTER: usize = 15;
const FIRST_CAPABILITY_OFFSET: usize = 0x40;

/// Command register bit enabling memory-space decoding of the BARs.
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// I/O space, memory space, bus master, parity error response, SERR#,
/// INTx disable: the command bits a guest may change.
const COMMAND_WRITABLE: u32 = 0x0547;
const STATUS_CAPABILITIES_LIST: u32 = 1 << 4;
const BAR_MEMORY_64BIT: u32 = 0b10 << 1;

/// The identity fields of a type-0 header.
#[derive(Debug, Clone, Copy)]
pub struct PciHeader {
    pub vendor_id: u16,
    pub device_id: u16,
    pub revision_id: u8,
    pub class_code: u8,
    pub subclass: u8,
    pub prog_if: u8,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BarInfo {
    size: u64,
    is_64bit: bool,
}

/// A memory BAR the device currently decodes: where, and how big.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedBar {
    pub index: usize,
    pub base: u64,
    pub size: u64,
}

pub struct PciConfiguration {
    registers: Vec<u32>,
    writable: Vec<u32>,
    bars: [Option<BarInfo>; BAR_COUNT],
    /// BAR registers in use, including the upper halves of 64-bit BARs.
    occupied: [bool; BAR_COUNT],
    last_capability: Option<usize>,
    next_capability: usize,
}

impl PciConfiguration {
    pub fn new(header: &PciHeader) -> Self {
        let mut registers = vec![0u32; REGISTER_COUNT];
        let mut writable = vec![0u32; REGISTER_COUNT];
        registers[0] = u32::from(header.device_id) << 16 | u32::from(header.vendor_id);
        registers[2] = u32::from(header.class_code) << 24
            | u32::from(header.subclass) << 16
            | u32::from(header.prog_if) << 8
            | u32::from(header.revision_id);
        registers[SUBSYSTEM_REGISTER] =
            u32::from(header.subsystem_id) << 16 | u32::from(header.subsystem_vendor_id);
        writable[COMMAND_REGISTER] = COMMAND_WRITABLE;
        // Cache line size and latency timer are scratch registers to software.
        writable[3] = 0x0000_ffff;
        // Interrupt line is firmware/OS scratch; the pin stays 0 (no INTx).
        writable[INTERRUPT_REGISTER] = 0x0000_00ff;
        Self {
            registers,
            writable,
            bars: [None; BAR_COUNT],
            occupied: [false; BAR_COUNT],
            last_capability: None,
            next_capability: FIRST_CAPABILITY_OFFSET,
        }
    }

    /// Declare memory BAR `index` of `size` bytes (a power of two of at
    /// least 16). A 64-bit BAR also takes `index + 1` for its upper half.
    pub fn add_memory_bar(
        &mut self,
        index: usize,
        size: u64,
        is_64bit: bool,
    ) -> Result<(), PciError> {
        let last_index = if is_64bit { index + 1 } else { index };
        if last_index >= BAR_COUNT || self.occupied[index..=last_index].contains(&true) {
            return Err(PciError::InvalidBar { index, size });
        }
        let size_fits = if is_64bit { true } else { size <= 1 << 31 };
        if !size.is_power_of_two() || size < 16 || !size_fits {
            return Err(PciError::InvalidBar { index, size });
        }
        let address_mask = !(size - 1);
        let flags = if is_64bit { BAR_MEMORY_64BIT } else { 0 };
        self.registers[BAR0_REGISTER + index] = flags;
        self.writable[BAR0_REGISTER + index] = low_u32(address_mask) & !0xf;
        if is_64bit {
            self.writable[BAR0_REGISTER + index + 1] = (address_mask >> 32) as u32;
        }
        self.bars[index] = Some(BarInfo { size, is_64bit });
        self.occupied[index..=last_index].fill(true);
        Ok(())
    }

    pub fn bar_size(&self, index: usize) -> Option<u64> {
        self.bars.get(index).copied().flatten().map(|bar| bar.size)
    }

    /// The address BAR `index` is programmed with, whether or not decoded.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let bar = self.bars.get(index).copied().flatten()?;
        let low = u64::from(self.registers[BAR0_REGISTER + index] & !0xf);
        let high = if bar.is_64bit {
            u64::from(self.registers[BAR0_REGISTER + index + 1]) << 32
        } else {
            0
        };
        Some(high | low)
    }

    /// Program BAR `index` (what firmware does at enumeration).
    pub fn set_bar_address(&mut self, index: usize, address: u64) -> Result<(), PciError> {
        let bar = self.bars.get(index).copied().flatten();
        let bar = bar.ok_or(PciError::InvalidBar { index, size: 0 })?;
        if address & (bar.size - 1) != 0 || (!bar.is_64bit && address > u64::from(u32::MAX)) {
            return Err(PciError::InvalidBar {
                index,
                size: bar.size,
            });
        }
        let flags = self.registers[BAR0_REGISTER + index] & 0xf;
        self.registers[BAR0_REGISTER + index] = low_u32(address) & !0xf | flags;
        if bar.is_64bit {
            self.registers[BAR0_REGISTER + index + 1] = (address >> 32) as u32;
        }
        Ok(())
    }

    pub fn command(&self) -> u16 {
        // The low half of the register; the high half is the status.
        (self.registers[COMMAND_REGISTER] & 0xffff) as u16
    }

    pub fn set_command(&mut self, command: u16) {
        let register = &mut self.registers[COMMAND_REGISTER];
        *register = (*register & 0xffff_0000) | (u32::from(command) & COMMAND_WRITABLE);
    }

    /// The BARs the guest can reach now: memory decoding is on and the
    /// programmed range does not wrap around the address space.
    pub fn decoded_bars(&self) -> Vec<DecodedBar> {
        if self.command() & COMMAND_MEMORY_SPACE == 0 {
            return Vec::new();
        }
        (0..BAR_COUNT)
            .filter_map(|index| {
                let size = self.bar_size(index)?;
                let base = self.bar_address(index)?;
                base.checked_add(size)?;
                Some(DecodedBar { index, base, size })
            })
            .collect()
    }

    /// Append a capability. `body` starts with the capability ID; its
    /// second byte (the next pointer) is filled in here. `writable` masks
    /// the bits of `body` the guest may change (same length or empty).
    /// Returns the capability's offset in configuration space.
    pub fn add_capability(&mut self, body: &[u8], writable: &[u8]) -> Result<usize, PciError> {
        let offset = self.next_capability;
        let end = offset + body.len();
        let fits = body.len() >= 2 && end <= LEGACY_SPACE_SIZE;
        let valid = fits && (writable.is_empty() || writable.len() == body.len());
        // Inside the legacy 256 bytes, so the offset is a one-byte pointer.
        let Some(pointer) = u8::try_from(offset).ok().filter(|_| valid) else {
            return Err(PciError::CapabilitySpaceFull { len: body.len() });
        };
        for (i, &byte) in body.iter().enumerate() {
            let value = if i == 1 { 0 } else { byte };
            self.set_byte(offset + i, value);
            let mask = writable.get(i).copied().unwrap_or(0);
            set_byte_in(&mut self.writable, offset + i, mask);
        }
        match self.last_capability {
            Some(previous) => self.set_byte(previous + 1, pointer),
            None => {
                self.registers[CAPABILITY_POINTER_REGISTER] = u32::from(pointer);
                self.registers[COMMAND_REGISTER] |= STATUS_CAPABILITIES_LIST << 16;
            }
        }
        self.last_capability = Some(offset);
        // Capabilities are dword aligned.
        self.next_capability = (end + 3) & !3;
        Ok(offset)
    }

    /// Device-side update of bytes the guest may not write itself.
    pub fn write_device_bytes(&mut self, offset: usize, bytes: &[u8]) {
        for (i, &byte) in bytes.iter().enumerate() {
            if offset + i < CONFIG_SPACE_SIZE {
                self.set_byte(offset + i, byte);
            }
        }
    }

    pub fn read_register(&self, index: usize) -> u32 {
        self.registers.get(index).copied().unwrap_or(0)
    }

    /// Guest read of `data.len()` bytes at `offset`; bytes past the end
    /// of configuration space read as all ones.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i)
                .and_then(|at| self.byte(at))
                .unwrap_or(0xff);
        }
    }

    /// Guest write: only the writable bits of each byte change.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &value) in data.iter().enumerate() {
            let Some(at) = offset.checked_add(i) else {
                return;
            };
            let Some(mask) = byte_in(&self.writable, at) else {
                return;
            };
            let old = self.byte(at).unwrap_or(0);
            self.set_byte(at, (old & !mask) | (value & mask));
        }
    }

    fn byte(&self, offset: usize) -> Option<u8> {
        byte_in(&self.registers, offset)
    }

    fn set_byte(&mut self, offset: usize, value: u8) {
        set_byte_in(&mut self.registers, offset, value);
    }
}

fn byte_in(registers: &[u32], offset: usize) -> Option<u8> {
    let register = registers.get(offset / 4)?;
    Some(register.to_le_bytes()[offset % 4])
}

fn set_byte_in(registers: &mut [u32], offset: usize, value: u8) {
    if let Some(register) = registers.get_mut(offset / 4) {
        let shift = (offset % 4) * 8;
        *register = (*register & !(0xff << shift)) | (u32::from(value) << shift);
    }
}

#[cfg(test)]
mod tests {
    // Test fixtures narrow small known values; a wrong one fails the test.
    #![allow(clippy::cast_possible_truncation)]
    use super::*;

    fn header() -> PciHeader {
        PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            revision_id: 1,
            class_code: 0x01,
            subclass: 0x80,
            prog_if: 0,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x40,
        }
    }

    fn read_u32(config: &PciConfiguration, offset: usize) -> u32 {
        let mut data = [0u8; 4];
        config.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    #[test]
    fn header_fields_read_back() {
        let config = PciConfiguration::new(&header());
        assert_eq!(read_u32(&config, 0), 0x1042_1af4);
        assert_eq!(read_u32(&config, 8), 0x0180_0001);
        assert_eq!(read_u32(&config, 0x2c), 0x0040_1af4);
        assert_eq!(read_u32(&config, 0x3c) >> 8 & 0xff, 0, "no INTx pin");
    }

    #[test]
    fn read_only_fields_ignore_writes() {
        let mut config = PciConfiguration::new(&header());
        config.write(0, &[0, 0, 0, 0]);
        config.write(8, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(read_u32(&config, 0), 0x1042_1af4);
        assert_eq!(read_u32(&config, 8), 0x0180_0001);
    }

    #[test]
    fn bar32_sizing_returns_size_mask_and_keeps_flags() {
        let mut config = PciConfiguration::new(&header());
        config.add_memory_bar(0, 0x1000, false).unwrap();
        config.set_bar_address(0, 0xc000_0000).unwrap();
        assert_eq!(read_u32(&config, 0x10), 0xc000_0000);
        config.write(0x10, &[0xff; 4]);
        assert_eq!(read_u32(&config, 0x10), 0xffff_f000);
        config.write(0x10, &0xc000_2000u32.to_le_bytes());
        assert_eq!(config.bar_address(0), Some(0xc000_2000));
    }

    #[test]
    fn bar64_sizing_covers_both_halves() {
        let mut config = PciConfiguration::new(&header());
        config.add_memory_bar(0, 0x8000, true).unwrap();
        config.set_bar_address(0, 0xc000_8000).unwrap();
        assert_eq!(read_u32(&config, 0x10), 0xc000_8004);
        config.write(0x10, &[0xff; 4]);
        assert_eq!(read_u32(&config, 0x10), 0xffff_8004);
        config.write(0x14, &[0xff; 4]);
        assert_eq!(read_u32(&config, 0x14), 0xffff_ffff);
        config.write(0x10, &0x1_0000u32.to_le_bytes());
        config.write(0x14, &1u32.to_le_bytes());
        assert_eq!(config.bar_address(0), Some(0x1_0001_0000));
    }

    #[test]
    fn unimplemented_bars_and_rom_read_zero_after_sizing() {
        let mut config = PciConfiguration::new(&header());
        config.add_memory_bar(0, 0x1000, true).unwrap();
        for offset in [0x18, 0x1c, 0x20, 0x24, 0x30] {
            config.write(offset, &[0xff; 4]);
            assert_eq!(read_u32(&config, offset), 0, "offset {offset:#x}");
        }
    }

    #[test]
    fn invalid_bars_are_refused() {
        let mut config = PciConfiguration::new(&header());
        assert!(config.add_memory_bar(0, 0x1001, false).is_err());
        assert!(config.add_memory_bar(5, 0x1000, true).is_err());
        assert!(config.add_memory_bar(6, 0x1000, false).is_err());
        config.add_memory_bar(0, 0x1000, true).unwrap();
        assert!(config.add_memory_bar(1, 0x1000, false).is_err());
        assert!(config.set_bar_address(0, 0xc000_0800).is_err());
    }

    #[test]
    fn decoded_bars_follow_memory_enable() {
        let mut config = PciConfiguration::new(&header());
        config.add_memory_bar(0, 0x1000, false).unwrap();
        config.set_bar_address(0, 0xc000_0000).unwrap();
        assert!(config.decoded_bars().is_empty());
        config.write(4, &[COMMAND_MEMORY_SPACE as u8, 0]);
        assert_eq!(
            config.decoded_bars(),
            vec![DecodedBar {
                index: 0,
                base: 0xc000_0000,
                size: 0x1000
            }]
        );
    }

    /// Accesses whose end lies past `usize::MAX` read all ones and write
    /// nothing rather than wrap around onto the header.
    #[test]
    fn accesses_at_the_largest_offsets_do_not_wrap() {
        let mut config = PciConfiguration::new(&header());
        let mut data = [0u8; 4];
        config.read(usize::MAX - 1, &mut data);
        assert_eq!(data, [0xff; 4]);
        config.write(usize::MAX - 1, &[COMMAND_MEMORY_SPACE as u8; 8]);
        assert_eq!(config.command(), 0);
    }

    #[test]
    fn capability_list_is_linked_and_masked() {
        let mut config = PciConfiguration::new(&header());
        let first = config.add_capability(&[0x09, 0xaa, 4, 1], &[]).unwrap();
        let second = config
            .add_capability(&[0x11, 0, 0x12, 0x34], &[0, 0, 0xff, 0])
            .unwrap();
        assert_eq!(first, 0x40);
        assert_eq!(second, 0x44);
        assert_eq!(
            read_u32(&config, 4) >> 16 & STATUS_CAPABILITIES_LIST,
            STATUS_CAPABILITIES_LIST
        );
        assert_eq!(read_u32(&config, 0x34) & 0xff, 0x40);
        assert_eq!(read_u32(&config, 0x40), 0x0104_4409);
        assert_eq!(read_u32(&config, 0x44), 0x3412_0011);
        config.write(0x44, &[0xff; 4]);
        assert_eq!(read_u32(&config, 0x44), 0x34ff_0011);
        assert!(config.add_capability(&[0; 200], &[]).is_err());
    }

    #[test]
    fn reads_past_the_end_are_all_ones() {
        let config = PciConfiguration::new(&header());
        let mut data = [0u8; 4];
        config.read(CONFIG_SPACE_SIZE - 2, &mut data);
        assert_eq!(data, [0, 0, 0xff, 0xff]);
    }
}
