//! The legacy PC devices only UEFI firmware needs (edk2's CloudHv build of
//! OVMF, `--firmware`): the CMOS real-time clock, the ACPI PM timer its
//! delays count on, and the sinks for its POST codes and debug console. A
//! `--kernel` boot does without them, so they are attached only for a
//! firmware boot, by [`attach_firmware_devices`]. None of them has a
//! thread or an interrupt: each computes what a read returns from the host
//! clocks when the read happens.

pub mod clock;
pub mod debug_port;
pub mod pm_timer;
pub mod rtc;

use std::fs::File;
use std::sync::{Arc, Mutex};

use crate::arch::layout::{
    ACPI_PM_TIMER_PORT, CMOS_INDEX_PORT, FIRMWARE_DEBUG_PORT, POST_CODE_PORT,
};
use crate::devices::bus::{Bus, BusError};
use clock::HostClock;
use debug_port::{DebugConsole, PostCodeSink, DEBUG_PORT_LEN};
use pm_timer::{PmTimer, PM_TIMER_PORT_LEN};
use rtc::{CmosRtc, CMOS_PORT_LEN};

/// Put the firmware's devices on the port bus: the RTC at 0x70-0x71, the
/// PM timer at 0x608-0x60b, POST codes at 0x80 and the debug console at
/// 0x402, whose output goes to `firmware_log` when given. The RTC's CMOS
/// RAM tells the firmware about the `ram_above_4gib` bytes of RAM at 4 GiB.
pub fn attach_firmware_devices(
    pio: &Bus,
    firmware_log: Option<File>,
    ram_above_4gib: u64,
) -> Result<(), BusError> {
    pio.insert(
        Arc::new(Mutex::new(
            CmosRtc::new(HostClock::new()).with_ram_above_4gib(ram_above_4gib),
        )),
        u64::from(CMOS_INDEX_PORT),
        CMOS_PORT_LEN,
    )?;
    pio.insert(
        Arc::new(Mutex::new(PmTimer::new(HostClock::new()))),
        u64::from(ACPI_PM_TIMER_PORT),
        PM_TIMER_PORT_LEN,
    )?;
    pio.insert(
        Arc::new(Mutex::new(PostCodeSink)),
        u64::from(POST_CODE_PORT),
        DEBUG_PORT_LEN,
    )?;
    pio.insert(
        Arc::new(Mutex::new(DebugConsole::new(firmware_log))),
        u64::from(FIRMWARE_DEBUG_PORT),
        DEBUG_PORT_LEN,
    )?;
    Ok(())
}

/// The device offset of byte `index` of an access at `offset`, when the
/// device treats each byte as its own port; `None` past the port space.
fn port_of_byte(offset: u64, index: usize) -> Option<u64> {
    offset.checked_add(u64::try_from(index).ok()?)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::arch::layout::CMOS_DATA_PORT;

    struct ScratchFile(std::path::PathBuf);

    impl Drop for ScratchFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn every_device_answers_at_its_port() {
        let path = ScratchFile(
            std::env::temp_dir().join(format!("securevm-firmware-log-{}", std::process::id())),
        );
        let pio = Bus::new();
        attach_firmware_devices(&pio, Some(File::create(&path.0).unwrap()), 0).unwrap();

        let mut byte = [0u8];
        assert!(pio.read(u64::from(FIRMWARE_DEBUG_PORT), &mut byte));
        assert_eq!(byte, [0xe9]);
        assert!(pio.write(u64::from(FIRMWARE_DEBUG_PORT), b"SecCoreStartupWithStack\n"));
        let mut logged = String::new();
        File::open(&path.0)
            .unwrap()
            .read_to_string(&mut logged)
            .unwrap();
        assert_eq!(logged, "SecCoreStartupWithStack\n");

        // Register D through index and data port: valid RAM and time.
        assert!(pio.write(u64::from(CMOS_INDEX_PORT), &[0x0d]));
        assert!(pio.read(u64::from(CMOS_DATA_PORT), &mut byte));
        assert_eq!(byte, [0x80]);

        let mut timer = [0u8; 4];
        assert!(pio.read(u64::from(ACPI_PM_TIMER_PORT) + 3, &mut timer[..1]));
        assert_eq!(timer[0], 0, "the counter has 24 bits");
        assert!(pio.read(u64::from(ACPI_PM_TIMER_PORT), &mut timer));

        assert!(pio.write(u64::from(POST_CODE_PORT), &[0x12]));
        // Nothing more than the devices' ports.
        assert!(!pio.read(u64::from(ACPI_PM_TIMER_PORT) + 4, &mut byte));
        assert!(!pio.read(u64::from(CMOS_DATA_PORT) + 1, &mut byte));
    }

    #[test]
    fn a_port_already_taken_is_an_error() {
        let pio = Bus::new();
        pio.insert(
            Arc::new(Mutex::new(PostCodeSink)),
            u64::from(ACPI_PM_TIMER_PORT) + 2,
            1,
        )
        .unwrap();
        assert!(matches!(
            attach_firmware_devices(&pio, None, 0),
            Err(BusError::Overlap { .. })
        ));
    }

    #[test]
    fn byte_ports_never_wrap() {
        assert_eq!(port_of_byte(1, 2), Some(3));
        assert_eq!(port_of_byte(u64::MAX, 0), Some(u64::MAX));
        assert_eq!(port_of_byte(u64::MAX, 1), None);
    }
}
