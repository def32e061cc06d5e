//! Per-topic envelope encryption of dataset payloads (AES-256-GCM).
//!
//! # Keys
//!
//! A [`MasterKey`] (256 bits) never touches a payload: it only wraps the
//! random per-topic data keys ([`TopicKey`], 256 bits), so rotating or
//! revoking a topic never re-encrypts another topic's payloads.
//!
//! * Master key file: exactly 64 hex characters and a newline, mode 0600.
//!   It is created once, atomically (temporary file, fsync, link into
//!   place, fsync of the directory), and never rewritten.
//! * Wrapped topic key (60 bytes): `nonce (12 random bytes) ||
//!   AES-256-GCM(master key, nonce, topic key, aad = "riffle-datasets-topic-key-v1")`
//!   (32 bytes of ciphertext then the 16-byte tag).
//!
//! # Payload format
//!
//! Inline payloads and blobs use the same format:
//!
//! ```text
//! header (16 bytes):  "RFDE" | version 0x01 | 0x00 0x00 0x00 | nonce prefix (8 random bytes)
//! frame i:            AES-256-GCM(topic key,
//!                                 nonce = prefix || i as u32 BE,
//!                                 aad   = i as u32 BE || is_final as u8,
//!                                 plaintext) || tag (16 bytes)
//! ```
//!
//! Invariants:
//!
//! * Every frame but the last holds exactly [`FRAME`] plaintext bytes; the
//!   last holds 1..=FRAME bytes, or 0 only when it is the sole frame (the
//!   empty payload). So frame `i` starts at stored offset
//!   `HEADER + i * (FRAME + TAG)`, and the stored length determines the
//!   plaintext length ([`encrypted_len`] and [`plain_len_of`] are inverse).
//! * Exactly the last frame is sealed with `is_final = 1`. Dropping trailing
//!   frames therefore leaves a last frame that fails authentication, frame
//!   indices in nonce and AAD expose reordering, and the tag exposes any
//!   flipped bit. The magic, version and reserved bytes are checked
//!   verbatim; the prefix is part of every frame's nonce.
//! * Nonces never repeat under one topic key as long as the random 64-bit
//!   prefixes differ: the collision probability after `n` payloads is about
//!   `n² / 2^65` (2^-25 after a million payloads), so a topic key should be
//!   rotated long before that. A payload has at most 2^32 frames (256 TiB).
//! * Any corruption surfaces as [`ErrorCode::DataLoss`](riffle_core::ErrorCode::DataLoss) with a message
//!   starting `payload decryption failed:`; plaintext of a frame is released
//!   only after that frame's tag has been verified.

use std::fmt;
use std::io::{ErrorKind, Write};
use std::ops::Range;
use std::path::Path;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use rand::rngs::OsRng;
use rand::RngCore;

use crate::error::{DatasetError, Result};

/// Plaintext bytes per frame (every frame but the last is exactly this long).
pub const FRAME: usize = 65536;
/// Bytes of the payload header that precedes the first frame.
pub const HEADER: usize = 16;
/// Bytes of the AES-GCM authentication tag that ends every frame.
pub const TAG: usize = 16;
/// Bytes of a wrapped topic key: nonce, encrypted key, tag.
pub const WRAPPED_KEY_LEN: usize = WRAP_NONCE + KEY_LEN + TAG;

const MAGIC: &[u8; 4] = b"RFDE";
const VERSION: u8 = 1;
const PREFIX: usize = 8;
const KEY_LEN: usize = 32;
const WRAP_NONCE: usize = 12;
const WRAP_AAD: &[u8] = b"riffle-datasets-topic-key-v1";
const FRAME_U64: u64 = FRAME as u64;
const STORED_FRAME: u64 = (FRAME + TAG) as u64;
const MAX_FRAMES: u64 = 1 << 32;

/// The 256-bit key that wraps every topic key. Debug output never shows
/// key material.
#[derive(Clone)]
pub struct MasterKey {
    cipher: Aes256Gcm,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// Reads the key from `path`, or generates one and stores it there
    /// (mode 0600, parent directories created) when the file is absent.
    pub fn load_or_create(path: &Path) -> Result<MasterKey> {
        if let Some(key) = Self::load(path)? {
            return Ok(key);
        }
        let mut bytes = [0u8; KEY_LEN];
        fill_random(&mut bytes)?;
        let created = create_key_file(path, &bytes).map_err(|error| {
            DatasetError::internal(format!(
                "master key file {}: cannot create: {error}",
                path.display()
            ))
        })?;
        if created {
            tracing::info!(path = %path.display(), "created a new dataset master key");
            return Ok(Self::from_bytes(&bytes));
        }
        // Another process created the file between our read and our link:
        // its key wins, because it may already have wrapped topic keys.
        Self::load(path)?.ok_or_else(|| {
            DatasetError::internal(format!(
                "master key file {}: vanished after creation",
                path.display()
            ))
        })
    }

