//! Topic-exchange matching: which bindings a routing key matches.
//!
//! Binding keys and routing keys are lists of words separated by `.`. In a
//! binding key the whole word `*` matches exactly one word and the whole word
//! `#` matches zero or more; every other word, including `a*` or `#b`, is
//! literal. Words may be empty (`a..b` has an empty middle word).
//!
//! The empty string is zero words, not one empty word, as in RabbitMQ
//! (`rabbit_db_topic_exchange:split_topic_key/1` maps `<<>>` to `[]`). So the
//! empty routing key matches the binding keys `` and `#` (and `#.#`), but not
//! `*`; the routing key `.` is two empty words and matches `*.*` but not `*`.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

/// Bindings of a topic exchange: patterns of dot-separated words where `*`
/// matches exactly one word and `#` zero or more.
///
/// A trie over words. Its depth is the word count of the longest pattern;
/// AMQP binding keys are shortstrs (at most 255 bytes, so at most 256 words),
/// which keeps the recursive `remove` and drop shallow.
#[derive(Debug)]
pub(crate) struct TopicMatcher<T> {
    root: Node<T>,
    /// Number of (pattern, value) pairs.
    len: usize,
}

/// One trie node: the patterns whose words so far lead here.
#[derive(Debug)]
struct Node<T> {
    /// Children under literal words.
    words: HashMap<Box<str>, Node<T>>,
    /// Child under the word `*`.
    star: Option<Box<Node<T>>>,
    /// Child under the word `#`.
    hash: Option<Box<Node<T>>>,
    /// Values of the patterns that end at this node.
    values: HashSet<T>,
}

/// Splits a binding or routing key into words; the empty key is zero words.
fn split_words(key: &str) -> impl Iterator<Item = &str> {
    let word_count_limit = if key.is_empty() { 0 } else { usize::MAX };
    key.split('.').take(word_count_limit)
}

impl<T> Node<T> {
    fn new() -> Self {
        Node {
            words: HashMap::new(),
            star: None,
            hash: None,
            values: HashSet::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.values.is_empty()
            && self.words.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
    }
}

impl<T: Eq + Hash> Node<T> {
    /// Removes `value` from the node that `words` lead to, dropping every
    /// node on the way that is left empty.
    fn remove(&mut self, words: &[&str], value: &T) -> bool {
        let Some((&word, rest)) = words.split_first() else {
            return self.values.remove(value);
        };
        let child_slot = match word {
            "*" => &mut self.star,
            "#" => &mut self.hash,
            _ => {
                let Some(child) = self.words.get_mut(word) else {
                    return false;
                };
                let removed = child.remove(rest, value);
                if removed && child.is_empty() {
                    self.words.remove(word);
                }
                return removed;
            }
        };
        let Some(child) = child_slot.as_deref_mut() else {
            return false;
        };
        let removed = child.remove(rest, value);
        if removed && child.is_empty() {
            *child_slot = None;
        }
        removed
    }
}

impl<T: Clone + Eq + Hash> TopicMatcher<T> {
    pub(crate) fn new() -> Self {
        TopicMatcher {
            root: Node::new(),
            len: 0,
        }
    }

    /// Adds `value` under `pattern`; false if that exact pair was there already.
    pub(crate) fn insert(&mut self, pattern: &str, value: T) -> bool {
        let mut node = &mut self.root;
        for word in split_words(pattern) {
            node = match word {
                "*" => node.star.get_or_insert_with(|| Box::new(Node::new())),
                "#" => node.hash.get_or_insert_with(|| Box::new(Node::new())),
                _ => node.words.entry(word.into()).or_insert_with(Node::new),
            };
        }
        let added = node.values.insert(value);
        if added {
            self.len += 1;
        }
        added
    }

