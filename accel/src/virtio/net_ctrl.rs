//! virtio-net's control queue (virtio 1.2 §5.1.6.5), served by accel itself, as QEMU's
//! virtio-net does in front of a vhost-user-net backend: the backend gets the data queues
//! only.
//!
//! - `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`: the pairs below the asked count are enabled at the
//!   backend with SET_VRING_ENABLE, the others disabled (QEMU: `vhost_set_vring_enable` per
//!   pair); after a reset only pair 0 is enabled.
//! - Receive mode, MAC table, MAC address and VLAN commands are acknowledged and not
//!   enforced: the data path is the backend's (QEMU with vhost-user does the same).
//! - Anything else is answered `VIRTIO_NET_ERR`.
//!
//! Bounded whatever the guest writes: one pass serves at most one ring's worth of chains
//! (the caller asks again for the rest), virtio-queue's chain iterator stops after a ring's
//! worth of descriptors (loops), at most [`HEAD_BYTES`] command bytes are read, a ring whose
//! available index runs more than its size ahead is left alone (broken driver) instead of
//! being served. With VIRTIO_F_RING_PACKED the queue is a packed ring
//! ([`super::packed_ring`]), bounded the same way.

use std::sync::atomic::Ordering;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, VIRTIO_NET_CTRL_MAC_TABLE_SET,
    VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
    VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_NOBCAST, VIRTIO_NET_CTRL_VLAN, VIRTIO_NET_CTRL_VLAN_DEL,
    VIRTIO_NET_ERR, VIRTIO_NET_OK,
};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;
use vu_spec::net::VIRTIO_NET_F_MQ;
use vu_spec::transport::{VIRTIO_F_RING_PACKED, bit};

use super::backend::ActiveQueue;
use super::device::F_RING_EVENT_IDX;
use super::packed_ring::{PackedRing, Segment};

/// Command bytes looked at: class, command and the largest fixed-size payload (a MAC
/// address). Longer payloads (MAC tables) are checked by length only.
pub const HEAD_BYTES: usize = 8;

/// Answers.
pub const STATUS_OK: u8 = VIRTIO_NET_OK as u8;
pub const STATUS_ERR: u8 = VIRTIO_NET_ERR as u8;

/// What a command asks of the data queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing: answer the status.
    Answer(u8),
    /// Use this many queue pairs (already validated).
    SetPairs(u16),
}

/// Decodes one command: `head` holds its first readable bytes, `readable` is the length of
/// all of them (class and command included).
pub fn decode(head: &[u8], readable: u32, multiqueue: bool, max_pairs: u16) -> Action {
    let (Some(&class), Some(&cmd)) = (head.first(), head.get(1)) else {
        return Action::Answer(STATUS_ERR);
    };
    if readable < 2 {
        return Action::Answer(STATUS_ERR);
    }
    let (class, cmd, data_len) = (u32::from(class), u32::from(cmd), readable - 2);
    let ok = |valid: bool| Action::Answer(if valid { STATUS_OK } else { STATUS_ERR });
    match class {
        VIRTIO_NET_CTRL_RX => ok(cmd <= VIRTIO_NET_CTRL_RX_NOBCAST && data_len == 1),
        VIRTIO_NET_CTRL_MAC => match cmd {
            VIRTIO_NET_CTRL_MAC_ADDR_SET => ok(data_len == 6),
            // Two tables, each a u32 count and 6 bytes per entry.
            VIRTIO_NET_CTRL_MAC_TABLE_SET => ok(data_len >= 8),
            _ => ok(false),
        },
        VIRTIO_NET_CTRL_VLAN => ok(cmd <= VIRTIO_NET_CTRL_VLAN_DEL && data_len == 2),
        VIRTIO_NET_CTRL_MQ if cmd == VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET && data_len == 2 => {
            let pairs = match head.get(2..4) {
                Some(&[lo, hi]) => u16::from_le_bytes([lo, hi]),
                _ => 0,
            };
            if multiqueue && pairs >= VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN as u16 && pairs <= max_pairs {
                Action::SetPairs(pairs)
            } else {
                ok(false)
            }
        }
        _ => ok(false),
    }
}

/// One chain read: its command and where its status byte goes.
struct Command {
    head: [u8; HEAD_BYTES],
    readable: u32,
    /// The first device-writable byte; `None`: nowhere to answer.
    status_at: Option<GuestAddress>,
    /// Readable after writable, unreadable memory, or a chain cut short (loop, bad next).
    malformed: bool,
}

