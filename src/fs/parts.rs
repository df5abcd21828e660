//! S3's part rules, shared by streamed uploads (`write`) and composed ones (`patch`).

/// S3's smallest part (all but the last) and largest part count.
pub const MIN_PART_SIZE: u64 = 5 << 20;
pub const MAX_PARTS: i32 = 10_000;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 << 30;

/// The part size for part `number` (1-based): the configured size for the first 1,000 parts,
/// doubling every 1,000 parts after, so 10,000 parts of an 8 MiB start reach over 5 TiB.
pub fn part_size_for(base: u64, number: i32) -> u64 {
    let doublings = ((number - 1).max(0) / 1000) as u32;
    base.max(MIN_PART_SIZE)
        .saturating_mul(1u64 << doublings.min(20))
        .min(MAX_PART_SIZE)
}
