//! The content-addressed blob store over a local directory and in memory.

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::StreamExt;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};
use riffle_core::{ErrorCode, HasCode};
use riffle_datasets::blob::{blob_key_for, checksum_of, sha256_hex, BlobStore, ObjectBlobStore};
use riffle_datasets::crypto::{encrypted_len, MasterKey, TopicKey, FRAME};
use riffle_datasets::{DatasetError, Result};

const MIB: usize = 1024 * 1024;

fn topic_key() -> TopicKey {
    MasterKey::from_hex(&"5c".repeat(32), "test.master_key")
        .unwrap()
        .new_topic_key()
        .unwrap()
        .0
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
        .collect()
}

/// `data` as a first chunk and a stream of the rest, cut at uneven sizes.
fn uneven(data: &[u8]) -> (Bytes, BoxStream<'static, io::Result<Bytes>>) {
    let sizes = [1, 4093, 65536, 7, 100_003, 3 * MIB + 5];
    let mut chunks = Vec::new();
    let mut offset = 0;
    for size in sizes.iter().cycle() {
        if offset >= data.len() {
            break;
        }
        let end = (offset + size).min(data.len());
        chunks.push(Bytes::copy_from_slice(&data[offset..end]));
        offset = end;
    }
    let mut chunks = chunks.into_iter();
    let first = chunks.next().unwrap_or_default();
    (first, stream::iter(chunks.map(Ok)).boxed())
}

fn no_more() -> BoxStream<'static, io::Result<Bytes>> {
    stream::empty().boxed()
}

async fn collect(stream: BoxStream<'static, Result<Bytes>>) -> Result<Vec<u8>> {
    let chunks: Vec<Bytes> = stream
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    assert!(
        chunks.iter().all(|chunk| chunk.len() <= MIB),
        "chunks exceed 1 MiB"
    );
    Ok(chunks.concat())
}

async fn read_all(
    blobs: &ObjectBlobStore,
    key: &str,
    topic: Option<&TopicKey>,
    size: u64,
    range: Range<u64>,
) -> Result<Vec<u8>> {
    collect(blobs.read(key, topic, size, range).await?).await
}

/// Every regular file under `dir`, relative paths.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    files.sort();
    files
}

fn local() -> (tempfile::TempDir, ObjectBlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let blobs = ObjectBlobStore::local(&dir.path().join("blobs"))
        .unwrap()
        .with_part_size(MIB);
    (dir, blobs)
}

fn in_memory() -> (Arc<InMemory>, ObjectBlobStore) {
    let store = Arc::new(InMemory::new());
    let blobs = ObjectBlobStore::new(store.clone()).with_part_size(MIB);
    (store, blobs)
}

fn assert_code(error: &DatasetError, code: ErrorCode) {
    assert_eq!(error.code(), code, "{error}");
}