    /// Parses a key given in configuration as 64 hex characters; the error
    /// names `field`, never the value.
    pub fn from_hex(text: &str, field: &str) -> Result<MasterKey> {
        decode_key_hex(text.trim().as_bytes())
            .map(|bytes| Self::from_bytes(&bytes))
            .ok_or_else(|| {
                DatasetError::invalid(format!(
                    "{field}: expected 64 hex characters (a 256-bit key)"
                ))
            })
    }

    /// A fresh random topic key and its wrapped form, which is what gets
    /// stored.
    pub fn new_topic_key(&self) -> Result<(TopicKey, Vec<u8>)> {
        let mut key = [0u8; KEY_LEN];
        fill_random(&mut key)?;
        let mut wrapped = Vec::with_capacity(WRAPPED_KEY_LEN);
        wrapped.resize(WRAP_NONCE, 0);
        fill_random(&mut wrapped)?;
        wrapped.extend_from_slice(&key);
        let (nonce, sealed) = wrapped.split_at_mut(WRAP_NONCE);
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(nonce), WRAP_AAD, sealed)
            .map_err(|_| DatasetError::internal("topic key wrap failed"))?;
        wrapped.extend_from_slice(&tag);
        Ok((TopicKey::from_bytes(&key), wrapped))
    }

    /// Recovers a topic key from [`MasterKey::new_topic_key`]'s wrapped
    /// form; a different master key or any altered byte is
    /// [`ErrorCode::DataLoss`](riffle_core::ErrorCode::DataLoss).
    pub fn unwrap_topic_key(&self, wrapped: &[u8]) -> Result<TopicKey> {
        if wrapped.len() != WRAPPED_KEY_LEN {
            return Err(DatasetError::data_loss(format!(
                "wrapped topic key has {} bytes, expected {WRAPPED_KEY_LEN}",
                wrapped.len()
            )));
        }
        let (nonce, rest) = wrapped.split_at(WRAP_NONCE);
        let (sealed, tag) = rest.split_at(KEY_LEN);
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(sealed);
        self.cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                WRAP_AAD,
                &mut key,
                Tag::from_slice(tag),
            )
            .map_err(|_| {
                DatasetError::data_loss(
                    "topic key unwrap failed: wrong master key or corrupted wrapped key",
                )
            })?;
        Ok(TopicKey::from_bytes(&key))
    }

    fn from_bytes(bytes: &[u8; KEY_LEN]) -> MasterKey {
        MasterKey {
            cipher: Aes256Gcm::new(bytes.into()),
        }
    }

    /// `Ok(None)` when the file does not exist.
    fn load(path: &Path) -> Result<Option<MasterKey>> {
        let contents = match std::fs::read(path) {
            Ok(contents) => contents,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(DatasetError::internal(format!(
                    "master key file {}: cannot read: {error}",
                    path.display()
                )))
            }
        };
        warn_if_shared(path);
        let bytes = decode_key_hex(contents.trim_ascii()).ok_or_else(|| {
            DatasetError::invalid(format!(
                "master key file {}: expected 64 hex characters and a newline",
                path.display()
            ))
        })?;
        Ok(Some(Self::from_bytes(&bytes)))
    }
}

/// A topic's 256-bit data key. Debug output never shows key material.
#[derive(Clone)]
pub struct TopicKey {
    cipher: Aes256Gcm,
}

impl fmt::Debug for TopicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TopicKey(<redacted>)")
    }
}

impl TopicKey {
    fn from_bytes(bytes: &[u8; KEY_LEN]) -> TopicKey {
        TopicKey {
            cipher: Aes256Gcm::new(bytes.into()),
        }
    }
}

/// Stored size of a payload of `plain_len` bytes.
pub fn encrypted_len(plain_len: u64) -> u64 {
    HEADER as u64 + plain_len + frame_count(plain_len) * TAG as u64
}

/// Plaintext size of a payload stored in `stored_len` bytes, or `None` when
/// no payload encrypts to that length (the stored bytes were truncated or
/// extended).
pub fn plain_len_of(stored_len: u64) -> Option<u64> {
    let body = stored_len.checked_sub(HEADER as u64)?;
    let frames = body.div_ceil(STORED_FRAME);
    let plain_len = body.checked_sub(frames.max(1) * TAG as u64)?;
    (encrypted_len(plain_len) == stored_len).then_some(plain_len)
}

