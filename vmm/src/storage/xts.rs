//! Sector encryption for LUKS `aes-xts-plain64` segments, on OpenSSL's
//! AES-XTS (AES-NI where the CPU has it).
//!
//! Every encryption unit (512 or 4096 bytes) is one XTS data unit. Its
//! tweak is the little-endian number of the unit's first 512-byte sector,
//! counted from the segment start plus the segment's `iv_tweak`: LUKS2 and
//! dm-crypt count 512-byte sectors for `plain64` even when the unit is
//! 4096 bytes (dm-crypt's `iv_large_sectors` off).
//!
//! OpenSSL contexts are expensive to key, so each [`SectorCipher`] keeps a
//! small pool of keyed contexts; a request takes one, re-initialises only
//! the IV per unit and gives it back.

use std::sync::Mutex;

use foreign_types::ForeignTypeRef;
use openssl::cipher::{Cipher, CipherRef};
use openssl::cipher_ctx::CipherCtx;

use super::secret::SecretBuf;
use crate::sync::Unpoisoned;

/// LUKS counts plain64 IVs in units of this many bytes.
pub const IV_SECTOR: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("unsupported XTS key size of {0} bits; aes-xts-plain64 needs 256 or 512 bits")]
    KeySize(usize),
    #[error("unsupported encryption sector size {0}; use 512 or 4096")]
    UnitSize(u32),
    #[error("{len} bytes is not a whole number of {unit}-byte encryption sectors")]
    Unaligned { len: usize, unit: usize },
    #[error("OpenSSL AES-XTS failed: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
}

#[derive(Clone, Copy)]
enum Direction {
    Encrypt,
    Decrypt,
}

struct ContextPair {
    encrypt: CipherCtx,
    decrypt: CipherCtx,
}

/// AES-XTS over whole encryption units of one segment.
pub struct SectorCipher {
    key: SecretBuf,
    cipher: &'static CipherRef,
    unit: usize,
    iv_tweak: u64,
    pool: Mutex<Vec<ContextPair>>,
}

impl SectorCipher {
    /// `key` is the whole XTS key (both halves): 64 bytes for AES-256-XTS,
    /// 32 for AES-128-XTS. `unit_size` is the segment's sector size and
    /// `iv_tweak` its first IV.
    pub fn new(key: SecretBuf, unit_size: u32, iv_tweak: u64) -> Result<Self, CryptoError> {
        let cipher = match key.len() {
            64 => Cipher::aes_256_xts(),
            32 => Cipher::aes_128_xts(),
            other => return Err(CryptoError::KeySize(other * 8)),
        };
        if unit_size != 512 && unit_size != 4096 {
            return Err(CryptoError::UnitSize(unit_size));
        }
        let this = Self {
            key,
            cipher,
            unit: unit_size as usize,
            iv_tweak,
            pool: Mutex::new(Vec::new()),
        };
        // Key a first pair now so a key OpenSSL refuses (e.g. equal halves)
        // fails at open, not on the guest's first write.
        let pair = this.new_pair()?;
        this.give_back(pair);
        Ok(this)
    }

    pub fn unit_size(&self) -> usize {
        self.unit
    }

    /// Encrypt `data` in place; `segment_offset` is the byte offset of
    /// `data[0]` within the segment.
    pub fn encrypt_in_place(
        &self,
        segment_offset: u64,
        data: &mut [u8],
    ) -> Result<(), CryptoError> {
        let at = data.as_mut_ptr();
        // SAFETY: `data` is valid for `data.len()` bytes; in place is allowed.
        unsafe { self.run(Direction::Encrypt, segment_offset, at, at, data.len()) }
    }

    /// Decrypt `data` in place; see [`SectorCipher::encrypt_in_place`].
    pub fn decrypt_in_place(
        &self,
        segment_offset: u64,
        data: &mut [u8],
    ) -> Result<(), CryptoError> {
        let at = data.as_mut_ptr();
        // SAFETY: as in `encrypt_in_place`.
        unsafe { self.run(Direction::Decrypt, segment_offset, at, at, data.len()) }
    }

