//! Reading a descriptor chain by its head index, for requests resubmitted after a reconnect
//! (virtio-queue builds chains only from the avail ring). Same rules as virtio-queue's
//! `DescriptorChain`: at most `size` descriptors per table, one level of indirection, indirect
//! tables a multiple of 16 bytes, at most 2^32 - 1 bytes in total; a chain that breaks these
//! rules or leaves guest memory ends early (the request then fails with a status, as a chain
//! popped from the ring would).

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

/// Size of one split-ring descriptor.
const DESC_SIZE: u64 = 16;

/// The descriptors of the chain starting at `head` in the table at `desc_table` of a queue of
/// `queue_size` entries (indirect tables followed).
pub fn read_chain<M: GuestMemoryBackend>(
    mem: &M,
    desc_table: GuestAddress,
    queue_size: u16,
    head: u16,
) -> Vec<Descriptor> {
    let mut out = Vec::new();
    let (mut table, mut size, mut index) = (desc_table, queue_size, head);
    let mut ttl = queue_size;
    let mut indirect = false;
    let mut bytes: u32 = 0;
    while ttl > 0 && index < size {
        let Some(addr) = table.checked_add(u64::from(index) * DESC_SIZE) else {
            break;
        };
        let Ok(desc) = mem.read_obj::<Descriptor>(addr) else {
            break;
        };
        if desc.refers_to_indirect_table() {
            let len = u64::from(desc.len());
            if indirect || len % DESC_SIZE != 0 || len / DESC_SIZE > u64::from(u16::MAX) {
                break;
            }
            table = desc.addr();
            size = (len / DESC_SIZE) as u16;
            ttl = size;
            index = 0;
            indirect = true;
            continue;
        }
        let Some(total) = bytes.checked_add(desc.len()) else {
            break;
        };
        bytes = total;
        out.push(desc);
        if !desc.has_next() {
            break;
        }
        index = desc.next();
        ttl -= 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("memory")
    }

    fn put(m: &GuestMemoryMmap<()>, table: u64, i: u16, d: Descriptor) {
        m.write_obj(d, GuestAddress(table + u64::from(i) * 16))
            .expect("write descriptor");
    }

    #[test]
    fn direct_and_indirect_chains() {
        let m = mem();
        let next = VRING_DESC_F_NEXT as u16;
        put(&m, 0, 3, Descriptor::new(0x1000, 16, next, 5));
        put(&m, 0, 5, Descriptor::new(0x2000, 512, 0, 0));
        let c = read_chain(&m, GuestAddress(0), 8, 3);
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].addr(), GuestAddress(0x2000));

        put(
            &m,
            0,
            1,
            Descriptor::new(0x4000, 32, VRING_DESC_F_INDIRECT as u16, 0),
        );
        put(&m, 0x4000, 0, Descriptor::new(0x1000, 16, next, 1));
        put(&m, 0x4000, 1, Descriptor::new(0x3000, 1, 0, 0));
        let c = read_chain(&m, GuestAddress(0), 8, 1);
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].addr(), GuestAddress(0x3000));
    }

    #[test]
    fn hostile_chains_end() {
        let m = mem();
        let next = VRING_DESC_F_NEXT as u16;
        // A loop stops after queue_size descriptors.
        put(&m, 0, 0, Descriptor::new(0x1000, 16, next, 1));
        put(&m, 0, 1, Descriptor::new(0x1000, 16, next, 0));
        assert_eq!(read_chain(&m, GuestAddress(0), 4, 0).len(), 4);
        // Head beyond the queue, table outside memory, bad indirect length.
        assert!(read_chain(&m, GuestAddress(0), 4, 4).is_empty());
        assert!(read_chain(&m, GuestAddress(0xffff_ffff_0000), 4, 0).is_empty());
        put(
            &m,
            0,
            2,
            Descriptor::new(0x4000, 17, VRING_DESC_F_INDIRECT as u16, 0),
        );
        assert!(read_chain(&m, GuestAddress(0), 4, 2).is_empty());
    }
}
