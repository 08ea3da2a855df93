//! Message search inside one room: an in-memory bigram index over the room's most recent
//! messages, bounded like the room's ring (`history_ring_messages_max`).
//!
//! Korean, Chinese and Japanese text has no spaces to split words on, so the index keys are
//! pairs of consecutive characters (bigrams) of the lower-cased text; any substring of two
//! or more characters is found through the postings of its bigrams and then confirmed with a
//! plain substring test. A query of several whitespace-separated terms matches messages
//! holding every term. Pure: the home shard owns one index per room.
//!
//! A body longer than [`INDEXED_CHARS_MAX`] gets no postings: it is kept as a candidate of
//! every query and confirmed by the same substring test. Indexing costs a hash-map update
//! per character on the home shard, in the request's path: a 64 KB body took ≈ 60 % of a
//! debug shard's time in `limits::a_client_that_stops_reading_…` and held every other
//! connection of that shard for its whole length. Long bodies are rare in chat; a query then
//! scans at most a ring of them, and it is the query (rate-limited) that pays, not the send.

#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};

/// Two characters, packed.
type Bigram = u64;

/// Bodies up to this many characters are indexed by bigram; longer ones are scanned.
pub const INDEXED_CHARS_MAX: usize = 2_048;

#[derive(Debug)]
pub struct SearchIndex {
    messages_max: usize,
    /// (seq, lower-cased text, deleted), ascending by seq. A deleted message keeps its text
    /// until evicted, so eviction still finds (and clears) its postings.
    docs: VecDeque<(u64, String, bool)>,
    /// Seqs holding each bigram, ascending.
    postings: HashMap<Bigram, VecDeque<u64>>,
    /// Seqs of the docs longer than `indexed_chars_max`, ascending: no postings.
    scanned: VecDeque<u64>,
    /// [`INDEXED_CHARS_MAX`]; smaller in tests.
    indexed_chars_max: usize,
}

fn bigrams(text: &str) -> impl Iterator<Item = Bigram> + '_ {
    let mut chars = text.chars().peekable();
    std::iter::from_fn(move || loop {
        let a = chars.next()?;
        let b = *chars.peek()?;
        if a.is_whitespace() || b.is_whitespace() {
            continue;
        }
        return Some((u64::from(u32::from(a)) << 32) | u64::from(u32::from(b)));
    })
}

/// Whether a (lower-cased) body has more than `max` chars: at most `max + 1` are counted.
pub fn is_longer(text: &str, max: usize) -> bool {
    text.len() > max && text.chars().nth(max).is_some()
}

/// Two ascending seq lists merged, newest first (a seq is in at most one).
fn newest_first(a: &VecDeque<u64>, b: &VecDeque<u64>) -> Vec<u64> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.iter().rev().peekable(), b.iter().rev().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x > y => a.next(),
            (Some(_), Some(_)) | (None, Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, None) => return out,
        };
        out.extend(next.copied());
    }
}

impl SearchIndex {
    pub fn new(messages_max: usize) -> SearchIndex {
        SearchIndex::with_indexed_chars_max(messages_max, INDEXED_CHARS_MAX)
    }

    fn with_indexed_chars_max(messages_max: usize, indexed_chars_max: usize) -> SearchIndex {
        assert!(messages_max > 0);
        SearchIndex {
            messages_max,
            indexed_chars_max,
            docs: VecDeque::new(),
            postings: HashMap::new(),
            scanned: VecDeque::new(),
        }
    }

    /// Indexes a message; seqs arrive in increasing order.
    pub fn add(&mut self, seq: u64, body: &str) {
        debug_assert!(
            self.docs.back().is_none_or(|(last, _, _)| *last < seq),
            "seqs increase"
        );
        if self.docs.len() == self.messages_max {
            self.evict_oldest();
        }
        let text = body.to_lowercase();
        if is_longer(&text, self.indexed_chars_max) {
            self.scanned.push_back(seq);
            self.docs.push_back((seq, text, false));
            return;
        }
        for gram in bigrams(&text) {
            let list = self.postings.entry(gram).or_default();
            if list.back() != Some(&seq) {
                list.push_back(seq);
            }
        }
        self.docs.push_back((seq, text, false));
    }

    fn evict_oldest(&mut self) {
        let Some((seq, text, _)) = self.docs.pop_front() else {
            return;
        };
        if self.scanned.front() == Some(&seq) {
            self.scanned.pop_front();
            return;
        }
        for gram in bigrams(&text) {
            if let Some(list) = self.postings.get_mut(&gram) {
                if list.front() == Some(&seq) {
                    list.pop_front();
                }
                if list.is_empty() {
                    self.postings.remove(&gram);
                }
            }
        }
    }

    /// Hides a deleted message from every search (its postings go when it is evicted).
    pub fn remove(&mut self, seq: u64) {
        if let Ok(i) = self.docs.binary_search_by_key(&seq, |(s, _, _)| *s) {
            self.docs[i].2 = true;
        }
    }

    /// Seqs of messages holding every term of `query`, newest first, at most `limit`.
    pub fn search(&self, query: &str, limit: usize) -> Vec<u64> {
        let query = query.to_lowercase();
        let terms: Vec<&str> = query.split_whitespace().collect();
        if terms.is_empty() {
            return Vec::new();
        }
        let matches = |text: &str| terms.iter().all(|t| text.contains(t));
        let candidates: Vec<u64> = match self.rarest_posting(&terms) {
            Some(list) => newest_first(list, &self.scanned),
            None => self.docs.iter().rev().map(|(seq, _, _)| *seq).collect(),
        };
        candidates
            .into_iter()
            .filter(|seq| self.text(*seq).is_some_and(matches))
            .take(limit)
            .collect()
    }

