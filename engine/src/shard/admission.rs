//! Admission past capacity: `connections_per_shard_max` places; an upgraded connection
//! beyond them waits in a bounded queue (`admission_queue_per_shard_max`), first come first
//! served, and is told its position. Pure: the shard applies what it decides.
#![forbid(unsafe_code)]

use std::collections::VecDeque;

use crate::conn::ConnRef;

#[derive(Debug)]
pub struct Admission {
    places: usize,
    queue_max: usize,
    admitted: usize,
    waiting: VecDeque<ConnRef>,
}

/// What happens to a connection that has just upgraded.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival {
    /// A place was free and nobody waited: it is admitted (and counted).
    Admitted,
    /// It waits at this position (1 = next).
    Queued(u32),
}

/// What filling free places decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fill {
    /// Connections given a place, in queue order (already counted).
    pub admitted: Vec<ConnRef>,
    /// Connections still waiting whose position changed, with the new position.
    pub moved: Vec<(ConnRef, u32)>,
}

impl Admission {
    pub fn new(places: usize, queue_max: usize) -> Admission {
        Admission {
            places,
            queue_max,
            admitted: 0,
            waiting: VecDeque::new(),
        }
    }

    pub fn at_capacity(&self) -> bool {
        self.admitted >= self.places
    }

    /// No place and no room in the queue: a new upgrade is refused (HTTP 503).
    pub fn is_full(&self) -> bool {
        self.at_capacity() && self.waiting.len() >= self.queue_max
    }

    pub fn arrive(&mut self, conn: ConnRef) -> Arrival {
        if !self.at_capacity() && self.waiting.is_empty() {
            self.admitted += 1;
            return Arrival::Admitted;
        }
        self.waiting.push_back(conn);
        Arrival::Queued(self.waiting.len() as u32)
    }

    /// An admitted connection went away: its place is free.
    pub fn release(&mut self) {
        assert!(self.admitted > 0, "released more places than were taken");
        self.admitted -= 1;
    }

    /// Gives free places to waiting connections in order. `queued(conn)` says whether a
    /// waiting connection still waits (it may have gone), with the position it was last
    /// told; gone ones lose their turn and leave the queue.
    pub fn fill(&mut self, mut queued: impl FnMut(ConnRef) -> Option<u32>) -> Fill {
        let mut fill = Fill::default();
        while !self.at_capacity() {
            let Some(conn) = self.waiting.pop_front() else {
                break;
            };
            if queued(conn).is_some() {
                self.admitted += 1;
                fill.admitted.push(conn);
            }
        }
        let mut position = 0;
        self.waiting.retain(|conn| {
            let Some(told) = queued(*conn) else {
                return false;
            };
            position += 1;
            if told != position {
                fill.moved.push((*conn, position));
            }
            true
        });
        fill
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn conn(n: u64) -> ConnRef {
        ConnRef {
            key: n as u32,
            generation: n,
        }
    }

    /// Goal: places go first come first served; a queue forms past capacity, bounded;
    /// freed places go to the head of the queue, skipping connections that left; the ones
    /// behind learn their new position, and only when it changed.
    #[test]
    fn first_come_first_served_with_positions() {
        let mut a = Admission::new(2, 3);
        assert_eq!(a.arrive(conn(1)), Arrival::Admitted);
        assert_eq!(a.arrive(conn(2)), Arrival::Admitted);
        assert!(a.at_capacity() && !a.is_full());
        assert_eq!(a.arrive(conn(3)), Arrival::Queued(1));
        assert_eq!(a.arrive(conn(4)), Arrival::Queued(2));
        assert_eq!(a.arrive(conn(5)), Arrival::Queued(3));
        assert!(a.is_full(), "no place and the queue is at its bound");

        let mut told: HashMap<u64, u32> = [(3, 1), (4, 2), (5, 3)].into();
        told.remove(&3); // connection 3 went away while waiting
        a.release();
        let fill = a.fill(|c| told.get(&c.generation).copied());
        assert_eq!(fill.admitted, vec![conn(4)], "3 left, so 4 gets the place");
        assert_eq!(fill.moved, vec![(conn(5), 1)]);
        assert!(a.at_capacity() && !a.is_full());

        told = [(5, 1)].into();
        let fill = a.fill(|c| told.get(&c.generation).copied());
        assert_eq!(fill, Fill::default(), "no place freed, nobody moved");
    }

    /// Goal: a new connection does not overtake waiting ones even when a place is free.
    #[test]
    fn a_free_place_goes_to_the_queue_first() {
        let mut a = Admission::new(1, 10);
        assert_eq!(a.arrive(conn(1)), Arrival::Admitted);
        assert_eq!(a.arrive(conn(2)), Arrival::Queued(1));
        a.release();
        assert_eq!(a.arrive(conn(3)), Arrival::Queued(2), "2 waits ahead of it");
        let fill = a.fill(|c| Some(c.generation as u32 - 1));
        assert_eq!(fill.admitted, vec![conn(2)]);
        assert_eq!(fill.moved, vec![(conn(3), 1)]);
    }
}
