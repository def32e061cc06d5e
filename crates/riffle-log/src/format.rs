//! The record batch: the unit that is written, checksummed, fsynced, indexed
//! and read. The same bytes travel from the producer to the segment file and
//! back to consumers, so the hot paths never re-encode records.
//!
//! ```text
//! batch  := header records
//! header := base_offset  u64    first offset in the batch
//!           length       u32    bytes after this field (36 + records)
//!           crc32c       u32    CRC32C of every byte after this field
//!           magic        u8     1
//!           attributes   u8     bit 0: written by a transaction
//!           reserved     u16    0
//!           count        u32    number of records, >= 1
//!           min_ts       i64    smallest record timestamp (epoch ms)
//!           max_ts       i64    largest record timestamp (epoch ms)
//!           txn_seq      u64    transaction sequence number, 0 if none
//! record := length u32 (bytes after this field)
//!           timestamp i64
//!           key_len i32 (-1: no key) key
//!           value_len u32 value
//!           header_count u16 (key_len u16 key value_len u32 value)*
//! ```
//!
//! All integers are little-endian. Offsets are implicit: record `i` of a batch
//! has offset `base_offset + i`. A batch is valid only if its CRC matches and
//! its records parse to exactly `count` records filling `length` bytes.

use bytes::Bytes;
use riffle_core::codec::{FormatError, ReadError, Reader};

pub const BATCH_HEADER_LEN: usize = 48;
/// Bytes of the header that the CRC does not cover (base_offset, length, crc).
pub const CRC_START: usize = 16;
pub const MAGIC: u8 = 1;
pub const ATTR_TRANSACTIONAL: u8 = 1;
/// Upper bound on one batch, so a corrupt length field cannot make a reader
/// allocate gigabytes.
pub const MAX_BATCH_BYTES: usize = 64 << 20;

/// Encoded records without a header: what producers build and hand to
/// [`crate::Producer::append`]. Appending into it allocates only when the
/// buffer grows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordBatch {
    buf: Vec<u8>,
    count: u32,
    min_ts: i64,
    max_ts: i64,
}

