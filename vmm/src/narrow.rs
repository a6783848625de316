//! Narrowing integer conversions whose result is known to fit, or whose
//! truncation is the point, each written once with its reason.
//!
//! The workspace denies `clippy::cast_possible_truncation`: an `as` cast to
//! a narrower type silently drops high bits. Values that may not fit, above
//! all anything the guest controls, go through `TryFrom` with an error path
//! at the place they are used. What remains are the conversions here.

// securevm is an x86-64 KVM VMM: `usize` is as wide as `u64`, so a `u64`
// length or offset converts to `usize` without loss.
const _: () = assert!(usize::BITS == u64::BITS);

/// `value` as a `usize`; lossless on every host securevm builds for (the
/// assertion above). Whether the value is a sensible length is the
/// caller's check.
pub const fn usize_from_u64(value: u64) -> usize {
    #[allow(clippy::cast_possible_truncation)] // usize is 64 bits (asserted above)
    let widened = value as usize;
    widened
}

/// The low 32 bits of `value`, for a 64-bit quantity stored as two 32-bit
/// halves (the high half is `value >> 32`).
pub const fn low_u32(value: u64) -> u32 {
    #[allow(clippy::cast_possible_truncation)] // dropping the high half is the point
    let low = value as u32;
    low
}

/// The constant `$value` converted to the integer type `$to`, checked when
/// the crate is compiled: a value that does not fit stops the build. The
/// `const` block makes it usable for constants only; run-time values use
/// `TryFrom`.
macro_rules! const_narrow {
    ($value:expr => $to:ty) => {
        const {
            assert!(
                ($value) as u128 <= <$to>::MAX as u128,
                "constant does not fit the narrower type"
            );
            #[allow(clippy::cast_possible_truncation)] // range asserted above
            let narrowed = ($value) as $to;
            narrowed
        }
    };
}
pub(crate) use const_narrow;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_u32_keeps_the_low_half() {
        assert_eq!(low_u32(0x1234_5678_9abc_def0), 0x9abc_def0);
        assert_eq!(low_u32(u64::from(u32::MAX)), u32::MAX);
    }

    #[test]
    fn usize_from_u64_is_lossless() {
        assert_eq!(usize_from_u64(u64::MAX), usize::MAX);
    }

    #[test]
    fn const_narrow_keeps_values_that_fit() {
        const WIDE: u64 = 0xffff_ffff;
        assert_eq!(const_narrow!(WIDE => u32), u32::MAX);
        assert_eq!(const_narrow!(8u16 => u8), 8);
    }
}
