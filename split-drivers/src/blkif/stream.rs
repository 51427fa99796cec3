//! The front's book of streamed requests: what a front that keeps its
//! queue full without batch barriers (the SDK's `BlockDevice::start` /
//! `next_done`) must remember of each request between its start and its
//! answer, and when it may start another.
//!
//! # Rules
//! - **S1 (bounded):** at most `N` requests are in the book; a start past
//!   that is [`Refused::Full`] (the caller collects an answer first).
//! - **S2 (a flush is a barrier both ways):** a flush starts only when the
//!   book is empty ([`Refused::FlushWaits`]), and nothing starts while a
//!   flush is in the book ([`Refused::BehindFlush`]). So an answered flush
//!   covers every write answered before it, and no write answered after
//!   it was started before it (the same promise the batched calls make).
//! - **S3 (answers only for what is in the book):** [`Book::finish`] hands
//!   an entry back only for an id in the book, and each entry once; an id
//!   not in it is `None` (the caller treats it as a broken protocol). The
//!   ids are the shadow table's ([`super::Inflight`]), which checked the
//!   response first; the book only pairs them with what the caller holds.
//!
//! Work per call: at most `N` entries are scanned, and usually one: an
//! entry goes at the slot its id names (`id % N`) when that one is free,
//! and is looked for there first. The shadow table's ids of the requests in
//! flight differ in their low bits (their table index, XORed with one
//! salt), so with `N` the table's size every id has its own slot; any
//! other ids still work, by the scan.
//!
//! ```
//! use split_drivers::blkif::stream::{Book, Refused};
//!
//! let mut book: Book<&str, 2> = Book::new();
//! book.admit(false).unwrap();
//! book.insert(7, 100, "buffer A", false).unwrap();
//! assert_eq!(book.admit(true), Err(Refused::FlushWaits)); // A still in flight
//! let a = book.finish(7).unwrap();
//! assert_eq!((a.tag, a.held), (100, "buffer A"));
//! assert!(book.finish(7).is_none()); // each entry once
//! ```

/// One request in the book: its wire id, the caller's tag, and what the
/// caller lent it (a buffer), returned with its answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry<T> {
    /// The wire id ([`super::Inflight`]'s stamp).
    pub id: u64,
    /// The caller's tag for it.
    pub tag: u64,
    /// What the caller lent the request.
    pub held: T,
    /// Whether it is a flush.
    pub flush: bool,
}

/// Why a request may not start now (each is "collect an answer and try
/// again").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// S1: the book is full.
    Full,
    /// S2: a flush waits for the requests in the book.
    FlushWaits,
    /// S2: a flush is in the book.
    BehindFlush,
}

/// The book: at most `N` entries (see the module docs).
#[derive(Debug)]
pub struct Book<T, const N: usize> {
    entries: [Option<Entry<T>>; N],
    len: usize,
    /// A flush is in the book.
    flushing: bool,
}

impl<T, const N: usize> Default for Book<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, const N: usize> Book<T, N> {
    /// An empty book.
    pub fn new() -> Self {
        Book { entries: core::array::from_fn(|_| None), len: 0, flushing: false }
    }

    /// The slot id `id` goes at when it is free.
    fn home(id: u64) -> usize {
        if N == 0 {
            0
        } else {
            (id % N as u64) as usize
        }
    }

    /// Requests in the book.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the book is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether a request (a flush if `flush`) may start now (S1, S2).
    pub fn admit(&self, flush: bool) -> Result<(), Refused> {
        if self.flushing {
            Err(Refused::BehindFlush)
        } else if flush && self.len > 0 {
            Err(Refused::FlushWaits)
        } else if self.len >= N {
            Err(Refused::Full)
        } else {
            Ok(())
        }
    }

    /// Records a started request (checked by [`Book::admit`] again: a
    /// refused one comes back).
    pub fn insert(&mut self, id: u64, tag: u64, held: T, flush: bool) -> Result<(), (Refused, T)> {
        if let Err(r) = self.admit(flush) {
            return Err((r, held));
        }
        let home = Self::home(id);
        let slot = match self.entries.get(home) {
            Some(None) => home,
            _ => match self.entries.iter().position(Option::is_none) {
                Some(k) => k,
                None => return Err((Refused::Full, held)),
            },
        };
        self.entries[slot] = Some(Entry { id, tag, held, flush });
        self.len += 1;
        self.flushing = flush;
        Ok(())
    }

