//! Descriptor-chain checks the backends share.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::GuestMemoryBackend;

/// True when the chain ends properly: it has descriptors and the last one has no `NEXT` flag.
/// A looping chain, or one whose `next` leaves the table, is cut short by virtio-queue's
/// iterator with `NEXT` still set on its last descriptor.
pub fn is_complete<M>(chain: &DescriptorChain<M>) -> bool
where
    M: Deref + Clone,
    M::Target: GuestMemoryBackend,
{
    matches!(chain.clone().last(), Some(d) if !d.has_next())
}