/// A split ring's chain as segments; the chain was cut short if its last descriptor still
/// says NEXT (virtio-queue's iterator stops at loops and bad indices).
fn split_segments<M: GuestMemoryBackend>(chain: DescriptorChain<&M>) -> (Vec<Segment>, bool) {
    let mut last_has_next = true;
    let segments = chain
        .map(|desc| {
            last_has_next = desc.has_next();
            Segment {
                addr: desc.addr(),
                len: desc.len(),
                write: desc.is_write_only(),
            }
        })
        .collect();
    (segments, last_has_next)
}

fn read_command<M: GuestMemoryBackend>(mem: &M, segments: &[Segment], cut_short: bool) -> Command {
    let mut c = Command {
        head: [0; HEAD_BYTES],
        readable: 0,
        status_at: None,
        malformed: cut_short,
    };
    let mut got = 0usize;
    for desc in segments {
        if desc.write {
            if c.status_at.is_none() && desc.len > 0 {
                c.status_at = Some(desc.addr);
            }
            continue;
        }
        if c.status_at.is_some() {
            c.malformed = true;
        }
        let take = (desc.len as usize).min(HEAD_BYTES - got);
        if take > 0
            && mem
                .read_slice(&mut c.head[got..got + take], desc.addr)
                .is_err()
        {
            c.malformed = true;
        }
        got += take;
        c.readable = c.readable.saturating_add(desc.len);
    }
    c
}

/// Carries out one command; returns how many status bytes were written (0 or 1).
fn answer<M: GuestMemoryBackend>(
    mem: &M,
    c: &Command,
    state: (&mut u16, bool, u16),
    served: &mut Served,
    set_pairs: &mut impl FnMut(u16) -> u8,
) -> u32 {
    let (pairs, multiqueue, max_pairs) = state;
    let action = if c.malformed {
        Action::Answer(STATUS_ERR)
    } else {
        decode(&c.head, c.readable, multiqueue, max_pairs)
    };
    let status = match action {
        Action::Answer(s) => s,
        Action::SetPairs(n) => {
            if n != *pairs {
                served.pairs_changed = Some(n);
            }
            *pairs = n;
            set_pairs(n)
        }
    };
    match c.status_at {
        Some(at) if mem.write_obj(status, at).is_ok() => 1,
        _ => 0,
    }
}

/// What one pass over the queue came to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// Chains are left (the pass stopped at its budget): serve again.
    pub more: bool,
    /// The driver changed the number of queue pairs to this.
    pub pairs_changed: Option<u16>,
}

/// Why the queue could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ControlQueueError {
    #[error("control queue {index}: {source}")]
    Setup {
        index: u16,
        #[source]
        source: virtio_queue::Error,
    },
    #[error("control queue {index}: call fd: {source}")]
    EventFd {
        index: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("control queue {index}: rings outside guest memory")]
    Invalid { index: u16 },
}

enum Ring {
    Split(Queue),
    Packed(PackedRing),
}

struct Running {
    ring: Ring,
    call: EventFd,
}

/// The control queue of one virtio-net device and the queue-pair count the driver chose.
pub struct NetControl {
    max_pairs: u16,
    /// Pairs in use: 1 after reset (virtio 1.2 §5.1.6.5.5), then what the driver set.
    pairs: u16,
    multiqueue: bool,
    running: Option<Running>,
    /// The driver moved its available index beyond the ring: the queue is not served again
    /// until a reset.
    broken: bool,
}

impl NetControl {
    pub fn new(max_pairs: u16) -> Self {
        NetControl {
            max_pairs: max_pairs.max(1),
            pairs: 1,
            multiqueue: false,
            running: None,
            broken: false,
        }
    }

    /// The control queue's index under `features`: after every data queue with MQ, else 2
    /// (virtio 1.2 §5.1.2).
    pub fn index(&self, features: u64) -> u16 {
        vu_spec::net::control_queue_index(self.max_pairs, features)
    }

    /// Queue pairs the driver uses.
    pub fn pairs(&self) -> u16 {
        self.pairs
    }

