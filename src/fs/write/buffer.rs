//! The buffer of the part being filled: a small growing buffer for the start of a file, then
//! a whole part (pooled when the store keeps buffers).

use super::*;

/// The bytes of the part being filled: a small growable buffer for the start of a file, or a
/// whole part, pooled when the store recycles buffers.
pub(super) enum PartBuffer {
    Small(BytesMut),
    Pooled(PooledBuf),
}

impl Default for PartBuffer {
    fn default() -> Self {
        Self::Small(BytesMut::new())
    }
}

impl PartBuffer {
    pub(super) fn len(&self) -> usize {
        match self {
            Self::Small(b) => b.len(),
            Self::Pooled(b) => b.len(),
        }
    }

    pub(super) fn as_slice(&self) -> &[u8] {
        match self {
            Self::Small(b) => b,
            Self::Pooled(b) => b.as_ref(),
        }
    }

    /// Rewrites bytes already buffered, from `at` on (within the buffer).
    pub(super) fn overwrite(&mut self, at: usize, data: &[u8]) {
        let slice: &mut [u8] = match self {
            Self::Small(b) => b,
            Self::Pooled(b) => b.as_mut(),
        };
        slice[at..at + data.len()].copy_from_slice(data);
    }

    pub(super) fn truncate(&mut self, len: usize) {
        match self {
            Self::Small(b) => b.truncate(len),
            Self::Pooled(b) => b.truncate(len),
        }
    }

    pub(super) fn capacity(&self) -> usize {
        match self {
            Self::Small(b) => b.capacity(),
            Self::Pooled(b) => b.capacity(),
        }
    }

    pub(super) fn extend_from_slice(&mut self, data: &[u8]) {
        match self {
            Self::Small(b) => b.extend_from_slice(data),
            Self::Pooled(b) => b.extend_from_slice(data),
        }
    }

    pub(super) fn reserve_small(&mut self, capacity: usize) {
        if let Self::Small(b) = self {
            b.reserve(capacity - b.len());
        }
    }

    /// Room for a whole part, keeping what is buffered so far.
    pub(super) fn reserve_part(&mut self, part_size: usize, pool: Option<&Arc<BufferPool>>) {
        match (pool, &mut *self) {
            (Some(pool), Self::Small(small)) => {
                let mut part = pool.take(part_size);
                part.extend_from_slice(small);
                *self = Self::Pooled(part);
            }
            (None, Self::Small(small)) => small.reserve(part_size - small.len()),
            (_, Self::Pooled(_)) => {} // already a whole part
        }
    }

    pub(super) fn freeze(self) -> Bytes {
        match self {
            Self::Small(b) => b.freeze(),
            Self::Pooled(b) => b.freeze(),
        }
    }
}