    /// Removes the pair; false if absent. Prunes empty trie nodes.
    pub(crate) fn remove(&mut self, pattern: &str, value: &T) -> bool {
        let words: Vec<&str> = split_words(pattern).collect();
        let removed = self.root.remove(&words, value);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Calls `visit` once for every value whose pattern matches `routing_key`
    /// (each value at most once per call even if several of its patterns
    /// match), in no particular order.
    ///
    /// Walks the trie with an explicit stack of (node, next word index)
    /// states. A `#` node can be entered at any later word index, so
    /// patterns such as `#.#.#.#` would revisit the same states exponentially
    /// often; `hash_entered_from` records, per `#` node, the lowest index at
    /// which its continuations were queued, and each (node, index) state is
    /// queued at most once. The cost is bounded by trie nodes times words.
    pub(crate) fn matches(&self, routing_key: &str, visit: &mut dyn FnMut(&T)) {
        let words: Vec<&str> = split_words(routing_key).collect();
        let end = words.len();
        let mut visited: HashSet<&T> = HashSet::new();
        // Keyed by the `#` node's address, stable while `self` is borrowed.
        let mut hash_entered_from: HashMap<usize, usize> = HashMap::new();
        let mut pending: Vec<(&Node<T>, usize)> = vec![(&self.root, 0)];
        while let Some((node, index)) = pending.pop() {
            if index == end {
                for value in &node.values {
                    if visited.insert(value) {
                        visit(value);
                    }
                }
            }
            if let Some(&word) = words.get(index) {
                if let Some(child) = node.words.get(word) {
                    pending.push((child, index + 1));
                }
                if let Some(child) = node.star.as_deref() {
                    pending.push((child, index + 1));
                }
            }
            if let Some(hash) = node.hash.as_deref() {
                let entered_from = hash_entered_from
                    .entry(std::ptr::from_ref(hash).addr())
                    .or_insert(end + 1);
                // `#` consumes words `index..resume`; states from the old
                // `entered_from` onward are queued already.
                for resume in index..*entered_from {
                    pending.push((hash, resume));
                }
                *entered_from = (*entered_from).min(index);
            }
        }
    }

    /// Number of (pattern, value) pairs.
    #[allow(dead_code, reason = "matcher API; no exchange counts its bindings yet")]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[allow(dead_code, reason = "matcher API; no exchange counts its bindings yet")]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    fn matched<T: Clone + Eq + Hash + Ord>(matcher: &TopicMatcher<T>, key: &str) -> Vec<T> {
        let mut values = Vec::new();
        matcher.matches(key, &mut |value| values.push(value.clone()));
        values.sort();
        values
    }

    fn node_count<T>(node: &Node<T>) -> usize {
        1 + node.words.values().map(node_count).sum::<usize>()
            + node.star.as_deref().map_or(0, node_count)
            + node.hash.as_deref().map_or(0, node_count)
    }

    /// (binding key, routing key, whether it matches)
    const CASES: &[(&str, &str, bool)] = &[
        // exact words
        ("a", "a", true),
        ("a", "b", false),
        ("a.b", "a.b", true),
        ("a.b", "a.c", false),
        ("a.b", "a", false),
        ("a", "a.b", false),
        ("a.b.c", "a.b.c", true),
        // `*` is exactly one word
        ("*", "a", true),
        ("*", "a.b", false),
        ("a.*", "a.b", true),
        ("a.*", "a", false),
        ("a.*", "a.b.c", false),
        ("*.b", "a.b", true),
        ("*.*", "a.b", true),
        ("*.*", "a", false),
        ("a.*.c", "a.b.c", true),
        ("a.*.c", "a.c", false),
        // `#` at the end
        ("#", "a", true),
        ("#", "a.b.c", true),
        ("a.#", "a", true),
        ("a.#", "a.b", true),
        ("a.#", "a.b.c", true),
        ("a.#", "b", false),
        ("a.#", "b.a", false),
        // `#` at the start
        ("#.c", "c", true),
        ("#.c", "a.b.c", true),
        ("#.c", "a.b.c.d", false),
        ("#.c", "c.a", false),
        // `#` in the middle
        ("a.#.c", "a.c", true),
        ("a.#.c", "a.b.c", true),
        ("a.#.c", "a.b.b.c", true),
        ("a.#.c", "a.b.b", false),
        ("a.#.c", "a.c.c", true),
        ("a.#.c", "b.a.c", false),
        // `#.#` and mixes with `*`
        ("#.#", "", true),
        ("#.#", "a", true),
        ("#.#", "a.b.c", true),
        ("#.*", "", false),
        ("#.*", "a", true),
        ("#.*", "a.b", true),
        ("*.#", "", false),
        ("*.#", "a", true),
        ("*.#.*", "a", false),
        ("*.#.*", "a.b", true),
        ("#.a.#", "b.a.b", true),
        ("#.a.#", "b.b", false),
        // the empty routing key is zero words
        ("", "", true),
        ("#", "", true),
        ("*", "", false),
        ("a", "", false),
        ("", "a", false),
        // empty words
        ("a..b", "a..b", true),
        ("a..b", "a.b", false),
        ("a.*.b", "a..b", true),
        ("a.#.b", "a..b", true),
        (".", ".", true),
        ("*.*", ".", true),
        ("*", ".", false),
        ("#", ".", true),
        ("", ".", false),
        ("a.", "a.", true),
        ("a.", "a", false),
        ("a.*", "a.", true),
        (".a", ".a", true),
        ("*.a", ".a", true),
        // wildcards only as whole words; routing keys have no wildcards
        ("a*", "ab", false),
        ("a*", "a*", true),
        ("#b", "a.b", false),
        ("#b", "#b", true),
        ("a.b", "a.*", false),
        ("a.*", "a.*", true),
        ("a.#", "a.#", true),
        ("#", "#", true),
    ];

