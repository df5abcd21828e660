//! Reusable receive buffers for large GET bodies.
//!
//! A body of several MiB gathered into a fresh allocation costs a page fault (and a zeroed page)
//! for every 4 KiB the first time it is written, and the pages go back to the kernel when it is
//! freed: profiling sequential reads showed about a tenth of the daemon's CPU in those faults.
//! Buffers handed out here return to the pool when the last `Bytes` pointing into them is
//! dropped, so a streaming reader keeps reusing pages that are already mapped.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Bodies smaller than this are gathered the ordinary way: small allocations come from the
/// allocator's free lists and do not fault.
pub const POOLED_MIN: usize = 512 << 10;

pub struct BufferPool {
    idle: Mutex<Vec<Vec<u8>>>,
    /// Most bytes of capacity kept idle; the rest is freed.
    max_idle_bytes: usize,
}

impl BufferPool {
    pub fn new(max_idle_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(Vec::new()),
            max_idle_bytes,
        })
    }

    /// An empty buffer with room for at least `len` bytes: an idle one when one fits, that is
    /// holds `len` without being more than twice as large (callers budget `len` bytes; a small
    /// body must not pin a large buffer).
    pub fn take(self: &Arc<Self>, len: usize) -> PooledBuf {
        let reused = {
            let mut idle = self.idle.lock().expect("buffer pool lock");
            idle.iter()
                .position(|b| b.capacity() >= len && b.capacity() / 2 <= len)
                .map(|i| idle.swap_remove(i))
        };
        let mut data = reused.unwrap_or_else(|| Vec::with_capacity(len));
        data.clear();
        PooledBuf {
            data,
            pool: self.clone(),
        }
    }

    fn give_back(&self, data: Vec<u8>) {
        let mut idle = self.idle.lock().expect("buffer pool lock");
        let held: usize = idle.iter().map(Vec::capacity).sum();
        if held + data.capacity() <= self.max_idle_bytes {
            idle.push(data);
        }
    }

    pub fn idle_bytes(&self) -> usize {
        let idle = self.idle.lock().expect("buffer pool lock");
        idle.iter().map(Vec::capacity).sum()
    }
}

/// A buffer on loan from the pool; `freeze` turns it into `Bytes` that give it back on drop.
pub struct PooledBuf {
    data: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl PooledBuf {
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.data.extend_from_slice(bytes);
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn capacity(&self) -> usize {
        self.data.capacity()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn truncate(&mut self, len: usize) {
        self.data.truncate(len);
    }

    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl AsMut<[u8]> for PooledBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let data = std::mem::take(&mut self.data);
        if data.capacity() > 0 {
            self.pool.give_back(data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_returns_to_the_pool_when_its_last_bytes_is_dropped() {
        let pool = BufferPool::new(4 << 20);
        let mut buf = pool.take(1 << 20);
        buf.extend_from_slice(&[7u8; 1000]);
        let bytes = buf.freeze();
        let slice = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(pool.idle_bytes(), 0, "a slice still points into it");
        assert_eq!(&slice[..], &[7u8; 10]);
        drop(slice);
        assert!(pool.idle_bytes() >= 1 << 20);
        let again = pool.take(1 << 20);
        assert!(again.is_empty(), "reused buffers start empty");
        assert_eq!(pool.idle_bytes(), 0, "the idle buffer was reused");
    }

    #[test]
    fn a_small_body_does_not_take_a_large_buffer() {
        let pool = BufferPool::new(64 << 20);
        drop(pool.take(8 << 20));
        let small = pool.take(1 << 20);
        assert!(small.data.capacity() < 2 << 20);
        assert!(pool.idle_bytes() >= 8 << 20, "the large one stays idle");
    }

    #[test]
    fn idle_buffers_are_bounded() {
        let pool = BufferPool::new(3 << 20);
        let a = pool.take(2 << 20);
        let b = pool.take(2 << 20);
        drop(a);
        drop(b);
        assert!(pool.idle_bytes() <= 3 << 20, "{}", pool.idle_bytes());
        assert!(pool.idle_bytes() >= 2 << 20);
    }
}
