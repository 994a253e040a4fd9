//! Quotes: the passages of the input that match the question, kept verbatim for the answer.
//!
//! Notes are only as good as the model that writes them: measured on the 135M default model,
//! its notes drop the facts a question asks about (results/README.md, issue 19). Quotes do not
//! depend on the model. When the question (`--ask`) or what to look for (`--focus`) is known,
//! every passage of the input (a line, or a piece of a longer one: at most [`PASSAGE_WORDS`]
//! words, fewer for a small budget) is scored against it with BM25 over words, and the best
//! passages within a token budget go into the answer's prompt, in input order, with their
//! subtitle time.
//!
//! Two passes over the text (read again from its file: [`super::Source`]), constant memory: the first counts in how
//! many passages each word occurs (hashed into a fixed table of [`DF_SLOTS`] counters, so a
//! collision can only overstate a word's frequency and understate its weight); the second
//! keeps the best [`MAX_CANDIDATES`] passages in a bounded heap. Words are lowercased, a
//! plural `s` is stripped, and common English words are skipped. Words are split at spaces and
//! punctuation: text written without spaces (Chinese, Japanese, Thai) has few words to match.

use super::Lines;
use crate::error::Result;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Longest passage in words: a long line (a paragraph of prose) is cut into pieces this long,
/// so that one match does not spend the budget on a page. A small budget cuts shorter pieces
/// ([`passage_words`]), so that a piece fits it.
pub const PASSAGE_WORDS: usize = 60;
/// Counters of the hashed document-frequency table (constant memory: 256 KiB).
const DF_SLOTS: usize = 1 << 16;
/// Passages kept as candidates before the token budget is applied.
const MAX_CANDIDATES: usize = 64;
/// Passages scoring below this fraction of the best one are not quoted: a passage that only
/// shares a word found everywhere (low IDF) spends the budget without adding evidence.
const MIN_RELATIVE_SCORE: f64 = 0.2;
/// BM25's usual constants (Robertson and Zaragoza): term-frequency saturation and length
/// normalization.
const BM25_K1: f64 = 1.2;
const BM25_B: f64 = 0.75;

/// Words that carry no content of their own (question words included).
const STOPWORDS: &[&str] = &[
    "a", "about", "after", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be",
    "been", "before", "being", "but", "by", "can", "could", "did", "do", "does", "for", "from",
    "had", "has", "have", "he", "her", "him", "his", "how", "i", "if", "in", "into", "is", "it",
    "its", "many", "me", "much", "my", "no", "not", "now", "of", "on", "or", "our", "say", "said",
    "she", "should", "so", "some", "than", "that", "the", "their", "them", "then", "there",
    "these", "they", "this", "those", "thou", "thee", "thy", "to", "us", "was", "we", "were",
    "what", "when", "where", "which", "who", "whom", "why", "will", "with", "would", "ye", "you",
    "your", "shall",
];

/// One passage chosen for the answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Quote {
    /// Index of the passage in the input (its order).
    pub position: usize,
    pub time: Option<String>,
    pub text: String,
    pub n_tokens: usize,
    pub score: f64,
}

/// The content words of `text`: lowercased, a trailing plural `s` or possessive stripped,
/// stopwords and one-letter words (but digits) dropped.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| {
            (w.chars().count() > 1 || w.chars().all(|c| c.is_ascii_digit()))
                && !STOPWORDS.contains(&w.as_str())
        })
        .map(|mut w| {
            if w.chars().count() > 3 && w.ends_with('s') && !w.ends_with("ss") {
                w.pop();
            }
            w
        })
}

/// Whether `query` has a word to match (a question of stopwords alone has none).
pub fn has_terms(query: &str) -> bool {
    words(query).next().is_some()
}

/// Words per passage for a quotes budget of `budget` tokens: a quarter of it (English runs
/// ~1.3 tokens a word, so a few passages fit), between 8 and [`PASSAGE_WORDS`].
fn passage_words(budget: usize) -> usize {
    (budget / 4).clamp(8, PASSAGE_WORDS)
}

