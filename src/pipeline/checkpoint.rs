//! Detector checkpoints: a series' [`KeptDetector`] written to the state store, so a process
//! that starts or takes a KPI over steps only the buckets after it instead of replaying
//! `scheduler.history`.
//!
//! The bytes are a postcard encoding of an envelope: [`FORMAT`] first, then a hash of the
//! [`DetectorConfig`], the kept detector's validity inputs (replay start, feedback and
//! exclusion hash, `upto`, observations stepped, a digest of all of them, the series'
//! observation revision and first bucket when they were read) and
//! the detector itself (its state types derive serde in `baseline`; see
//! `baseline/snapshot.rs`). [`decode`] refuses a checkpoint of another format, another
//! configuration or one that does not decode; the caller then validates it against the
//! stored observations exactly like a kept detector and otherwise replays — a checkpoint is
//! used only when a full replay would reach the same state.
//!
//! **Bump [`FORMAT`] whenever a detector state type or the detector's arithmetic changes**:
//! a checkpoint of the old detector must not stand in for a replay through the new one. The
//! unit test `the_encoding_of_a_known_detector_is_pinned` fails when either changes.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::KeptDetector;
use crate::baseline::{DetectorConfig, OnlineDetector};

/// Version of the checkpoint encoding and of the detector behind it.
pub const FORMAT: i32 = 25;

/// What is stored: the validity inputs of a [`KeptDetector`] and the detector.
#[derive(Serialize, Deserialize)]
struct Envelope<D> {
    format: i32,
    cfg_hash: u64,
    from: i64,
    inputs: u64,
    upto: i64,
    seen: u64,
    /// Chained digest of the observations stepped (`super::chain`).
    digest: u64,
    /// `series.obs_rev` when they were read.
    rev: i64,
    /// The first of them.
    first: Option<i64>,
    detector: D,
}

/// Why a stored checkpoint was not used (logged; the run replays).
#[derive(Debug, thiserror::Error)]
pub(super) enum Refused {
    /// Written by another version of the format (or of the detector).
    #[error("format {0}, this build writes {FORMAT}")]
    Format(i32),
    /// Written for another detector configuration (the model changed).
    #[error("written for another detector configuration")]
    Config,
    /// The bytes do not decode.
    #[error("does not decode: {0}")]
    Corrupt(#[from] postcard::Error),
}

/// A stable 64-bit hash (SHA-256, first 8 bytes) of what is fed to it: stored hashes must
/// mean the same in every process and every build, which `DefaultHasher` does not promise.
#[derive(Debug, Clone, Default)]
pub(super) struct StableHasher(Sha256);

impl std::hash::Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }
}

/// Stable hash of a detector configuration (of its encoding).
pub(super) fn config_hash(cfg: &DetectorConfig) -> Result<u64, postcard::Error> {
    let bytes = postcard::to_allocvec(cfg)?;
    Ok(u64::from_le_bytes(
        Sha256::digest(&bytes)[..8].try_into().unwrap_or([0; 8]),
    ))
}

/// Encode a kept detector for the store.
pub(super) fn encode(kept: &KeptDetector) -> Result<Vec<u8>, postcard::Error> {
    let envelope = Envelope {
        format: FORMAT,
        cfg_hash: config_hash(&kept.cfg)?,
        from: kept.from,
        inputs: kept.inputs,
        upto: kept.upto,
        seen: kept.seen as u64,
        digest: kept.digest,
        rev: kept.rev,
        first: kept.first,
        detector: &kept.detector,
    };
    postcard::to_allocvec(&envelope)
}

