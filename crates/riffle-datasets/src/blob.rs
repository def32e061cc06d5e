//! Content-addressed blob store for dataset payloads, over `object_store`.
//!
//! Key layout:
//!
//! ```text
//! sha256/<aa>/<64 hex>   a complete blob; the hex is the SHA-256 of the STORED bytes
//!                        (the ciphertext when encrypted), <aa> its first two digits
//! tmp/<32 hex>           an upload in progress (or abandoned by a crash)
//! ```
//!
//! Invariants:
//!
//! * An object under `sha256/` is complete and immutable. Uploads are
//!   streamed (multipart, bounded memory) to a `tmp/` object that is moved to
//!   its final key only once complete, so neither a reader nor a crash ever
//!   sees a partial blob under a final key.
//! * A final key names its content, so writing it again can only write the
//!   same bytes: a put whose key already exists with the same size drops its
//!   temporary instead. Unencrypted, identical plaintexts share one object;
//!   encrypted, every put has a fresh nonce prefix and so its own object.
//! * Encrypted blobs use the [`crate::crypto`] payload format. The blob
//!   records neither its plaintext size nor its checksum (`sha256:<hex>` of
//!   the plaintext): [`BlobStore::put`] returns them for the metadata store,
//!   and [`BlobStore::read`] and [`BlobStore::verify`] take them back.
//! * `tmp/` objects left by a crash are never listed by [`BlobStore::list`];
//!   [`BlobStore::sweep_temporaries`] (run by the janitor) deletes them.

use std::io;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, WriteMultipart};
use rand::RngCore;
use riffle_core::ErrorCode;
use sha2::{Digest, Sha256};

use crate::crypto::{self, Decryptor, Encryptor, TopicKey, HEADER};
use crate::error::{DatasetError, Result};

/// Where complete blobs live.
const BLOB_PREFIX: &str = "sha256";
/// Where uploads live until they are complete.
const TMP_PREFIX: &str = "tmp";
/// Multipart part size: S3's minimum for every part but the last.
const DEFAULT_PART_SIZE: usize = 5 * 1024 * 1024;
/// Parts uploading at once; with the part being filled this bounds a put's
/// memory to `(PARTS_IN_FLIGHT + 1) * part_size`.
const PARTS_IN_FLIGHT: usize = 2;
/// Incoming chunks are hashed and encrypted in pieces this large, and reads
/// yield chunks of at most this size (plus one frame when decrypting), so no
/// poll hashes or decrypts for more than a fraction of a millisecond.
const PIECE: usize = 256 * 1024;

/// Outcome of [`BlobStore::put`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobWrite {
    /// Content-addressed key, `sha256/<aa>/<64 hex of the stored bytes>`.
    pub key: String,
    /// Bytes in the store (ciphertext when encrypted).
    pub stored_size: u64,
    /// Plaintext bytes.
    pub size: u64,
    /// `sha256:<hex>` of the plaintext.
    pub checksum: String,
}

/// One complete blob, as listed for the janitor's orphan sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub key: String,
    pub stored_size: u64,
    pub modified_ms: i64,
}