    /// DRIVER_OK with the queue `q`. `resume`: a retried activation (the queue starts where
    /// its used ring is, and the pair count stays).
    pub fn start<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        features: u64,
        q: &ActiveQueue<'_>,
        resume: bool,
    ) -> Result<(), ControlQueueError> {
        let index = q.index;
        if features & bit(VIRTIO_F_RING_PACKED) != 0 {
            return self.start_packed(mem, features, q, resume);
        }
        let err = |source| ControlQueueError::Setup { index, source };
        let mut queue = Queue::new(q.size).map_err(err)?;
        queue
            .try_set_desc_table_address(GuestAddress(q.desc))
            .map_err(err)?;
        queue
            .try_set_avail_ring_address(GuestAddress(q.driver))
            .map_err(err)?;
        queue
            .try_set_used_ring_address(GuestAddress(q.device))
            .map_err(err)?;
        queue.set_event_idx(features & F_RING_EVENT_IDX != 0);
        queue.set_ready(true);
        if !queue.is_valid(mem) {
            return Err(ControlQueueError::Invalid { index });
        }
        if resume {
            let used = queue.used_idx(mem, Ordering::Acquire).map_err(err)?.0;
            queue.set_next_avail(used);
            queue.set_next_used(used);
        } else {
            self.pairs = 1;
        }
        let call = q
            .call
            .try_clone()
            .map_err(|source| ControlQueueError::EventFd { index, source })?;
        self.multiqueue = features & bit(VIRTIO_NET_F_MQ) != 0;
        self.running = Some(Running {
            ring: Ring::Split(queue),
            call,
        });
        self.broken = false;
        Ok(())
    }

    /// [`start`](Self::start) on a packed ring. A resumed activation keeps the position of
    /// the ring it already serves (a packed ring's position cannot be read back from guest
    /// memory as a split ring's used index can).
    fn start_packed<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        features: u64,
        q: &ActiveQueue<'_>,
        resume: bool,
    ) -> Result<(), ControlQueueError> {
        let index = q.index;
        let call = q
            .call
            .try_clone()
            .map_err(|source| ControlQueueError::EventFd { index, source })?;
        let kept = match self.running.take() {
            Some(Running {
                ring: Ring::Packed(r),
                ..
            }) if resume => Some(r),
            _ => None,
        };
        if !resume {
            self.pairs = 1;
        }
        let ring = kept.unwrap_or_else(|| PackedRing::new(GuestAddress(q.desc), q.size));
        if !ring.is_valid(mem) {
            return Err(ControlQueueError::Invalid { index });
        }
        self.multiqueue = features & bit(VIRTIO_NET_F_MQ) != 0;
        self.running = Some(Running {
            ring: Ring::Packed(ring),
            call,
        });
        self.broken = false;
        Ok(())
    }

    /// Device reset.
    pub fn reset(&mut self) {
        self.running = None;
        self.pairs = 1;
        self.multiqueue = false;
        self.broken = false;
    }

    /// The guest moved the queue to another vector.
    pub fn set_call(&mut self, call: EventFd) {
        if let Some(r) = &mut self.running {
            r.call = call;
        }
    }

    /// Serves the chains the driver made available (at most a ring's worth). `set_pairs`
    /// carries out a validated pair count and returns the status to answer.
    pub fn serve<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        mut set_pairs: impl FnMut(u16) -> u8,
    ) -> Result<Served, virtio_queue::Error> {
        let mut served = Served::default();
        let Some(r) = self.running.as_mut().filter(|_| !self.broken) else {
            return Ok(served);
        };
        let state = (&mut self.pairs, self.multiqueue, self.max_pairs);
        let notify = match &mut r.ring {
            Ring::Split(q) => {
                let (notify, broken) = serve_split(q, mem, state, &mut served, &mut set_pairs)?;
                self.broken = broken;
                notify
            }
            Ring::Packed(p) => serve_packed(p, mem, state, &mut served, &mut set_pairs)?,
        };
        if notify {
            let _ = r.call.write(1);
        }
        Ok(served)
    }
}

