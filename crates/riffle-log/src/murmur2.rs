//! Kafka's default partitioner for keyed records: `murmur2(key) & 0x7fffffff
//! % partitions`, bit for bit as `org.apache.kafka.common.utils.Utils`, so a
//! key lands on the same partition number in the embedded log and in Kafka.

/// Kafka's murmur2 (seed 0x9747b28c), returning the signed Java `int`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    // Java's switch falls through from 3 to 1; bytes are sign-extended there,
    // but masking with 0xff makes that irrelevant.
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's `BuiltInPartitioner.partitionForKey` picks.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    debug_assert!(partitions > 0);
    ((murmur2(key) & 0x7fff_ffff) as u32) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn matches_kafka_murmur2_vectors() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (key, expected) in cases {
            assert_eq!(
                murmur2(key),
                expected,
                "key {:?}",
                String::from_utf8_lossy(key)
            );
        }
    }

    /// Partition assignments computed independently with kafka-python's
    /// `DefaultPartitioner` (a port of Kafka's Java partitioner):
    /// `(murmur2(key) & 0x7fffffff) % n` for n in 1, 3, 4, 6, 12, 100.
    #[test]
    fn matches_independently_computed_kafka_assignments() {
        let cases: [(&str, u32, [u32; 6]); 6] = [
            ("ad001", 582937136, [0, 2, 0, 2, 8, 36]),
            ("ad-42", 4176870007, [0, 2, 3, 5, 11, 59]),
            ("user-7", 696778364, [0, 2, 0, 2, 8, 64]),
            ("stream_123", 2219757011, [0, 0, 3, 3, 3, 63]),
            ("", 275646681, [0, 0, 1, 3, 9, 81]),
            ("ü-ñ", 3935429338, [0, 2, 2, 2, 2, 90]),
        ];
        for (key, unsigned_hash, partitions) in cases {
            assert_eq!(
                murmur2(key.as_bytes()) as u32,
                unsigned_hash,
                "hash of {key:?}"
            );
            for (n, expected) in [1, 3, 4, 6, 12, 100].into_iter().zip(partitions) {
                assert_eq!(
                    partition_for_key(key.as_bytes(), n),
                    expected,
                    "{key:?} over {n} partitions"
                );
            }
        }
    }

    #[test]
    fn partition_is_positive_hash_modulo() {
        // -973932308 & 0x7fffffff = 1173551340
        assert_eq!(partition_for_key(b"21", 1000), 1173551340 % 1000);
        for n in 1..64 {
            assert!(partition_for_key(b"ad-42", n) < n);
        }
    }
}