async fn assert_round_trip(blobs: &ObjectBlobStore, raw_dir: Option<&Path>) {
    let topic = topic_key();
    // Debug builds run AES-GCM at a few MB/s: encrypted sizes stay smaller.
    let cases = [
        (0, None),
        (10, None),
        (3 * MIB + 4321, None),
        (0, Some(&topic)),
        (10, Some(&topic)),
        (MIB + 4321, Some(&topic)),
    ];
    for (size, key) in cases {
        let plain = pattern(size);
        let (first, rest) = uneven(&plain);
        let written = blobs.put(first, rest, key, None).await.unwrap();
        assert_eq!(written.size, size as u64);
        assert_eq!(written.checksum, checksum_of(&plain));
        let expected_stored = match key {
            Some(_) => encrypted_len(size as u64),
            None => size as u64,
        };
        assert_eq!(written.stored_size, expected_stored);
        assert_eq!(
            blobs.head(&written.key).await.unwrap(),
            Some(expected_stored)
        );
        if let Some(dir) = raw_dir {
            let stored = std::fs::read(dir.join(&written.key)).unwrap();
            assert_eq!(written.key, blob_key_for(&sha256_hex(&stored)));
        }
        let content = read_all(blobs, &written.key, key, size as u64, 0..size as u64)
            .await
            .unwrap();
        assert!(content == plain, "size {size}, encrypted {}", key.is_some());
        blobs
            .verify(&written.key, key, size as u64, &written.checksum)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn round_trips_plain_and_encrypted_payloads_locally() {
    let (dir, blobs) = local();
    assert_round_trip(&blobs, Some(&dir.path().join("blobs"))).await;
    let leftovers: Vec<_> = files_under(dir.path())
        .into_iter()
        .filter(|file| !file.starts_with("blobs/sha256"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn round_trips_plain_and_encrypted_payloads_in_memory() {
    let (store, blobs) = in_memory();
    assert_round_trip(&blobs, None).await;
    let objects: Vec<_> = store.list(None).collect().await;
    assert_eq!(objects.len(), blobs.list().await.unwrap().len());
}

#[tokio::test]
async fn identical_plaintext_unencrypted_is_stored_once() {
    let (dir, blobs) = local();
    let plain = pattern(200_000);
    let (first, rest) = uneven(&plain);
    let once = blobs.put(first, rest, None, None).await.unwrap();
    let again = blobs
        .put(Bytes::from(plain.clone()), no_more(), None, None)
        .await
        .unwrap();
    assert_eq!(once, again);
    assert_eq!(once.key, blob_key_for(&sha256_hex(&plain)));
    assert_eq!(blobs.list().await.unwrap().len(), 1);
    assert_eq!(files_under(&dir.path().join("blobs")).len(), 1);
}

#[tokio::test]
async fn encrypted_blobs_hide_the_plaintext_and_need_their_topic_key() {
    let (dir, blobs) = local();
    let topic = topic_key();
    let plain = b"secret-row;".repeat(20_000);
    let (first, rest) = uneven(&plain);
    let written = blobs.put(first, rest, Some(&topic), None).await.unwrap();
    let stored = std::fs::read(dir.path().join("blobs").join(&written.key)).unwrap();
    assert!(!stored.windows(11).any(|window| window == b"secret-row;"));

    // A fresh nonce prefix per put: the same plaintext is a new object.
    let again = blobs
        .put(Bytes::from(plain.clone()), no_more(), Some(&topic), None)
        .await
        .unwrap();
    assert_ne!(again.key, written.key);
    assert_eq!(again.checksum, written.checksum);

    let size = plain.len() as u64;
    let other = topic_key();
    let error = read_all(&blobs, &written.key, Some(&other), size, 0..size)
        .await
        .unwrap_err();
    assert_code(&error, ErrorCode::DataLoss);
    assert!(error.message().contains(&written.key), "{error}");
    assert!(
        error
            .message()
            .contains("payload decryption failed: frame 0"),
        "{error}"
    );
    let error = blobs
        .verify(&written.key, Some(&other), size, &written.checksum)
        .await
        .unwrap_err();
    assert_code(&error, ErrorCode::DataLoss);
}

async fn assert_range_reads(blobs: &ObjectBlobStore) {
    let topic = topic_key();
    let size = 3 * FRAME + 100;
    let plain = pattern(size);
    let frame = FRAME as u64;
    let ranges = [
        0..size as u64,
        0..1,
        0..frame,
        frame..2 * frame,
        frame - 1..frame + 1,
        frame + 17..frame + 4000,
        2 * frame - 5..3 * frame + 50,
        3 * frame..size as u64,
        size as u64 - 1..size as u64,
        frame..frame,
        size as u64..size as u64,
    ];
    for key in [None, Some(&topic)] {
        let written = blobs
            .put(Bytes::from(plain.clone()), no_more(), key, None)
            .await
            .unwrap();
        for range in ranges.clone() {
            let content = read_all(blobs, &written.key, key, size as u64, range.clone())
                .await
                .unwrap();
            let expected = &plain[range.start as usize..range.end as usize];
            assert!(
                content == expected,
                "range {range:?}, encrypted {}",
                key.is_some()
            );
        }
        let error = blobs
            .read(&written.key, key, size as u64, 5..size as u64 + 1)
            .await
            .err()
            .unwrap();
        assert_code(&error, ErrorCode::InvalidArgument);
    }
}

#[tokio::test]
async fn range_reads_return_the_plaintext_slice() {
    assert_range_reads(&local().1).await;
    assert_range_reads(&in_memory().1).await;
}

#[tokio::test]
async fn large_reads_come_in_bounded_chunks() {
    // InMemory answers a range with one buffer; reads must still re-chunk.
    let (_store, blobs) = in_memory();
    let plain = pattern(MIB + 1);
    let size = plain.len() as u64;
    let topic = topic_key();
    for key in [None, Some(&topic)] {
        let written = blobs
            .put(Bytes::from(plain.clone()), no_more(), key, None)
            .await
            .unwrap();
        let chunks: Vec<Bytes> = blobs
            .read(&written.key, key, size, 0..size)
            .await
            .unwrap()
            .map(|chunk| chunk.unwrap())
            .collect()
            .await;
        assert!(chunks.len() > 1, "{} chunks", chunks.len());
        assert!(chunks.iter().all(|chunk| chunk.len() <= MIB));
    }
}

#[tokio::test]
async fn exceeding_max_size_fails_and_leaves_nothing_behind() {
    let topic = topic_key();
    for key in [None, Some(&topic)] {
        let (dir, blobs) = local();
        let limit = 300_000;
        let plain = pattern(limit + 1);
        let (first, rest) = uneven(&plain);
        let error = blobs
            .put(first, rest, key, Some(limit as u64))
            .await
            .unwrap_err();
        assert_code(&error, ErrorCode::PayloadTooLarge);
        assert!(error.message().contains("300000"), "{error}");
        assert!(blobs.list().await.unwrap().is_empty());
        assert_eq!(files_under(dir.path()), Vec::<PathBuf>::new());

        // Exactly at the limit is fine.
        let (first, rest) = uneven(&plain[..limit]);
        blobs
            .put(first, rest, key, Some(limit as u64))
            .await
            .unwrap();

        let (store, blobs) = in_memory();
        let (first, rest) = uneven(&plain);
        let error = blobs.put(first, rest, key, Some(1000)).await.unwrap_err();
        assert_code(&error, ErrorCode::PayloadTooLarge);
        assert_eq!(store.list(None).count().await, 0);
    }
}

#[tokio::test]
async fn a_failing_stream_fails_the_put_and_leaves_nothing_behind() {
    let topic = topic_key();
    for key in [None, Some(&topic)] {
        let (dir, blobs) = local();
        let rest = stream::iter([
            Ok(Bytes::from(pattern(200_000))),
            Ok(Bytes::from(pattern(300_007))),
            Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "client went away",
            )),
            Ok(Bytes::from_static(b"never read")),
        ])
        .boxed();
        let error = blobs
            .put(Bytes::from(pattern(1000)), rest, key, None)
            .await
            .unwrap_err();
        assert_code(&error, ErrorCode::Unavailable);
        assert!(error.message().contains("client went away"), "{error}");
        assert!(blobs.list().await.unwrap().is_empty());
        assert_eq!(files_under(dir.path()), Vec::<PathBuf>::new());

        let (store, blobs) = in_memory();
        let rest = stream::iter([Err(io::Error::other("boom"))]).boxed();
        blobs
            .put(Bytes::from(pattern(10)), rest, key, None)
            .await
            .unwrap_err();
        assert_eq!(store.list(None).count().await, 0);
    }
}

#[tokio::test]
async fn put_streams_to_storage_instead_of_buffering_the_payload() {
    let (dir, blobs) = local();
    let tmp_dir = dir.path().join("blobs").join("tmp");
    let total = 16 * MIB;
    // Before producing each chunk, check that what was produced so far is
    // already on disk, up to the part being filled and the parts in flight.
    let rest = stream::unfold(MIB, move |produced| {
        let tmp_dir = tmp_dir.clone();
        async move {
            if produced >= total {
                return None;
            }
            let on_disk: u64 = std::fs::read_dir(&tmp_dir)
                .map(|entries| {
                    entries
                        .map(|entry| entry.unwrap().metadata().unwrap().len())
                        .sum()
                })
                .unwrap_or(0);
            assert!(
                on_disk + 4 * MIB as u64 >= produced as u64,
                "{produced} bytes produced, only {on_disk} on disk"
            );
            Some((Ok(Bytes::from(vec![7u8; MIB])), produced + MIB))
        }
    })
    .boxed();
    let written = blobs
        .put(Bytes::from(vec![7u8; MIB]), rest, None, None)
        .await
        .unwrap();
    assert_eq!(written.size, total as u64);
    assert_eq!(written.checksum, checksum_of(&vec![7u8; total]));
}

#[tokio::test]
async fn verify_detects_a_corrupted_stored_file() {
    let (dir, blobs) = local();
    let topic = topic_key();
    let plain = pattern(2 * FRAME + 10);
    let size = plain.len() as u64;
    for key in [None, Some(&topic)] {
        let written = blobs
            .put(Bytes::from(plain.clone()), no_more(), key, None)
            .await
            .unwrap();
        let path = dir.path().join("blobs").join(&written.key);
        let original = std::fs::read(&path).unwrap();
        let mut flipped = original.clone();
        flipped[FRAME + 3] ^= 0x20;
        std::fs::write(&path, &flipped).unwrap();

        let error = blobs
            .verify(&written.key, key, size, &written.checksum)
            .await
            .unwrap_err();
        assert_code(&error, ErrorCode::DataLoss);
        assert!(error.message().contains(&written.key), "{error}");
        match key {
            None => {
                assert!(error.message().contains(&written.checksum), "{error}");
                assert!(error.message().contains(&checksum_of(&flipped)), "{error}");
            }
            Some(_) => assert!(
                error
                    .message()
                    .contains("payload decryption failed: frame 0"),
                "{error}"
            ),
        }

        // A truncated file fails on its size before any byte is read.
        std::fs::write(&path, &original[..original.len() - 1]).unwrap();
        let error = blobs
            .verify(&written.key, key, size, &written.checksum)
            .await
            .unwrap_err();
        assert_code(&error, ErrorCode::DataLoss);
        assert!(error.message().contains("stored size"), "{error}");
        // Reads notice the truncation as well.
        let error = read_all(&blobs, &written.key, key, size, 0..size)
            .await
            .unwrap_err();
        assert_code(&error, ErrorCode::DataLoss);

        std::fs::write(&path, &original).unwrap();
        blobs
            .verify(&written.key, key, size, &written.checksum)
            .await
            .unwrap();
        let error = blobs
            .verify(&written.key, key, size, &checksum_of(b"something else"))
            .await
            .unwrap_err();
        assert_code(&error, ErrorCode::DataLoss);
    }
}

#[tokio::test]
async fn delete_and_list() {
    let (_dir, blobs) = local();
    assert!(blobs.list().await.unwrap().is_empty());
    let mut keys = Vec::new();
    for size in [1, 10, 100] {
        let written = blobs
            .put(Bytes::from(pattern(size)), no_more(), None, None)
            .await
            .unwrap();
        keys.push(written.key);
    }
    let mut listed = blobs.list().await.unwrap();
    listed.sort_by_key(|blob| blob.stored_size);
    let listed_keys: Vec<_> = listed.iter().map(|blob| blob.key.clone()).collect();
    assert_eq!(listed_keys, keys);
    assert_eq!(
        listed
            .iter()
            .map(|blob| blob.stored_size)
            .collect::<Vec<_>>(),
        vec![1, 10, 100]
    );
    assert!(listed
        .iter()
        .all(|blob| blob.modified_ms > 1_600_000_000_000));

    blobs.delete(&keys[1]).await.unwrap();
    blobs.delete(&keys[1]).await.unwrap();
    assert_eq!(blobs.head(&keys[1]).await.unwrap(), None);
    assert_eq!(blobs.list().await.unwrap().len(), 2);
    let error = read_all(&blobs, &keys[1], None, 10, 0..10)
        .await
        .unwrap_err();
    assert_code(&error, ErrorCode::NotFound);
    let error = read_all(&blobs, &keys[1], None, 10, 0..0)
        .await
        .unwrap_err();
    assert_code(&error, ErrorCode::NotFound);
    let error = blobs
        .verify(&keys[1], None, 10, "sha256:00")
        .await
        .unwrap_err();
    assert_code(&error, ErrorCode::NotFound);
}

#[tokio::test]
async fn only_blob_keys_name_objects() {
    let (_dir, blobs) = local();
    for bad in ["tmp/abc", "../etc/passwd", "sha256/zz/00", ""] {
        assert_code(
            &blobs.head(bad).await.unwrap_err(),
            ErrorCode::InvalidArgument,
        );
        assert_code(
            &blobs.delete(bad).await.unwrap_err(),
            ErrorCode::InvalidArgument,
        );
        let error = blobs.read(bad, None, 1, 0..1).await.err().unwrap();
        assert_code(&error, ErrorCode::InvalidArgument);
    }
}

#[tokio::test]
async fn stale_temporaries_are_swept_and_never_listed() {
    let (dir, blobs) = local();
    let kept = blobs
        .put(Bytes::from_static(b"kept"), no_more(), None, None)
        .await
        .unwrap();
    let tmp_dir = dir.path().join("blobs").join("tmp");
    std::fs::create_dir_all(&tmp_dir).unwrap();
    let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
    // A finished upload never renamed, and a local multipart staging file.
    for (name, modified) in [
        ("0a1b", two_hours_ago),
        ("2c3d#1", two_hours_ago),
        ("4e5f#1", SystemTime::now()),
    ] {
        let file = std::fs::File::create(tmp_dir.join(name)).unwrap();
        file.set_modified(modified).unwrap();
    }
    let keys: Vec<_> = blobs
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.key)
        .collect();
    assert_eq!(keys, vec![kept.key.clone()]);

    let removed = blobs
        .remove_stale_temporaries(Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(removed, 2);
    assert_eq!(
        files_under(&dir.path().join("blobs")),
        vec![PathBuf::from(&kept.key), PathBuf::from("tmp/4e5f#1")]
    );
}

/// InMemory, counting multipart uploads neither completed nor aborted: what
/// S3 would keep (and bill) after a failed put, where dropping an upload
/// cleans nothing up.
#[derive(Debug, Default)]
struct UploadTracking {
    inner: InMemory,
    open_uploads: Arc<AtomicUsize>,
}

impl std::fmt::Display for UploadTracking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UploadTracking({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for UploadTracking {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        self.open_uploads.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(TrackedUpload {
            inner: upload,
            open_uploads: self.open_uploads.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn delete(&self, location: &ObjectPath) -> object_store::Result<()> {
        self.inner.delete(location).await
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &ObjectPath, to: &ObjectPath) -> object_store::Result<()> {
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
    ) -> object_store::Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}

#[derive(Debug)]
struct TrackedUpload {
    inner: Box<dyn MultipartUpload>,
    open_uploads: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl MultipartUpload for TrackedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let result = self.inner.complete().await;
        if result.is_ok() {
            self.open_uploads.fetch_sub(1, Ordering::SeqCst);
        }
        result
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.open_uploads.fetch_sub(1, Ordering::SeqCst);
        self.inner.abort().await
    }
}

#[tokio::test]
async fn failed_puts_abort_their_multipart_upload() {
    let store = Arc::new(UploadTracking::default());
    let open_uploads = store.open_uploads.clone();
    let blobs = ObjectBlobStore::new(store.clone()).with_part_size(64 * 1024);
    let topic = topic_key();
    let plain = pattern(300_000);
    for key in [None, Some(&topic)] {
        let (first, rest) = uneven(&plain);
        let error = blobs
            .put(first, rest, key, Some(200_000))
            .await
            .unwrap_err();
        assert_code(&error, ErrorCode::PayloadTooLarge);
        assert_eq!(open_uploads.load(Ordering::SeqCst), 0);

        let rest = stream::iter([
            Ok(Bytes::from(pattern(200_000))),
            Err(io::Error::other("boom")),
        ])
        .boxed();
        let error = blobs
            .put(Bytes::from(pattern(10)), rest, key, None)
            .await
            .unwrap_err();
        assert_code(&error, ErrorCode::Unavailable);
        assert_eq!(open_uploads.load(Ordering::SeqCst), 0);

        let (first, rest) = uneven(&plain);
        blobs.put(first, rest, key, None).await.unwrap();
        assert_eq!(open_uploads.load(Ordering::SeqCst), 0);
    }
    let objects: Vec<_> = store.list(None).collect().await;
    assert_eq!(
        objects.len(),
        2,
        "only the two successful blobs: {objects:?}"
    );
}
