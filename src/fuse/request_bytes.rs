//! The bound on read and write data of the FUSE requests being served (see
//! `FsConfig::request_bytes`).

use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

pub(super) struct RequestBytes {
    permits: Arc<Semaphore>,
    total: usize,
}

impl RequestBytes {
    pub(super) fn new(total: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Counts `bytes` of read or write data against the bound, until the permit is dropped
    /// with the reply. Past the bound this FUSE thread waits for requests being served to
    /// finish (none of them needs a FUSE thread to finish, and none waits unboundedly), so
    /// the kernel keeps the rest queued: any number of local processes reading or writing at
    /// once cannot make the daemon hold more.
    pub(super) fn hold(&self, bytes: usize, runtime: &Handle) -> OwnedSemaphorePermit {
        let permits = bytes.clamp(1, self.total) as u32;
        match self.permits.clone().try_acquire_many_owned(permits) {
            Ok(permit) => permit,
            Err(_) => {
                debug!("request data in flight at its bound: waiting for requests to finish");
                runtime
                    .block_on(self.permits.clone().acquire_many_owned(permits))
                    .expect("the request bound is never closed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::FsConfig;
    use std::time::Duration;

    // Read and write data of requests in flight were held without bound: a local user with
    // many threads blocked in writes waiting for budget made the daemon hold a MiB each.
    #[test]
    fn request_data_in_flight_is_bounded_and_the_fuse_thread_waits_past_it() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let config = FsConfig {
            max_memory: 64 << 20,
            ..FsConfig::default()
        };
        let bound = config.request_bytes();
        assert_eq!(bound, 16 << 20);
        let requests = Arc::new(RequestBytes::new(bound));
        let handle = runtime.handle().clone();
        let held: Vec<_> = (0..16).map(|_| requests.hold(1 << 20, &handle)).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiting = {
            let (requests, handle) = (requests.clone(), handle.clone());
            std::thread::spawn(move || {
                let permit = requests.hold(1 << 20, &handle);
                tx.send(()).unwrap();
                drop(permit);
            })
        };
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "a 17th MiB in flight was taken past the 16 MiB bound"
        );
        drop(held);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("once requests finished, the waiting one went on");
        waiting.join().unwrap();
    }
}