#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Streams `first` then `rest` into a new object. The returned
    /// `checksum` is `sha256:<hex>` of the PLAINTEXT and `size` its length in
    /// bytes; with `key` the stored bytes are encrypted (crypto format). The
    /// object's key is content-addressed: `sha256/<first 2 hex>/<64 hex of
    /// the STORED bytes>`. Written to a temporary object first and moved
    /// into place only when complete, so a reader or a crash never sees a
    /// partial blob under a final key. If `max_size` is Some and the
    /// plaintext exceeds it, the write stops, the temporary object is
    /// removed, and the error is PayloadTooLarge naming the limit. A stream
    /// error aborts and removes the temporary object.
    async fn put(
        &self,
        first: Bytes,
        rest: BoxStream<'static, io::Result<Bytes>>,
        key: Option<&TopicKey>,
        max_size: Option<u64>,
    ) -> Result<BlobWrite>;

    /// Stored size, or None when absent.
    async fn head(&self, blob: &str) -> Result<Option<u64>>;

    /// A stream of the plaintext bytes in `range` (plaintext offsets, within
    /// `0..=plain_size`). Memory stays flat: chunks, never the whole object.
    async fn read(
        &self,
        blob: &str,
        key: Option<&TopicKey>,
        plain_size: u64,
        range: Range<u64>,
    ) -> Result<BoxStream<'static, Result<Bytes>>>;

    /// Streams the whole blob, decrypting if needed, and checks it hashes to
    /// `checksum` and has `size` bytes. Mismatch → DataLoss naming the blob
    /// and both checksums.
    async fn verify(
        &self,
        blob: &str,
        key: Option<&TopicKey>,
        size: u64,
        checksum: &str,
    ) -> Result<()>;

    /// Removes the blob; an absent blob is Ok.
    async fn delete(&self, blob: &str) -> Result<()>;

    /// Every final blob (not temporaries), for the janitor's orphan sweep.
    async fn list(&self) -> Result<Vec<BlobInfo>>;

    /// Deletes uploads abandoned by a crash (temporaries not modified for
    /// `older_than`); returns how many.
    async fn sweep_temporaries(&self, older_than: Duration) -> Result<usize>;
}

/// [`BlobStore`] over any `object_store` backend.
#[derive(Debug, Clone)]
pub struct ObjectBlobStore {
    store: Arc<dyn ObjectStore>,
    part_size: usize,
    /// Root directory of a local store, whose crashed uploads leave staging
    /// files (`tmp/<hex>#<n>`) that `object_store` itself never lists.
    local_root: Option<PathBuf>,
}

