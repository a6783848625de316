//! `--display vnc=unix:PATH[,size=WxH][,max-mem=SIZE]`: where the RFB
//! server listens, the screen size the guest is offered, and the cap on
//! the memory the guest's display resources may take in securevm.

use std::path::PathBuf;

/// The size offered when `size=` is not given.
pub const DEFAULT_WIDTH: u32 = 1280;
pub const DEFAULT_HEIGHT: u32 = 800;
/// The cap on resource memory when `max-mem=` is not given.
pub const DEFAULT_MAX_MEM: u64 = 64 << 20;
/// Smallest and largest screen edges offered (RFB carries 16-bit sizes;
/// 4K is the largest a viewer is likely to show).
pub const MIN_EDGE: u32 = 320;
pub const MAX_WIDTH: u32 = 3840;
pub const MAX_HEIGHT: u32 = 2160;
/// Largest `max-mem=`: a few 4K frames.
pub const MAX_MAX_MEM: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayConfig {
    /// The Unix socket the RFB server listens on (created 0600).
    pub socket: PathBuf,
    pub width: u32,
    pub height: u32,
    /// Total bytes all of the guest's display resources may take.
    pub max_mem: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DisplayConfigError {
    #[error("--display {0}: expected vnc=unix:PATH[,size=WxH][,max-mem=SIZE], e.g. vnc=unix:/run/securevm/display.sock")]
    Form(String),
    #[error("--display: unknown option '{0}'; the options are size=WxH and max-mem=SIZE")]
    UnknownOption(String),
    #[error("--display: {0} given twice")]
    Repeated(&'static str),
    #[error("--display: size={0} is not WxH with {MIN_EDGE} <= W <= {MAX_WIDTH} and {MIN_EDGE} <= H <= {MAX_HEIGHT}")]
    Size(String),
    #[error("--display: max-mem={0} is not a size like 64M (K, M or G)")]
    MaxMem(String),
    #[error("--display: max-mem={given} is too small for one {width}x{height} frame ({needed} bytes) or above 1G")]
    MaxMemRange {
        given: String,
        width: u32,
        height: u32,
        needed: u64,
    },
}

impl std::str::FromStr for DisplayConfig {
    type Err = DisplayConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parts = text.split(',');
        let first = parts.next().unwrap_or_default();
        let path = first
            .strip_prefix("vnc=unix:")
            .filter(|path| !path.is_empty())
            .ok_or_else(|| DisplayConfigError::Form(text.to_string()))?;
        let mut size = None;
        let mut max_mem = None;
        for option in parts {
            match option.split_once('=') {
                Some(("size", value)) => {
                    if size.replace(parse_size(value)?).is_some() {
                        return Err(DisplayConfigError::Repeated("size="));
                    }
                }
                Some(("max-mem", value)) => {
                    let bytes = parse_bytes(value)
                        .ok_or_else(|| DisplayConfigError::MaxMem(value.to_string()))?;
                    if max_mem.replace((bytes, value)).is_some() {
                        return Err(DisplayConfigError::Repeated("max-mem="));
                    }
                }
                _ => return Err(DisplayConfigError::UnknownOption(option.to_string())),
            }
        }
        let (width, height) = size.unwrap_or((DEFAULT_WIDTH, DEFAULT_HEIGHT));
        let needed = u64::from(width) * u64::from(height) * 4;
        let max_mem = match max_mem {
            None => DEFAULT_MAX_MEM.max(needed),
            Some((bytes, _)) if (needed..=MAX_MAX_MEM).contains(&bytes) => bytes,
            Some((_, given)) => {
                return Err(DisplayConfigError::MaxMemRange {
                    given: given.to_string(),
                    width,
                    height,
                    needed,
                })
            }
        };
        Ok(DisplayConfig {
            socket: PathBuf::from(path),
            width,
            height,
            max_mem,
        })
    }
}

fn parse_size(value: &str) -> Result<(u32, u32), DisplayConfigError> {
    let bad = || DisplayConfigError::Size(value.to_string());
    let (width, height) = value.split_once('x').ok_or_else(bad)?;
    let width: u32 = width.parse().map_err(|_| bad())?;
    let height: u32 = height.parse().map_err(|_| bad())?;
    if (MIN_EDGE..=MAX_WIDTH).contains(&width) && (MIN_EDGE..=MAX_HEIGHT).contains(&height) {
        Ok((width, height))
    } else {
        Err(bad())
    }
}

/// "64M", "65536K", "1G", or plain bytes.
fn parse_bytes(value: &str) -> Option<u64> {
    let (digits, shift) = match value.as_bytes().last()? {
        b'K' | b'k' => (&value[..value.len() - 1], 10),
        b'M' | b'm' => (&value[..value.len() - 1], 20),
        b'G' | b'g' => (&value[..value.len() - 1], 30),
        _ => (value, 0),
    };
    let number: u64 = digits.parse().ok()?;
    number.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DisplayConfig, DisplayConfigError> {
        text.parse()
    }

    #[test]
    fn the_socket_alone_gives_the_defaults() {
        let config = parse("vnc=unix:/run/d.sock").unwrap();
        assert_eq!(config.socket, PathBuf::from("/run/d.sock"));
        assert_eq!((config.width, config.height), (1280, 800));
        assert_eq!(config.max_mem, 64 << 20);
    }

    #[test]
    fn size_and_max_mem_are_read() {
        let config = parse("vnc=unix:d.sock,size=1920x1080,max-mem=128M").unwrap();
        assert_eq!((config.width, config.height), (1920, 1080));
        assert_eq!(config.max_mem, 128 << 20);
        assert_eq!(parse("vnc=unix:d,max-mem=1G").unwrap().max_mem, 1 << 30);
        // The default cap holds a 4K frame (33 MB).
        let big = parse("vnc=unix:d,size=3840x2160").unwrap();
        assert_eq!(big.max_mem, 64 << 20);
    }

    #[test]
    fn bad_forms_are_refused_with_what_is_expected() {
        for bad in ["", "vnc", "vnc=unix:", "vnc=tcp:5900", "sdl", "unix:/x"] {
            assert!(
                matches!(parse(bad), Err(DisplayConfigError::Form(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse("vnc=unix:d,depth=24"),
            Err(DisplayConfigError::UnknownOption(_))
        ));
        assert!(matches!(
            parse("vnc=unix:d,size=800x600,size=800x600"),
            Err(DisplayConfigError::Repeated(_))
        ));
        let message = parse("vnc").unwrap_err().to_string();
        assert!(message.contains("vnc=unix:PATH"), "{message}");
    }

    #[test]
    fn sizes_outside_the_limits_are_refused() {
        for bad in [
            "0x0",
            "100x100",
            "3841x2160",
            "3840x2161",
            "1280",
            "1280x",
            "x800",
            "-1x800",
            "99999999999x800",
        ] {
            assert!(
                matches!(
                    parse(&format!("vnc=unix:d,size={bad}")),
                    Err(DisplayConfigError::Size(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn max_mem_must_hold_one_frame_and_stay_below_the_cap() {
        for bad in ["64X", "M", "", "18446744073709551615G"] {
            assert!(
                matches!(
                    parse(&format!("vnc=unix:d,max-mem={bad}")),
                    Err(DisplayConfigError::MaxMem(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            parse("vnc=unix:d,max-mem=1M"),
            Err(DisplayConfigError::MaxMemRange { .. })
        ));
        assert!(matches!(
            parse("vnc=unix:d,size=3840x2160,max-mem=31M"),
            Err(DisplayConfigError::MaxMemRange { .. })
        ));
        assert!(matches!(
            parse("vnc=unix:d,max-mem=2G"),
            Err(DisplayConfigError::MaxMemRange { .. })
        ));
    }
}
