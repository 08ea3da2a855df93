//! A room's state on its home shard: sequencing, the ring of recent messages, members,
//! read pointers, retry keys, and which shards hold subscribers.
//!
//! Pure logic: no sockets, no clocks (time comes in as arguments), no other shard. The home
//! shard is the only writer, so nothing here is shared or locked. Tests drive it directly.

#![forbid(unsafe_code)]

pub mod refusals;
mod search;

use std::collections::{BTreeSet, HashMap, VecDeque};

use crate::wire::protocol::Msg;
use search::SearchIndex;

/// Bounds of one room, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct RoomLimits {
    pub history_ring_messages_max: usize,
    pub idempotency_keys_max: usize,
    /// `--own-messages-after-read-max`: own messages remembered per member after its read
    /// pointer (see [`Room::sent_by`]).
    pub own_messages_after_read_max: usize,
}

#[derive(Debug, Clone)]
pub struct RoomInfo {
    pub title: Option<String>,
    pub private: bool,
    pub creator: String,
    pub created_ms: u64,
}

/// The messages a replay of `after_seq` can give from memory.
#[derive(Debug, PartialEq)]
pub struct Replay<'a> {
    pub messages: Vec<&'a Msg>,
    /// Messages after `after_seq` that the ring no longer holds.
    pub missing_before_ring: u64,
}

#[derive(Debug)]
pub struct Room {
    id: String,
    info: RoomInfo,
    /// argon2 hash of a private room's password (never the password).
    pub password_hash: Option<String>,
    limits: RoomLimits,
    /// The last published (visible) seq.
    last_seq: u64,
    /// The last seq handed out; above `last_seq` while records wait to be durable.
    reserved_seq: u64,
    /// Reserved seqs whose record could not be written, between `last_seq` and
    /// `reserved_seq`; empty unless the log failed (see [`Room::abandon`]).
    abandoned: BTreeSet<u64>,
    ring: VecDeque<Msg>,
    /// Members, read pointers and online counts, one entry (and one copy of the id) per
    /// user that has any of them: see [`Person`].
    people: HashMap<Box<str>, Person>,
    /// People with `member` set.
    members: usize,
    /// Per member, its own messages after its read pointer: they do not count as unread.
    /// Only members with unread messages of others have an entry.
    own_after_read: HashMap<String, OwnAfterRead>,
    retry_keys: HashMap<(String, String), (u64, u64)>,
    retry_order: VecDeque<(String, String)>,
    subscribers_per_shard: Vec<u32>,
    search: SearchIndex,
    /// The ring's and search index's estimated heap bytes ([`cache_cost`]): what the
    /// shard's `--room-cache-bytes-per-shard` budget counts.
    cache_bytes: usize,
    /// `cache_bytes` added since the shard last took it ([`Room::take_cache_delta`]).
    cache_delta: isize,
    /// The shard's journal count of the room's last message or deletion record: the
    /// cache may be dropped once the log has settled it (`home/cache.rs`).
    pub logged: u64,
}

/// A ring message's estimated heap bytes with its search entry: the struct and its four
/// strings' allocations, the body's lower-cased copy in the index and about one 8-byte
/// posting per body byte (bigrams; none for a body too long to index), each posting list's
/// and map entry's share.
pub fn cache_cost(m: &Msg) -> usize {
    /// Per allocation: the allocator's rounding and header, on average.
    const ALLOC_BYTES: usize = 16;
    /// Per body byte in the search index: its lower-cased copy (1) and a bigram posting (8),
    /// with the posting list's and the map entry's share (1).
    const SEARCH_BYTES_PER_BODY_BYTE: usize = 10;
    let strings = m.room.len() + m.msg_id.len() + m.from.len();
    let name = m.name.as_ref().map_or(0, |n| n.len() + ALLOC_BYTES);
    let body = m.body.as_ref().map_or(0, |b| {
        // A body too long to index keeps only its lower-cased copy in the index (search.rs).
        let search = if search::is_longer(b, search::INDEXED_CHARS_MAX) {
            1
        } else {
            SEARCH_BYTES_PER_BODY_BYTE
        };
        b.len() * (1 + search) + 2 * ALLOC_BYTES
    });
    std::mem::size_of::<Msg>() + 3 * ALLOC_BYTES + strings + name + body
}

