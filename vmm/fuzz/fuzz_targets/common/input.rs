//! Reading a fuzzer input as a stream of fields: past the end every field
//! reads as zero, so any input, however short, decodes to something.

// Compiled into every target, each of which reads only some field widths.
#![allow(dead_code)]

pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Up to `len` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, len: usize) -> &'a [u8] {
        let (taken, rest) = self.data.split_at(len.min(self.data.len()));
        self.data = rest;
        taken
    }

    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    pub fn u16(&mut self) -> u16 {
        let mut word = [0u8; 2];
        let taken = self.bytes(2);
        word[..taken.len()].copy_from_slice(taken);
        u16::from_le_bytes(word)
    }

    pub fn u32(&mut self) -> u32 {
        let mut word = [0u8; 4];
        let taken = self.bytes(4);
        word[..taken.len()].copy_from_slice(taken);
        u32::from_le_bytes(word)
    }

    pub fn u64(&mut self) -> u64 {
        let mut word = [0u8; 8];
        let taken = self.bytes(8);
        word[..taken.len()].copy_from_slice(taken);
        u64::from_le_bytes(word)
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }
}