    #[test]
    fn binding_keys_match_routing_keys_like_rabbitmq() {
        for &(pattern, key, expected) in CASES {
            let mut matcher = TopicMatcher::new();
            matcher.insert(pattern, 1);
            let found = !matched(&matcher, key).is_empty();
            assert_eq!(
                found, expected,
                "binding key {pattern:?}, routing key {key:?}"
            );
        }
    }

    #[test]
    fn all_table_bindings_in_one_matcher_match_independently() {
        let mut matcher = TopicMatcher::new();
        for (index, &(pattern, _, _)) in CASES.iter().enumerate() {
            matcher.insert(pattern, index);
        }
        for &(_, key, _) in CASES {
            let expected: Vec<usize> = CASES
                .iter()
                .enumerate()
                .filter(|(_, (pattern, _, _))| reference_matches(pattern, key))
                .map(|(index, _)| index)
                .collect();
            assert_eq!(matched(&matcher, key), expected, "routing key {key:?}");
        }
    }

    #[test]
    fn inserting_the_same_pair_twice_is_refused() {
        let mut matcher = TopicMatcher::new();
        assert!(matcher.insert("a.*", "q1"));
        assert!(!matcher.insert("a.*", "q1"));
        assert!(matcher.insert("a.*", "q2"));
        assert!(matcher.insert("a.#", "q1"));
        assert_eq!(matcher.len(), 3);
    }

    #[test]
    fn a_value_matched_by_several_patterns_is_visited_once() {
        let mut matcher = TopicMatcher::new();
        for pattern in ["a.b", "a.*", "#", "#.b", "a.#", "#.#"] {
            matcher.insert(pattern, "q1");
        }
        matcher.insert("a.b", "q2");
        assert_eq!(matched(&matcher, "a.b"), vec!["q1", "q2"]);
        assert_eq!(matched(&matcher, "c"), vec!["q1"]);
    }

    #[test]
    fn remove_takes_out_only_that_pair_and_prunes_empty_nodes() {
        let mut matcher = TopicMatcher::new();
        assert!(!matcher.remove("a.b", &1));
        matcher.insert("a.b.c", 1);
        matcher.insert("a.*.#", 2);
        matcher.insert("a.b", 3);
        assert_eq!(node_count(&matcher.root), 6);

        assert!(!matcher.remove("a.b.c", &2));
        assert!(!matcher.remove("a.b.c.d", &1));
        assert!(!matcher.remove("a.#", &2));
        assert!(matcher.remove("a.b.c", &1));
        assert!(!matcher.remove("a.b.c", &1));
        // `a.b` stays: it still holds value 3.
        assert_eq!(node_count(&matcher.root), 5);
        assert_eq!(matched(&matcher, "a.b.c"), vec![2]);

        assert!(matcher.remove("a.*.#", &2));
        assert_eq!(node_count(&matcher.root), 3);
        assert!(matcher.remove("a.b", &3));
        assert_eq!(node_count(&matcher.root), 1);
        assert!(matcher.root.is_empty());
        assert!(matcher.is_empty());
        assert!(matched(&matcher, "a.b").is_empty());
    }

    #[test]
    fn removing_one_of_two_values_keeps_the_node() {
        let mut matcher = TopicMatcher::new();
        matcher.insert("#", 1);
        matcher.insert("#", 2);
        assert!(matcher.remove("#", &1));
        assert_eq!(matched(&matcher, "x.y"), vec![2]);
        assert_eq!(matcher.len(), 1);
    }

    #[test]
    fn empty_pattern_is_stored_at_the_root() {
        let mut matcher = TopicMatcher::new();
        matcher.insert("", 1);
        assert_eq!(node_count(&matcher.root), 1);
        assert_eq!(matched(&matcher, ""), vec![1]);
        assert!(matcher.remove("", &1));
        assert!(matcher.is_empty());
    }

    #[test]
    fn long_chains_of_hash_words_do_not_blow_up() {
        let mut matcher = TopicMatcher::new();
        let chain = vec!["#"; 40].join(".");
        matcher.insert(&format!("{chain}.z"), 1);
        matcher.insert(&chain, 2);
        matcher.insert(&format!("{chain}.*.{chain}.y"), 3);
        let key = vec!["a"; 200].join(".");
        assert_eq!(matched(&matcher, &key), vec![2]);
        assert_eq!(matched(&matcher, &format!("{key}.y")), vec![2, 3]);
        assert_eq!(matched(&matcher, &format!("{key}.z")), vec![1, 2]);
    }