/// One pass over a split ring: whether to notify, and whether the ring is broken.
fn serve_split<M: GuestMemoryBackend>(
    q: &mut Queue,
    mem: &M,
    state: (&mut u16, bool, u16),
    served: &mut Served,
    set_pairs: &mut impl FnMut(u16) -> u8,
) -> Result<(bool, bool), virtio_queue::Error> {
    let (pairs, multiqueue, max_pairs) = state;
    let mut budget = q.size();
    let mut used_any = false;
    let mut broken = false;
    loop {
        // An available index more than a ring ahead is a driver bug (virtio-queue would
        // log an error per attempt): stop serving instead.
        let avail = q.avail_idx(mem, Ordering::Acquire)?.0;
        if avail.wrapping_sub(q.next_avail()) > q.size() {
            log::warn!(
                "net control queue: available index {avail} is beyond the ring; not served until reset"
            );
            broken = true;
            break;
        }
        q.disable_notification(mem)?;
        while budget > 0 {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                break;
            };
            budget -= 1;
            let head_index = chain.head_index();
            let (segments, cut_short) = split_segments(chain);
            let c = read_command(mem, &segments, cut_short);
            let written = answer(
                mem,
                &c,
                (&mut *pairs, multiqueue, max_pairs),
                served,
                set_pairs,
            );
            q.add_used(mem, head_index, written)?;
            used_any = true;
        }
        if budget == 0 {
            q.enable_notification(mem)?;
            served.more = true;
            break;
        }
        if !q.enable_notification(mem)? {
            break;
        }
    }
    Ok((used_any && q.needs_notification(mem)?, broken))
}

