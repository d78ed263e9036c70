//! The queue of control packets (no payload) waiting for the guest's rx buffers.
//!
//! Control packets are never dropped: a lost RST or RESPONSE leaves a guest socket hanging
//! forever. The queue stays bounded instead by holding at most one packet per (connection,
//! op) and by coalescing: an RST for a connection removes whatever else was queued for it,
//! and when that included the REQUEST announcing it, the guest never heard of the connection
//! and no RST is queued at all. What remains is bounded by the connection limit (a few ops per
//! live connection) plus the RSTs answering guest packets, which the tx side stops taking once
//! [`MAX_PENDING_CONTROL`](super::muxer::MAX_PENDING_CONTROL) packets wait.

use std::collections::{HashSet, VecDeque};

use vu_spec::vsock::{VSOCK_OP_REQUEST, VSOCK_OP_RST};

/// (host-side port, guest-side port).
pub type ConnKey = (u32, u32);

/// A packet for the guest that carries no data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Control {
    pub local_port: u32,
    pub peer_port: u32,
    pub op: u16,
    pub flags: u32,
}

impl Control {
    fn key(&self) -> ConnKey {
        (self.local_port, self.peer_port)
    }
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct ControlQueue {
    queue: VecDeque<Control>,
    queued: HashSet<(ConnKey, u16)>,
}

impl ControlQueue {
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn clear(&mut self) {
        self.queue.clear();
        self.queued.clear();
    }

    /// Queues `c` (coalesced as the module documentation says).
    pub fn push(&mut self, c: Control) {
        let key = c.key();
        if c.op == VSOCK_OP_RST {
            let announced = !self.queued.contains(&(key, VSOCK_OP_REQUEST));
            self.forget(key);
            if !announced {
                return;
            }
        }
        if self.queued.insert((key, c.op)) {
            self.queue.push_back(c);
        }
    }

    /// The next packet for the guest.
    pub fn pop(&mut self) -> Option<Control> {
        let c = self.queue.pop_front()?;
        self.queued.remove(&(c.key(), c.op));
        Some(c)
    }

    /// Drops everything queued for `key`.
    fn forget(&mut self, key: ConnKey) {
        let before = self.queued.len();
        self.queued.retain(|(k, _)| *k != key);
        if self.queued.len() != before {
            self.queue.retain(|c| c.key() != key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vu_spec::vsock::{VSOCK_OP_CREDIT_UPDATE, VSOCK_OP_RESPONSE};

    fn c(port: u32, op: u16) -> Control {
        Control {
            local_port: port,
            peer_port: 7,
            op,
            flags: 0,
        }
    }

    #[test]
    fn one_per_connection_and_op_in_order() {
        let mut q = ControlQueue::default();
        q.push(c(1, VSOCK_OP_RESPONSE));
        q.push(c(2, VSOCK_OP_CREDIT_UPDATE));
        q.push(c(2, VSOCK_OP_CREDIT_UPDATE));
        q.push(c(1, VSOCK_OP_CREDIT_UPDATE));
        assert_eq!(q.len(), 3);
        assert_eq!(q.pop(), Some(c(1, VSOCK_OP_RESPONSE)));
        assert_eq!(q.pop(), Some(c(2, VSOCK_OP_CREDIT_UPDATE)));
        q.push(c(2, VSOCK_OP_CREDIT_UPDATE));
        assert_eq!(q.pop(), Some(c(1, VSOCK_OP_CREDIT_UPDATE)));
        assert_eq!(q.pop(), Some(c(2, VSOCK_OP_CREDIT_UPDATE)));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn rst_replaces_what_was_queued_and_cancels_an_unseen_request() {
        let mut q = ControlQueue::default();
        q.push(c(1, VSOCK_OP_RESPONSE));
        q.push(c(1, VSOCK_OP_CREDIT_UPDATE));
        q.push(c(1, VSOCK_OP_RST));
        assert_eq!(q.pop(), Some(c(1, VSOCK_OP_RST)));
        assert!(q.is_empty());
        // A host connection the guest never heard of: no RST at all.
        q.push(c(2, VSOCK_OP_REQUEST));
        q.push(c(2, VSOCK_OP_RST));
        assert!(q.is_empty());
        // Never dropped, however many connections: bounded by coalescing instead.
        for port in 0..10_000 {
            q.push(c(port, VSOCK_OP_REQUEST));
            q.push(c(port, VSOCK_OP_RST));
        }
        assert!(q.is_empty());
        for port in 0..10_000 {
            q.push(c(port, VSOCK_OP_RST));
            q.push(c(port, VSOCK_OP_RST));
        }
        assert_eq!(q.len(), 10_000);
    }
}
