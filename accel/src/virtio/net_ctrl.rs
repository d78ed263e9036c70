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
//! being served.

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
use vu_spec::transport::bit;

use super::backend::ActiveQueue;
use super::device::F_RING_EVENT_IDX;

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

fn read_command<M: GuestMemoryBackend>(chain: DescriptorChain<&M>) -> Command {
    let mem = chain.memory();
    let mut c = Command {
        head: [0; HEAD_BYTES],
        readable: 0,
        status_at: None,
        malformed: false,
    };
    let mut got = 0usize;
    let mut last_has_next = true;
    for desc in chain.clone() {
        last_has_next = desc.has_next();
        if desc.is_write_only() {
            if c.status_at.is_none() && desc.len() > 0 {
                c.status_at = Some(desc.addr());
            }
            continue;
        }
        if c.status_at.is_some() {
            c.malformed = true;
        }
        let take = (desc.len() as usize).min(HEAD_BYTES - got);
        if take > 0
            && mem
                .read_slice(&mut c.head[got..got + take], desc.addr())
                .is_err()
        {
            c.malformed = true;
        }
        got += take;
        c.readable = c.readable.saturating_add(desc.len());
    }
    if last_has_next {
        c.malformed = true;
    }
    c
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

struct Running {
    queue: Queue,
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
        self.running = Some(Running { queue, call });
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
        let q = &mut r.queue;
        let mut budget = q.size();
        let mut used_any = false;
        loop {
            // An available index more than a ring ahead is a driver bug (virtio-queue would
            // log an error per attempt): stop serving instead.
            let avail = q.avail_idx(mem, Ordering::Acquire)?.0;
            if avail.wrapping_sub(q.next_avail()) > q.size() {
                log::warn!(
                    "net control queue: available index {avail} is beyond the ring; not served until reset"
                );
                self.broken = true;
                break;
            }
            q.disable_notification(mem)?;
            while budget > 0 {
                let Some(chain) = q.pop_descriptor_chain(mem) else {
                    break;
                };
                budget -= 1;
                let head_index = chain.head_index();
                let c = read_command(chain);
                let action = if c.malformed {
                    Action::Answer(STATUS_ERR)
                } else {
                    decode(&c.head, c.readable, self.multiqueue, self.max_pairs)
                };
                let status = match action {
                    Action::Answer(s) => s,
                    Action::SetPairs(n) => {
                        if n != self.pairs {
                            served.pairs_changed = Some(n);
                        }
                        self.pairs = n;
                        set_pairs(n)
                    }
                };
                let written = match c.status_at {
                    Some(at) if mem.write_obj(status, at).is_ok() => 1,
                    _ => 0,
                };
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
        if used_any && q.needs_notification(mem)? {
            let _ = r.call.write(1);
        }
        Ok(served)
    }
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
}