/// What a room knows of one user. One map of these replaced three (members, read
/// pointers, online counts), each keyed by its own copy of the user id: ≈ 150 bytes fewer
/// per member, most of an idle connection's share of its room (issue 14). A user without
/// membership, pointer and connection has no entry.
#[derive(Debug, Default)]
struct Person {
    member: bool,
    /// Whether `read_seq` is set (a member's pointer, or one restored or marked without
    /// membership).
    has_read_seq: bool,
    read_seq: u64,
    /// Connections of the user subscribed to the room.
    online: u32,
}

impl Person {
    fn read_seq(&self) -> Option<u64> {
        self.has_read_seq.then_some(self.read_seq)
    }

    fn is_empty(&self) -> bool {
        !self.member && !self.has_read_seq && self.online == 0
    }
}

/// A member's own messages after its read pointer. The newest are remembered by seq (at
/// most `own_messages_after_read_max`); older ones only as a count and the newest of them,
/// so memory stays bounded without a send ever moving the pointer over others' messages.
/// Exact, but for one case: a `read` that stops below the newest forgotten one cannot tell
/// how many forgotten ones it passed, and keeps excluding them all (unread may read low
/// until the member reads past them).
#[derive(Debug, Default)]
struct OwnAfterRead {
    /// Ascending.
    seqs: VecDeque<u64>,
    forgotten: u64,
    forgotten_newest: u64,
}

impl OwnAfterRead {
    fn push(&mut self, seq: u64, max: usize) {
        self.seqs.push_back(seq);
        if self.seqs.len() > max {
            let oldest = self.seqs.pop_front().expect("over the bound");
            self.forgotten += 1;
            self.forgotten_newest = oldest;
        }
    }

    fn count(&self) -> u64 {
        self.seqs.len() as u64 + self.forgotten
    }

    fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// The pointer moved to `ptr`: own messages up to it are read.
    fn read_to(&mut self, ptr: u64) {
        while self.seqs.front().is_some_and(|s| *s <= ptr) {
            self.seqs.pop_front();
        }
        if self.forgotten_newest <= ptr {
            self.forgotten = 0;
        }
    }

    /// `ptr` moved on over own messages right after it (only while none is forgotten:
    /// their seqs are not known).
    fn past_own_from(&self, mut ptr: u64) -> u64 {
        if self.forgotten > 0 && self.forgotten_newest > ptr {
            return ptr;
        }
        for own in &self.seqs {
            if *own == ptr + 1 {
                ptr += 1;
            } else if *own > ptr {
                break;
            }
        }
        ptr
    }
}

impl Room {
    pub fn new(id: String, info: RoomInfo, limits: RoomLimits, shards: usize) -> Room {
        assert!(limits.history_ring_messages_max > 0 && limits.idempotency_keys_max > 0);
        assert!(limits.own_messages_after_read_max > 0);
        Room {
            id,
            info,
            password_hash: None,
            limits,
            last_seq: 0,
            reserved_seq: 0,
            abandoned: BTreeSet::new(),
            ring: VecDeque::new(),
            people: HashMap::new(),
            members: 0,
            own_after_read: HashMap::new(),
            retry_keys: HashMap::new(),
            retry_order: VecDeque::new(),
            subscribers_per_shard: vec![0; shards],
            // Search covers the ring's messages: both evict one message per new one.
            search: SearchIndex::new(limits.history_ring_messages_max),
            cache_bytes: 0,
            cache_delta: 0,
            logged: 0,
        }
    }

    /// The ring's and the search index's estimated bytes ([`cache_cost`]).
    #[cfg(test)]
    pub fn cache_bytes(&self) -> usize {
        self.cache_bytes
    }

    /// The change of [`Room::cache_bytes`] since the last call.
    pub fn take_cache_delta(&mut self) -> isize {
        std::mem::take(&mut self.cache_delta)
    }

    fn cache_changed(&mut self, added: usize, removed: usize) {
        self.cache_bytes = self.cache_bytes + added - removed;
        self.cache_delta += added as isize - removed as isize;
    }

    /// Drops the ring and the search index (the shard's cache budget, docs/PROTOCOL.md
    /// `history`): history and replays then read the store, search finds nothing older
    /// than the next message. The caller checks the store holds every message first.
    /// Returns the messages dropped.
    pub fn evict_cache(&mut self) -> usize {
        let dropped = self.ring.len();
        self.ring = VecDeque::new();
        self.search = SearchIndex::new(self.limits.history_ring_messages_max);
        self.cache_changed(0, self.cache_bytes);
        dropped
    }

