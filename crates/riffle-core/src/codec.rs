//! Reading Riffle's binary formats: one bounds-checked cursor over a byte
//! slice, shared by every decoder of a stored or wire format (log batches
//! and their index, the transaction journal, task checkpoints, dedup
//! snapshots, operator state, the binary event encoding).
//!
//! Fixed-width integers are little-endian, as in every Riffle format. Each
//! read names the field it reads, so a failure says what was being read and
//! at which byte — the caller wraps [`ReadError`] in its own error type
//! (a corrupt snapshot, a corrupt batch) and keeps its own context. Reads
//! never panic and never allocate; slices and strings borrow from the
//! input.
//!
//! Layouts stay with their formats: this module only moves bytes, so that
//! the format modules keep the documentation and the checks (magic,
//! version, checksum, lengths) that make their files what they are.

/// Why a read failed: the field being read, the byte offset where it
/// started (from the start of the reader's slice) and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("truncated reading {what} at byte {offset}: needs {needed} bytes, {available} left")]
    Truncated {
        what: &'static str,
        offset: usize,
        needed: u64,
        available: usize,
    },
    #[error("invalid utf-8 in {what} at byte {offset}")]
    InvalidUtf8 { what: &'static str, offset: usize },
}

impl ReadError {
    /// The name of the field whose read failed.
    pub fn what(&self) -> &'static str {
        match self {
            ReadError::Truncated { what, .. } | ReadError::InvalidUtf8 { what, .. } => what,
        }
    }

    /// Where the failed read started.
    pub fn offset(&self) -> usize {
        match self {
            ReadError::Truncated { offset, .. } | ReadError::InvalidUtf8 { offset, .. } => *offset,
        }
    }
}

/// Why bytes are not a valid instance of a format: a read failed, or a
/// check of the format itself did (magic, version, checksum, lengths). The
/// caller wraps it in its own error with its context (a corrupt snapshot,
/// a corrupt batch).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{0}")]
    Invalid(String),
}

/// A failed check, for `return Err(format!(…).into())` in decoders.
impl From<String> for FormatError {
    fn from(reason: String) -> FormatError {
        FormatError::Invalid(reason)
    }
}

impl From<&str> for FormatError {
    fn from(reason: &str) -> FormatError {
        FormatError::Invalid(reason.to_owned())
    }
}

/// Stored bytes that do not decode are lost data, whatever the reason.
impl crate::HasCode for FormatError {
    fn code(&self) -> crate::ErrorCode {
        crate::ErrorCode::DataLoss
    }
}

