//! The data path of one queue pair: transmit chains → link frames, link frames → receive
//! chains (with MRG_RXBUF, one frame may span several chains; `num_buffers` says how many).
//!
//! Every bad input ends as a counted drop, never as an error out of the worker: a transmit
//! chain with a short header, a device-writable descriptor, an unmapped address or an
//! oversized frame is completed (length 0) and dropped; a receive chain with a device-readable
//! descriptor or an unmapped address is completed with length 0 and the frame dropped.

use std::sync::atomic::{AtomicU64, Ordering};

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vu_daemon::ring::pop_chain;
use vu_spec::net::{MAX_FRAME_SIZE, NET_HDR_SIZE};

/// Guest memory as the data path sees it.
pub type Mem = GuestMemoryMmap<()>;

/// Shortest frame accepted from a guest: an Ethernet header.
pub const MIN_FRAME: usize = 14;

/// Link buffer size: header + largest frame.
pub const LINK_BUF_SIZE: usize = NET_HDR_SIZE + MAX_FRAME_SIZE;

/// Per-device counters (all queue pairs, all connections).
#[derive(Debug, Default)]
pub struct NetStats {
    /// Frames (and their bytes, without header) handed to the guest.
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Frames dropped on the way in: too big for the guest's buffers, or a bad receive chain.
    pub rx_dropped: AtomicU64,
    /// Receive chains the guest got wrong (device-readable descriptor, unmapped address).
    pub rx_bad_chains: AtomicU64,
    /// Frames from the link shorter than a header.
    pub rx_link_errors: AtomicU64,
    /// Frames (and bytes, without header) the guest transmitted and the link took.
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Well-formed frames dropped because the link was full (peer not receiving).
    pub tx_dropped: AtomicU64,
    /// Malformed transmit chains (short header/frame, writable descriptor, unmapped address,
    /// oversized): dropped.
    pub tx_malformed: AtomicU64,
}

/// A snapshot of [`NetStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStatsSnapshot {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub rx_dropped: u64,
    pub rx_bad_chains: u64,
    pub rx_link_errors: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub tx_dropped: u64,
    pub tx_malformed: u64,
}

impl NetStats {
    pub fn snapshot(&self) -> NetStatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NetStatsSnapshot {
            rx_frames: l(&self.rx_frames),
            rx_bytes: l(&self.rx_bytes),
            rx_dropped: l(&self.rx_dropped),
            rx_bad_chains: l(&self.rx_bad_chains),
            rx_link_errors: l(&self.rx_link_errors),
            tx_frames: l(&self.tx_frames),
            tx_bytes: l(&self.tx_bytes),
            tx_dropped: l(&self.tx_dropped),
            tx_malformed: l(&self.tx_malformed),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Why a transmit chain was dropped.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("device-writable descriptor in a transmit chain")]
    WritableDescriptor,
    #[error("descriptor at {0:#x} is outside guest memory")]
    BadAddress(u64),
    #[error("frame longer than {MAX_FRAME_SIZE} bytes")]
    TooBig,
    #[error("chain of {0} bytes is shorter than header + Ethernet header")]
    TooShort(usize),
    #[error("broken chain (loop, next index out of range, or bad indirect table)")]
    Broken,
}