impl RecordBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(bytes: usize) -> Self {
        RecordBatch {
            buf: Vec::with_capacity(bytes),
            ..Default::default()
        }
    }

    pub fn push(&mut self, key: Option<&[u8]>, value: &[u8], timestamp: i64) {
        self.push_with_headers(key, value, timestamp, &[])
            .expect("a record without headers always frames");
    }

    pub fn push_with_headers(
        &mut self,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp: i64,
        headers: &[(&str, &[u8])],
    ) -> Result<(), crate::BusError> {
        // Header counts and names are 16-bit on disk: refuse rather than
        // write a record whose framing would not parse back.
        if headers.len() > u16::MAX as usize {
            return Err(crate::BusError::InvalidArgument(format!(
                "headers: {} headers exceed the maximum of {} per record",
                headers.len(),
                u16::MAX
            )));
        }
        if let Some((k, _)) = headers.iter().find(|(k, _)| k.len() > u16::MAX as usize) {
            return Err(crate::BusError::InvalidArgument(format!(
                "headers: a header name of {} bytes exceeds the maximum of {} bytes",
                k.len(),
                u16::MAX
            )));
        }
        let header_bytes: usize = headers.iter().map(|(k, v)| 6 + k.len() + v.len()).sum();
        let body = 8 + 4 + key.map_or(0, <[u8]>::len) + 4 + value.len() + 2 + header_bytes;
        self.buf.reserve(4 + body);
        self.buf.extend_from_slice(&(body as u32).to_le_bytes());
        self.buf.extend_from_slice(&timestamp.to_le_bytes());
        match key {
            Some(key) => {
                self.buf
                    .extend_from_slice(&(key.len() as i32).to_le_bytes());
                self.buf.extend_from_slice(key);
            }
            None => self.buf.extend_from_slice(&(-1i32).to_le_bytes()),
        }
        self.buf
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(value);
        self.buf
            .extend_from_slice(&(headers.len() as u16).to_le_bytes());
        for (k, v) in headers {
            self.buf.extend_from_slice(&(k.len() as u16).to_le_bytes());
            self.buf.extend_from_slice(k.as_bytes());
            self.buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
            self.buf.extend_from_slice(v);
        }
        if self.count == 0 {
            self.min_ts = timestamp;
            self.max_ts = timestamp;
        } else {
            self.min_ts = self.min_ts.min(timestamp);
            self.max_ts = self.max_ts.max(timestamp);
        }
        self.count += 1;
        Ok(())
    }

    /// Checks that the records parse back exactly (lengths, counts): the
    /// log refuses a batch that would be unreadable once written.
    pub fn check_framing(&self) -> Result<(), FormatError> {
        check_records(&self.buf, self.count)
    }

    /// Appends a value that the caller encodes straight into the batch buffer
    /// (no intermediate allocation); `encode` must append exactly the value.
    pub fn push_encoded(
        &mut self,
        key: Option<&[u8]>,
        timestamp: i64,
        encode: impl FnOnce(&mut Vec<u8>),
    ) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        self.buf.extend_from_slice(&timestamp.to_le_bytes());
        match key {
            Some(key) => {
                self.buf
                    .extend_from_slice(&(key.len() as i32).to_le_bytes());
                self.buf.extend_from_slice(key);
            }
            None => self.buf.extend_from_slice(&(-1i32).to_le_bytes()),
        }
        let value_len_at = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        encode(&mut self.buf);
        let value_len = self.buf.len() - value_len_at - 4;
        self.buf[value_len_at..value_len_at + 4].copy_from_slice(&(value_len as u32).to_le_bytes());
        self.buf.extend_from_slice(&0u16.to_le_bytes());
        let body = self.buf.len() - start - 4;
        self.buf[start..start + 4].copy_from_slice(&(body as u32).to_le_bytes());
        if self.count == 0 {
            self.min_ts = timestamp;
            self.max_ts = timestamp;
        } else {
            self.min_ts = self.min_ts.min(timestamp);
            self.max_ts = self.max_ts.max(timestamp);
        }
        self.count += 1;
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn byte_len(&self) -> usize {
        self.buf.len()
    }

    pub fn records_bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn min_timestamp(&self) -> i64 {
        self.min_ts
    }

    pub fn max_timestamp(&self) -> i64 {
        self.max_ts
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
    }

    /// Iterates the records as if they started at offset 0.
    pub fn iter(&self) -> RecordIter<'_> {
        RecordIter {
            data: &self.buf,
            pos: 0,
            next_offset: 0,
            remaining: self.count,
        }
    }

    /// Builds the full batch header for this batch at `base_offset`.
    pub fn header(&self, base_offset: u64, attributes: u8, txn_seq: u64) -> [u8; BATCH_HEADER_LEN] {
        let mut h = [0u8; BATCH_HEADER_LEN];
        h[0..8].copy_from_slice(&base_offset.to_le_bytes());
        let length = (BATCH_HEADER_LEN - 12 + self.buf.len()) as u32;
        h[8..12].copy_from_slice(&length.to_le_bytes());
        h[16] = MAGIC;
        h[17] = attributes;
        h[20..24].copy_from_slice(&self.count.to_le_bytes());
        h[24..32].copy_from_slice(&self.min_ts.to_le_bytes());
        h[32..40].copy_from_slice(&self.max_ts.to_le_bytes());
        h[40..48].copy_from_slice(&txn_seq.to_le_bytes());
        let mut crc = crc32c::crc32c(&h[CRC_START..]);
        crc = crc32c::crc32c_append(crc, &self.buf);
        h[12..16].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Reassembles a batch from the records of a stored batch (used when a
    /// transaction journal is replayed). Crate-private so that every public
    /// way of building a batch frames its records correctly by construction.
    pub(crate) fn from_parts(buf: Vec<u8>, count: u32, min_ts: i64, max_ts: i64) -> Self {
        RecordBatch {
            buf,
            count,
            min_ts,
            max_ts,
        }
    }
}

/// The decoded fixed header of a stored batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    pub length: u32,
    pub crc: u32,
    pub attributes: u8,
    pub count: u32,
    pub min_ts: i64,
    pub max_ts: i64,
    pub txn_seq: u64,
}

impl BatchHeader {
    /// Total bytes of the batch including its header.
    pub fn total_len(&self) -> usize {
        12 + self.length as usize
    }

    pub fn next_offset(&self) -> u64 {
        self.base_offset + self.count as u64
    }