    /// Encrypt `input` into `output` (same length), leaving `input` as it
    /// is: the write path encrypts guest data straight into its I/O
    /// buffer without an extra copy.
    pub fn encrypt_into(
        &self,
        segment_offset: u64,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<(), CryptoError> {
        if input.len() != output.len() {
            return Err(CryptoError::Unaligned {
                len: input.len(),
                unit: self.unit,
            });
        }
        // SAFETY: two distinct slices of the same length.
        unsafe {
            self.run(
                Direction::Encrypt,
                segment_offset,
                input.as_ptr(),
                output.as_mut_ptr(),
                input.len(),
            )
        }
    }

    /// Decrypt `len` bytes of guest memory at `data` in place.
    ///
    /// # Safety
    /// `data` must be valid for reads and writes of `len` bytes.
    pub unsafe fn decrypt_raw(
        &self,
        segment_offset: u64,
        data: *mut u8,
        len: usize,
    ) -> Result<(), CryptoError> {
        // SAFETY: passed on from the caller.
        unsafe { self.run(Direction::Decrypt, segment_offset, data, data, len) }
    }

    /// Encrypt `len` bytes of guest memory at `input` into `output`.
    ///
    /// # Safety
    /// `input` must be valid for reads and `output` for writes of `len`
    /// bytes, and the two must not overlap.
    pub unsafe fn encrypt_raw(
        &self,
        segment_offset: u64,
        input: *const u8,
        output: *mut u8,
        len: usize,
    ) -> Result<(), CryptoError> {
        // SAFETY: passed on from the caller.
        unsafe { self.run(Direction::Encrypt, segment_offset, input, output, len) }
    }

    /// # Safety
    /// `input` must be valid for reads and `output` for writes of `len`
    /// bytes; they are either the same pointer or do not overlap.
    unsafe fn run(
        &self,
        direction: Direction,
        segment_offset: u64,
        input: *const u8,
        output: *mut u8,
        len: usize,
    ) -> Result<(), CryptoError> {
        if !len.is_multiple_of(self.unit) || !segment_offset.is_multiple_of(self.unit as u64) {
            return Err(CryptoError::Unaligned {
                len,
                unit: self.unit,
            });
        }
        let mut pair = self.take()?;
        let (ctx, encrypt) = match direction {
            Direction::Encrypt => (&mut pair.encrypt, true),
            Direction::Decrypt => (&mut pair.decrypt, false),
        };
        let sectors_per_unit = self.unit as u64 / IV_SECTOR;
        let mut sector = self.iv_tweak.wrapping_add(segment_offset / IV_SECTOR);
        let mut iv = [0u8; 16];
        let mut result = Ok(());
        for at in (0..len).step_by(self.unit) {
            iv[..8].copy_from_slice(&sector.to_le_bytes());
            // SAFETY: `at + unit <= len`, inside both buffers the caller
            // vouched for; OpenSSL allows input and output to be the same.
            result =
                unsafe { xts_unit(ctx, encrypt, &iv, input.add(at), output.add(at), self.unit) };
            if result.is_err() {
                break;
            }
            sector = sector.wrapping_add(sectors_per_unit);
        }
        self.give_back(pair);
        result
    }

    fn take(&self) -> Result<ContextPair, CryptoError> {
        let pooled = self.pool.lock().unpoisoned().pop();
        match pooled {
            Some(pair) => Ok(pair),
            None => self.new_pair(),
        }
    }

    fn give_back(&self, pair: ContextPair) {
        self.pool.lock().unpoisoned().push(pair);
    }

    fn new_pair(&self) -> Result<ContextPair, CryptoError> {
        let mut encrypt = CipherCtx::new()?;
        encrypt.encrypt_init(Some(self.cipher), Some(self.key.as_bytes()), None)?;
        let mut decrypt = CipherCtx::new()?;
        decrypt.decrypt_init(Some(self.cipher), Some(self.key.as_bytes()), None)?;
        Ok(ContextPair { encrypt, decrypt })
    }
}

/// One XTS data unit through a keyed context: set the IV, run the
/// cipher. Straight FFI on purpose: the safe wrappers re-query the IV
/// length and block size through OpenSSL 3's parameter machinery on
/// every call, which costs as much as encrypting a 512-byte unit.
///
/// # Safety
/// `input` and `output` must each be valid for `len` bytes (they may be
/// the same pointer); `ctx` must be keyed for AES-XTS in the direction
/// `encrypt` says.
unsafe fn xts_unit(
    ctx: &mut CipherCtx,
    encrypt: bool,
    iv: &[u8; 16],
    input: *const u8,
    output: *mut u8,
    len: usize,
) -> Result<(), CryptoError> {
    let raw = ctx.as_ptr();
    let len = std::os::raw::c_int::try_from(len)
        .map_err(|_| CryptoError::Unaligned { len, unit: len })?;
    let mut written: std::os::raw::c_int = 0;
    // SAFETY: `raw` is a live context we hold exclusively; a NULL cipher,
    // engine and key keep its key schedule and replace only the 16-byte
    // IV, which `iv` provides.
    let initialised = unsafe {
        openssl_sys::EVP_CipherInit_ex(
            raw,
            std::ptr::null(),
            std::ptr::null_mut(),
            std::ptr::null(),
            iv.as_ptr(),
            std::os::raw::c_int::from(encrypt),
        )
    };
    // SAFETY: the caller guarantees `len` valid bytes at both pointers;
    // XTS writes exactly `len` bytes.
    let updated = initialised == 1
        && unsafe { openssl_sys::EVP_CipherUpdate(raw, output, &mut written, input, len) } == 1;
    if !updated || written != len {
        return Err(CryptoError::OpenSsl(openssl::error::ErrorStack::get()));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// IEEE 1619-2007 XTS-AES-256 test vector 10: data unit 0xff, 512 bytes.
    const VECTOR10_KEY: &str = concat!(
        "2718281828459045235360287471352662497757247093699959574966967627",
        "3141592653589793238462643383279502884197169399375105820974944592"
    );
    const VECTOR10_CIPHERTEXT: &str = concat!(
        "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b",
        "5d31e276f8fe4a8d66b317f9ac683f44680a86ac35adfc3345befecb4bb188fd",
        "5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0",
        "c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca",
        "2a3e7a7d7df7b10355165c8b9a6d0a7de8b062c4500dc4cd120c0f7418dae3d0",
        "b5781c34803fa75421c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f",
        "93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec",
        "583e9645e07b8d9670655ba5bbcfecc6dc3966380ad8fecb17b6ba02469a020a",
        "84e18e8f84252070c13e9f1f289be54fbc481457778f616015e1327a02b140f1",
        "505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae",
        "9be69a2ffeceb1bec9de244fbe15992b11b77c040f12bd8f6a975a44a0f90c29",
        "a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac",
        "6e333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f",
        "645e8b7e9bfdef33943054ff84011493c27b3429eaedb4ed5376441a77ed4385",
        "1ad77f16f541dfd269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa",
        "773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151",
    );

    fn counting_plaintext(len: usize) -> Vec<u8> {
        (0..len).map(|i| i as u8).collect()
    }

    #[test]
    fn ieee1619_vector10_encrypts_and_decrypts() {
        let cipher = SectorCipher::new(SecretBuf::from_slice(&hex(VECTOR10_KEY)), 512, 0).unwrap();
        let mut data = counting_plaintext(512);
        // Data unit 0xff is the unit at byte 0xff * 512 of the segment.
        cipher.encrypt_in_place(0xff * 512, &mut data).unwrap();
        assert_eq!(data, hex(VECTOR10_CIPHERTEXT));
        cipher.decrypt_in_place(0xff * 512, &mut data).unwrap();
        assert_eq!(data, counting_plaintext(512));
    }

    #[test]
    fn iv_tweak_shifts_the_sector_number() {
        let cipher =
            SectorCipher::new(SecretBuf::from_slice(&hex(VECTOR10_KEY)), 512, 0xfe).unwrap();
        let mut data = counting_plaintext(512);
        cipher.encrypt_in_place(512, &mut data).unwrap();
        assert_eq!(data, hex(VECTOR10_CIPHERTEXT));
    }

    #[test]
    fn large_units_count_512_byte_sectors_in_the_tweak() {
        let key = SecretBuf::from_slice(&hex(VECTOR10_KEY));
        let large = SectorCipher::new(key, 4096, 0).unwrap();
        let small = SectorCipher::new(SecretBuf::from_slice(&hex(VECTOR10_KEY)), 512, 0).unwrap();
        // A 4096-byte unit starting at sector 8 (byte 4096) has tweak 8;
        // its first 512 bytes equal a 512-byte unit with the same tweak.
        let mut big = counting_plaintext(8192);
        large.encrypt_in_place(0, &mut big).unwrap();
        let first_512_of_second_unit = big[4096..4096 + 512].to_vec();
        let mut reference = counting_plaintext(8192)[4096..4096 + 512].to_vec();
        small.encrypt_in_place(4096, &mut reference).unwrap();
        assert_eq!(first_512_of_second_unit, reference);
        large.decrypt_in_place(0, &mut big).unwrap();
        assert_eq!(big, counting_plaintext(8192));
    }

    #[test]
    fn encrypt_into_matches_in_place() {
        let cipher = SectorCipher::new(SecretBuf::from_slice(&hex(VECTOR10_KEY)), 512, 0).unwrap();
        let plain = counting_plaintext(1024);
        let mut out = vec![0u8; 1024];
        cipher.encrypt_into(0xff * 512, &plain, &mut out).unwrap();
        assert_eq!(out[..512], hex(VECTOR10_CIPHERTEXT));
        let mut in_place = plain.clone();
        cipher.encrypt_in_place(0xff * 512, &mut in_place).unwrap();
        assert_eq!(in_place, out);
        assert!(cipher.encrypt_into(0, &plain, &mut out[..512]).is_err());
    }

    #[test]
    fn misaligned_requests_are_refused() {
        let cipher = SectorCipher::new(SecretBuf::from_slice(&hex(VECTOR10_KEY)), 4096, 0).unwrap();
        let mut data = vec![0u8; 512];
        assert!(matches!(
            cipher.encrypt_in_place(0, &mut data),
            Err(CryptoError::Unaligned { .. })
        ));
        let mut data = vec![0u8; 4096];
        assert!(cipher.decrypt_in_place(512, &mut data).is_err());
    }

    #[test]
    fn bad_key_and_unit_sizes_are_refused() {
        assert!(matches!(
            SectorCipher::new(SecretBuf::zeroed(48), 512, 0),
            Err(CryptoError::KeySize(384))
        ));
        let key = SecretBuf::from_slice(&hex(VECTOR10_KEY));
        assert!(matches!(
            SectorCipher::new(key, 1024, 0),
            Err(CryptoError::UnitSize(1024))
        ));
    }
}