/// Gathers transmit chain `chain` (guest header of `hdr_len` bytes, then the frame) into
/// `frame` in link format: a 12-byte header, then the frame. With `strip_offloads` the
/// header is zeroed (peer links carry no offloads).
pub fn gather_tx<M>(
    chain: DescriptorChain<M>,
    mem: &Mem,
    hdr_len: usize,
    strip_offloads: bool,
    frame: &mut Vec<u8>,
) -> Result<(), TxError>
where
    M: std::ops::Deref<Target = Mem>,
{
    frame.clear();
    // Guest bytes land after a 2-byte gap when the guest header is the 10-byte legacy one,
    // so the header always ends up 12 bytes long.
    let gap = NET_HDR_SIZE - hdr_len;
    frame.resize(gap, 0);
    let limit = gap + hdr_len + MAX_FRAME_SIZE;
    let mut last_has_next = false;
    for desc in chain {
        // The iterator just stops on a loop or a bad `next`: a chain whose last descriptor
        // still points further is broken.
        last_has_next = desc.has_next();
        if desc.is_write_only() {
            return Err(TxError::WritableDescriptor);
        }
        let len = desc.len() as usize;
        let start = frame.len();
        if start + len > limit {
            return Err(TxError::TooBig);
        }
        frame.resize(start + len, 0);
        mem.read_slice(&mut frame[start..], desc.addr())
            .map_err(|_| TxError::BadAddress(desc.addr().0))?;
    }
    if last_has_next {
        return Err(TxError::Broken);
    }
    if frame.len() < NET_HDR_SIZE + MIN_FRAME {
        return Err(TxError::TooShort(frame.len() - gap));
    }
    if gap > 0 {
        // Move the legacy header's 10 bytes to the front; num_buffers (bytes 10..12) = 0.
        frame.copy_within(gap..gap + hdr_len, 0);
    }
    frame[10..12].fill(0);
    if strip_offloads {
        frame[..NET_HDR_SIZE].fill(0);
    }
    Ok(())
}

/// What happened to one received frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Written into this many chains.
    Delivered(u16),
    /// Not enough buffers right now: nothing consumed, try again after the guest adds some.
    NoBuffers,
    /// Dropped: it can never fit the guest's buffers (no MRG_RXBUF and a chain too small).
    TooBig,
    /// Dropped: a receive chain was malformed; those chains were completed with length 0.
    BadChain,
}

/// Receive-side settings from the negotiated features.
#[derive(Clone, Copy, Debug)]
pub struct RxParams {
    /// Guest header length (12, or 10 for legacy drivers).
    pub hdr_len: usize,
    /// MRG_RXBUF negotiated: a frame may span chains.
    pub mergeable: bool,
}

/// Where the guest header landed (to patch `num_buffers` once the chain count is known).
struct HeaderPiece {
    addr: GuestAddress,
    offset: usize,
    len: usize,
}

/// Writes `frame` (link format: 12-byte header + frame) into the guest's receive chains of
/// `queue`, adding them to the used ring. `scratch` keeps (head, length) of the chains taken.
pub fn deliver_rx(
    queue: &mut Queue,
    mem: &Mem,
    frame: &[u8],
    params: RxParams,
    scratch: &mut Vec<(u16, u32)>,
) -> Delivery {
    scratch.clear();
    let mut writer = RxWriter::new(frame, params.hdr_len);
    let mut descs: Vec<Descriptor> = Vec::new();
    while !writer.done() {
        let head = match next_chain(queue, mem, params, scratch, &mut descs) {
            Ok(head) => head,
            Err(undelivered) => return undelivered,
        };
        match writer.fill_chain(&descs, mem) {
            Some(len) if len > 0 => {
                scratch.push((head, u32::try_from(len).unwrap_or(u32::MAX)));
            }
            // Malformed, or a chain with no room at all (which would make us loop over the
            // whole ring): every chain taken is completed empty and the frame dropped.
            _ => {
                scratch.push((head, 0));
                for &(head, _) in scratch.iter() {
                    let _ = queue.add_used(mem, head, 0);
                }
                return Delivery::BadChain;
            }
        }
    }
    let chains = u16::try_from(scratch.len()).unwrap_or(u16::MAX);
    writer.set_num_buffers(chains, mem);
    for &(head, len) in scratch.iter() {
        if let Err(e) = queue.add_used(mem, head, len) {
            vu_daemon::log_limited!(
                log::Level::Warn,
                "cannot complete receive chain {head}: {e}"
            );
        }
    }
    Delivery::Delivered(chains)
}