/// One pass over a packed ring (at most a ring's worth of chains): whether to notify.
fn serve_packed<M: GuestMemoryBackend>(
    ring: &mut PackedRing,
    mem: &M,
    state: (&mut u16, bool, u16),
    served: &mut Served,
    set_pairs: &mut impl FnMut(u16) -> u8,
) -> Result<bool, virtio_queue::Error> {
    let (pairs, multiqueue, max_pairs) = state;
    let mut budget = ring.size();
    let mut used_any = false;
    while let Some(chain) = ring.pop(mem) {
        let c = read_command(mem, &chain.segments, chain.malformed);
        let written = answer(
            mem,
            &c,
            (&mut *pairs, multiqueue, max_pairs),
            served,
            set_pairs,
        );
        ring.add_used(mem, &chain, written)
            .map_err(virtio_queue::Error::GuestMemory)?;
        used_any = true;
        budget -= 1;
        if budget == 0 {
            served.more = true;
            break;
        }
    }
    Ok(used_any)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(class: u32, cmd: u32, data: &[u8]) -> ([u8; HEAD_BYTES], u32) {
        let mut head = [0u8; HEAD_BYTES];
        head[0] = class as u8;
        head[1] = cmd as u8;
        let n = data.len().min(HEAD_BYTES - 2);
        head[2..2 + n].copy_from_slice(&data[..n]);
        (head, 2 + data.len() as u32)
    }

    #[test]
    fn decodes_like_qemu() {
        let d = |(h, n): ([u8; HEAD_BYTES], u32), mq| decode(&h, n, mq, 4);
        let ok = Action::Answer(STATUS_OK);
        let err = Action::Answer(STATUS_ERR);
        assert_eq!(d(cmd(4, 0, &2u16.to_le_bytes()), true), Action::SetPairs(2));
        assert_eq!(d(cmd(4, 0, &4u16.to_le_bytes()), true), Action::SetPairs(4));
        assert_eq!(d(cmd(4, 0, &5u16.to_le_bytes()), true), err);
        assert_eq!(d(cmd(4, 0, &0u16.to_le_bytes()), true), err);
        assert_eq!(
            d(cmd(4, 0, &2u16.to_le_bytes()), false),
            err,
            "MQ not negotiated"
        );
        assert_eq!(d(cmd(4, 0, &[2]), true), err, "short");
        assert_eq!(d(cmd(4, 1, &[0; 4]), true), err, "RSS is not offered");
        assert_eq!(d(cmd(0, 0, &[1]), false), ok, "promisc on");
        assert_eq!(d(cmd(0, 5, &[1]), false), ok, "nobcast");
        assert_eq!(d(cmd(0, 6, &[1]), false), err);
        assert_eq!(d(cmd(0, 0, &[1, 1]), false), err);
        assert_eq!(d(cmd(1, 1, &[2, 0, 0, 0, 0, 1]), false), ok, "MAC_ADDR_SET");
        assert_eq!(d(cmd(1, 1, &[2, 0, 0, 0, 0]), false), err);
        let tables: Vec<u8> = [0u32.to_le_bytes(), 1u32.to_le_bytes()].concat();
        let tables = [tables, vec![1, 0, 0x5e, 0, 0, 1]].concat();
        assert_eq!(d(cmd(1, 0, &tables), false), ok, "MAC_TABLE_SET");
        assert_eq!(d(cmd(1, 0, &[0; 4]), false), err);
        assert_eq!(d(cmd(2, 0, &[5, 0]), false), ok, "VLAN_ADD");
        assert_eq!(d(cmd(2, 1, &[5, 0]), false), ok, "VLAN_DEL");
        assert_eq!(d(cmd(3, 0, &[]), false), err, "ANNOUNCE is not offered");
        assert_eq!(
            d(cmd(5, 0, &[0; 8]), false),
            err,
            "GUEST_OFFLOADS is not offered"
        );
        assert_eq!(decode(&[4], 1, true, 4), err);
    }

    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestMemoryMmap;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    const SIZE: u16 = 16;
    const CMD: u64 = 0x10_0000;
    const DATA: u64 = 0x10_0100;
    const STATUS: u64 = 0x10_0200;

    type Mem = GuestMemoryMmap<()>;

    fn mem() -> Mem {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    /// A control queue of 2 pairs started on `vq`, with `features`.
    fn started(mem: &Mem, vq: &MockSplitQueue<'_, Mem>, features: u64) -> (NetControl, EventFd) {
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let call = EventFd::new(EFD_NONBLOCK).unwrap();
        let q = ActiveQueue {
            index: 4,
            size: SIZE,
            desc: vq.desc_table_addr().0,
            driver: vq.avail_addr().0,
            device: vq.used_addr().0,
            kick: &kick,
            call: &call,
        };
        let mut c = NetControl::new(2);
        c.start(mem, features, &q, false).unwrap();
        (c, call)
    }

    fn used_idx(mem: &Mem, vq: &MockSplitQueue<'_, Mem>) -> u16 {
        mem.read_obj(GuestAddress(vq.used_addr().0 + 2)).unwrap()
    }

    /// VQ_PAIRS_SET 2 as Linux sends it (header, data, status): carried out, answered OK,
    /// the driver interrupted.
    #[test]
    fn pairs_set_is_carried_out_and_answered() {
        let mem = mem();
        let vq = MockSplitQueue::new(&mem, SIZE);
        let (mut c, call) = started(&mem, &vq, bit(VIRTIO_NET_F_MQ));
        mem.write_slice(&[4, 0], GuestAddress(CMD)).unwrap();
        mem.write_slice(&2u16.to_le_bytes(), GuestAddress(DATA))
            .unwrap();
        mem.write_obj(0xaau8, GuestAddress(STATUS)).unwrap();
        let chain = [
            desc(CMD, 2, NEXT, 1),
            desc(DATA, 2, NEXT, 2),
            desc(STATUS, 1, WRITE, 0),
        ];
        vq.add_desc_chains(&chain, 0).unwrap();
        let mut asked = Vec::new();
        let served = c
            .serve(&mem, |n| {
                asked.push(n);
                STATUS_OK
            })
            .unwrap();
        assert_eq!(asked, [2]);
        assert_eq!(served.pairs_changed, Some(2));
        assert!(!served.more);
        assert_eq!(c.pairs(), 2);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), STATUS_OK);
        assert_eq!(used_idx(&mem, &vq), 1);
        assert_eq!(call.read().unwrap(), 1);
        // Without MQ negotiated the same command is refused and nothing is enabled.
        let vq = MockSplitQueue::new(&mem, SIZE);
        let (mut c, _call) = started(&mem, &vq, 0);
        vq.add_desc_chains(&chain, 0).unwrap();
        let served = c.serve(&mem, |_| panic!("not multi-queue")).unwrap();
        assert_eq!(served.pairs_changed, None);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
            STATUS_ERR
        );
        assert_eq!(c.pairs(), 1);
    }

    /// A chain that loops on itself, one without a status byte and one with readable bytes
    /// after the status: each is consumed (used ring), none hangs the server.
    #[test]
    fn malformed_chains_are_consumed() {
        let mem = mem();
        let vq = MockSplitQueue::new(&mem, SIZE);
        let (mut c, _call) = started(&mem, &vq, bit(VIRTIO_NET_F_MQ));
        mem.write_slice(&[0, 0, 1], GuestAddress(CMD)).unwrap();
        // Chain 0 (descriptor 0): loops to itself.
        vq.add_desc_chains(&[desc(CMD, 3, NEXT, 0)], 0).unwrap();
        // Chain 1 (descriptor 1): readable only.
        vq.add_desc_chains(&[desc(CMD, 3, 0, 0)], 1).unwrap();
        // Chain 2 (descriptors 2, 3): status, then readable.
        mem.write_obj(0xaau8, GuestAddress(STATUS)).unwrap();
        vq.add_desc_chains(&[desc(STATUS, 1, WRITE | NEXT, 3), desc(CMD, 3, 0, 0)], 2)
            .unwrap();
        let served = c.serve(&mem, |_| panic!("no pairs command")).unwrap();
        assert!(!served.more);
        assert_eq!(used_idx(&mem, &vq), 3);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
            STATUS_ERR
        );
    }

    /// An available index a whole ring ahead of the device: nothing is served, now or later
    /// (until a reset), and serving returns at once.
    #[test]
    fn runaway_available_index_stops_the_queue() {
        let mem = mem();
        let vq = MockSplitQueue::new(&mem, SIZE);
        let (mut c, _call) = started(&mem, &vq, 0);
        vq.avail().idx().store(SIZE + 1);
        for _ in 0..3 {
            let served = c.serve(&mem, |_| STATUS_OK).unwrap();
            assert_eq!(served, Served::default());
        }
        assert_eq!(used_idx(&mem, &vq), 0);
        c.reset();
        assert_eq!(c.pairs(), 1);
    }

    /// The same command on a packed ring (VIRTIO_F_RING_PACKED): a chain of three ring
    /// descriptors, answered OK, returned as one used descriptor, the driver interrupted; a
    /// second command after it lands at the next slot.
    #[test]
    fn pairs_set_on_a_packed_ring() {
        const RING: u64 = 0x1000;
        const AVAIL: u16 = 1 << 7;
        const USED: u16 = 1 << 15;
        let mem = mem();
        let put = |slot: u64, addr: u64, len: u32, id: u16, flags: u16| {
            let at = RING + slot * 16;
            mem.write_obj(addr, GuestAddress(at)).unwrap();
            mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(id, GuestAddress(at + 12)).unwrap();
            mem.write_obj(flags, GuestAddress(at + 14)).unwrap();
        };
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let call = EventFd::new(EFD_NONBLOCK).unwrap();
        let q = ActiveQueue {
            index: 4,
            size: SIZE,
            desc: RING,
            driver: 0x2000,
            device: 0x2100,
            kick: &kick,
            call: &call,
        };
        let mut c = NetControl::new(2);
        let features = bit(VIRTIO_NET_F_MQ) | bit(VIRTIO_F_RING_PACKED);
        c.start(&mem, features, &q, false).unwrap();
        mem.write_slice(&[4, 0], GuestAddress(CMD)).unwrap();
        mem.write_slice(&2u16.to_le_bytes(), GuestAddress(DATA))
            .unwrap();
        put(0, CMD, 2, 0, AVAIL | NEXT);
        put(1, DATA, 2, 0, AVAIL | NEXT);
        put(2, STATUS, 1, 9, AVAIL | WRITE);
        let served = c.serve(&mem, |_| STATUS_OK).unwrap();
        assert_eq!(served.pairs_changed, Some(2));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), STATUS_OK);
        // Used: slot 0 carries id 9, one byte written, both flags set (wrap counter 1).
        assert_eq!(mem.read_obj::<u16>(GuestAddress(RING + 12)).unwrap(), 9);
        assert_eq!(mem.read_obj::<u32>(GuestAddress(RING + 8)).unwrap(), 1);
        assert_eq!(
            mem.read_obj::<u16>(GuestAddress(RING + 14)).unwrap(),
            AVAIL | USED
        );
        assert_eq!(call.read().unwrap(), 1);
        // The next command starts at slot 3, and so does its used descriptor (the first
        // chain took 3 slots).
        mem.write_slice(&[0, 0, 1], GuestAddress(CMD)).unwrap();
        put(3, CMD, 3, 0, AVAIL | NEXT);
        put(4, STATUS, 1, 4, AVAIL | WRITE);
        let served = c.serve(&mem, |_| panic!("not a pairs command")).unwrap();
        assert_eq!(served.pairs_changed, None);
        assert_eq!(
            mem.read_obj::<u16>(GuestAddress(RING + 3 * 16 + 12))
                .unwrap(),
            4
        );
        assert_eq!(c.pairs(), 2);
    }
}