    /// Parses the fixed header; checks only what can be checked without the
    /// body (magic, length bounds, count).
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, FormatError> {
        if bytes.len() < BATCH_HEADER_LEN {
            return Err(format!(
                "header truncated ({} of {BATCH_HEADER_LEN} bytes)",
                bytes.len()
            )
            .into());
        }
        let (header, magic) = Self::read(&mut Reader::new(&bytes[..BATCH_HEADER_LEN]))
            .map_err(|e| format!("header {e}"))?;
        if magic != MAGIC {
            return Err(format!("bad magic {magic}").into());
        }
        let total = header.total_len();
        if !(BATCH_HEADER_LEN..=MAX_BATCH_BYTES).contains(&total) {
            return Err(format!("implausible batch length {}", header.length).into());
        }
        if header.count == 0 {
            return Err("batch with zero records".into());
        }
        Ok(header)
    }

    /// Reads the fields in the order of the module docs; returns the magic
    /// byte alongside for the caller to check.
    fn read(r: &mut Reader<'_>) -> Result<(BatchHeader, u8), ReadError> {
        let base_offset = r.u64("base_offset")?;
        let length = r.u32("length")?;
        let crc = r.u32("crc32c")?;
        let magic = r.u8("magic")?;
        let attributes = r.u8("attributes")?;
        r.skip(2, "reserved")?;
        let count = r.u32("count")?;
        let min_ts = r.i64("min_ts")?;
        let max_ts = r.i64("max_ts")?;
        let txn_seq = r.u64("txn_seq")?;
        let header = BatchHeader {
            base_offset,
            length,
            crc,
            attributes,
            count,
            min_ts,
            max_ts,
            txn_seq,
        };
        Ok((header, magic))
    }
}

/// Fully validates one batch at the start of `bytes` (header, CRC, record
/// framing). Returns the header; `bytes` must hold the whole batch.
pub fn validate_batch(bytes: &[u8]) -> Result<BatchHeader, FormatError> {
    let header = BatchHeader::parse(bytes)?;
    let total = header.total_len();
    if bytes.len() < total {
        return Err(format!("batch truncated ({} of {total} bytes)", bytes.len()).into());
    }
    let crc = crc32c::crc32c(&bytes[CRC_START..total]);
    if crc != header.crc {
        return Err(format!(
            "crc mismatch (stored {:#010x}, computed {crc:#010x})",
            header.crc
        )
        .into());
    }
    check_records(&bytes[BATCH_HEADER_LEN..total], header.count)?;
    Ok(header)
}

/// Checks that `data` holds exactly `count` well-framed records.
fn check_records(data: &[u8], count: u32) -> Result<(), FormatError> {
    let mut iter = RecordIter {
        data,
        pos: 0,
        next_offset: 0,
        remaining: count,
    };
    for _ in 0..count {
        match iter.next_checked() {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e),
            None => return Err("fewer records than the header counts".into()),
        }
    }
    if iter.pos != data.len() {
        return Err("trailing bytes after the last record".into());
    }
    Ok(())
}

/// One record, borrowed from a batch buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    headers: &'a [u8],
    header_count: u16,
}

impl<'a> RecordView<'a> {
    pub fn headers(&self) -> HeaderIter<'a> {
        HeaderIter {
            data: self.headers,
            remaining: self.header_count,
        }
    }
}

pub struct HeaderIter<'a> {
    data: &'a [u8],
    remaining: u16,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // Framing was validated when the batch was read.
        let mut r = Reader::new(self.data);
        let name_len = r.u16("header name length").ok()?;
        let name = r.bytes(u64::from(name_len), "header name").ok()?;
        let value_len = r.u32("header value length").ok()?;
        let value = r.bytes(u64::from(value_len), "header value").ok()?;
        self.data = &self.data[r.position()..];
        Some((std::str::from_utf8(name).unwrap_or(""), value))
    }
}

/// Iterates the records of one batch body.
pub struct RecordIter<'a> {
    data: &'a [u8],
    pos: usize,
    next_offset: u64,
    remaining: u32,
}

