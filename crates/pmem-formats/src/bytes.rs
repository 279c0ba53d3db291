//! Little-endian fields of the on-disk structures every format parses.
//!
//! The parsers check a structure's length against the file before they
//! read it into a buffer, so a field past the buffer's end is a bug in the
//! parser, not a bad file: these panic on it rather than return an error
//! nobody could act on.

/// The little-endian `u16` at `at`.
pub(crate) fn u16_le(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

/// The little-endian `u32` at `at`.
pub(crate) fn u32_le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// The little-endian `u64` at `at`.
pub(crate) fn u64_le(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The little-endian unsigned field of `width` bytes (at most 8) at `at`,
/// for layouts whose fields are 4 or 8 bytes wide.
pub(crate) fn uint_le(b: &[u8], at: usize, width: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[..width].copy_from_slice(&b[at..at + width]);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_little_endian_at_their_offset() {
        let b = [0xff, 1, 2, 3, 4, 5, 6, 7, 8, 0xee];
        assert_eq!(u16_le(&b, 1), 0x0201);
        assert_eq!(u32_le(&b, 1), 0x0403_0201);
        assert_eq!(u64_le(&b, 1), 0x0807_0605_0403_0201);
        assert_eq!(uint_le(&b, 1, 4), 0x0403_0201);
        assert_eq!(uint_le(&b, 2, 8), 0xee08_0706_0504_0302);
    }
}
