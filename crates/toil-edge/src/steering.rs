//! QUIC connection-ID steering: which worker thread a packet belongs to.
//!
//! A node runs N QUIC workers, each a thread with its own quinn `Endpoint`.
//! A connection — and the resident stream box behind it — must stay on the
//! worker that accepted it for its whole life, even when the client's
//! address changes (NAT rebinding, Wi-Fi to cellular). Addresses cannot
//! route packets; connection IDs can:
//!
//! - every connection ID a worker issues is `[worker][nonce: 7][mac: 8]`
//!   ([`CID_LEN`] bytes), the MAC keyed by a node secret, so forged IDs are
//!   recognised ([`WorkerCids::validate`]: no stateless reset is sent for them);
//! - a packet's destination connection ID starts at byte 6 of a long-header
//!   packet and byte 1 of a short-header packet, so its first byte names
//!   the worker: [`worker_of_packet`]. A client's first Initial carries an
//!   ID the client chose; whatever worker that lands on issues the IDs the
//!   client then switches to, and the Initial's retransmissions land on the
//!   same worker because they carry the same ID.
//!
//! The same function runs in two places: as a classic BPF program attached
//! to the workers' `SO_REUSEPORT` group on Linux ([`reuseport_program`]),
//! and in the portable userspace dispatcher (`crate::workers`). This module
//! does no I/O, so both are tested here on plain bytes.

use std::sync::Arc;
use std::time::Duration;

use quinn::{ConnectionId, ConnectionIdGenerator};
use ring::hmac;

/// Length of every connection ID a node issues.
pub const CID_LEN: usize = 16;
const NONCE_LEN: usize = 7;
const MAC_LEN: usize = CID_LEN - 1 - NONCE_LEN;

/// Most workers a node can steer to (the worker index is one byte).
pub const MAX_WORKERS: usize = 255;

/// The worker a datagram belongs to, among `workers`: the first byte of its
/// destination connection ID, modulo `workers`. Exactly what the BPF program
/// computes (a datagram too short to carry an ID goes to worker 0).
pub fn worker_of_packet(packet: &[u8], workers: usize) -> usize {
    let Some(&first) = packet.first() else {
        return 0;
    };
    let at = if first & 0x80 != 0 { 6 } else { 1 };
    packet.get(at).map_or(0, |&b| b as usize % workers.max(1))
}

/// Issues and checks the connection IDs of one worker.
pub struct WorkerCids {
    worker: u8,
    key: Arc<hmac::Key>,
    rng: ring::rand::SystemRandom,
}

impl WorkerCids {
    /// `key` is the node's connection-ID secret, shared by all its workers.
    pub fn new(worker: usize, key: Arc<hmac::Key>) -> Self {
        assert!(worker < MAX_WORKERS, "worker index {worker} does not fit a connection ID");
        WorkerCids { worker: worker as u8, key, rng: ring::rand::SystemRandom::new() }
    }

    fn mac(key: &hmac::Key, head: &[u8]) -> [u8; MAC_LEN] {
        let tag = hmac::sign(key, head);
        tag.as_ref()[..MAC_LEN].try_into().expect("HMAC-SHA256 is longer than the MAC")
    }

    /// The connection ID for `nonce` (deterministic; for tests).
    pub fn cid_with_nonce(&self, nonce: [u8; NONCE_LEN]) -> [u8; CID_LEN] {
        let mut cid = [0u8; CID_LEN];
        cid[0] = self.worker;
        cid[1..1 + NONCE_LEN].copy_from_slice(&nonce);
        let mac = Self::mac(&self.key, &cid[..1 + NONCE_LEN]);
        cid[1 + NONCE_LEN..].copy_from_slice(&mac);
        cid
    }