    /// The entry of an answered request, taken out of the book (S3).
    pub fn finish(&mut self, id: u64) -> Option<Entry<T>> {
        let home = Self::home(id);
        let k = if self.entries.get(home).is_some_and(|e| e.as_ref().is_some_and(|e| e.id == id)) {
            home
        } else {
            self.entries.iter().position(|e| e.as_ref().is_some_and(|e| e.id == id))?
        };
        let e = self.entries[k].take()?;
        self.len -= 1;
        if e.flush {
            self.flushing = false;
        }
        Some(e)
    }

    /// Empties the book (the device broke: nothing will be answered),
    /// handing each entry to `f`.
    pub fn drain(&mut self, mut f: impl FnMut(Entry<T>)) {
        for e in self.entries.iter_mut().filter_map(Option::take) {
            f(e);
        }
        self.len = 0;
        self.flushing = false;
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    #[test]
    fn s1_the_book_holds_n_requests_and_refuses_the_next() {
        let mut b: Book<u32, 3> = Book::new();
        for i in 0..3 {
            assert_eq!(b.admit(false), Ok(()));
            b.insert(i, i * 10, i as u32, false).unwrap();
        }
        assert_eq!(b.len(), 3);
        assert_eq!(b.admit(false), Err(Refused::Full));
        assert_eq!(b.insert(9, 0, 42, false), Err((Refused::Full, 42)), "the refused one comes back");
        let e = b.finish(1).unwrap();
        assert_eq!((e.id, e.tag, e.held), (1, 10, 1));
        assert_eq!(b.admit(false), Ok(()), "an answer makes room");
        b.insert(9, 90, 9, false).unwrap();
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn s2_a_flush_waits_for_the_book_to_empty_and_holds_back_what_follows() {
        let mut b: Book<(), 4> = Book::new();
        b.insert(1, 0, (), false).unwrap();
        b.insert(2, 0, (), false).unwrap();
        assert_eq!(b.admit(true), Err(Refused::FlushWaits));
        assert_eq!(b.insert(3, 0, (), true), Err((Refused::FlushWaits, ())));
        b.finish(2).unwrap();
        assert_eq!(b.admit(true), Err(Refused::FlushWaits), "one write is still in flight");
        b.finish(1).unwrap();
        b.insert(3, 0, (), true).unwrap();
        assert_eq!(b.admit(false), Err(Refused::BehindFlush));
        assert_eq!(b.admit(true), Err(Refused::BehindFlush));
        let f = b.finish(3).unwrap();
        assert!(f.flush);
        assert_eq!(b.admit(false), Ok(()), "the flush answered, writes start again");
        assert_eq!(b.admit(true), Ok(()));
    }

    #[test]
    fn s3_an_answer_takes_its_entry_once_and_an_unknown_id_takes_nothing() {
        let mut b: Book<&str, 2> = Book::new();
        b.insert(5, 50, "a", false).unwrap();
        b.insert(6, 60, "b", false).unwrap();
        assert_eq!(b.finish(7), None);
        assert_eq!(b.len(), 2, "an unknown id changes nothing");
        assert_eq!(b.finish(6).map(|e| e.held), Some("b"));
        assert_eq!(b.finish(6), None, "a duplicate answer finds nothing");
        assert_eq!(b.finish(5).map(|e| (e.tag, e.held)), Some((50, "a")));
        assert!(b.is_empty());
    }

    #[test]
    fn s3_ids_that_name_the_same_slot_are_each_found_once() {
        // 1, 5 and 9 all name slot 1 of 4: the later ones go elsewhere.
        let mut b: Book<u64, 4> = Book::new();
        for id in [1, 5, 9, 2] {
            b.insert(id, id * 10, id, false).unwrap();
        }
        assert_eq!(b.insert(13, 0, 13, false), Err((Refused::Full, 13)));
        assert_eq!(b.finish(5).map(|e| e.tag), Some(50));
        assert_eq!(b.finish(5), None);
        assert_eq!(b.finish(1).map(|e| e.tag), Some(10));
        b.insert(13, 130, 13, false).unwrap();
        let mut left: std::vec::Vec<u64> = [9, 2, 13].iter().filter_map(|&id| b.finish(id).map(|e| e.tag)).collect();
        left.sort_unstable();
        assert_eq!(left, [20, 90, 130]);
        assert!(b.is_empty());
    }

    #[test]
    fn drain_hands_back_every_entry_and_clears_a_flush() {
        let mut b: Book<u8, 4> = Book::new();
        b.insert(1, 0, 1, false).unwrap();
        b.insert(2, 0, 2, false).unwrap();
        let mut got = std::vec::Vec::new();
        b.drain(|e| got.push(e.held));
        got.sort_unstable();
        assert_eq!(got, [1, 2]);
        assert!(b.is_empty());
        b.insert(3, 0, 3, true).unwrap();
        b.drain(|_| {});
        assert_eq!(b.admit(false), Ok(()));
    }
}
