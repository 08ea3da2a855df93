//! Three (or more) memberships wired through an in-memory network with a simulated clock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::Duration;

use super::*;

const LATENCY: Duration = Duration::from_millis(1);

fn config(seeds: Vec<SocketAddr>) -> MembershipConfig {
    MembershipConfig {
        probe_period: Duration::from_millis(500),
        probe_rtt: Duration::from_millis(150),
        suspect_to_down: Duration::from_millis(1500),
        seeds,
    }
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, u8::try_from(i + 1).unwrap()], 7000))
}

fn name(i: usize) -> String {
    format!("node-{i}")
}

/// Arrival time, sending order, receiver, sender, payload.
type InFlight = Reverse<(Duration, u64, usize, SocketAddr, Vec<u8>)>;

struct Net {
    nodes: Vec<Membership>,
    running: Vec<bool>,
    now: Duration,
    inflight: BinaryHeap<InFlight>,
    sent: u64,
    /// Every datagram delivered, for the determinism test.
    trace: Vec<(Duration, usize, Vec<u8>)>,
}

impl Net {
    fn new(n: usize, seed: u64) -> Self {
        let nodes = (0..n)
            .map(|i| Self::node(n, i, 1_000, seed + i as u64))
            .collect();
        Self {
            nodes,
            running: vec![true; n],
            now: Duration::ZERO,
            inflight: BinaryHeap::new(),
            sent: 0,
            trace: Vec::new(),
        }
    }

    fn node(n: usize, i: usize, started_ms: u64, seed: u64) -> Membership {
        let seeds = (0..n).filter(|&j| j != i).map(addr).collect();
        let me = NodeIdentity::new(name(i), addr(i), seed.wrapping_mul(0x9e37), started_ms);
        Membership::new(me, config(seeds), seed).unwrap()
    }

    /// One event: the earliest timer of a running node or the earliest arrival.
    fn step(&mut self) {
        let timer = (0..self.nodes.len())
            .filter(|&i| self.running[i])
            .filter_map(|i| self.nodes[i].next_deadline())
            .min();
        let arrival = self.inflight.peek().map(|Reverse(d)| d.0);
        let next = match (timer, arrival) {
            (Some(t), Some(a)) => t.min(a),
            (Some(t), None) => t,
            (None, Some(a)) => a,
            (None, None) => panic!("nothing left to happen"),
        };
        self.now = self.now.max(next);
        while self
            .inflight
            .peek()
            .is_some_and(|Reverse(d)| d.0 <= self.now)
        {
            let Reverse((_, _, to, from, bytes)) = self.inflight.pop().unwrap();
            if self.running[to] {
                self.trace.push((self.now, to, bytes.clone()));
                self.nodes[to]
                    .handle_datagram(self.now, from, &bytes)
                    .unwrap();
            }
        }
        for i in 0..self.nodes.len() {
            if self.running[i] {
                self.nodes[i].handle_timers(self.now).unwrap();
            }
        }
        self.flush();
    }

    fn flush(&mut self) {
        for i in 0..self.nodes.len() {
            let from = self.nodes[i].identity().addr;
            for datagram in self.nodes[i].take_datagrams() {
                assert!(datagram.bytes.len() <= MAX_DATAGRAM_BYTES);
                let Some(to) = (0..self.nodes.len()).find(|&j| addr(j) == datagram.to) else {
                    continue;
                };
                self.sent += 1;
                let arrival = self.now + LATENCY;
                let entry = (arrival, self.sent, to, from, datagram.bytes.to_vec());
                self.inflight.push(Reverse(entry));
            }
        }
    }

    /// Runs until `done` holds; returns the simulated time it took from now.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> Duration {
        let start = self.now;
        while !done(self) {
            assert!(
                self.now - start <= limit,
                "not done within {limit:?}: {:#?}",
                self.nodes
            );
            self.step();
        }
        self.now - start
    }

    fn state_of(&self, observer: usize, node: usize) -> Option<MemberState> {
        self.nodes[observer]
            .members()
            .into_iter()
            .find(|m| m.identity.node_id == name(node))
            .map(|m| m.state)
    }

    fn all_see_alive(&self, observers: &[usize], nodes: &[usize]) -> bool {
        observers.iter().all(|&o| {
            nodes
                .iter()
                .all(|&n| self.state_of(o, n) == Some(MemberState::Alive))
        })
    }
}

#[test]
fn three_members_form_a_cluster_with_quorum() {
    let mut net = Net::new(3, 7);
    assert!(!net.nodes[0].quorum(3), "alone, a node has no quorum");
    net.run_until(Duration::from_secs(5), |n| {
        n.all_see_alive(&[0, 1, 2], &[0, 1, 2])
    });
    for node in &net.nodes {
        assert_eq!(node.members().len(), 3);
        assert_eq!(node.active(), 3);
        assert!(node.quorum(3));
        let me = node.members().into_iter().filter(|m| m.is_self).count();
        assert_eq!(me, 1);
        let heard = node
            .members()
            .iter()
            .filter(|m| m.last_heard.is_some())
            .count();
        assert_eq!(heard, 2, "each heard from both others: {node:?}");
        assert!(node.counters().sent > 0 && node.counters().received > 0);
    }
    let changes = net.nodes[0].take_changes();
    assert!(changes
        .iter()
        .any(|c| c.node_id == name(2) && c.state == MemberState::Alive));
    assert!(
        net.nodes[0].take_changes().is_empty(),
        "changes are taken once"
    );
}