/// The stored byte range holding the frames that cover `plain_range` of a
/// payload of `plain_len` bytes, and how many plaintext bytes of the first
/// of those frames precede `plain_range.start`. An empty range still covers
/// one frame, so even an empty read authenticates something.
///
/// Panics unless `plain_range.start <= plain_range.end <= plain_len`.
pub fn frames_for_range(plain_range: Range<u64>, plain_len: u64) -> (Range<u64>, u64) {
    let frames = covering_frames(&plain_range, plain_len);
    let start = frame_offset(frames.start);
    let end = frame_offset(frames.end - 1) + stored_frame_len(frames.end - 1, plain_len);
    (start..end, plain_range.start - frames.start * FRAME_U64)
}

/// Encrypts a whole payload held in memory.
pub fn encrypt_all(key: &TopicKey, plain: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(encrypted_len(plain.len() as u64) as usize);
    let mut encryptor = Encryptor::new(key);
    encryptor.push(plain, &mut out);
    encryptor.finish(&mut out);
    out
}

/// Decrypts and authenticates a whole payload held in memory.
pub fn decrypt_all(key: &TopicKey, stored: &[u8]) -> Result<Vec<u8>> {
    let Some((header, frames)) = stored.split_first_chunk::<HEADER>() else {
        return Err(DatasetError::data_loss(format!(
            "payload decryption failed: {} bytes is shorter than the {HEADER}-byte header",
            stored.len()
        )));
    };
    let plain_len = plain_len_of(stored.len() as u64).ok_or_else(|| {
        DatasetError::data_loss(format!(
            "payload decryption failed: {} stored bytes is not the length of any encrypted payload",
            stored.len()
        ))
    })?;
    let (mut decryptor, _) = Decryptor::for_range(key, header, plain_len, 0..plain_len)?;
    let mut plain = Vec::with_capacity(plain_len as usize);
    decryptor.push(frames, &mut plain)?;
    decryptor.finish()?;
    Ok(plain)
}

/// Streaming encryption. Holds at most one frame of plaintext: a full frame
/// is sealed only once more data shows it is not the last one.
pub struct Encryptor {
    cipher: Aes256Gcm,
    header: [u8; HEADER],
    header_written: bool,
    /// Plaintext not sealed yet, at most `FRAME` bytes.
    pending: Vec<u8>,
    next_frame: u64,
}

impl Encryptor {
    pub fn new(key: &TopicKey) -> Encryptor {
        let mut header = [0u8; HEADER];
        header[..MAGIC.len()].copy_from_slice(MAGIC);
        header[MAGIC.len()] = VERSION;
        // A per-payload random prefix keeps nonces unique across payloads
        // sealed with the same topic key (see the module docs for the bound).
        rand::thread_rng().fill_bytes(&mut header[HEADER - PREFIX..]);
        Encryptor {
            cipher: key.cipher.clone(),
            header,
            header_written: false,
            pending: Vec::new(),
            next_frame: 0,
        }
    }

    /// Appends to `out` the header (first call) and every frame that
    /// `data` completes and that is known not to be the last.
    ///
    /// Panics past 2^32 frames (256 TiB).
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<u8>) {
        self.write_header(out);
        while !data.is_empty() {
            if self.pending.len() == FRAME {
                let frame = std::mem::take(&mut self.pending);
                self.seal(&frame, false, out);
                self.pending = frame;
                self.pending.clear();
            }
            if self.pending.is_empty() && data.len() > FRAME {
                // A whole frame with more data behind it: seal it straight
                // from the input instead of staging it.
                let (frame, rest) = data.split_at(FRAME);
                self.seal(frame, false, out);
                data = rest;
                continue;
            }
            let take = (FRAME - self.pending.len()).min(data.len());
            if self.pending.capacity() == 0 {
                self.pending.reserve_exact(FRAME);
            }
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
    }

    /// Appends the header (when nothing was pushed) and the final frame.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        self.write_header(out);
        let last = std::mem::take(&mut self.pending);
        self.seal(&last, true, out);
    }

    fn write_header(&mut self, out: &mut Vec<u8>) {
        if !self.header_written {
            out.extend_from_slice(&self.header);
            self.header_written = true;
        }
    }

    fn seal(&mut self, plain: &[u8], is_final: bool, out: &mut Vec<u8>) {
        debug_assert!(plain.len() <= FRAME);
        debug_assert!(is_final || plain.len() == FRAME);
        let index = u32::try_from(self.next_frame).expect("payload exceeds 2^32 frames (256 TiB)");
        let prefix = self.header[HEADER - PREFIX..]
            .try_into()
            .expect("prefix is 8 bytes");
        let start = out.len();
        out.extend_from_slice(plain);
        let tag = self
            .cipher
            .encrypt_in_place_detached(
                Nonce::from_slice(&frame_nonce(prefix, index)),
                &frame_aad(index, is_final),
                &mut out[start..],
            )
            .expect("a frame is far below the aes-gcm message size limit");
        out.extend_from_slice(&tag);
        self.next_frame += 1;
    }
}