    /// A room as persisted: sequence numbers continue after `last_seq`, retries of the
    /// recovered keys get their original seq; the ring starts empty (older messages are read
    /// from the store).
    pub fn restore(
        snapshot: sokdo_persistence::RoomSnapshot,
        limits: RoomLimits,
        shards: usize,
    ) -> Room {
        let info = RoomInfo {
            title: snapshot.title,
            private: snapshot.private,
            creator: snapshot.creator,
            created_ms: snapshot.created_ms,
        };
        let mut room = Room::new(snapshot.room, info, limits, shards);
        room.password_hash = snapshot.password_hash;
        room.last_seq = snapshot.last_seq;
        room.reserved_seq = snapshot.last_seq;
        for user in snapshot.members {
            let person = room.person_mut(&user);
            if !person.member {
                person.member = true;
                room.members += 1;
            }
        }
        // A pointer is never past the last message (an older log could hold one for a send
        // the log then failed to write).
        let last_seq = snapshot.last_seq;
        for (user, seq) in snapshot.read_pointers {
            let person = room.person_mut(&user);
            person.has_read_seq = true;
            person.read_seq = seq.min(last_seq);
        }
        // Ascending by seq: the oldest is evicted first, as if they had just been sent.
        for k in snapshot.retry_keys {
            room.remember_retry_key((k.from, k.client_msg_id), k.seq, k.ts_ms);
        }
        room
    }

    /// The message at `seq`, if the ring still holds it.
    pub fn in_ring(&self, seq: u64) -> Option<&Msg> {
        let first = self.ring.front()?.seq;
        self.ring.get(seq.checked_sub(first)? as usize)
    }

    /// Turns a message into a tombstone (in the ring and the search index). Returns whether
    /// it was not deleted already.
    pub fn delete(&mut self, seq: u64) -> bool {
        self.search.remove(seq);
        let Some(first) = self.ring.front().map(|m| m.seq) else {
            return true;
        };
        match seq
            .checked_sub(first)
            .and_then(|i| self.ring.get_mut(i as usize))
        {
            Some(m) if m.deleted => false,
            Some(m) => {
                let before = cache_cost(m);
                m.deleted = true;
                m.body = None;
                let after = cache_cost(m);
                self.cache_changed(after, before);
                true
            }
            None => true,
        }
    }

    /// Seqs of messages matching `query`, newest first (docs: `search.rs`).
    pub fn search(&self, query: &str, limit: usize) -> Vec<u64> {
        self.search.search(query, limit)
    }

    /// The room's info as its cluster owner says it is (creator included).
    pub fn replace_info(&mut self, info: RoomInfo) {
        self.info = info;
    }

    pub fn set_info(&mut self, title: Option<String>, private: Option<bool>) {
        if let Some(title) = title {
            self.info.title = Some(title);
        }
        if let Some(private) = private {
            self.info.private = private;
        }
    }

    pub fn member_count(&self) -> usize {
        self.members
    }

    /// `user`'s entry, made (empty) if it has none; the id is copied only then.
    fn person_mut(&mut self, user: &str) -> &mut Person {
        if !self.people.contains_key(user) {
            self.people.insert(user.into(), Person::default());
        }
        self.people.get_mut(user).expect("just inserted")
    }

    /// Drops `user`'s entry once it holds nothing.
    fn forget_if_empty(&mut self, user: &str) {
        if self.people.get(user).is_some_and(Person::is_empty) {
            self.people.remove(user);
        }
    }

    /// The first seq the ring holds (`last_seq + 1` when empty): below it, ask the store.
    pub fn ring_first_seq(&self) -> u64 {
        self.ring.front().map_or(self.last_seq + 1, |m| m.seq)
    }

