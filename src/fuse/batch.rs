//! How many directory entries to prepare per readdir reply.

use std::sync::atomic::{AtomicUsize, Ordering};

/// How many entries to ask of the filesystem layer per readdir: as many as the kernel's reply
/// buffer holds, so few are prepared only to be dropped (and, for readdirplus, given an inode
/// and forgotten again). fuser does not pass the buffer size on, and it differs by kernel (one
/// page on older ones; about 500 readdirplus entries on 6.18, where a 10,000-entry `ls -l`
/// took 21 readdirplus round trips instead of 314 with one-page batches), so it is learned
/// from the replies: a batch that fitted entirely doubles the next one, a reply that ran out
/// of room sets it to what fitted.
pub(super) struct LearnedBatch {
    current: AtomicUsize,
    max: usize,
}

impl LearnedBatch {
    const MIN: usize = 8;

    pub(super) fn new(start: usize, max: usize) -> Self {
        Self {
            current: AtomicUsize::new(start),
            max,
        }
    }

    pub(super) fn get(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// `asked` entries were asked for, `offered` came back, `sent` fitted; `full` when the
    /// buffer ran out of room.
    pub(super) fn record(&self, asked: usize, offered: usize, sent: usize, full: bool) {
        if full {
            self.current
                .store(sent.clamp(Self::MIN, self.max), Ordering::Relaxed);
        } else if offered == asked && sent == offered {
            self.current
                .store((asked * 2).min(self.max), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LearnedBatch;

    #[test]
    fn the_readdir_batch_learns_what_the_kernel_buffer_holds() {
        let batch = LearnedBatch::new(32, 1024);
        batch.record(32, 32, 32, false);
        assert_eq!(batch.get(), 64, "everything fitted: ask for more");
        batch.record(64, 10, 10, false);
        assert_eq!(batch.get(), 64, "the end of the directory says nothing");
        batch.record(64, 64, 64, false);
        batch.record(128, 128, 128, false);
        batch.record(256, 256, 256, false);
        batch.record(512, 512, 488, true);
        assert_eq!(batch.get(), 488, "set to what fitted");
        batch.record(488, 488, 488, false);
        assert_eq!(batch.get(), 976);
        batch.record(976, 976, 976, false);
        assert_eq!(batch.get(), 1024, "capped");
        batch.record(1024, 1024, 2, true);
        assert_eq!(batch.get(), LearnedBatch::MIN, "never below the minimum");
    }
}