    /// The shortest posting list among the query's bigrams (`None` when no term has two
    /// characters: those fall back to a scan). A bigram no message has means no match.
    fn rarest_posting(&self, terms: &[&str]) -> Option<&VecDeque<u64>> {
        static EMPTY: VecDeque<u64> = VecDeque::new();
        let mut best: Option<&VecDeque<u64>> = None;
        for gram in terms.iter().flat_map(|t| bigrams(t)) {
            let list = self.postings.get(&gram).unwrap_or(&EMPTY);
            if best.is_none_or(|b| list.len() < b.len()) {
                best = Some(list);
            }
        }
        best
    }

    /// The text of a message that is not deleted.
    fn text(&self, seq: u64) -> Option<&str> {
        let i = self.docs.binary_search_by_key(&seq, |(s, _, _)| *s).ok()?;
        let (_, text, deleted) = &self.docs[i];
        (!deleted).then_some(text.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn index(bodies: &[&str]) -> SearchIndex {
        let mut ix = SearchIndex::new(100);
        for (i, b) in bodies.iter().enumerate() {
            ix.add(i as u64 + 1, b);
        }
        ix
    }

    #[test]
    fn korean_substrings_without_spaces() {
        let ix = index(&[
            "오늘 회의는 세시에 합니다",
            "점심 먹었어요",
            "회의실 예약 완료",
        ]);
        assert_eq!(ix.search("회의", 10), [3, 1], "newest first");
        assert_eq!(ix.search("세시", 10), [1]);
        assert_eq!(ix.search("의는", 10), [1]);
        assert_eq!(ix.search("저녁", 10), Vec::<u64>::new());
        assert_eq!(ix.search("회의 세시", 10), [1], "every term");
    }

    #[test]
    fn words_case_insensitive_and_single_characters() {
        let ix = index(&["Deploy at NOON", "lunch", "deploy done"]);
        assert_eq!(ix.search("deploy", 10), [3, 1]);
        assert_eq!(ix.search("noon", 1), [1]);
        assert_eq!(ix.search("l", 10), [3, 2, 1]);
    }

    #[test]
    fn bounded_and_deletions_forgotten() {
        let mut ix = SearchIndex::new(2);
        ix.add(1, "회의 하나");
        ix.add(2, "회의 둘");
        ix.add(3, "회의 셋");
        assert_eq!(ix.search("회의", 10), [3, 2], "the oldest was evicted");
        ix.remove(3);
        assert_eq!(ix.search("회의", 10), [2]);
        for seq in 4..20 {
            ix.add(seq, "회의 계속");
        }
        assert!(ix.postings.values().all(|l| l.len() <= 2));
    }

    /// Goal: a body too long to index is still found, in seq order among indexed ones, and
    /// leaves nothing behind when evicted.
    #[test]
    fn long_bodies_are_scanned_found_in_order_and_evicted() {
        let long = format!("{}회의 끝", "가".repeat(INDEXED_CHARS_MAX));
        let mut ix = SearchIndex::new(3);
        ix.add(1, "회의 하나");
        ix.add(2, &long);
        ix.add(3, "회의 셋");
        assert_eq!(ix.scanned, [2]);
        assert_eq!(ix.search("회의", 10), [3, 2, 1]);
        assert_eq!(
            ix.search("끝", 10),
            [2],
            "a single character scans every doc"
        );
        assert_eq!(ix.search("회의 끝", 10), [2]);
        assert_eq!(ix.search("없는말", 10), Vec::<u64>::new());
        assert!(
            ix.postings
                .keys()
                .all(|g| *g >> 32 != u64::from(u32::from('가'))),
            "the long body has no postings"
        );
        ix.add(4, "다음");
        ix.add(5, "다음");
        assert!(ix.scanned.is_empty(), "evicted with its doc");
        assert_eq!(ix.search("회의", 10), [3]);
    }

    #[test]
    fn the_length_bound_counts_characters_not_bytes() {
        assert!(!is_longer(&"가".repeat(10), 10), "30 bytes, 10 chars");
        assert!(is_longer(&"가".repeat(11), 10));
        assert!(!is_longer("", 0));
        assert!(is_longer("a", 0));
    }

    proptest! {
        /// Bodies past the (here tiny) index bound are scanned, and the oldest evicted: the
        /// answer is the messages still held that contain the query.
        #[test]
        fn finds_exactly_the_messages_containing_the_query(
            bodies in proptest::collection::vec("[가나다 ab]{0,12}", 1..30),
            query in "[가나다ab]{1,3}",
            indexed_chars_max in 0usize..14,
            messages_max in 1usize..40,
        ) {
            let mut ix = SearchIndex::with_indexed_chars_max(messages_max, indexed_chars_max);
            for (i, b) in bodies.iter().enumerate() {
                ix.add(i as u64 + 1, b);
            }
            let held = bodies.len().saturating_sub(messages_max) as u64;
            let expected: Vec<u64> = (held + 1..=bodies.len() as u64)
                .rev()
                .filter(|s| bodies[*s as usize - 1].contains(query.as_str()))
                .collect();
            prop_assert_eq!(ix.search(&query, 1000), expected);
        }
    }
}