impl ObjectBlobStore {
    /// A store in the local directory `dir`, created when missing.
    pub fn local(dir: &FsPath) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|error| {
            DatasetError::internal(format!(
                "blob store directory {}: cannot create: {error}",
                dir.display()
            ))
        })?;
        let store = LocalFileSystem::new_with_prefix(dir)?;
        Ok(ObjectBlobStore {
            local_root: Some(dir.to_path_buf()),
            ..Self::new(Arc::new(store))
        })
    }

    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        ObjectBlobStore {
            store,
            part_size: DEFAULT_PART_SIZE,
            local_root: None,
        }
    }

    /// Multipart part size in bytes (default 5 MiB, which S3 requires as a
    /// minimum for every part but the last). A put buffers at most three
    /// parts.
    pub fn with_part_size(mut self, part_size: usize) -> Self {
        assert!(part_size > 0, "part size must be positive");
        self.part_size = part_size;
        self
    }

    /// Deletes temporaries (uploads abandoned by a crash) not modified for
    /// `older_than`; returns how many. Uploads in progress keep touching
    /// their temporary, so a generous `older_than` (an hour) spares them.
    pub async fn remove_stale_temporaries(&self, older_than: Duration) -> Result<usize> {
        let cutoff_ms = unix_ms(SystemTime::now()) - older_than.as_millis() as i64;
        let mut removed = 0;
        let mut entries = self.store.list(Some(&Path::from(TMP_PREFIX)));
        while let Some(entry) = entries.next().await {
            let entry = entry?;
            if entry.last_modified.timestamp_millis() < cutoff_ms {
                match self.store.delete(&entry.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => removed += 1,
                    Err(error) => return Err(error.into()),
                }
            }
        }
        if let Some(root) = &self.local_root {
            let tmp_dir = root.join(TMP_PREFIX);
            removed += tokio::task::spawn_blocking(move || remove_stale_files(&tmp_dir, cutoff_ms))
                .await
                .map_err(|error| DatasetError::internal(format!("temporary sweep: {error}")))?
                .map_err(|error| {
                    DatasetError::unavailable(format!("blob store temporary sweep: {error}"))
                })?;
        }
        Ok(removed)
    }

    /// Feeds the whole payload through `sealer` into `writer`.
    async fn upload(
        &self,
        writer: &mut WriteMultipart,
        sealer: &mut Sealer,
        mut payload: BoxStream<'static, io::Result<Bytes>>,
        max_size: Option<u64>,
    ) -> Result<()> {
        while let Some(chunk) = payload.next().await {
            let mut chunk = chunk.map_err(|error| stream_error(error, sealer.size))?;
            if let Some(limit) = max_size {
                if sealer.size + chunk.len() as u64 > limit {
                    return Err(DatasetError::new(
                        ErrorCode::PayloadTooLarge,
                        format!("body: payload exceeds datasets.max_payload_bytes ({limit} bytes)"),
                    ));
                }
            }
            while !chunk.is_empty() {
                let piece = chunk.split_to(chunk.len().min(PIECE));
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                sealer.absorb(piece, writer);
                if !chunk.is_empty() {
                    tokio::task::yield_now().await;
                }
            }
        }
        writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
        sealer.seal(writer);
        Ok(())
    }

    /// Moves a complete temporary to its final key, or drops it when that
    /// key already holds the same content.
    async fn publish(&self, temporary: &Path, blob: &Path, stored_size: u64) -> Result<bool> {
        match self.store.head(blob).await {
            Ok(existing) if existing.size == stored_size => {
                self.discard(temporary).await;
                return Ok(false);
            }
            // Same name, other size: the stored copy was damaged; replace it.
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(error) => {
                self.discard(temporary).await;
                return Err(error.into());
            }
        }
        if let Err(error) = self.store.rename(temporary, blob).await {
            self.discard(temporary).await;
            return Err(error.into());
        }
        Ok(true)
    }

    /// Best-effort removal of a temporary after a failure.
    async fn discard(&self, temporary: &Path) {
        match self.store.delete(temporary).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(error) => {
                tracing::warn!(path = %temporary, %error, "cannot remove temporary blob");
            }
        }
    }

    async fn abort(&self, writer: WriteMultipart, temporary: &Path) {
        if let Err(error) = writer.abort().await {
            tracing::warn!(path = %temporary, %error, "cannot abort blob upload");
        }
        self.discard(temporary).await;
    }

    async fn read_header(&self, blob: &str, location: &Path) -> Result<[u8; HEADER]> {
        let header = self.store.get_range(location, 0..HEADER as u64).await?;
        header.as_ref().try_into().map_err(|_| {
            DatasetError::data_loss(format!(
                "blob {blob}: payload decryption failed: header truncated to {} bytes",
                header.len()
            ))
        })
    }
}

#[async_trait::async_trait]
impl BlobStore for ObjectBlobStore {
    async fn put(
        &self,
        first: Bytes,
        rest: BoxStream<'static, io::Result<Bytes>>,
        key: Option<&TopicKey>,
        max_size: Option<u64>,
    ) -> Result<BlobWrite> {
        let temporary = Path::from(format!("{TMP_PREFIX}/{}", random_hex(16)));
        let upload = self.store.put_multipart(&temporary).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        let mut sealer = Sealer::new(key);
        let payload = stream::iter([Ok(first)]).chain(rest).boxed();
        if let Err(error) = self
            .upload(&mut writer, &mut sealer, payload, max_size)
            .await
        {
            self.abort(writer, &temporary).await;
            return Err(error);
        }
        if let Err(error) = writer.finish().await {
            self.discard(&temporary).await;
            return Err(error.into());
        }
        let written = sealer.finish();
        let blob = blob_key_for(&written.stored_sha);
        let created = self
            .publish(&temporary, &Path::from(blob.as_str()), written.stored_size)
            .await?;
        tracing::debug!(
            blob = %blob,
            size = written.size,
            stored_size = written.stored_size,
            created,
            "blob stored"
        );
        Ok(BlobWrite {
            key: blob,
            stored_size: written.stored_size,
            size: written.size,
            checksum: format!("sha256:{}", written.plain_sha),
        })
    }

