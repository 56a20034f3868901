//! Little-endian, length-prefixed primitives shared by every ABI message.
//!
//! Strings and byte strings are a `u32` length followed by the bytes; lists
//! are a `u32` count followed by the items. Decoding borrows from the input,
//! so a guest reads a request without copying its body.

#[cfg(feature = "alloc")]
use alloc::vec::Vec;

/// Why a byte string could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ended in the middle of a field.
    Truncated,
    /// A string field is not valid UTF-8.
    InvalidUtf8,
    /// A field holds a value outside its range (named).
    Invalid(&'static str),
    /// Bytes were left over after the message.
    TrailingBytes,
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::Truncated => f.write_str("message truncated"),
            DecodeError::InvalidUtf8 => f.write_str("string field is not UTF-8"),
            DecodeError::Invalid(what) => write!(f, "invalid {what}"),
            DecodeError::TrailingBytes => f.write_str("trailing bytes after message"),
        }
    }
}

/// Reads primitives from a borrowed byte slice.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    pub fn str(&mut self) -> Result<&'a str, DecodeError> {
        core::str::from_utf8(self.bytes()?).map_err(|_| DecodeError::InvalidUtf8)
    }

    /// A list count, checked against the bytes left so a hostile count cannot
    /// make a decoder reserve unbounded memory (every item takes ≥ `min_item` bytes).
    pub fn count(&mut self, min_item: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item.max(1)) > self.buf.len() {
            return Err(DecodeError::Truncated);
        }
        Ok(n)
    }

    pub fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }
}

/// Appends primitives to a growable buffer.
#[cfg(feature = "alloc")]
#[derive(Default, Debug)]
pub struct Writer {
    pub buf: Vec<u8>,
}

#[cfg(feature = "alloc")]
impl Writer {
    pub fn with_capacity(n: usize) -> Self {
        Writer { buf: Vec::with_capacity(n) }
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Writes a length-prefixed byte string. Lengths above `u32::MAX` cannot
    /// occur: every host cap is far below 4 GiB.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v);
        self
    }

    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;

    #[test]
    fn round_trip_primitives() {
        let mut w = Writer::default();
        w.u8(7).u16(300).u32(70_000).u64(1 << 40).str("héllo").bytes(&[0, 255]);
        let buf = w.into_vec();
        let mut r = Reader::new(&buf);
        assert_eq!(r.u8(), Ok(7));
        assert_eq!(r.u16(), Ok(300));
        assert_eq!(r.u32(), Ok(70_000));
        assert_eq!(r.u64(), Ok(1 << 40));
        assert_eq!(r.str(), Ok("héllo"));
        assert_eq!(r.bytes(), Ok(&[0u8, 255][..]));
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn truncated_and_hostile_lengths_are_errors() {
        let mut w = Writer::default();
        w.u32(1_000_000);
        let buf = w.into_vec();
        assert_eq!(Reader::new(&buf).bytes(), Err(DecodeError::Truncated));
        assert_eq!(Reader::new(&buf).count(8), Err(DecodeError::Truncated));
        assert_eq!(Reader::new(&[1, 2]).u32(), Err(DecodeError::Truncated));
        let mut w = Writer::default();
        w.bytes(&[0xff, 0xfe]);
        assert_eq!(Reader::new(&w.buf).str(), Err(DecodeError::InvalidUtf8));
        assert_eq!(Reader::new(&[1, 2]).finish(), Err(DecodeError::TrailingBytes));
    }
}

impl core::error::Error for DecodeError {}