    /// The original `(seq, ts)` when `client_msg_id` repeats one this user sent within the
    /// retry window.
    pub fn retry_of(&self, from: &str, client_msg_id: Option<&str>) -> Option<(u64, u64)> {
        let key = (from.to_owned(), client_msg_id?.to_owned());
        self.retry_keys.get(&key).copied()
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn info(&self) -> &RoomInfo {
        &self.info
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn msg_id(room: &str, seq: u64) -> String {
        format!("{room}:{seq}")
    }

    /// The seq the next reserved message gets.
    pub fn next_seq(&self) -> u64 {
        self.reserved_seq + 1
    }

    /// Assigns the next sequence number to a message whose record is being logged, and
    /// remembers its `client_msg_id` (the caller checked `retry_of` first). The message is
    /// not visible until `publish`: with durable acks that is when its record is durable.
    pub fn reserve(&mut self, from: &str, client_msg_id: Option<&str>, ts: u64) -> u64 {
        debug_assert!(
            self.retry_of(from, client_msg_id).is_none(),
            "retry keys are checked first"
        );
        self.reserved_seq += 1;
        if let Some(key) = client_msg_id {
            self.remember_retry_key((from.to_owned(), key.to_owned()), self.reserved_seq, ts);
        }
        self.reserved_seq
    }

    /// A reserved message whose record could not be written: it is never published and its
    /// retry key is forgotten (a retry is a new attempt). Its seq is handed out again once
    /// every seq reserved after it is abandoned too — what a failing log does, since it
    /// refuses everything queued after the record it could not write. Should a later seq be
    /// written all the same, [`Room::publish`] shows the abandoned ones as tombstones, so that
    /// seqs stay without gaps.
    pub fn abandon(&mut self, seq: u64, from: &str, client_msg_id: Option<&str>) {
        assert!(
            seq > self.last_seq && seq <= self.reserved_seq,
            "only reserved, unpublished seqs are abandoned"
        );
        if let Some(id) = client_msg_id {
            let key = (from.to_owned(), id.to_owned());
            if self.retry_keys.get(&key).is_some_and(|&(s, _)| s == seq) {
                self.retry_keys.remove(&key);
                if let Some(i) = self.retry_order.iter().rposition(|k| *k == key) {
                    self.retry_order.remove(i);
                }
            }
        }
        self.abandoned.insert(seq);
        while self.abandoned.remove(&self.reserved_seq) {
            self.reserved_seq -= 1;
        }
    }

    /// A message sequenced elsewhere (a clustered room's owner, docs/REPLICATION.md): it
    /// takes the next seq, `seq == last_seq() + 1`, as if reserved here; its retry key is
    /// remembered so that a client's retry through this instance is answered as a duplicate.
    pub fn apply_external(
        &mut self,
        seq: u64,
        msg: (&str, Option<&str>, String, u64),
        client_msg_id: Option<&str>,
    ) -> &Msg {
        let (from, name, body, ts) = msg;
        self.reserved_seq = self.reserved_seq.max(seq);
        if let Some(key) = client_msg_id {
            self.remember_retry_key((from.to_owned(), key.to_owned()), seq, ts);
        }
        self.publish(seq, from, name, body, ts)
    }

    /// Makes a reserved message visible: the ring, search, `last_seq`. Reserved messages are
    /// published in seq order. The sender's read pointer is the caller's next step
    /// ([`Room::sent_by`]).
    pub fn publish(
        &mut self,
        seq: u64,
        from: &str,
        name: Option<&str>,
        body: String,
        ts: u64,
    ) -> &Msg {
        while self.abandoned.remove(&(self.last_seq + 1)) {
            self.last_seq += 1;
            self.push_to_ring(Msg {
                room: self.id.clone(),
                seq: self.last_seq,
                msg_id: Room::msg_id(&self.id, self.last_seq),
                from: String::new(),
                name: None,
                body: None,
                ts,
                deleted: true,
            });
        }
        assert_eq!(
            seq,
            self.last_seq + 1,
            "messages are published in seq order, without gaps"
        );
        assert!(seq <= self.reserved_seq, "only reserved seqs are published");
        self.last_seq = seq;
        self.search.add(seq, &body);
        self.push_to_ring(Msg {
            room: self.id.clone(),
            seq,
            msg_id: Room::msg_id(&self.id, seq),
            from: from.to_owned(),
            name: name.map(str::to_owned),
            body: Some(body),
            ts,
            deleted: false,
        });
        self.ring.back().expect("just pushed")
    }

    fn push_to_ring(&mut self, msg: Msg) {
        let mut removed = 0;
        if self.ring.len() == self.limits.history_ring_messages_max {
            removed = self.ring.pop_front().as_ref().map_or(0, cache_cost);
        }
        self.cache_changed(cache_cost(&msg), removed);
        self.ring.push_back(msg);
        debug_assert!(self.ring.len() <= self.limits.history_ring_messages_max);
    }

    fn remember_retry_key(&mut self, key: (String, String), seq: u64, ts: u64) {
        if self.retry_order.len() == self.limits.idempotency_keys_max {
            if let Some(oldest) = self.retry_order.pop_front() {
                self.retry_keys.remove(&oldest);
            }
        }
        self.retry_order.push_back(key.clone());
        self.retry_keys.insert(key, (seq, ts));
    }

    /// Messages with `seq > after_seq` still in the ring, ascending.
    pub fn replay(&self, after_seq: u64) -> Replay<'_> {
        let first_in_ring = self.ring.front().map_or(self.last_seq + 1, |m| m.seq);
        let next = after_seq.saturating_add(1);
        let missing_before_ring = first_in_ring.saturating_sub(next);
        let skip = usize::try_from(next.saturating_sub(first_in_ring)).unwrap_or(usize::MAX);
        Replay {
            messages: self.ring.iter().skip(skip).collect(),
            missing_before_ring,
        }
    }

    /// The newest `limit` messages with `seq < before_seq` (all, without it), ascending.
    pub fn history(&self, before_seq: Option<u64>, limit: usize) -> Vec<&Msg> {
        let end = match before_seq {
            None => self.ring.len(),
            Some(before) => self.ring.partition_point(|m| m.seq < before),
        };
        let start = end.saturating_sub(limit);
        self.ring.range(start..end).collect()
    }

    /// Adds a member; a new member's read pointer starts at the room's current end.
    /// Returns whether the user was not a member before.
    pub fn add_member(&mut self, user: &str) -> bool {
        let last_seq = self.last_seq;
        let person = self.person_mut(user);
        if person.member {
            return false;
        }
        person.member = true;
        if !person.has_read_seq {
            person.has_read_seq = true;
            person.read_seq = last_seq;
        }
        self.members += 1;
        true
    }

    pub fn read_seq(&self, user: &str) -> u64 {
        self.people
            .get(user)
            .and_then(Person::read_seq)
            .unwrap_or(0)
    }

    pub fn remove_member(&mut self, user: &str) {
        if let Some(person) = self.people.get_mut(user) {
            if person.member {
                self.members -= 1;
            }
            person.member = false;
            person.has_read_seq = false;
            person.read_seq = 0;
            self.forget_if_empty(user);
        }
        self.own_after_read.remove(user);
    }

    pub fn is_member(&self, user: &str) -> bool {
        self.people.get(user).is_some_and(|p| p.member)
    }

    /// Moves a read pointer forward only (and on over the user's own messages right after
    /// it); returns whether it moved. See [`Room::read_seq`] for the result.
    pub fn mark_read(&mut self, user: &str, seq: u64) -> bool {
        let target = self.read_target(user, seq);
        let person = self.person_mut(user);
        if !person.has_read_seq {
            person.has_read_seq = true;
            person.read_seq = 0;
        }
        if target <= person.read_seq {
            return false;
        }
        person.read_seq = target;
        if let Some(own) = self.own_after_read.get_mut(user) {
            own.read_to(target);
            if own.is_empty() {
                self.own_after_read.remove(user);
            }
        }
        true
    }

    /// The pointer [`Room::mark_read`] of `seq` would leave (`seq` and the user's own
    /// messages right after it).
    pub fn read_target(&self, user: &str, seq: u64) -> u64 {
        let ptr = seq.min(self.last_seq).max(self.read_seq(user));
        self.own_after_read
            .get(user)
            .map_or(ptr, |own| own.past_own_from(ptr))
    }

    /// A member's own message `seq` was just published: it is remembered so that it does not
    /// count as unread. The read pointer does not move — only `read` moves it (and tells the
    /// room) — so a send never marks others' messages read, a later `read` is never a no-op,
    /// and a room with one sender gets no `read` event per message. Non-members (HTTP
    /// publishes) have no pointer.
    pub fn sent_by(&mut self, user: &str, seq: u64) {
        debug_assert!(seq <= self.last_seq, "only published messages are sent");
        if self.is_member(user) && self.read_seq(user) < seq {
            let max = self.limits.own_messages_after_read_max;
            let own = self.own_after_read.entry(user.to_owned()).or_default();
            own.push(seq, max);
        }
    }

    /// Messages after the user's read pointer that others sent. Exact while the user's own
    /// messages after the pointer are remembered (see [`Room::sent_by`]; not across a
    /// restart).
    pub fn unread(&self, user: &str) -> u64 {
        let read = self
            .people
            .get(user)
            .and_then(Person::read_seq)
            .unwrap_or(self.last_seq);
        let own = self.own_after_read.get(user).map_or(0, OwnAfterRead::count);
        self.last_seq.saturating_sub(read).saturating_sub(own)
    }

    /// Counts one more subscribed connection of `user` on `shard`. Returns whether the user
    /// just came online in the room (its first connection).
    pub fn subscribe(&mut self, shard: usize, user: &str) -> bool {
        self.subscribers_per_shard[shard] += 1;
        let person = self.person_mut(user);
        person.online += 1;
        person.online == 1
    }

    /// Counts one subscribed connection fewer. Returns whether the user went offline in the
    /// room (its last connection).
    pub fn unsubscribe(&mut self, shard: usize, user: &str) -> bool {
        let count = &mut self.subscribers_per_shard[shard];
        debug_assert!(*count > 0, "unsubscribe without subscribe on shard {shard}");
        *count = count.saturating_sub(1);
        let Some(person) = self.people.get_mut(user) else {
            return false;
        };
        match person.online {
            0 => false,
            1 => {
                person.online = 0;
                self.forget_if_empty(user);
                true
            }
            _ => {
                person.online -= 1;
                false
            }
        }
    }

    /// Users with at least one subscribed connection.
    pub fn online_users(&self) -> impl Iterator<Item = &str> {
        self.people
            .iter()
            .filter(|(_, p)| p.online > 0)
            .map(|(user, _)| &**user)
    }

    /// Shards that hold at least one subscriber: each gets one copy of every message.
    pub fn subscribed_shards(&self) -> impl Iterator<Item = usize> + '_ {
        self.subscribers_per_shard
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(shard, _)| shard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn room(ring: usize) -> Room {
        let info = RoomInfo {
            title: None,
            private: false,
            creator: "c".into(),
            created_ms: 0,
        };
        let limits = RoomLimits {
            history_ring_messages_max: ring,
            idempotency_keys_max: 4,
            own_messages_after_read_max: 3,
        };
        Room::new("r".into(), info, limits, 2)
    }

    /// A send as the home runs it: the retry check, then reserve and publish.
    fn send(room: &mut Room, from: &str, key: Option<&str>) -> u64 {
        if let Some((seq, _)) = room.retry_of(from, key) {
            return seq;
        }
        let seq = room.reserve(from, key, 7);
        room.publish(seq, from, None, "b".into(), 7);
        room.sent_by(from, seq);
        seq
    }

    #[test]
    fn one_entry_per_person_and_none_once_nothing_is_left() {
        let mut r = room(10);
        assert!(r.add_member("a") && !r.add_member("a"));
        assert!(r.subscribe(0, "a") && !r.subscribe(1, "a"));
        send(&mut r, "b", None);
        assert_eq!(
            (r.member_count(), r.read_seq("a"), r.unread("a")),
            (1, 0, 1)
        );
        assert!(r.mark_read("a", 1) && r.unread("a") == 0);
        // A subscriber that is not a member (a public room) and a pointer without membership.
        assert!(r.subscribe(0, "c"));
        assert!(r.mark_read("d", 1) && !r.is_member("d") && r.read_seq("d") == 1);
        assert_eq!(r.people.len(), 3, "a, c, d");
        r.remove_member("a");
        assert!(!r.is_member("a") && r.member_count() == 0);
        assert_eq!(r.online_users().count(), 2, "a's connections still count");
        assert!(!r.unsubscribe(0, "a") && r.unsubscribe(1, "a"));
        assert!(r.unsubscribe(0, "c"));
        assert_eq!(r.online_users().count(), 0);
        assert_eq!(r.people.keys().map(|k| &**k).collect::<Vec<_>>(), ["d"]);
        // Rejoining starts at the room's end, as a new member.
        assert!(r.add_member("a") && r.read_seq("a") == 1 && r.member_count() == 1);
    }

    #[test]
    fn retry_returns_the_original_seq_and_stores_nothing() {
        let mut r = room(10);
        let first = send(&mut r, "u", Some("k"));
        send(&mut r, "v", None);
        assert_eq!(r.retry_of("u", Some("k")), Some((first, 7)));
        assert_eq!(send(&mut r, "u", Some("k")), first);
        assert_eq!(r.last_seq(), 2);
        // The same key from another user is a different message.
        assert_eq!(send(&mut r, "v", Some("k")), 3);
    }

    #[test]
    fn reserved_messages_stay_invisible_until_published() {
        let mut r = room(10);
        let a = r.reserve("u", Some("k"), 1);
        let b = r.reserve("u", None, 2);
        assert_eq!((a, b, r.last_seq(), r.next_seq()), (1, 2, 0, 3));
        assert!(r.history(None, 10).is_empty() && r.replay(0).messages.is_empty());
        assert_eq!(
            r.retry_of("u", Some("k")),
            Some((1, 1)),
            "a retry during the wait is a duplicate"
        );
        r.publish(a, "u", None, "a".into(), 1);
        r.publish(b, "u", None, "b".into(), 2);
        assert_eq!(r.last_seq(), 2);
    }

    #[test]
    fn abandoned_seqs_are_given_back_or_shown_as_tombstones() {
        let mut r = room(10);
        let a = r.reserve("u", Some("k"), 1);
        let b = r.reserve("u", None, 2);
        // Abandoned out of order, the seqs still come back once both are.
        r.abandon(a, "u", Some("k"));
        assert_eq!(r.next_seq(), 3, "a later seq is still reserved");
        r.abandon(b, "u", None);
        assert_eq!((r.next_seq(), r.last_seq()), (1, 0));
        assert_eq!(r.retry_of("u", Some("k")), None, "a retry is a new attempt");
        assert_eq!(r.reserve("u", Some("k"), 3), 1);
        // A seq abandoned below one that is then written becomes a tombstone: no gap.
        let c = r.reserve("u", None, 4);
        r.abandon(1, "u", Some("k"));
        r.publish(c, "u", None, "c".into(), 4);
        let seqs: Vec<(u64, bool)> = r
            .history(None, 10)
            .iter()
            .map(|m| (m.seq, m.deleted))
            .collect();
        assert_eq!(seqs, [(1, true), (2, false)]);
    }

    #[test]
    fn retry_window_is_bounded() {
        let mut r = room(10);
        for k in 0..5 {
            send(&mut r, "u", Some(&k.to_string()));
        }
        assert_eq!(r.retry_keys.len(), 4);
        assert_eq!(send(&mut r, "u", Some("0")), 6, "oldest key forgotten");
    }

    #[test]
    fn restored_retry_keys_answer_retries_and_keep_the_window() {
        let key = |seq: u64| sokdo_persistence::RetryKey {
            from: "u".into(),
            client_msg_id: format!("k{seq}"),
            seq,
            ts_ms: seq * 10,
        };
        let snapshot = sokdo_persistence::RoomSnapshot {
            room: "r".into(),
            last_seq: 9,
            retry_keys: (5..=9).map(key).collect(),
            ..Default::default()
        };
        let mut r = Room::restore(snapshot, room(10).limits, 2);
        assert_eq!(r.retry_of("u", Some("k9")), Some((9, 90)));
        assert_eq!(
            r.retry_of("u", Some("k5")),
            None,
            "a window of 4 keeps the newest"
        );
        assert_eq!(
            send(&mut r, "u", Some("k6")),
            6,
            "a retry gets the original seq"
        );
        assert_eq!(send(&mut r, "u", Some("new")), 10);
    }

    #[test]
    fn unread_excludes_own_messages() {
        let mut r = room(10);
        r.add_member("a");
        r.add_member("b");
        send(&mut r, "a", None);
        send(&mut r, "a", None);
        assert_eq!(r.unread("a"), 0);
        assert_eq!(r.unread("b"), 2);
        assert!(r.mark_read("b", 1));
        assert!(!r.mark_read("b", 1), "pointer moves forward only");
        assert_eq!(r.unread("b"), 1);
    }

    #[test]
    fn unread_is_exact_with_interleaved_senders() {
        let mut r = room(10);
        r.add_member("a");
        r.add_member("b");
        send(&mut r, "b", None); // 1
        send(&mut r, "a", None); // 2: b's 1 is still unread by a
        send(&mut r, "b", None); // 3
        send(&mut r, "a", None); // 4
        assert_eq!(
            (r.read_seq("a"), r.unread("a")),
            (0, 2),
            "1 and 3 are unread"
        );
        assert_eq!(
            (r.read_seq("b"), r.unread("b")),
            (0, 2),
            "2 and 4 are unread; b's own 1 is remembered, not read"
        );
        assert!(r.mark_read("a", 1));
        assert_eq!(
            (r.read_seq("a"), r.unread("a")),
            (2, 1),
            "own 2 follows the pointer"
        );
        assert!(r.mark_read("a", 3));
        assert_eq!((r.read_seq("a"), r.unread("a")), (4, 0));
        send(&mut r, "a", None); // 5: nothing of others unread, still no move
        assert_eq!(
            (r.read_seq("a"), r.unread("a")),
            (4, 0),
            "only `read` moves it"
        );
        assert_eq!(r.unread("b"), 3);
        send(&mut r, "b", None); // 6
        assert!(
            r.mark_read("a", 6),
            "a read past one's own send is not a no-op"
        );
        assert_eq!((r.read_seq("a"), r.unread("a")), (6, 0));
    }

    #[test]
    fn own_messages_after_the_pointer_are_bounded() {
        let mut r = room(10);
        r.add_member("a");
        r.add_member("b");
        send(&mut r, "b", None); // 1
        for _ in 0..3 {
            send(&mut r, "a", None); // 2, 3, 4: remembered (bound 3)
        }
        assert_eq!((r.read_seq("a"), r.unread("a")), (0, 1));
        assert_eq!(r.own_after_read["a"].seqs.len(), 3);
        let seq = r.reserve("a", None, 7);
        r.publish(seq, "a", None, "b".into(), 7);
        r.sent_by("a", seq);
        assert_eq!(r.own_after_read["a"].seqs, [3, 4, 5], "bounded");
        assert_eq!((r.read_seq("a"), r.unread("a")), (0, 1), "still exact");
        send(&mut r, "b", None); // 6
        assert_eq!(r.unread("a"), 2);
        assert!(r.mark_read("a", 1));
        assert_eq!(
            (r.read_seq("a"), r.unread("a")),
            (1, 1),
            "2 is forgotten: the pointer cannot pass it, unread excludes it still"
        );
        assert!(r.mark_read("a", 5));
        assert_eq!((r.read_seq("a"), r.unread("a")), (5, 1));
        assert!(!r.own_after_read.contains_key("a"));
        r.sent_by("x", seq);
        assert!(
            !r.own_after_read.contains_key("x"),
            "no pointer for a non-member"
        );
    }

    #[test]
    fn replay_reports_what_the_ring_lost() {
        let mut r = room(3);
        for _ in 0..5 {
            send(&mut r, "u", None);
        }
        let replay = r.replay(0);
        assert_eq!(
            replay.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert_eq!(replay.missing_before_ring, 2);
        assert_eq!(r.replay(5).messages.len(), 0);
        assert_eq!(r.replay(9).missing_before_ring, 0);
    }

    #[test]
    fn subscribed_shards_follow_counts() {
        let mut r = room(3);
        assert!(r.subscribe(1, "a"));
        assert!(!r.subscribe(1, "a"), "second connection of the same user");
        assert!(r.subscribe(0, "b"));
        assert!(!r.unsubscribe(1, "a"));
        assert_eq!(r.subscribed_shards().collect::<Vec<_>>(), [0, 1]);
        assert!(r.unsubscribe(1, "a"), "last connection of a");
        assert_eq!(r.subscribed_shards().collect::<Vec<_>>(), [0]);
        assert_eq!(r.online_users().collect::<Vec<_>>(), ["b"]);
    }

    proptest! {
        #[test]
        fn seqs_increase_without_gaps_and_ring_stays_bounded(
            ring in 1usize..20,
            sends in proptest::collection::vec((0u8..3, proptest::option::of(0u8..6)), 1..200),
        ) {
            let mut r = room(ring);
            let mut last = 0;
            for (user, key) in sends {
                let key = key.map(|k| k.to_string());
                let before = r.last_seq();
                let seq = send(&mut r, &user.to_string(), key.as_deref());
                if r.last_seq() > before {
                    prop_assert_eq!(seq, last + 1);
                    last = seq;
                } else {
                    prop_assert!(seq <= last);
                }
                prop_assert!(r.ring.len() <= ring);
            }
            let seqs: Vec<u64> = r.ring.iter().map(|m| m.seq).collect();
            prop_assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
        }

        #[test]
        fn history_is_the_newest_below_the_cursor(n in 0u64..40, before in 0u64..45, limit in 1usize..10) {
            let mut r = room(25);
            for _ in 0..n { send(&mut r, "u", None); }
            let got: Vec<u64> = r.history(Some(before), limit).iter().map(|m| m.seq).collect();
            let first_in_ring = n.saturating_sub(25) + 1;
            let expected: Vec<u64> = (first_in_ring..=n).filter(|s| *s < before).collect();
            let expected = expected[expected.len().saturating_sub(limit)..].to_vec();
            prop_assert_eq!(got, expected);
        }
    }
}