/// Decode a stored checkpoint written for `cfg`. The caller still checks it against the
/// stored history (replay start, inputs, observations) before stepping from it.
pub(super) fn decode(bytes: &[u8], cfg: &DetectorConfig) -> Result<KeptDetector, Refused> {
    let (format, _) = postcard::take_from_bytes::<i32>(bytes)?;
    if format != FORMAT {
        return Err(Refused::Format(format));
    }
    let (envelope, rest) = postcard::take_from_bytes::<Envelope<OnlineDetector>>(bytes)?;
    if !rest.is_empty() {
        return Err(Refused::Corrupt(postcard::Error::DeserializeBadEncoding));
    }
    if envelope.cfg_hash != config_hash(cfg)? || envelope.detector.config() != cfg {
        return Err(Refused::Config);
    }
    Ok(KeptDetector {
        from: envelope.from,
        cfg: *cfg,
        inputs: envelope.inputs,
        upto: envelope.upto,
        seen: usize::try_from(envelope.seen).unwrap_or(usize::MAX),
        digest: envelope.digest,
        rev: envelope.rev,
        first: envelope.first,
        detector: envelope.detector,
        checkpointed: Some(envelope.upto),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::{Bucket, Feedback};
    use crate::kpi::{Kind, Sensitivity};
    use crate::store::ObservationRow;

    /// A 1-minute count series with a daily cycle, deterministic (no RNG).
    fn history(days: i64) -> Vec<Bucket> {
        (0..days * 1440)
            .map(|i| {
                let t = i * 60;
                let phase = (t % 86_400) as f64 / 86_400.0 * std::f64::consts::TAU;
                // A wobble that is not periodic in the day, so the tails see some noise.
                let wobble = ((i * 7919) % 13) as f64 - 6.0;
                Bucket::new(t, (40.0 + 25.0 * phase.cos() + wobble).round().max(0.0))
            })
            .collect()
    }

    fn kept(cfg: DetectorConfig, buckets: &[Bucket]) -> KeptDetector {
        let detector = OnlineDetector::warm(cfg, buckets).expect("valid config");
        KeptDetector {
            from: 0,
            cfg,
            inputs: 7,
            upto: buckets.last().map_or(0, |b| b.ts + 60),
            seen: buckets.len(),
            digest: super::super::chain(
                super::super::CHAIN_SEED,
                &buckets
                    .iter()
                    .map(|b| ObservationRow {
                        ts: b.ts,
                        value: b.value,
                        denominator: b.denominator,
                    })
                    .collect::<Vec<_>>(),
            ),
            rev: 3,
            first: buckets.first().map(|b| b.ts),
            detector,
            checkpointed: None,
        }
    }

    #[test]
    fn a_decoded_detector_judges_every_later_bucket_exactly_like_the_original() {
        let all = history(10);
        let (before, after) = all.split_at(9 * 1440);
        for kind in [Kind::Count, Kind::Gauge] {
            let cfg = DetectorConfig::new(kind, 60);
            let k = kept(cfg, before);
            let bytes = encode(&k).expect("encodes");
            let back = decode(&bytes, &cfg).expect("decodes");
            assert_eq!(
                (
                    back.from,
                    back.inputs,
                    back.upto,
                    back.seen,
                    back.digest,
                    back.rev,
                    back.first
                ),
                (k.from, k.inputs, k.upto, k.seen, k.digest, k.rev, k.first)
            );
            assert_eq!(back.checkpointed, Some(k.upto));
            let (mut a, mut b) = (k.detector, back.detector);
            // A drop at the end, so the alarm paths run too.
            for (i, bucket) in after.iter().enumerate() {
                let mut bucket = *bucket;
                if i > 1200 {
                    bucket.value = (bucket.value * 0.3).round();
                }
                let feedback = if i == 1300 {
                    Feedback::NotAnomaly
                } else {
                    Feedback::None
                };
                let (va, vb) = (
                    a.step_with_feedback(&bucket, feedback),
                    b.step_with_feedback(&bucket, feedback),
                );
                // Bit for bit (NaN while warming up compares unequal, so compare the bits).
                assert_eq!(format!("{va:?}"), format!("{vb:?}"), "{kind:?} bucket {i}");
            }
            // And the states stay identical: they encode to the same bytes.
            let (ka, kb) = (
                KeptDetector {
                    detector: a,
                    ..kept(cfg, &before[..20])
                },
                KeptDetector {
                    detector: b,
                    ..kept(cfg, &before[..20])
                },
            );
            assert_eq!(encode(&ka).expect("a"), encode(&kb).expect("b"));
        }
    }

    #[test]
    fn another_format_another_config_or_damaged_bytes_are_refused() {
        let cfg = DetectorConfig::new(Kind::Count, 60);
        let bytes = encode(&kept(cfg, &history(2))).expect("encodes");
        // Another sensitivity: the same bytes, refused for the new configuration.
        let other = DetectorConfig {
            sensitivity: Sensitivity::HIGH,
            ..cfg
        };
        assert!(matches!(decode(&bytes, &other), Err(Refused::Config)));
        // Another format version in front.
        let mut stale = postcard::to_allocvec(&(FORMAT + 1)).expect("encodes");
        stale.extend_from_slice(&bytes[1..]);
        assert!(matches!(decode(&stale, &cfg), Err(Refused::Format(f)) if f == FORMAT + 1));
        // Cut short, or with bytes after the end, or garbage: never a panic, always refused.
        assert!(matches!(
            decode(&bytes[..bytes.len() / 2], &cfg),
            Err(Refused::Corrupt(_))
        ));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode(&longer, &cfg), Err(Refused::Corrupt(_))));
        assert!(decode(&[], &cfg).is_err());
        let mut flipped = bytes.clone();
        for i in (0..flipped.len()).step_by(97) {
            flipped[i] ^= 0x5a;
        }
        // Flipped bytes may still decode (floats are raw); what matters is no panic.
        let _ = decode(&flipped, &cfg);
    }

    /// The encoding of a detector warmed on a fixed series. When this fails, the detector's
    /// state or arithmetic changed: bump [`FORMAT`] and update the digest here, so old
    /// checkpoints are replayed instead of trusted.
    #[test]
    fn the_encoding_of_a_known_detector_is_pinned() {
        // A count and a gauge (the gauge's arithmetic differs: additive slots, spreads).
        let pins: Vec<(i32, usize, String)> = [Kind::Count, Kind::Gauge]
            .into_iter()
            .map(|kind| {
                let bytes = encode(&kept(DetectorConfig::new(kind, 60), &history(9))).expect("encodes");
                (FORMAT, bytes.len(), hex::encode(&Sha256::digest(&bytes)[..8]))
            })
            .collect();
        assert_eq!(
            pins,
            [
                (25, 59_906, "b8b44534bc851c05".to_owned()),
                (25, 59_848, "e824ccc181b96a18".to_owned()),
            ],
            "detector state or maths changed: bump checkpoint::FORMAT and pin the new digests"
        );
    }
}