    /// Whether `cid` was issued by some worker of this node.
    pub fn is_ours(key: &hmac::Key, cid: &[u8]) -> bool {
        if cid.len() != CID_LEN {
            return false;
        }
        // Constant time: a forger learns nothing from how long this takes.
        let expected = Self::mac(key, &cid[..1 + NONCE_LEN]);
        expected.iter().zip(&cid[1 + NONCE_LEN..]).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl ConnectionIdGenerator for WorkerCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut nonce = [0u8; NONCE_LEN];
        ring::rand::SecureRandom::fill(&self.rng, &mut nonce).expect("system randomness");
        ConnectionId::new(&self.cid_with_nonce(nonce))
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), quinn_proto::InvalidCid> {
        if Self::is_ours(&self.key, cid) {
            Ok(())
        } else {
            Err(quinn_proto::InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BpfInsn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

// Classic BPF opcodes (linux/filter.h).
const BPF_LD_B_ABS: u16 = 0x00 | 0x10 | 0x20; // BPF_LD | BPF_B | BPF_ABS
const BPF_JMP_JSET_K: u16 = 0x05 | 0x40; // BPF_JMP | BPF_JSET | BPF_K
const BPF_JMP_JA: u16 = 0x05; // BPF_JMP | BPF_JA
const BPF_ALU_MOD_K: u16 = 0x04 | 0x90; // BPF_ALU | BPF_MOD | BPF_K
const BPF_RET_A: u16 = 0x06 | 0x10; // BPF_RET | BPF_A

/// The `SO_ATTACH_REUSEPORT_CBPF` program: returns [`worker_of_packet`] as
/// the index of the socket (in join order) that receives the datagram.
/// Offsets are into the UDP payload.
pub fn reuseport_program(workers: usize) -> [BpfInsn; 7] {
    let i = |code, jt, jf, k| BpfInsn { code, jt, jf, k };
    [
        i(BPF_LD_B_ABS, 0, 0, 0),               // A = first byte (header form)
        i(BPF_JMP_JSET_K, 0, 2, 0x80),          // long header?
        i(BPF_LD_B_ABS, 0, 0, 6),               //   yes: A = first DCID byte of a long header
        i(BPF_JMP_JA, 0, 0, 1),                 //
        i(BPF_LD_B_ABS, 0, 0, 1),               //   no: A = first DCID byte of a short header
        i(BPF_ALU_MOD_K, 0, 0, workers as u32), // A %= workers
        i(BPF_RET_A, 0, 0, 0),                  // socket index
    ]
}

/// Runs a classic BPF program of the kinds [`reuseport_program`] uses on a
/// packet, as the kernel would (an out-of-range load returns 0). Lets the
/// tests prove the program and [`worker_of_packet`] agree.
pub fn run_program(program: &[BpfInsn], packet: &[u8]) -> u32 {
    let (mut a, mut pc) = (0u32, 0usize);
    while let Some(insn) = program.get(pc) {
        pc += 1;
        match insn.code {
            BPF_LD_B_ABS => match packet.get(insn.k as usize) {
                Some(&b) => a = b as u32,
                None => return 0,
            },
            BPF_JMP_JSET_K => pc += if a & insn.k != 0 { insn.jt } else { insn.jf } as usize,
            BPF_JMP_JA => pc += insn.k as usize,
            BPF_ALU_MOD_K => a %= insn.k,
            BPF_RET_A => return a,
            other => panic!("opcode {other:#x} is not used by the steering program"),
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> Arc<hmac::Key> {
        Arc::new(hmac::Key::new(hmac::HMAC_SHA256, &[seed; 32]))
    }

    fn short_header(cid: &[u8]) -> Vec<u8> {
        [&[0x40][..], cid, &[1, 2, 3, 4]].concat()
    }

    fn long_header(dcid: &[u8]) -> Vec<u8> {
        [&[0xc0, 0, 0, 0, 1, dcid.len() as u8][..], dcid, &[0, 0x44, 0xd0]].concat()
    }

    #[test]
    fn ids_name_their_worker_in_both_header_forms() {
        let k = key(1);
        for workers in [1, 2, 3, 8] {
            for w in 0..workers {
                let mut gen = WorkerCids::new(w, k.clone());
                for _ in 0..20 {
                    let cid = gen.generate_cid();
                    assert_eq!(cid.len(), CID_LEN);
                    assert!(gen.validate(&cid).is_ok());
                    assert_eq!(worker_of_packet(&short_header(&cid), workers), w);
                    assert_eq!(worker_of_packet(&long_header(&cid), workers), w);
                }
            }
        }
    }

    #[test]
    fn forged_or_foreign_ids_are_rejected() {
        let gen = WorkerCids::new(1, key(1));
        let cid = gen.cid_with_nonce([9; NONCE_LEN]);
        let mut forged = cid;
        forged[3] ^= 1;
        assert!(gen.validate(&ConnectionId::new(&forged)).is_err());
        let other_node = WorkerCids::new(1, key(2));
        assert!(other_node.validate(&ConnectionId::new(&cid)).is_err());
        assert!(gen.validate(&ConnectionId::new(&cid[..8])).is_err());
        assert!(gen.validate(&ConnectionId::new(&cid)).is_ok());
    }

    #[test]
    fn the_bpf_program_computes_the_same_worker() {
        for workers in 1..=8usize {
            let program = reuseport_program(workers);
            for first in 0..=255u8 {
                let cid = [first; CID_LEN];
                for packet in [short_header(&cid), long_header(&cid), long_header(&[first; 8])] {
                    assert_eq!(run_program(&program, &packet) as usize, worker_of_packet(&packet, workers));
                }
            }
            for runt in [&[][..], &[0x40][..], &[0xc0, 0, 0, 0, 1][..]] {
                assert_eq!(run_program(&program, runt), 0);
                assert_eq!(worker_of_packet(runt, workers), 0);
            }
        }
    }
}