    async fn head(&self, blob: &str) -> Result<Option<u64>> {
        match self.store.head(&blob_path(blob)?).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    async fn read(
        &self,
        blob: &str,
        key: Option<&TopicKey>,
        plain_size: u64,
        range: Range<u64>,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        let location = blob_path(blob)?;
        if range.start > range.end || range.end > plain_size {
            return Err(DatasetError::invalid(format!(
                "range {}..{} is outside blob {blob} of {plain_size} bytes",
                range.start, range.end
            )));
        }
        let Some(key) = key else {
            if range.is_empty() {
                // object_store rejects empty ranges; still report absence.
                self.store.head(&location).await?;
                return Ok(stream::empty().boxed());
            }
            let source = get_stored_range(&*self.store, &location, range.clone()).await?;
            return Ok(plain_stream(
                blob.to_owned(),
                source,
                range.end - range.start,
            ));
        };
        let header = self.read_header(blob, &location).await?;
        let (decryptor, stored_range) = Decryptor::for_range(key, &header, plain_size, range)
            .map_err(|error| in_blob(blob, error))?;
        let source = get_stored_range(&*self.store, &location, stored_range).await?;
        Ok(decrypting_stream(blob.to_owned(), source, decryptor))
    }

    async fn verify(
        &self,
        blob: &str,
        key: Option<&TopicKey>,
        size: u64,
        checksum: &str,
    ) -> Result<()> {
        let stored_size = self
            .head(blob)
            .await?
            .ok_or_else(|| DatasetError::not_found(format!("blob {blob} not found")))?;
        let expected_stored = match key {
            Some(_) => crypto::encrypted_len(size),
            None => size,
        };
        if stored_size != expected_stored {
            return Err(DatasetError::data_loss(format!(
                "blob {blob}: stored size {stored_size} bytes, expected {expected_stored} \
                 for a {size}-byte payload"
            )));
        }
        let mut content = self.read(blob, key, size, 0..size).await?;
        let mut hasher = Sha256::new();
        while let Some(chunk) = content.next().await {
            hasher.update(chunk?);
        }
        let actual = format!("sha256:{}", crypto::hex_encode(&hasher.finalize()));
        if !actual.eq_ignore_ascii_case(checksum) {
            return Err(DatasetError::data_loss(format!(
                "blob {blob}: checksum mismatch: content hashes to {actual}, expected {checksum}"
            )));
        }
        Ok(())
    }

    async fn delete(&self, blob: &str) -> Result<()> {
        match self.store.delete(&blob_path(blob)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    async fn sweep_temporaries(&self, older_than: Duration) -> Result<usize> {
        self.remove_stale_temporaries(older_than).await
    }

    async fn list(&self) -> Result<Vec<BlobInfo>> {
        let mut entries = self.store.list(Some(&Path::from(BLOB_PREFIX)));
        let mut blobs = Vec::new();
        while let Some(entry) = entries.next().await {
            let entry = entry?;
            let key = entry.location.to_string();
            if !is_blob_key(&key) {
                continue;
            }
            blobs.push(BlobInfo {
                key,
                stored_size: entry.size,
                modified_ms: entry.last_modified.timestamp_millis(),
            });
        }
        Ok(blobs)
    }
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    crypto::hex_encode(&Sha256::digest(data))
}

/// `sha256:<hex>` of `data`, the checksum format of payloads.
pub fn checksum_of(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// The key of a blob whose stored bytes hash to `stored_sha_hex`.
pub fn blob_key_for(stored_sha_hex: &str) -> String {
    debug_assert_eq!(stored_sha_hex.len(), 64);
    format!("{BLOB_PREFIX}/{}/{stored_sha_hex}", &stored_sha_hex[..2])
}

/// Whether `key` has the layout `sha256/<aa>/<64 lowercase hex starting with aa>`.
fn is_blob_key(key: &str) -> bool {
    let Some(rest) = key.strip_prefix("sha256/") else {
        return false;
    };
    let Some((shard, hash)) = rest.split_once('/') else {
        return false;
    };
    let lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    shard.len() == 2 && hash.len() == 64 && lower_hex(hash) && hash.starts_with(shard)
}

/// Keys come from the metadata store and requests; only blob keys may name
/// objects, so no caller can read or delete a temporary or anything else.
fn blob_path(blob: &str) -> Result<Path> {
    if !is_blob_key(blob) {
        return Err(DatasetError::invalid(format!(
            "blob key {blob:?} is not sha256/<2 hex>/<64 hex>"
        )));
    }
    Ok(Path::from(blob))
}

/// Hashes and (optionally) encrypts a payload on its way to the store.
struct Sealer {
    plain_hasher: Sha256,
    /// Present with `encryptor`: unencrypted, stored bytes are the plaintext.
    stored_hasher: Option<Sha256>,
    encryptor: Option<Encryptor>,
    size: u64,
    stored_size: u64,
    /// Reused buffer for ciphertext.
    sealed: Vec<u8>,
}

struct Sealed {
    size: u64,
    stored_size: u64,
    plain_sha: String,
    stored_sha: String,
}

impl Sealer {
    fn new(key: Option<&TopicKey>) -> Sealer {
        Sealer {
            plain_hasher: Sha256::new(),
            stored_hasher: key.map(|_| Sha256::new()),
            encryptor: key.map(Encryptor::new),
            size: 0,
            stored_size: 0,
            sealed: Vec::new(),
        }
    }

    fn absorb(&mut self, piece: Bytes, writer: &mut WriteMultipart) {
        self.size += piece.len() as u64;
        self.plain_hasher.update(&piece);
        match &mut self.encryptor {
            Some(encryptor) => {
                encryptor.push(&piece, &mut self.sealed);
                self.emit_sealed(writer);
            }
            None => {
                self.stored_size += piece.len() as u64;
                writer.put(piece);
            }
        }
    }

    /// Writes what the encryptor still holds (the final frame).
    fn seal(&mut self, writer: &mut WriteMultipart) {
        if let Some(encryptor) = self.encryptor.take() {
            encryptor.finish(&mut self.sealed);
            self.emit_sealed(writer);
        }
    }

    fn emit_sealed(&mut self, writer: &mut WriteMultipart) {
        if let Some(hasher) = &mut self.stored_hasher {
            hasher.update(&self.sealed);
        }
        self.stored_size += self.sealed.len() as u64;
        writer.write(&self.sealed);
        self.sealed.clear();
    }

    fn finish(self) -> Sealed {
        debug_assert!(self.encryptor.is_none(), "seal() runs before finish()");
        let plain_sha = crypto::hex_encode(&self.plain_hasher.finalize());
        let stored_sha = match self.stored_hasher {
            Some(hasher) => crypto::hex_encode(&hasher.finalize()),
            None => plain_sha.clone(),
        };
        Sealed {
            size: self.size,
            stored_size: self.stored_size,
            plain_sha,
            stored_sha,
        }
    }
}

async fn get_stored_range(
    store: &dyn ObjectStore,
    location: &Path,
    range: Range<u64>,
) -> Result<BoxStream<'static, object_store::Result<Bytes>>> {
    debug_assert!(!range.is_empty());
    let options = GetOptions {
        range: Some(GetRange::Bounded(range)),
        ..GetOptions::default()
    };
    Ok(store.get_opts(location, options).await?.into_stream())
}

/// Re-chunks `source` into pieces of at most [`PIECE`] bytes and checks it
/// delivers exactly `expected` bytes (object_store silently shortens a range
/// that runs past the end of a truncated object).
fn plain_stream(
    blob: String,
    source: BoxStream<'static, object_store::Result<Bytes>>,
    expected: u64,
) -> BoxStream<'static, Result<Bytes>> {
    struct State {
        blob: String,
        source: BoxStream<'static, object_store::Result<Bytes>>,
        input: Bytes,
        delivered: u64,
        expected: u64,
    }
    let state = State {
        blob,
        source,
        input: Bytes::new(),
        delivered: 0,
        expected,
    };
    stream::try_unfold(state, |mut state| async move {
        while state.input.is_empty() {
            match state.source.next().await {
                Some(chunk) => state.input = chunk?,
                None if state.delivered == state.expected => return Ok(None),
                None => {
                    return Err(DatasetError::data_loss(format!(
                        "blob {}: truncated: got {} of {} bytes",
                        state.blob, state.delivered, state.expected
                    )))
                }
            }
        }
        let piece = state.input.split_to(state.input.len().min(PIECE));
        state.delivered += piece.len() as u64;
        if state.delivered > state.expected {
            return Err(DatasetError::data_loss(format!(
                "blob {}: more than the {} bytes requested",
                state.blob, state.expected
            )));
        }
        Ok(Some((piece, state)))
    })
    .boxed()
}

/// Decrypts `source` (the stored bytes of the covering frames) in pieces of
/// at most [`PIECE`] stored bytes.
fn decrypting_stream(
    blob: String,
    source: BoxStream<'static, object_store::Result<Bytes>>,
    decryptor: Decryptor,
) -> BoxStream<'static, Result<Bytes>> {
    struct State {
        blob: String,
        source: BoxStream<'static, object_store::Result<Bytes>>,
        /// None once the stream ended successfully.
        decryptor: Option<Decryptor>,
        input: Bytes,
    }
    let state = State {
        blob,
        source,
        decryptor: Some(decryptor),
        input: Bytes::new(),
    };
    stream::try_unfold(state, |mut state| async move {
        loop {
            if state.input.is_empty() {
                match state.source.next().await {
                    Some(chunk) => state.input = chunk?,
                    None => {
                        if let Some(decryptor) = state.decryptor.take() {
                            decryptor
                                .finish()
                                .map_err(|error| in_blob(&state.blob, error))?;
                        }
                        return Ok(None);
                    }
                }
                continue;
            }
            let Some(decryptor) = state.decryptor.as_mut() else {
                return Ok(None);
            };
            let piece = state.input.split_to(state.input.len().min(PIECE));
            let mut plain = Vec::with_capacity(piece.len());
            decryptor
                .push(&piece, &mut plain)
                .map_err(|error| in_blob(&state.blob, error))?;
            if !plain.is_empty() {
                return Ok(Some((Bytes::from(plain), state)));
            }
        }
    })
    .boxed()
}

fn in_blob(blob: &str, error: DatasetError) -> DatasetError {
    error.within(&format!("blob {blob}"))
}

fn stream_error(error: io::Error, received: u64) -> DatasetError {
    let message = format!("payload stream failed after {received} bytes: {error}");
    match error.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => DatasetError::invalid(message),
        _ => DatasetError::unavailable(message),
    }
}