/// A cursor over `&[u8]` that reads fields front to back.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    /// What is not read yet; reads split their bytes off its front, which
    /// needs one length check per read and no index arithmetic.
    rest: &'a [u8],
    /// Bytes read so far, for error offsets.
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader {
            rest: bytes,
            pos: 0,
        }
    }

    /// Bytes read so far: the offset of the next read.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next `len` bytes. `len` is a `u64` so that a length field read
    /// from the input can be passed as is: one that does not fit the input
    /// (or `usize`) is a truncation, never an overflow.
    #[inline]
    pub fn bytes(&mut self, len: u64, what: &'static str) -> Result<&'a [u8], ReadError> {
        let split = usize::try_from(len)
            .ok()
            .and_then(|n| self.rest.split_at_checked(n));
        match split {
            Some((head, tail)) => {
                self.rest = tail;
                self.pos += head.len();
                Ok(head)
            }
            None => Err(self.truncated(what, len)),
        }
    }

    /// The next `N` bytes as an array (magic numbers, fixed-width fields).
    #[inline]
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ReadError> {
        match self.rest.split_first_chunk::<N>() {
            Some((head, tail)) => {
                self.rest = tail;
                self.pos += N;
                Ok(*head)
            }
            None => Err(self.truncated(what, N as u64)),
        }
    }

    /// Passes over `len` bytes (reserved or ignored fields).
    #[inline]
    pub fn skip(&mut self, len: u64, what: &'static str) -> Result<(), ReadError> {
        self.bytes(len, what).map(|_| ())
    }

    #[inline]
    pub fn u8(&mut self, what: &'static str) -> Result<u8, ReadError> {
        self.array(what).map(|[byte]| byte)
    }

    #[inline]
    pub fn u16(&mut self, what: &'static str) -> Result<u16, ReadError> {
        self.array(what).map(u16::from_le_bytes)
    }

    #[inline]
    pub fn u32(&mut self, what: &'static str) -> Result<u32, ReadError> {
        self.array(what).map(u32::from_le_bytes)
    }

    #[inline]
    pub fn i32(&mut self, what: &'static str) -> Result<i32, ReadError> {
        self.array(what).map(i32::from_le_bytes)
    }

    #[inline]
    pub fn u64(&mut self, what: &'static str) -> Result<u64, ReadError> {
        self.array(what).map(u64::from_le_bytes)
    }

    #[inline]
    pub fn i64(&mut self, what: &'static str) -> Result<i64, ReadError> {
        self.array(what).map(i64::from_le_bytes)
    }

    /// `len` bytes of UTF-8 text.
    #[inline]
    pub fn str(&mut self, len: u64, what: &'static str) -> Result<&'a str, ReadError> {
        let offset = self.pos;
        let bytes = self.bytes(len, what)?;
        std::str::from_utf8(bytes).map_err(|_| ReadError::InvalidUtf8 { what, offset })
    }

    /// A string stored as a `u16` byte length and that many bytes of UTF-8
    /// (topic and group names, ad ids).
    #[inline]
    pub fn str_u16(&mut self, what: &'static str) -> Result<&'a str, ReadError> {
        let len = self.u16(what)?;
        self.str(u64::from(len), what)
    }

    /// Out of line: decoders run these reads per field of every record,
    /// and only the success path should be inlined into them.
    #[cold]
    fn truncated(&self, what: &'static str, needed: u64) -> ReadError {
        ReadError::Truncated {
            what,
            offset: self.pos,
            needed,
            available: self.rest.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_fields_in_order() {
        let mut bytes = vec![0xab];
        bytes.extend_from_slice(&0x0102u16.to_le_bytes());
        bytes.extend_from_slice(&0x0304_0506u32.to_le_bytes());
        bytes.extend_from_slice(&(-2i32).to_le_bytes());
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        bytes.extend_from_slice(&i64::MIN.to_le_bytes());
        bytes.extend_from_slice(&3u16.to_le_bytes());
        bytes.extend_from_slice("añ".as_bytes());
        bytes.extend_from_slice(b"MAGIxyz");
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8("a").unwrap(), 0xab);
        assert_eq!(r.u16("b").unwrap(), 0x0102);
        assert_eq!(r.u32("c").unwrap(), 0x0304_0506);
        assert_eq!(r.i32("d").unwrap(), -2);
        assert_eq!(r.u64("e").unwrap(), u64::MAX);
        assert_eq!(r.i64("f").unwrap(), i64::MIN);
        assert_eq!(r.str_u16("g").unwrap(), "añ");
        assert_eq!(&r.array::<4>("magic").unwrap(), b"MAGI");
        assert_eq!(r.position(), bytes.len() - 3);
        r.skip(1, "reserved").unwrap();
        assert_eq!(r.bytes(2, "rest").unwrap(), b"yz");
        assert!(r.is_empty());
    }

    #[test]
    fn errors_name_the_field_and_the_offset() {
        let mut r = Reader::new(&[1, 2, 3]);
        r.u8("first").unwrap();
        let error = r.u32("count").unwrap_err();
        assert_eq!(
            error,
            ReadError::Truncated {
                what: "count",
                offset: 1,
                needed: 4,
                available: 2
            }
        );
        assert_eq!(
            error.to_string(),
            "truncated reading count at byte 1: needs 4 bytes, 2 left"
        );
        assert_eq!((error.what(), error.offset()), ("count", 1));
        // A failed read consumes nothing.
        assert_eq!(r.position(), 1);
        assert_eq!(r.bytes(2, "tail").unwrap(), [2, 3]);
    }

    #[test]
    fn huge_lengths_are_truncations_not_overflows() {
        let mut r = Reader::new(&[0; 8]);
        r.u8("x").unwrap();
        let error = r.bytes(u64::MAX, "blob").unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "truncated reading blob at byte 1: needs {} bytes, 7 left",
                u64::MAX
            )
        );
        assert!(r.bytes(usize::MAX as u64, "blob").is_err());
    }

    #[test]
    fn invalid_utf8_is_reported_where_the_text_starts() {
        let mut r = Reader::new(&[9, 2, 0, 0xff, 0xfe]);
        r.u8("x").unwrap();
        assert_eq!(
            r.str_u16("name").unwrap_err(),
            ReadError::InvalidUtf8 {
                what: "name",
                offset: 3
            }
        );
        let mut r = Reader::new(&[2, 0, b'a']);
        assert_eq!(
            r.str_u16("name").unwrap_err().to_string(),
            "truncated reading name at byte 2: needs 2 bytes, 1 left"
        );
    }
}