    #[test]
    fn one_hundred_thousand_bindings_match_correctly() {
        let mut matcher = TopicMatcher::new();
        for value in 0..100_000u32 {
            let pattern = match value % 4 {
                0 => format!("stock.{value}.nyse"),
                1 => format!("stock.*.{value}"),
                2 => format!("#.{value}"),
                _ => format!("{value}.#.end"),
            };
            assert!(matcher.insert(&pattern, value));
        }
        matcher.insert("stock.#", u32::MAX);
        assert_eq!(matcher.len(), 100_001);

        assert_eq!(
            matched(&matcher, "stock.40000.nyse"),
            vec![40_000, u32::MAX]
        );
        assert_eq!(matched(&matcher, "stock.x.99997"), vec![99_997, u32::MAX]);
        assert_eq!(matched(&matcher, "stock.x.99996"), vec![u32::MAX]);
        assert_eq!(matched(&matcher, "a.b.c.50002"), vec![50_002]);
        assert_eq!(matched(&matcher, "50002"), vec![50_002]);
        assert_eq!(matched(&matcher, "stock.1.2"), vec![2, u32::MAX]);
        assert_eq!(matched(&matcher, "99999.end"), vec![99_999]);
        assert_eq!(matched(&matcher, "99999.a.b.end"), vec![99_999]);
        assert!(matched(&matcher, "99998.end").is_empty());
        assert!(matched(&matcher, "nothing.here").is_empty());

        for value in (0..100_000u32).filter(|value| value % 4 == 2) {
            assert!(matcher.remove(&format!("#.{value}"), &value));
        }
        assert_eq!(matcher.len(), 75_001);
        assert!(matched(&matcher, "50002").is_empty());
        assert!(matcher.root.hash.is_none());
    }

    /// The definition, word by word, with no trie.
    fn reference_matches(pattern: &str, key: &str) -> bool {
        fn words(text: &str) -> Vec<&str> {
            if text.is_empty() {
                Vec::new()
            } else {
                text.split('.').collect()
            }
        }
        fn matches(pattern: &[&str], key: &[&str]) -> bool {
            match pattern.split_first() {
                None => key.is_empty(),
                Some((&"#", rest)) => (0..=key.len()).any(|skip| matches(rest, &key[skip..])),
                Some((&"*", rest)) => !key.is_empty() && matches(rest, &key[1..]),
                Some((word, rest)) => key.first() == Some(word) && matches(rest, &key[1..]),
            }
        }
        matches(&words(pattern), &words(key))
    }

    fn pattern() -> impl Strategy<Value = String> {
        let word = prop::sample::select(vec!["a", "b", "", "*", "#"]);
        prop::collection::vec(word, 0..6).prop_map(|words| words.join("."))
    }

    fn routing_key() -> impl Strategy<Value = String> {
        let word = prop::sample::select(vec!["a", "b", ""]);
        prop::collection::vec(word, 0..7).prop_map(|words| words.join("."))
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 512,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn trie_agrees_with_the_reference_matcher(
            bindings in prop::collection::vec((pattern(), 0..4u8), 0..12),
            removals in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
            keys in prop::collection::vec(routing_key(), 1..8),
        ) {
            let mut matcher = TopicMatcher::new();
            let mut model: BTreeSet<(String, u8)> = BTreeSet::new();
            for (pattern, value) in &bindings {
                let added = matcher.insert(pattern, *value);
                prop_assert_eq!(added, model.insert((pattern.clone(), *value)));
            }
            for index in removals {
                if bindings.is_empty() {
                    break;
                }
                let (pattern, value) = index.get(&bindings);
                let removed = matcher.remove(pattern, value);
                prop_assert_eq!(removed, model.remove(&(pattern.clone(), *value)));
            }
            prop_assert_eq!(matcher.len(), model.len());
            if model.is_empty() {
                prop_assert!(matcher.root.is_empty());
            }
            for key in &keys {
                let mut visits: BTreeMap<u8, usize> = BTreeMap::new();
                matcher.matches(key, &mut |value| *visits.entry(*value).or_default() += 1);
                prop_assert!(visits.values().all(|&count| count == 1), "key {:?} visits {:?}", key, visits);
                let expected: BTreeSet<u8> = model
                    .iter()
                    .filter(|(pattern, _)| reference_matches(pattern, key))
                    .map(|(_, value)| *value)
                    .collect();
                let found: BTreeSet<u8> = visits.into_keys().collect();
                prop_assert_eq!(found, expected, "key {:?}", key);
            }
        }
    }
}
