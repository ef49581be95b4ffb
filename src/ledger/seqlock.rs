//! [`SeqLock`]: a few words one writer publishes and readers copy out
//! without a read-modify-write.
//!
//! The writer is already serialized (it holds its record's mutex); a
//! reader that would otherwise take that mutex once per hold reads a
//! consistent copy here with plain loads. Every word is an atomic, so a
//! read that overlaps a write is detected and retried, never undefined.

use std::sync::atomic::{fence, AtomicU64, Ordering};

/// `N` words behind a sequence counter (odd while a write is under way).
#[derive(Debug)]
pub(crate) struct SeqLock<const N: usize> {
    sequence: AtomicU64,
    words: [AtomicU64; N],
}

impl<const N: usize> SeqLock<N> {
    pub(crate) fn new(words: [u64; N]) -> Self {
        Self {
            sequence: AtomicU64::new(0),
            words: words.map(AtomicU64::new),
        }
    }

    /// Publishes `words`. Writers must be serialized by the caller (one at
    /// a time), as the record's mutex does.
    pub(crate) fn write(&self, words: [u64; N]) {
        let sequence = self.sequence.load(Ordering::Relaxed);
        self.sequence
            .store(sequence.wrapping_add(1), Ordering::Relaxed);
        // The odd count is visible before any word changes.
        fence(Ordering::Release);
        for (slot, word) in self.words.iter().zip(words) {
            slot.store(word, Ordering::Relaxed);
        }
        self.sequence
            .store(sequence.wrapping_add(2), Ordering::Release);
    }

    /// A copy of the words as one write left them, or `None` when writes
    /// kept overlapping a few attempts (a writer preempted mid-write):
    /// the caller then takes the writer's mutex instead of spinning.
    #[inline]
    pub(crate) fn try_read(&self) -> Option<[u64; N]> {
        for _ in 0..4 {
            let before = self.sequence.load(Ordering::Acquire);
            if before.is_multiple_of(2) {
                let words = std::array::from_fn(|i| self.words[i].load(Ordering::Relaxed));
                // The words are read before the count is checked again.
                fence(Ordering::Acquire);
                if self.sequence.load(Ordering::Relaxed) == before {
                    return Some(words);
                }
            }
            std::hint::spin_loop();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_read_sees_what_was_written() {
        let lock = SeqLock::new([1, 2, 3]);
        assert_eq!(lock.try_read(), Some([1, 2, 3]));
        lock.write([4, 5, 6]);
        assert_eq!(lock.try_read(), Some([4, 5, 6]));
    }

    /// Readers racing a writer never see a mix of two writes.
    #[test]
    fn reads_are_never_torn() {
        let lock = Arc::new(SeqLock::new([0; 4]));
        let writer = {
            let lock = Arc::clone(&lock);
            std::thread::spawn(move || {
                for n in 1..=200_000u64 {
                    lock.write([n; 4]);
                }
            })
        };
        let (mut last, mut reads) = (0, 0u64);
        while !writer.is_finished() {
            let Some(words) = lock.try_read() else {
                continue;
            };
            assert!(words.iter().all(|&w| w == words[0]), "torn: {words:?}");
            assert!(words[0] >= last, "went back");
            last = words[0];
            reads += 1;
        }
        writer.join().unwrap();
        let _ = reads;
        assert_eq!(lock.try_read(), Some([200_000; 4]));
    }
}