impl<'a> RecordIter<'a> {
    fn next_checked(&mut self) -> Option<Result<RecordView<'a>, FormatError>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        Some(self.parse_one())
    }

    fn parse_one(&mut self) -> Result<RecordView<'a>, FormatError> {
        let data = self.data;
        let start = self.pos;
        let truncated = |e: ReadError| format!("record at byte {start}: {e}");
        let mut r = Reader::new(data);
        r.skip(start as u64, "earlier records").map_err(truncated)?;
        let len = r.u32("record length").map_err(truncated)?;
        let end = r
            .position()
            .checked_add(len as usize)
            .filter(|e| *e <= data.len())
            .ok_or_else(|| format!("record length {len} overruns the batch"))?;
        let timestamp = r.i64("timestamp").map_err(truncated)?;
        let key_len = r.i32("key length").map_err(truncated)?;
        let key = if key_len < 0 {
            None
        } else {
            Some(r.bytes(key_len as u64, "key").map_err(truncated)?)
        };
        let value_len = r.u32("value length").map_err(truncated)?;
        let value = r.bytes(u64::from(value_len), "value").map_err(truncated)?;
        let header_count = r.u16("header count").map_err(truncated)?;
        let headers_start = r.position();
        for _ in 0..header_count {
            let name_len = r.u16("header name length").map_err(truncated)?;
            r.skip(u64::from(name_len), "header name")
                .map_err(truncated)?;
            let value_len = r.u32("header value length").map_err(truncated)?;
            r.skip(u64::from(value_len), "header value")
                .map_err(truncated)?;
        }
        if r.position() != end {
            return Err(format!("record length {len} does not match its fields").into());
        }
        let view = RecordView {
            offset: self.next_offset,
            timestamp,
            key,
            value,
            headers: &data[headers_start..end],
            header_count,
        };
        self.pos = end;
        self.next_offset += 1;
        Ok(view)
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = RecordView<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        // Batches are validated before they are iterated, so a parse error
        // here means a bug; stop rather than return garbage.
        match self.next_checked()? {
            Ok(view) => Some(view),
            Err(_) => {
                debug_assert!(false, "iterating an unvalidated batch");
                self.remaining = 0;
                None
            }
        }
    }
}

/// Validated stored batches as read from a partition: records before
/// `first_offset` are skipped by the iterator.
#[derive(Debug, Clone, Default)]
pub struct RecordSet {
    data: Bytes,
    first_offset: u64,
    count: usize,
}

impl RecordSet {
    /// `data` must consist of whole batches already checked with
    /// [`validate_batch`].
    pub fn from_validated(data: Bytes, first_offset: u64) -> Self {
        let mut set = RecordSet {
            data,
            first_offset,
            count: 0,
        };
        set.count = set.iter().count();
        set
    }

    /// Frames records built outside the log (e.g. read back from an
    /// archive) as if they had been fetched: batch `i` gets `base_offset` of
    /// its pair and consecutive offsets after it. Empty batches are skipped;
    /// base offsets must increase past the previous batch's last offset.
    pub fn from_batches<'a>(batches: impl IntoIterator<Item = (u64, &'a RecordBatch)>) -> Self {
        let mut data = Vec::new();
        let mut first_offset = None;
        let mut next_offset = 0u64;
        for (base_offset, batch) in batches {
            if batch.is_empty() {
                continue;
            }
            debug_assert!(
                first_offset.is_none() || base_offset >= next_offset,
                "batches out of offset order"
            );
            first_offset.get_or_insert(base_offset);
            next_offset = base_offset + batch.len() as u64;
            data.extend_from_slice(&batch.header(base_offset, 0, 0));
            data.extend_from_slice(batch.records_bytes());
        }
        RecordSet::from_validated(Bytes::from(data), first_offset.unwrap_or(0))
    }

    /// [`RecordSet::from_batches`] of one batch.
    pub fn from_batch(batch: &RecordBatch, base_offset: u64) -> Self {
        Self::from_batches([(base_offset, batch)])
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn byte_len(&self) -> usize {
        self.data.len()
    }

    /// The offset after the last record, if any.
    pub fn next_offset(&self) -> Option<u64> {
        self.iter().last().map(|r| r.offset + 1)
    }

    pub fn iter(&self) -> RecordSetIter<'_> {
        RecordSetIter {
            data: &self.data,
            pos: 0,
            current: None,
            first_offset: self.first_offset,
        }
    }
}

pub struct RecordSetIter<'a> {
    data: &'a [u8],
    pos: usize,
    current: Option<RecordIter<'a>>,
    first_offset: u64,
}

