//! The virtio-input configuration space (virtio 1.2, 5.8.4): the driver
//! writes `select` and `subsel`, then reads `size` and that many bytes of
//! the answer (name, serial, ids, property bits, event-type bitmaps,
//! axis ranges). The answer is rebuilt on every selector write, so a read
//! is a bounded copy whatever offset and length the guest uses.

use keymap::codes::{
    ABS_X, ABS_Y, BTN_LEFT, BTN_MIDDLE, BTN_RIGHT, BUS_VIRTUAL, EV_ABS, EV_KEY, EV_REL, EV_REP,
    KEY_MAX_KEYBOARD, REL_WHEEL,
};

/// `struct virtio_input_config`: select, subsel, size, 5 reserved bytes,
/// and a 128-byte union.
const CONFIG_LEN: usize = 136;
const UNION_OFFSET: usize = 8;
const UNION_LEN: usize = 128;

const CFG_ID_NAME: u8 = 0x01;
const CFG_ID_SERIAL: u8 = 0x02;
const CFG_ID_DEVIDS: u8 = 0x03;
const CFG_PROP_BITS: u8 = 0x10;
const CFG_EV_BITS: u8 = 0x11;
const CFG_ABS_INFO: u8 = 0x12;

/// Product ids in ID_DEVIDS (vendor 0: no vendor).
const PRODUCT_KEYBOARD: u16 = 1;
const PRODUCT_TABLET: u16 = 2;
const VERSION: u16 = 1;

/// One event type the device reports, and the codes of it (a bitmap,
/// bit N = code N).
struct EventType {
    kind: u16,
    codes: Vec<u8>,
}

/// What the device says it is.
struct Profile {
    name: &'static str,
    product: u16,
    event_types: Vec<EventType>,
    /// (axis, max); every axis starts at 0.
    axes: Vec<(u16, u32)>,
}

pub(super) struct InputConfig {
    profile: Profile,
    image: [u8; CONFIG_LEN],
}

fn bitmap(codes: impl IntoIterator<Item = u16>) -> Vec<u8> {
    let mut bits = Vec::new();
    for code in codes {
        let byte = usize::from(code / 8);
        if bits.len() <= byte {
            bits.resize(byte + 1, 0);
        }
        bits[byte] |= 1 << (code % 8);
    }
    bits
}

impl InputConfig {
    pub(super) fn keyboard() -> Self {
        Self::new(Profile {
            name: "securevm keyboard",
            product: PRODUCT_KEYBOARD,
            event_types: vec![
                EventType {
                    kind: EV_KEY,
                    codes: bitmap(1..=KEY_MAX_KEYBOARD),
                },
                // No codes, but a non-empty answer: Linux then turns on
                // its own autorepeat.
                EventType {
                    kind: EV_REP,
                    codes: vec![0],
                },
            ],
            axes: Vec::new(),
        })
    }

    pub(super) fn tablet(x_max: u32, y_max: u32) -> Self {
        Self::new(Profile {
            name: "securevm tablet",
            product: PRODUCT_TABLET,
            event_types: vec![
                EventType {
                    kind: EV_KEY,
                    codes: bitmap([BTN_LEFT, BTN_RIGHT, BTN_MIDDLE]),
                },
                EventType {
                    kind: EV_REL,
                    codes: bitmap([REL_WHEEL]),
                },
                EventType {
                    kind: EV_ABS,
                    codes: bitmap([ABS_X, ABS_Y]),
                },
            ],
            axes: vec![(ABS_X, x_max), (ABS_Y, y_max)],
        })
    }

    fn new(profile: Profile) -> Self {
        Self {
            profile,
            image: [0; CONFIG_LEN],
        }
    }

    /// Any offset and length: bytes beyond the structure read as zero.
    pub(super) fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *byte = at.and_then(|at| self.image.get(at)).copied().unwrap_or(0);
        }
    }

    /// Only `select` (offset 0) and `subsel` (offset 1) are writable.
    pub(super) fn write(&mut self, offset: u64, data: &[u8]) {
        let mut selected = false;
        for (i, &byte) in data.iter().enumerate() {
            match usize::try_from(offset).ok().and_then(|o| o.checked_add(i)) {
                Some(at @ (0 | 1)) => {
                    self.image[at] = byte;
                    selected = true;
                }
                _ => log::debug!("virtio-input: ignored config write at {offset:#x}+{i}"),
            }
        }
        if selected {
            self.answer();
        }
    }

    pub(super) fn reset(&mut self) {
        self.image = [0; CONFIG_LEN];
    }

    /// Fill `size` and the union for the current select and subsel.
    fn answer(&mut self) {
        let (select, subsel) = (self.image[0], self.image[1]);
        let mut answer = [0u8; UNION_LEN];
        let len = self.answer_into(select, subsel, &mut answer);
        // Each answer above fits the union (a name is cut to it).
        self.image[2] = u8::try_from(len).unwrap_or(0);
        self.image[UNION_OFFSET..].copy_from_slice(&answer);
    }

    fn answer_into(&self, select: u8, subsel: u8, out: &mut [u8; UNION_LEN]) -> usize {
        let profile = &self.profile;
        let mut devids = [0u8; 8];
        let mut absinfo = [0u8; 20];
        let bytes: &[u8] = match (select, subsel) {
            (CFG_ID_NAME, 0) => profile.name.as_bytes(),
            (CFG_ID_DEVIDS, 0) => {
                let ids = [BUS_VIRTUAL, 0, profile.product, VERSION];
                for (slot, id) in devids.chunks_exact_mut(2).zip(ids) {
                    slot.copy_from_slice(&id.to_le_bytes());
                }
                &devids
            }
            (CFG_EV_BITS, kind) => profile
                .event_types
                .iter()
                .find(|t| t.kind == u16::from(kind))
                .map_or(&[], |t| t.codes.as_slice()),
            (CFG_ABS_INFO, axis) => {
                match profile.axes.iter().find(|&&(a, _)| a == u16::from(axis)) {
                    Some(&(_, max)) => {
                        // min (0), max, fuzz, flat, res (0).
                        absinfo[4..8].copy_from_slice(&max.to_le_bytes());
                        &absinfo
                    }
                    None => &[],
                }
            }
            // No serial, and no input property (see the module doc of
            // the device).
            (CFG_ID_SERIAL | CFG_PROP_BITS, _) => &[],
            _ => &[],
        };
        let len = bytes.len().min(UNION_LEN);
        out[..len].copy_from_slice(&bytes[..len]);
        len
    }
}
