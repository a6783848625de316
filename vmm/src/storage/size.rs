//! Human disk sizes ("64M", "10G", "512") for the command line.

use super::error::StorageError;

/// Bytes in `text`: a plain number, or one with a K/M/G/T suffix (powers
/// of 1024; an optional trailing "iB" or "B" is accepted).
pub fn parse_size(text: &str) -> Result<u64, StorageError> {
    let invalid = || StorageError::InvalidSize(text.to_string());
    let trimmed = text.trim();
    let without_unit = trimmed
        .strip_suffix("iB")
        .or_else(|| trimmed.strip_suffix('B'))
        .unwrap_or(trimmed);
    let (digits, shift) = match without_unit.chars().last() {
        Some('K' | 'k') => (&without_unit[..without_unit.len() - 1], 10),
        Some('M' | 'm') => (&without_unit[..without_unit.len() - 1], 20),
        Some('G' | 'g') => (&without_unit[..without_unit.len() - 1], 30),
        Some('T' | 't') => (&without_unit[..without_unit.len() - 1], 40),
        _ => (without_unit, 0),
    };
    let number: u64 = digits.parse().map_err(|_| invalid())?;
    number.checked_mul(1u64 << shift).ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("4KiB").unwrap(), 4096);
        assert_eq!(parse_size("1t").unwrap(), 1 << 40);
    }

    #[test]
    fn bad_sizes_are_refused() {
        for bad in ["", "M", "12X", "-1G", "99999999999T", "1.5G"] {
            assert!(
                matches!(parse_size(bad), Err(StorageError::InvalidSize(_))),
                "{bad}"
            );
        }
    }
}