fn random_hex(bytes: usize) -> String {
    let mut random = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut random);
    crypto::hex_encode(&random)
}

fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

/// Removes files directly in `dir` last modified before `cutoff_ms`.
fn remove_stale_files(dir: &FsPath, cutoff_ms: i64) -> io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(error),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let metadata = entry.metadata()?;
        if !metadata.is_file() || unix_ms(metadata.modified()?) >= cutoff_ms {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use riffle_core::HasCode;

    #[test]
    fn blob_keys_are_validated() {
        let hash = sha256_hex(b"abc");
        let key = blob_key_for(&hash);
        assert_eq!(key, format!("sha256/ba/{hash}"));
        assert!(is_blob_key(&key));
        for bad in [
            "",
            "tmp/0123",
            "sha256/ba",
            &format!("sha256/bb/{hash}"),
            &format!("sha256/ba/{hash}0"),
            &format!("sha256/ba/{}", hash.to_uppercase()),
            &format!("sha256/ba/../{hash}"),
        ] {
            assert!(!is_blob_key(bad), "{bad}");
            let error = blob_path(bad).unwrap_err();
            assert_eq!(error.code(), ErrorCode::InvalidArgument);
        }
    }

    #[test]
    fn checksum_helpers_match_known_vectors() {
        assert_eq!(
            checksum_of(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