/// Streaming decryption of consecutive frames, trimmed to a plaintext range.
///
/// Built by [`Decryptor::for_range`], which also returns the stored byte
/// range to read; feed exactly those bytes (in chunks of any size) to
/// [`Decryptor::push`], then call [`Decryptor::finish`]. Holds at most one
/// frame.
pub struct Decryptor {
    cipher: Aes256Gcm,
    prefix: [u8; PREFIX],
    plain_len: u64,
    /// Index of the payload's final frame.
    final_frame: u64,
    next_frame: u64,
    /// One past the last frame to be fed.
    end_frame: u64,
    /// Plaintext bytes to drop from the next opened frame (the first one).
    skip: usize,
    /// Plaintext bytes of the requested range not yet emitted.
    remaining: u64,
    /// Stored bytes of the frame being assembled.
    frame: Vec<u8>,
}

impl Decryptor {
    /// A decryptor for `plain_range` of the payload whose first
    /// [`HEADER`] bytes are `header` and whose plaintext is `plain_len`
    /// bytes, and the stored byte range to feed it.
    pub fn for_range(
        key: &TopicKey,
        header: &[u8; HEADER],
        plain_len: u64,
        plain_range: Range<u64>,
    ) -> Result<(Decryptor, Range<u64>)> {
        if plain_range.start > plain_range.end || plain_range.end > plain_len {
            return Err(DatasetError::invalid(format!(
                "range {}..{} is outside the payload of {plain_len} bytes",
                plain_range.start, plain_range.end
            )));
        }
        if frame_count(plain_len) > MAX_FRAMES {
            return Err(DatasetError::invalid(format!(
                "payload size {plain_len} exceeds the encrypted format's 2^32 frames"
            )));
        }
        let prefix = parse_header(header)?;
        let frames = covering_frames(&plain_range, plain_len);
        let (stored, skip) = frames_for_range(plain_range.clone(), plain_len);
        let decryptor = Decryptor {
            cipher: key.cipher.clone(),
            prefix,
            plain_len,
            final_frame: frame_count(plain_len) - 1,
            next_frame: frames.start,
            end_frame: frames.end,
            skip: skip as usize,
            remaining: plain_range.end - plain_range.start,
            frame: Vec::new(),
        };
        Ok((decryptor, stored))
    }

    /// Consumes the next stored bytes and appends the plaintext of every
    /// frame they complete (within the requested range) to `out`.
    pub fn push(&mut self, mut stored: &[u8], out: &mut Vec<u8>) -> Result<()> {
        while !stored.is_empty() {
            if self.next_frame == self.end_frame {
                return Err(DatasetError::data_loss(format!(
                    "payload decryption failed: {} unexpected bytes after frame {}",
                    stored.len(),
                    self.end_frame - 1
                )));
            }
            let frame_len = stored_frame_len(self.next_frame, self.plain_len) as usize;
            if self.frame.capacity() == 0 {
                self.frame.reserve_exact(FRAME + TAG);
            }
            let take = (frame_len - self.frame.len()).min(stored.len());
            self.frame.extend_from_slice(&stored[..take]);
            stored = &stored[take..];
            if self.frame.len() == frame_len {
                self.open_frame(out)?;
            }
        }
        Ok(())
    }

    /// Checks that every covering frame was fed completely.
    pub fn finish(self) -> Result<()> {
        if self.next_frame == self.end_frame {
            return Ok(());
        }
        Err(DatasetError::data_loss(format!(
            "payload decryption failed: frame {} truncated: got {} of {} bytes",
            self.next_frame,
            self.frame.len(),
            stored_frame_len(self.next_frame, self.plain_len)
        )))
    }

    fn open_frame(&mut self, out: &mut Vec<u8>) -> Result<()> {
        let index = u32::try_from(self.next_frame).expect("for_range bounds frames to 2^32");
        let is_final = self.next_frame == self.final_frame;
        let body_len = self.frame.len() - TAG;
        let (body, tag) = self.frame.split_at_mut(body_len);
        self.cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&frame_nonce(&self.prefix, index)),
                &frame_aad(index, is_final),
                body,
                Tag::from_slice(tag),
            )
            .map_err(|_| {
                DatasetError::data_loss(format!(
                    "payload decryption failed: frame {index} does not authenticate \
                     (corrupted, truncated or reordered data, or the wrong topic key)"
                ))
            })?;
        let wanted = body
            .len()
            .saturating_sub(self.skip)
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        out.extend_from_slice(&body[self.skip..self.skip + wanted]);
        self.remaining -= wanted as u64;
        self.skip = 0;
        self.frame.clear();
        self.next_frame += 1;
        Ok(())
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        hex.push(DIGITS[usize::from(byte >> 4)] as char);
        hex.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
    hex
}