impl<'a> Iterator for RecordSetIter<'a> {
    type Item = RecordView<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(records) = &mut self.current {
                for record in records.by_ref() {
                    if record.offset >= self.first_offset {
                        return Some(record);
                    }
                }
                self.current = None;
            }
            if self.pos + BATCH_HEADER_LEN > self.data.len() {
                return None;
            }
            let header = BatchHeader::parse(&self.data[self.pos..]).ok()?;
            let end = self.pos + header.total_len();
            if end > self.data.len() {
                return None;
            }
            if header.next_offset() > self.first_offset {
                self.current = Some(RecordIter {
                    data: &self.data[self.pos + BATCH_HEADER_LEN..end],
                    pos: 0,
                    next_offset: header.base_offset,
                    remaining: header.count,
                });
            }
            self.pos = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(batch: &RecordBatch, base: u64) -> Vec<u8> {
        let mut out = batch.header(base, 0, 0).to_vec();
        out.extend_from_slice(batch.records_bytes());
        out
    }

    #[test]
    fn record_set_from_batches_keeps_offsets_and_gaps() {
        let mut first = RecordBatch::new();
        first.push(Some(b"k"), b"a", 10);
        first.push(None, b"b", 5);
        let mut second = RecordBatch::new();
        second.push(Some(b"k2"), b"c", 20);
        let set = RecordSet::from_batches([(7, &first), (12, &RecordBatch::new()), (12, &second)]);
        type Row = (u64, i64, Option<Vec<u8>>, Vec<u8>);
        let read: Vec<Row> = set
            .iter()
            .map(|r| {
                (
                    r.offset,
                    r.timestamp,
                    r.key.map(<[u8]>::to_vec),
                    r.value.to_vec(),
                )
            })
            .collect();
        assert_eq!(
            read,
            vec![
                (7, 10, Some(b"k".to_vec()), b"a".to_vec()),
                (8, 5, None, b"b".to_vec()),
                (12, 20, Some(b"k2".to_vec()), b"c".to_vec()),
            ]
        );
        assert_eq!(set.len(), 3);
        assert_eq!(set.next_offset(), Some(13));
        // The bytes are what the log would have served: valid batches.
        let bytes = stored(&first, 7);
        assert_eq!(validate_batch(&bytes).unwrap().next_offset(), 9);
        let single = RecordSet::from_batch(&second, 40);
        assert_eq!(
            single.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![40]
        );
        assert!(RecordSet::from_batches([]).is_empty());
    }

    #[test]
    fn batch_round_trips() {
        let mut batch = RecordBatch::new();
        batch.push(Some(b"k1"), b"v1", 10);
        batch.push(None, b"", 5);
        batch
            .push_with_headers(Some(b""), b"v3", 20, &[("h", b"x"), ("empty", b"")])
            .unwrap();
        batch.push_encoded(Some(b"k4"), 7, |out| out.extend_from_slice(b"encoded"));
        let bytes = stored(&batch, 100);
        let header = validate_batch(&bytes).unwrap();
        assert_eq!(header.count, 4);
        assert_eq!(header.min_ts, 5);
        assert_eq!(header.max_ts, 20);
        let set = RecordSet::from_validated(Bytes::from(bytes), 101);
        let records: Vec<_> = set.iter().collect();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].offset, 101);
        assert_eq!(records[0].key, None);
        assert_eq!(records[1].key, Some(&b""[..]));
        let headers: Vec<_> = records[1].headers().collect();
        assert_eq!(headers, vec![("h", &b"x"[..]), ("empty", &b""[..])]);
        assert_eq!(records[2].value, b"encoded");
        assert_eq!(records[2].key, Some(&b"k4"[..]));
    }

    #[test]
    fn oversized_header_names_are_refused_not_truncated() {
        let mut batch = RecordBatch::new();
        let long = "h".repeat(70_000);
        let err = batch
            .push_with_headers(None, b"v", 0, &[(long.as_str(), b"x")])
            .unwrap_err();
        assert!(
            err.to_string().contains("header name of 70000 bytes"),
            "{err}"
        );
        assert!(batch.is_empty());
        assert!(batch.check_framing().is_ok());
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let mut batch = RecordBatch::new();
        batch.push(Some(b"key"), b"some value bytes", 42);
        let bytes = stored(&batch, 0);
        for i in 0..bytes.len() {
            let mut corrupt = bytes.clone();
            corrupt[i] ^= 0x40;
            // Bytes 0..8 (base offset) are checked by the reader against the
            // expected offset, not by the CRC.
            if i < 8 {
                continue;
            }
            assert!(
                validate_batch(&corrupt).is_err(),
                "flip at byte {i} not detected"
            );
        }
    }
}