/// Pops the next receive chain for a frame that already took the chains in `scratch`, its
/// descriptors into `descs`; returns its head. When the frame cannot go on (no buffers, or too
/// big: a second chain without MRG_RXBUF, or more chains than the ring has), the queue is put
/// back where the frame started and that outcome returned.
fn next_chain(
    queue: &mut Queue,
    mem: &Mem,
    params: RxParams,
    scratch: &mut Vec<(u16, u32)>,
    descs: &mut Vec<Descriptor>,
) -> Result<u16, Delivery> {
    let max_chains = usize::from(queue.size()).max(1);
    // Without MRG_RXBUF the single chain was too small; with it, the frame needs more chains
    // than the ring has: either way it can never fit.
    let too_big = (!params.mergeable && !scratch.is_empty()) || scratch.len() >= max_chains;
    let chain = if too_big { None } else { pop_chain(queue, mem) };
    let Some(chain) = chain else {
        rewind(queue, scratch.len());
        scratch.clear();
        return Err(if too_big {
            Delivery::TooBig
        } else {
            Delivery::NoBuffers
        });
    };
    let head = chain.head_index();
    // Walk the whole chain first: the iterator just stops on a loop or a bad `next` (see
    // [`RxWriter::fill_chain`]), and a loop must not let us write the same buffer over and over.
    descs.clear();
    descs.extend(chain);
    Ok(head)
}

/// Writes one frame, guest header first, across receive chains in order.
struct RxWriter<'f> {
    /// The guest header (the link header; `num_buffers` is patched at the end).
    header: [u8; NET_HDR_SIZE],
    data: &'f [u8],
    /// Guest header length (12, or 10 for legacy drivers).
    hdr_len: usize,
    /// Bytes of guest header + data written so far.
    written: usize,
    pieces: Vec<HeaderPiece>,
}

impl<'f> RxWriter<'f> {
    fn new(frame: &'f [u8], hdr_len: usize) -> Self {
        let mut header = [0u8; NET_HDR_SIZE];
        let n = NET_HDR_SIZE.min(frame.len());
        header[..n].copy_from_slice(&frame[..n]);
        RxWriter {
            header,
            data: frame.get(NET_HDR_SIZE..).unwrap_or(&[]),
            hdr_len,
            written: 0,
            pieces: Vec::new(),
        }
    }

    fn total(&self) -> usize {
        self.hdr_len + self.data.len()
    }

    fn done(&self) -> bool {
        self.written >= self.total()
    }

    /// Writes what fits of the rest of the frame into the chain `descs`; returns the bytes
    /// written, or `None` for a malformed chain: broken (its last descriptor still points
    /// further: the iterator stopped on a loop or a bad `next`), a device-readable descriptor,
    /// or an address outside guest memory.
    fn fill_chain(&mut self, descs: &[Descriptor], mem: &Mem) -> Option<usize> {
        if descs.last().is_none_or(|d| d.has_next()) {
            return None;
        }
        let mut chain_len = 0;
        for desc in descs {
            if self.done() {
                break;
            }
            if !desc.is_write_only() {
                return None;
            }
            chain_len += self.fill_buffer(desc.addr(), desc.len() as usize, mem)?;
        }
        Some(chain_len)
    }

    /// Writes what fits into the `room` bytes at `addr`; `None` if guest memory refuses.
    fn fill_buffer(&mut self, mut addr: GuestAddress, mut room: usize, mem: &Mem) -> Option<usize> {
        let start = self.written;
        while room > 0 && !self.done() {
            let mut n = room.min(self.total() - self.written);
            if self.written < self.hdr_len {
                n = n.min(self.hdr_len - self.written);
                self.pieces.push(HeaderPiece {
                    addr,
                    offset: self.written,
                    len: n,
                });
                mem.write_slice(&self.header[self.written..self.written + n], addr)
                    .ok()?;
            } else {
                let off = self.written - self.hdr_len;
                mem.write_slice(&self.data[off..off + n], addr).ok()?;
            }
            self.written += n;
            room -= n;
            addr = GuestAddress(addr.0.wrapping_add(n as u64));
        }
        Some(self.written - start)
    }

    /// num_buffers: the chain count with MRG_RXBUF, 1 otherwise (virtio 1.x header only).
    fn set_num_buffers(&mut self, chains: u16, mem: &Mem) {
        if self.hdr_len < NET_HDR_SIZE {
            return;
        }
        self.header[10..12].copy_from_slice(&chains.to_le_bytes());
        for p in &self.pieces {
            let _ = mem.write_slice(&self.header[p.offset..p.offset + p.len], p.addr);
        }
    }
}

fn rewind(queue: &mut Queue, n: usize) {
    for _ in 0..n {
        queue.go_to_previous_position();
    }
}