fn decode_key_hex(hex: &[u8]) -> Option<[u8; KEY_LEN]> {
    if hex.len() != KEY_LEN * 2 {
        return None;
    }
    let mut key = [0u8; KEY_LEN];
    for (byte, pair) in key.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
    }
    Some(key)
}

fn hex_digit(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

fn fill_random(buf: &mut [u8]) -> Result<()> {
    OsRng
        .try_fill_bytes(buf)
        .map_err(|error| DatasetError::internal(format!("os random source failed: {error}")))
}

fn frame_count(plain_len: u64) -> u64 {
    plain_len.div_ceil(FRAME_U64).max(1)
}

fn frame_offset(index: u64) -> u64 {
    HEADER as u64 + index * STORED_FRAME
}

fn stored_frame_len(index: u64, plain_len: u64) -> u64 {
    let plain = plain_len.saturating_sub(index * FRAME_U64).min(FRAME_U64);
    plain + TAG as u64
}

/// Indices of the frames holding `plain_range`: at least one frame, the one
/// holding `start` (the last frame when `start == plain_len`).
fn covering_frames(plain_range: &Range<u64>, plain_len: u64) -> Range<u64> {
    assert!(
        plain_range.start <= plain_range.end && plain_range.end <= plain_len,
        "range {plain_range:?} outside payload of {plain_len} bytes"
    );
    let first = (plain_range.start / FRAME_U64).min(frame_count(plain_len) - 1);
    let end = if plain_range.is_empty() {
        first + 1
    } else {
        (plain_range.end - 1) / FRAME_U64 + 1
    };
    first..end
}

fn frame_nonce(prefix: &[u8; PREFIX], index: u32) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[..PREFIX].copy_from_slice(prefix);
    nonce[PREFIX..].copy_from_slice(&index.to_be_bytes());
    nonce
}

fn frame_aad(index: u32, is_final: bool) -> [u8; 5] {
    let [a, b, c, d] = index.to_be_bytes();
    [a, b, c, d, u8::from(is_final)]
}

fn parse_header(header: &[u8; HEADER]) -> Result<[u8; PREFIX]> {
    if &header[..MAGIC.len()] != MAGIC {
        return Err(DatasetError::data_loss(
            "payload decryption failed: header does not start with RFDE",
        ));
    }
    let version = header[MAGIC.len()];
    if version != VERSION {
        return Err(DatasetError::data_loss(format!(
            "payload decryption failed: unsupported format version {version}"
        )));
    }
    if header[MAGIC.len() + 1..HEADER - PREFIX] != [0u8; 3] {
        return Err(DatasetError::data_loss(
            "payload decryption failed: reserved header bytes are not zero",
        ));
    }
    Ok(header[HEADER - PREFIX..]
        .try_into()
        .expect("prefix is 8 bytes"))
}

/// Publishes the key file without ever exposing a partial file and without
/// replacing one another process created meanwhile: `Ok(false)` then.
fn create_key_file(path: &Path, key: &[u8; KEY_LEN]) -> std::io::Result<bool> {
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidInput, "path has no file name"))?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let mut suffix = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut suffix);
    let temporary = dir.join(format!(
        ".{}.{}.tmp",
        file_name.to_string_lossy(),
        hex_encode(&suffix)
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let published = (|| {
        let mut file = options.open(&temporary)?;
        file.write_all(format!("{}\n", hex_encode(key)).as_bytes())?;
        file.sync_all()?;
        // A hard link, unlike rename, fails when the target exists.
        match std::fs::hard_link(&temporary, path) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(error) => Err(error),
        }
    })();
    let removed = std::fs::remove_file(&temporary);
    if published? {
        removed?;
        std::fs::File::open(dir)?.sync_all()?;
        return Ok(true);
    }
    Ok(false)
}