fn slot(word: &str) -> usize {
    let mut h = crate::util::Fnv64::new();
    h.write(word.as_bytes());
    (h.finish() as usize) % DF_SLOTS
}

/// Calls `f` with the passages of the input, in order: each line, cut into pieces of at most
/// `max_words` words.
fn passages(
    lines: &(impl Lines + ?Sized),
    max_words: usize,
    f: &mut dyn FnMut(&Option<String>, String),
) -> Result<()> {
    lines.each_line(&mut |_, l| {
        let ws: Vec<&str> = l.text.split_whitespace().collect();
        for p in ws.chunks(max_words) {
            f(&l.time, p.join(" "));
        }
    })
}

/// A candidate in the bounded heap, ordered so that the heap's top is the worst kept.
struct Candidate {
    score: f64,
    position: usize,
    time: Option<String>,
    text: String,
}

impl PartialEq for Candidate {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Candidate {
    /// Higher score is "less" (so the max-heap's top is the lowest score); among equal scores
    /// the earlier passage is kept.
    fn cmp(&self, o: &Self) -> Ordering {
        o.score
            .total_cmp(&self.score)
            .then(self.position.cmp(&o.position))
    }
}

/// The passages of `lines` that best match `query` (BM25), at most `budget` tokens together
/// (counted by `count_tokens` as the `- [time] text` lines of the prompt), in input order.
/// Nothing when the budget is 0 or the query has no content words; passages that share no word
/// with the query are never chosen.
pub fn select(
    lines: &(impl Lines + ?Sized),
    query: &str,
    budget: usize,
    count_tokens: impl Fn(&str) -> usize,
) -> Result<Vec<Quote>> {
    let mut terms: Vec<String> = words(query).collect();
    terms.sort();
    terms.dedup();
    if budget == 0 || terms.is_empty() {
        return Ok(Vec::new());
    }
    // pass 1: document frequencies and the mean passage length
    let mut df = vec![0u32; DF_SLOTS];
    let (mut n, mut total_len) = (0usize, 0usize);
    let max_words = passage_words(budget);
    passages(lines, max_words, &mut |_, p| {
        let mut seen: Vec<usize> = words(&p).map(|w| slot(&w)).collect();
        total_len += seen.len();
        seen.sort_unstable();
        seen.dedup();
        for s in seen {
            df[s] = df[s].saturating_add(1);
        }
        n += 1;
    })?;
    let avg_len = (total_len as f64 / n.max(1) as f64).max(1.0);
    let idf: Vec<f64> = terms
        .iter()
        .map(|t| {
            let d = df[slot(t)] as f64;
            (1.0 + (n as f64 - d + 0.5) / (d + 0.5)).ln()
        })
        .collect();
    // pass 2: the best passages in a bounded heap
    let mut heap: BinaryHeap<Candidate> = BinaryHeap::new();
    let mut next_position = 0;
    passages(lines, max_words, &mut |time, p| {
        let position = next_position;
        next_position += 1;
        let ws: Vec<String> = words(&p).collect();
        let norm = BM25_K1 * (1.0 - BM25_B + BM25_B * ws.len() as f64 / avg_len);
        let score: f64 = terms
            .iter()
            .zip(&idf)
            .map(|(t, idf)| {
                let tf = ws.iter().filter(|w| *w == t).count() as f64;
                idf * tf * (BM25_K1 + 1.0) / (tf + norm)
            })
            .sum();
        if score <= 0.0 {
            return;
        }
        let c = Candidate {
            score,
            position,
            time: time.clone(),
            text: p,
        };
        if heap.len() < MAX_CANDIDATES {
            heap.push(c);
        } else if heap.peek().is_some_and(|worst| c < *worst) {
            heap.pop();
            heap.push(c);
        }
    })?;
    // best first, within the budget; then in input order
    let mut out = Vec::new();
    let mut used = 0;
    let sorted = heap.into_sorted_vec();
    let floor = sorted.first().map_or(0.0, |c| c.score * MIN_RELATIVE_SCORE);
    for c in sorted.into_iter().take_while(|c| c.score >= floor) {
        let n_tokens = count_tokens(&quote_line(&c.time, &c.text));
        if used + n_tokens > budget {
            continue;
        }
        used += n_tokens;
        out.push(Quote {
            position: c.position,
            time: c.time,
            text: c.text,
            n_tokens,
            score: c.score,
        });
    }
    out.sort_by_key(|q| q.position);
    Ok(out)
}

/// A quote (or a note) as the answer's prompt shows it: `- [time] text`.
pub fn quote_line(time: &Option<String>, text: &str) -> String {
    match time {
        Some(t) => format!("- [{t}] {text}\n"),
        None => format!("- {text}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notes::Line;

    fn line(text: &str) -> Line {
        Line {
            time: None,
            text: text.into(),
        }
    }

    #[test]
    fn words_drop_stopwords_and_plurals() {
        let w: Vec<String> = words("How many oak Paddles does the mill's wheel need?").collect();
        assert_eq!(w, ["oak", "paddle", "mill", "wheel", "need"]);
        let w: Vec<String> = words("Room 5, a b: ñus").collect();
        assert_eq!(w, ["room", "5", "ñus"]);
        assert!(!has_terms("What does it say?"));
    }

    fn filler(n: usize) -> Vec<Line> {
        (0..n)
            .map(|i| {
                line(&format!(
                    "SPEAKER{}: the wheel turns and day {i} is long",
                    i % 7
                ))
            })
            .collect()
    }

    fn count_words(s: &str) -> usize {
        s.split_whitespace().count()
    }

    #[test]
    fn the_matching_passage_is_chosen_from_anywhere_within_the_budget() {
        for at in [0, 250, 499] {
            let mut lines = filler(500);
            lines.insert(
                at,
                line("MASTER: The old mill wheel needs 38 new oak paddles before winter."),
            );
            let q = select(
                &lines[..],
                "How many oak paddles does the mill wheel need?",
                40,
                count_words,
            )
            .unwrap();
            let best = q.iter().max_by(|a, b| a.score.total_cmp(&b.score)).unwrap();
            assert_eq!(best.position, at, "{q:?}");
            assert!(best.text.contains("38 new oak paddles"));
            assert_eq!(
                q.len(),
                1,
                "passages that only share `wheel` are quoted: {q:?}"
            );
            let used: usize = q.iter().map(|q| q.n_tokens).sum();
            assert!(used <= 40, "{used} tokens over the budget");
            assert!(
                q.windows(2).all(|w| w[0].position < w[1].position),
                "not in input order"
            );
        }
    }

    #[test]
    fn nothing_without_content_words_budget_or_match() {
        let lines = filler(50);
        assert!(select(&lines[..], "What does it say?", 100, count_words)
            .unwrap()
            .is_empty());
        assert!(select(&lines[..], "wheel", 0, count_words)
            .unwrap()
            .is_empty());
        assert!(select(&lines[..], "Ravenna", 100, count_words)
            .unwrap()
            .is_empty());
        // candidates are bounded whatever the number of matches
        let many = select(&filler(5000)[..], "wheel", 1_000_000, count_words).unwrap();
        assert_eq!(many.len(), MAX_CANDIDATES);
    }

    #[test]
    fn long_lines_are_cut_into_passages() {
        let long = line(&vec!["word"; PASSAGE_WORDS * 2 + 1].join(" "));
        let mut n = 0;
        passages(std::slice::from_ref(&long), PASSAGE_WORDS, &mut |_, _| {
            n += 1
        })
        .unwrap();
        assert_eq!(n, 3);
        // a small budget cuts pieces that fit it: the match in a long line is still quoted
        let mut text = vec!["filler"; 200];
        text[150] = "Marrowby";
        let lines = [line(&text.join(" ")), line("other words here")];
        let q = select(&lines[..], "Is it Marrowby?", 40, count_words).unwrap();
        assert_eq!(q.len(), 1, "{q:?}");
        assert!(q[0].text.contains("Marrowby") && q[0].n_tokens <= 40);
    }
}