#[test]
fn a_member_that_stops_answering_is_down_within_the_bound_and_quorum_holds() {
    let mut net = Net::new(3, 11);
    net.run_until(Duration::from_secs(5), |n| {
        n.all_see_alive(&[0, 1, 2], &[0, 1, 2])
    });
    // Let the cluster settle for a few probe rounds first.
    let settle = net.now + Duration::from_secs(3);
    net.run_until(Duration::from_secs(4), |n| n.now >= settle);
    net.running[2] = false;
    let bound = net.nodes[0].config().down_bound(3);
    let took = net.run_until(bound, |n| {
        n.state_of(0, 2) == Some(MemberState::Down) && n.state_of(1, 2) == Some(MemberState::Down)
    });
    assert!(
        took >= net.nodes[0].config().suspect_to_down,
        "down only after suspicion: {took:?}"
    );
    for i in [0, 1] {
        assert_eq!(net.nodes[i].active(), 2);
        assert!(net.nodes[i].quorum(3), "two of three keep quorum");
    }
    // A second loss leaves the survivor without quorum.
    net.running[1] = false;
    net.run_until(bound, |n| n.state_of(0, 1) == Some(MemberState::Down));
    assert_eq!(net.nodes[0].active(), 1);
    assert!(!net.nodes[0].quorum(3));
}

#[test]
fn a_restarted_identity_replaces_the_old_one() {
    let mut net = Net::new(3, 23);
    net.run_until(Duration::from_secs(5), |n| {
        n.all_see_alive(&[0, 1, 2], &[0, 1, 2])
    });
    let old = net.nodes[2].identity().clone();
    // kill -9 and start again: same node id and address, new boot, later start.
    net.nodes[2] = Net::node(3, 2, 9_000, 99);
    let new = net.nodes[2].identity().clone();
    assert_ne!(old, new);
    net.run_until(Duration::from_secs(5), |n| {
        [0, 1].iter().all(|&o| {
            n.nodes[o]
                .members()
                .iter()
                .any(|m| m.identity == new && m.state == MemberState::Alive)
        }) && n.all_see_alive(&[2], &[0, 1, 2])
    });
    for i in [0, 1] {
        let members = net.nodes[i].members();
        assert_eq!(members.len(), 3, "one entry per node id: {members:#?}");
        assert!(members.iter().all(|m| m.identity != old));
        assert!(net.nodes[i].quorum(3));
    }
}

#[test]
fn a_healed_partition_brings_the_member_back_alive() {
    let mut net = Net::new(3, 31);
    net.run_until(Duration::from_secs(5), |n| {
        n.all_see_alive(&[0, 1, 2], &[0, 1, 2])
    });
    net.running[2] = false;
    let bound = net.nodes[0].config().down_bound(3);
    net.run_until(bound, |n| {
        n.state_of(0, 2) == Some(MemberState::Down) && n.state_of(1, 2) == Some(MemberState::Down)
    });
    net.running[2] = true;
    net.run_until(Duration::from_secs(10), |n| {
        n.all_see_alive(&[0, 1, 2], &[0, 1, 2])
    });
    assert!(
        net.nodes[2].identity().bump > 0,
        "it renewed its identity to rejoin"
    );
    assert!(net.nodes.iter().all(|n| n.quorum(3)));
}

#[test]
fn the_same_seed_and_inputs_give_the_same_outputs() {
    let run = |seed| {
        let mut net = Net::new(3, seed);
        let end = Duration::from_secs(4);
        net.run_until(Duration::from_secs(5), |n| n.now >= end);
        net.trace
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6), "the seed matters");
}

#[test]
fn garbage_is_refused_and_counted() {
    let mut net = Net::new(3, 3);
    let err = net.nodes[0]
        .handle_datagram(Duration::ZERO, addr(1), b"\xff\xff\xff not swim")
        .unwrap_err();
    assert!(err.to_string().contains("10.0.0.2:7000"), "{err}");
    let huge = vec![0u8; MAX_DATAGRAM_BYTES + 1];
    assert!(net.nodes[0]
        .handle_datagram(Duration::ZERO, addr(1), &huge)
        .is_err());
    assert_eq!(net.nodes[0].counters().rejected, 2);
    assert_eq!(net.nodes[0].members().len(), 1, "only itself");
}

#[test]
fn bad_configuration_is_refused_with_its_reason() {
    let me = NodeIdentity::new("a", addr(0), 1, 1);
    let mut bad = config(vec![addr(1)]);
    bad.probe_rtt = bad.probe_period;
    let err = Membership::new(me.clone(), bad, 1).unwrap_err();
    assert!(err.contains("probe rtt"), "{err}");
    let mut zero = config(vec![addr(1)]);
    zero.suspect_to_down = Duration::ZERO;
    assert!(Membership::new(me, zero, 1).is_err());
    let upper = NodeIdentity::new("Node_A", addr(0), 1, 1);
    let err = Membership::new(upper, config(vec![]), 1).unwrap_err();
    assert!(err.contains("node id"), "{err}");
    assert!(valid_node_id("node-1") && !valid_node_id("") && !valid_node_id(&"a".repeat(65)));
}