fn warn_if_shared(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(metadata) = std::fs::metadata(path) {
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format_args!("{mode:o}"),
                    "master key file is accessible to group or others; expected mode 600"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use riffle_core::ErrorCode;
    use riffle_core::HasCode;

    use super::*;

    fn master() -> MasterKey {
        MasterKey::from_hex(&"4a".repeat(32), "test.master_key").unwrap()
    }

    fn topic_key() -> TopicKey {
        master().new_topic_key().unwrap().0
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
    }

    fn encrypt_in_pieces(key: &TopicKey, plain: &[u8], piece: usize) -> Vec<u8> {
        let mut encryptor = Encryptor::new(key);
        let mut out = Vec::new();
        for chunk in plain.chunks(piece) {
            encryptor.push(chunk, &mut out);
        }
        encryptor.finish(&mut out);
        out
    }

    fn assert_data_loss(result: Result<Vec<u8>>, needle: &str) {
        let error = result.expect_err("tampering must be detected");
        assert_eq!(error.code(), ErrorCode::DataLoss, "{error}");
        assert!(
            error.message().starts_with("payload decryption failed:"),
            "{error}"
        );
        assert!(error.message().contains(needle), "{error}");
    }

    const SIZES: [usize; 6] = [0, 1, FRAME - 1, FRAME, FRAME + 1, 3 * FRAME];

    #[test]
    fn round_trips_every_size_fed_in_odd_pieces() {
        let key = topic_key();
        for size in SIZES {
            let plain = pattern(size);
            let whole = encrypt_all(&key, &plain);
            assert_eq!(
                whole.len() as u64,
                encrypted_len(size as u64),
                "size {size}"
            );
            assert_eq!(plain_len_of(whole.len() as u64), Some(size as u64));
            assert_eq!(decrypt_all(&key, &whole).unwrap(), plain, "size {size}");
            for piece in [1, 7777, FRAME, FRAME + 3] {
                if piece == 1 && size > FRAME + 1 {
                    continue;
                }
                let stored = encrypt_in_pieces(&key, &plain, piece);
                assert_eq!(stored.len(), whole.len(), "size {size} piece {piece}");
                assert_eq!(decrypt_all(&key, &stored).unwrap(), plain);
            }
        }
    }

    #[test]
    fn frame_layout_matches_the_documented_format() {
        let key = topic_key();
        let stored = encrypt_all(&key, &pattern(2 * FRAME + 5));
        assert_eq!(&stored[..4], b"RFDE");
        assert_eq!(stored[4..8], [1, 0, 0, 0]);
        assert_eq!(stored.len(), HEADER + 2 * (FRAME + TAG) + 5 + TAG);
        // The empty payload is one empty final frame: a header and a tag.
        assert_eq!(encrypt_all(&key, b"").len(), HEADER + TAG);
        assert_eq!(encrypted_len(0), (HEADER + TAG) as u64);
        assert_eq!(encrypted_len(FRAME as u64), (HEADER + FRAME + TAG) as u64);
    }

    #[test]
    fn nonce_prefix_differs_between_payloads() {
        let key = topic_key();
        let first = encrypt_all(&key, b"same");
        let second = encrypt_all(&key, b"same");
        assert_ne!(first[8..HEADER], second[8..HEADER]);
        assert_ne!(first, second);
    }

    #[test]
    fn encryptor_holds_back_a_full_frame_until_more_data_arrives() {
        let key = topic_key();
        let mut encryptor = Encryptor::new(&key);
        let mut out = Vec::new();
        encryptor.push(&pattern(FRAME), &mut out);
        assert_eq!(
            out.len(),
            HEADER,
            "the full frame might still be the final one"
        );
        encryptor.push(b"x", &mut out);
        assert_eq!(out.len(), HEADER + FRAME + TAG);
        encryptor.finish(&mut out);
        assert_eq!(out.len(), HEADER + FRAME + TAG + 1 + TAG);
        let mut expected = pattern(FRAME);
        expected.push(b'x');
        assert_eq!(decrypt_all(&key, &out).unwrap(), expected);
    }

    #[test]
    fn plain_len_of_rejects_lengths_no_payload_has() {
        assert_eq!(plain_len_of(0), None);
        assert_eq!(plain_len_of(HEADER as u64 + TAG as u64 - 1), None);
        // A full frame followed by an empty final frame is never produced.
        assert_eq!(plain_len_of(encrypted_len(FRAME as u64) + TAG as u64), None);
        assert_eq!(plain_len_of(encrypted_len(FRAME as u64) + 1), None);
        for size in [0u64, 1, 65535, 65536, 65537, 200_000] {
            assert_eq!(plain_len_of(encrypted_len(size)), Some(size));
        }
    }

    #[test]
    fn frames_for_range_covers_exactly_the_needed_frames() {
        let len = 3 * FRAME_U64 + 10;
        let stored = |i: u64| HEADER as u64 + i * STORED_FRAME;
        assert_eq!(
            frames_for_range(0..len, len),
            (stored(0)..encrypted_len(len), 0)
        );
        assert_eq!(frames_for_range(0..1, len), (stored(0)..stored(1), 0));
        assert_eq!(
            frames_for_range(FRAME_U64 - 1..FRAME_U64 + 1, len),
            (stored(0)..stored(2), FRAME_U64 - 1)
        );
        assert_eq!(
            frames_for_range(FRAME_U64..2 * FRAME_U64, len),
            (stored(1)..stored(2), 0)
        );
        assert_eq!(
            frames_for_range(3 * FRAME_U64 + 2..len, len),
            (stored(3)..encrypted_len(len), 2)
        );
        // Empty ranges still cover (and authenticate) one frame.
        assert_eq!(
            frames_for_range(len..len, len),
            (stored(3)..encrypted_len(len), 10)
        );
        assert_eq!(frames_for_range(0..0, 0), (stored(0)..encrypted_len(0), 0));
        let full = 2 * FRAME_U64;
        assert_eq!(
            frames_for_range(full..full, full),
            (stored(1)..stored(2), FRAME_U64)
        );
    }

    #[test]
    fn every_range_decrypts_to_the_plaintext_slice() {
        // Small frames would make this exhaustive; with 64 KiB frames, take
        // every boundary-adjacent offset instead.
        let key = topic_key();
        let len = 3 * FRAME + 100;
        let plain = pattern(len);
        let stored = encrypt_all(&key, &plain);
        let header: &[u8; HEADER] = stored[..HEADER].try_into().unwrap();
        let offsets = [
            0,
            1,
            FRAME - 1,
            FRAME,
            FRAME + 1,
            2 * FRAME,
            3 * FRAME,
            len - 1,
            len,
        ];
        for &start in &offsets {
            for &end in offsets.iter().filter(|&&end| end >= start) {
                let range = start as u64..end as u64;
                let (mut decryptor, stored_range) =
                    Decryptor::for_range(&key, header, len as u64, range.clone()).unwrap();
                let frames = &stored[stored_range.start as usize..stored_range.end as usize];
                let mut out = Vec::new();
                for piece in frames.chunks(10_007) {
                    decryptor.push(piece, &mut out).unwrap();
                }
                decryptor.finish().unwrap();
                assert_eq!(out, plain[start..end], "range {range:?}");
            }
        }
    }

    #[test]
    fn decryptor_rejects_missing_and_extra_frame_bytes() {
        let key = topic_key();
        let len = 2 * FRAME_U64;
        let stored = encrypt_all(&key, &pattern(len as usize));
        let header: &[u8; HEADER] = stored[..HEADER].try_into().unwrap();
        let (mut decryptor, range) = Decryptor::for_range(&key, header, len, 0..10).unwrap();
        let frames = &stored[range.start as usize..range.end as usize];
        let mut out = Vec::new();
        decryptor.push(&frames[..100], &mut out).unwrap();
        let error = decryptor.finish().unwrap_err();
        assert_eq!(error.code(), ErrorCode::DataLoss);
        assert!(error.message().contains("frame 0 truncated"), "{error}");

        let (mut decryptor, _) = Decryptor::for_range(&key, header, len, 0..10).unwrap();
        let error = decryptor
            .push(&stored[HEADER..HEADER + FRAME + TAG + 1], &mut out)
            .unwrap_err();
        assert!(
            error.message().contains("unexpected bytes after frame 0"),
            "{error}"
        );

        let error = Decryptor::for_range(&key, header, len, 5..len + 1)
            .err()
            .unwrap();
        assert_eq!(error.code(), ErrorCode::InvalidArgument);
    }

    #[test]
    fn a_flipped_bit_anywhere_is_detected() {
        let key = topic_key();
        let stored = encrypt_all(&key, &pattern(3 * FRAME + 7));
        let last_tag = stored.len() - 1;
        let middle_frame = HEADER + (FRAME + TAG) + 1000;
        let middle_tag = HEADER + 2 * (FRAME + TAG) - 3;
        let cases = [
            (0, "header does not start with RFDE"),
            (4, "unsupported format version"),
            (6, "reserved header bytes"),
            (HEADER - 1, "frame 0 does not authenticate"),
            (HEADER, "frame 0 does not authenticate"),
            (middle_frame, "frame 1 does not authenticate"),
            (middle_tag, "frame 1 does not authenticate"),
            (last_tag, "frame 3 does not authenticate"),
        ];
        for (offset, needle) in cases {
            let mut tampered = stored.clone();
            tampered[offset] ^= 0x01;
            assert_data_loss(decrypt_all(&key, &tampered), needle);
        }
    }

    #[test]
    fn truncation_and_reordering_are_detected() {
        let key = topic_key();
        let plain = pattern(3 * FRAME);
        let stored = encrypt_all(&key, &plain);

        // Dropping the final frame leaves a valid-looking length whose last
        // frame was sealed as non-final.
        let without_final = &stored[..HEADER + 2 * (FRAME + TAG)];
        assert_data_loss(
            decrypt_all(&key, without_final),
            "frame 1 does not authenticate",
        );

        // Cutting inside a frame.
        assert_data_loss(decrypt_all(&key, &stored[..stored.len() - 100]), "frame 2");
        assert_data_loss(decrypt_all(&key, &stored[..HEADER + 5]), "not the length");
        assert_data_loss(decrypt_all(&key, &stored[..HEADER - 1]), "shorter than");

        // Swapping two full frames.
        let mut swapped = stored.clone();
        let (first, second) = (
            HEADER..HEADER + FRAME + TAG,
            HEADER + FRAME + TAG..HEADER + 2 * (FRAME + TAG),
        );
        swapped[first.clone()].copy_from_slice(&stored[second.clone()]);
        swapped[second].copy_from_slice(&stored[first]);
        assert_data_loss(decrypt_all(&key, &swapped), "frame 0 does not authenticate");

        // Appending a frame from another payload of the same key.
        let other = encrypt_all(&key, &pattern(10));
        let mut extended = stored.clone();
        extended.extend_from_slice(&other[HEADER..]);
        assert_data_loss(decrypt_all(&key, &extended), "does not authenticate");
    }

    #[test]
    fn another_topic_key_cannot_decrypt() {
        let stored = encrypt_all(&topic_key(), b"secret dataset");
        assert_data_loss(
            decrypt_all(&topic_key(), &stored),
            "frame 0 does not authenticate",
        );
    }

    #[test]
    fn wrapped_topic_key_round_trips_and_rejects_tampering() {
        let master = master();
        let (key, wrapped) = master.new_topic_key().unwrap();
        assert_eq!(wrapped.len(), WRAPPED_KEY_LEN);
        let unwrapped = master.unwrap_topic_key(&wrapped).unwrap();
        let stored = encrypt_all(&key, b"payload");
        assert_eq!(decrypt_all(&unwrapped, &stored).unwrap(), b"payload");

        let other_master = MasterKey::from_hex(&"b7".repeat(32), "other").unwrap();
        let error = other_master.unwrap_topic_key(&wrapped).unwrap_err();
        assert_eq!(error.code(), ErrorCode::DataLoss);
        assert!(error.message().contains("wrong master key"), "{error}");

        for offset in [0, WRAP_NONCE, WRAPPED_KEY_LEN - 1] {
            let mut tampered = wrapped.clone();
            tampered[offset] ^= 0x80;
            let error = master.unwrap_topic_key(&tampered).unwrap_err();
            assert_eq!(error.code(), ErrorCode::DataLoss, "offset {offset}");
        }
        let error = master.unwrap_topic_key(&wrapped[1..]).unwrap_err();
        assert!(
            error.message().contains("has 59 bytes, expected 60"),
            "{error}"
        );
    }

    #[test]
    fn keys_do_not_print_key_material() {
        let hex = "4a".repeat(32);
        let master = MasterKey::from_hex(&hex, "test").unwrap();
        let printed = format!("{master:?} {:?}", master.new_topic_key().unwrap().0);
        assert_eq!(printed, "MasterKey(<redacted>) TopicKey(<redacted>)");
    }

    #[test]
    fn from_hex_names_the_field_not_the_value() {
        for bad in ["", "abc", &"zz".repeat(32), &"4a".repeat(33)] {
            let error = MasterKey::from_hex(bad, "datasets.master_key").unwrap_err();
            assert_eq!(error.code(), ErrorCode::InvalidArgument);
            assert_eq!(
                error.message(),
                "datasets.master_key: expected 64 hex characters (a 256-bit key)"
            );
        }
        assert!(MasterKey::from_hex(&format!(" {}\n", "AB".repeat(32)), "k").is_ok());
    }

    #[test]
    fn master_key_file_is_private_and_stable_across_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join("master.key");
        let created = MasterKey::load_or_create(&path).unwrap();
        let contents = std::fs::read_to_string(&path).unwrap();
        assert_eq!(contents.len(), 65);
        assert!(contents.ends_with('\n'));
        assert!(contents[..64].bytes().all(|b| b.is_ascii_hexdigit()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let reloaded = MasterKey::load_or_create(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), contents);
        let (key, wrapped) = created.new_topic_key().unwrap();
        let stored = encrypt_all(&key, b"survives restarts");
        let unwrapped = reloaded.unwrap_topic_key(&wrapped).unwrap();
        assert_eq!(
            decrypt_all(&unwrapped, &stored).unwrap(),
            b"survives restarts"
        );
        // No temporary files are left next to the key.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("master.key")]);
    }

    #[test]
    fn malformed_master_key_file_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        std::fs::write(&path, "not a key\n").unwrap();
        let error = MasterKey::load_or_create(&path).unwrap_err();
        assert_eq!(error.code(), ErrorCode::InvalidArgument);
        assert!(
            error.message().contains(&path.display().to_string()),
            "{error}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a key\n");
    }
}
