//! Executing the requests one queue notification brought: inline on the queue's worker for
//! small requests (the 4K fast path: no hand-off at all), spread over a few scoped threads
//! when the batch carries a lot of data (large sequential I/O is memory-copy bound, and one
//! core cannot copy as fast as two).

use std::sync::{Mutex, mpsc};

use virtio_queue::DescriptorChain;

use super::disk::Disk;
use super::request::{Mem, RequestOptions, handle_chain};

/// A batch moving at least this many data bytes is executed in parallel.
pub const PARALLEL_MIN_BYTES: u64 = 512 << 10;

/// Total buffer bytes of `batch`, counted until `limit` is reached.
fn batch_bytes(batch: &[DescriptorChain<&Mem>], limit: u64) -> u64 {
    let mut total = 0u64;
    for chain in batch {
        total += chain.clone().map(|d| u64::from(d.len())).sum::<u64>();
        if total >= limit {
            break;
        }
    }
    total
}

/// Executes every chain of `batch`, calling `complete(head, used_len, publish)` for each on the
/// calling thread (in completion order). Uses up to `threads` threads for data-heavy batches;
/// there `publish` is true: the completion should reach the driver right away (the requests
/// are long, the driver can refill the queue meanwhile).
pub fn execute(
    batch: Vec<DescriptorChain<&Mem>>,
    mem: &Mem,
    disk: &Disk,
    opts: RequestOptions,
    threads: usize,
    mut complete: impl FnMut(u16, u32, bool),
) {
    let threads = threads.min(batch.len());
    if threads < 2 || batch_bytes(&batch, PARALLEL_MIN_BYTES) < PARALLEL_MIN_BYTES {
        for chain in batch {
            let head = chain.head_index();
            complete(head, handle_chain(chain, mem, disk, opts), false);
        }
        return;
    }
    // Shared work list: helpers and this thread take the next request until none is left, so
    // a helper that could not be started costs only parallelism, never a request.
    let work = Mutex::new(batch.into_iter());
    let next = || work.lock().ok().and_then(|mut w| w.next());
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel::<(u16, u32)>();
        for _ in 1..threads {
            let tx = tx.clone();
            let spawned = std::thread::Builder::new()
                .name("blk-io".into())
                .spawn_scoped(s, move || {
                    while let Some(chain) = next() {
                        let head = chain.head_index();
                        let used = handle_chain(chain, mem, disk, opts);
                        if tx.send((head, used)).is_err() {
                            return;
                        }
                    }
                });
            if let Err(e) = spawned {
                log::warn!("cannot start an I/O thread ({e}); continuing with fewer");
                break;
            }
        }
        drop(tx);
        while let Some(chain) = next() {
            let head = chain.head_index();
            complete(head, handle_chain(chain, mem, disk, opts), true);
            while let Ok((h, used)) = rx.try_recv() {
                complete(h, used, true);
            }
        }
        for (h, used) in rx {
            complete(h, used, true);
        }
    });
}
