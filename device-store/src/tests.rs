//! The store's rules, each tested through the wire as a client sees it.

extern crate std;

use super::*;
use alloc::vec;
use proptest::prelude::*;

/// A client of the store, over the wire.
struct Client {
    dom: u16,
    next: u32,
}

impl Client {
    fn new(dom: u16) -> Client {
        Client { dom, next: 1 }
    }

    /// Sends one request; returns every message answered since (type, id,
    /// payload), in order.
    fn send(&mut self, s: &mut Store, ty: u32, tx: u32, parts: &[&[u8]]) -> Vec<(u32, u32, Vec<u8>)> {
        let body: Vec<u8> = parts.concat();
        let mut m = Vec::new();
        for w in [ty, self.next, tx, body.len() as u32] {
            m.extend_from_slice(&w.to_le_bytes());
        }
        m.extend_from_slice(&body);
        self.next += 1;
        let _ = s.feed(self.dom, &m);
        drain(s, self.dom)
    }

    /// The reply to one request (events before it are skipped).
    fn call(&mut self, s: &mut Store, ty: u32, tx: u32, parts: &[&[u8]]) -> Result<Vec<u8>, String> {
        let id = self.next;
        let msgs = self.send(s, ty, tx, parts);
        let (t, _, p) = msgs.into_iter().find(|m| m.1 == id && m.0 != msg::WATCH_EVENT).expect("a reply");
        if t == msg::ERROR {
            Err(String::from_utf8_lossy(&p[..p.len() - 1]).into_owned())
        } else {
            Ok(p)
        }
    }

    fn write(&mut self, s: &mut Store, path: &str, v: &str) -> Result<Vec<u8>, String> {
        self.call(s, msg::WRITE, 0, &[path.as_bytes(), b"\0", v.as_bytes()])
    }

    fn read(&mut self, s: &mut Store, path: &str) -> Result<Vec<u8>, String> {
        self.call(s, msg::READ, 0, &[path.as_bytes(), b"\0"])
    }
}

/// Every whole message waiting for `dom`, taken.
fn drain(s: &mut Store, dom: u16) -> Vec<(u32, u32, Vec<u8>)> {
    let mut buf = vec![0u8; 1 << 20];
    let n = s.peek_output(dom, &mut buf);
    s.consume_output(dom, n);
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(h) = wire::Header::parse(&buf[at..n]) {
        let end = at + wire::HEADER + h.len as usize;
        out.push((h.ty, h.req_id, buf[at + wire::HEADER..end].to_vec()));
        at = end;
    }
    out
}

fn events(msgs: &[(u32, u32, Vec<u8>)]) -> Vec<String> {
    msgs.iter().filter(|m| m.0 == msg::WATCH_EVENT).map(|m| String::from_utf8_lossy(&m.2).into_owned()).collect()
}

fn store_with(doms: &[u16]) -> Store {
    let mut s = Store::new(Quotas::default());
    for &d in doms {
        s.introduce(d);
    }
    s
}

#[test]
fn relative_paths_are_below_the_domains_home_and_dom0_sees_them() {
    let mut s = store_with(&[5]);
    let mut c = Client::new(5);
    assert_eq!(c.write(&mut s, "data/x", "hi"), Ok(b"OK\0".to_vec()));
    assert_eq!(c.read(&mut s, "data/x"), Ok(b"hi".to_vec()));
    assert_eq!(c.read(&mut s, "/local/domain/5/data/x"), Ok(b"hi".to_vec()));
    assert_eq!(s.read(0, "/local/domain/5/data/x"), Ok(b"hi".to_vec()));
    assert_eq!(c.call(&mut s, msg::DIRECTORY, 0, &[b"data\0"]), Ok(b"x\0".to_vec()));
}

#[test]
fn perms_a_domain_reads_and_writes_only_its_own_subtree_and_what_it_was_granted() {
    let mut s = store_with(&[5, 6]);
    let (mut a, mut b) = (Client::new(5), Client::new(6));
    a.write(&mut s, "secret", "s").unwrap();
    assert_eq!(b.read(&mut s, "/local/domain/5/secret").unwrap_err(), "EACCES");
    assert_eq!(b.write(&mut s, "/local/domain/5/secret", "x").unwrap_err(), "EACCES");
    assert_eq!(b.write(&mut s, "/local/domain/5/new", "x").unwrap_err(), "EACCES", "creating in another's subtree");
    assert_eq!(a.write(&mut s, "/tool", "x").unwrap_err(), "EACCES", "creating at the root");
    assert_eq!(a.call(&mut s, msg::RM, 0, &[b"/local/domain/6\0"]).unwrap_err(), "EACCES");
    // The owner grants 6 read access.
    a.call(&mut s, msg::SET_PERMS, 0, &[b"secret\0n5\0r6\0"]).unwrap();
    assert_eq!(b.read(&mut s, "/local/domain/5/secret"), Ok(b"s".to_vec()));
    assert_eq!(b.write(&mut s, "/local/domain/5/secret", "x").unwrap_err(), "EACCES");
    // Nobody but dom0 gives a node away.
    assert_eq!(a.call(&mut s, msg::SET_PERMS, 0, &[b"secret\0n6\0"]).unwrap_err(), "EACCES");
    assert_eq!(b.call(&mut s, msg::SET_PERMS, 0, &[b"/local/domain/5/secret\0n6\0"]).unwrap_err(), "EACCES");
}

#[test]
fn perms_new_nodes_inherit_the_parents_list_with_the_creator_as_owner() {
    let mut s = store_with(&[5, 6]);
    s.write(0, "/local/domain/5/device/vbd/1/backend", b"/b").unwrap();
    s.set_perms(0, "/local/domain/5/device/vbd/1", &["n5".into(), "r6".into()]).unwrap();
    let mut a = Client::new(5);
    a.write(&mut s, "device/vbd/1/ring-ref", "8").unwrap();
    assert_eq!(s.read(6, "/local/domain/5/device/vbd/1/ring-ref"), Ok(b"8".to_vec()), "inherited r6");
    let perms = a.call(&mut s, msg::GET_PERMS, 0, &[b"device/vbd/1/ring-ref\0"]).unwrap();
    assert_eq!(perms, b"n5\0r6\0");
}

#[test]
fn watches_fire_at_once_and_on_changes_below_and_never_for_unreadable_nodes() {
    let mut s = store_with(&[5, 6]);
    let (mut a, mut b) = (Client::new(5), Client::new(6));
    let m = a.send(&mut s, msg::WATCH, 0, &[b"dev\0tok\0"]);
    assert_eq!(m[0].0, msg::WATCH, "the reply first");
    assert_eq!(events(&m), ["dev\0tok\0"], "then one event at once");
    a.write(&mut s, "dev/x/y", "1").unwrap();
    let m = drain(&mut s, 5);
    assert!(events(&m).is_empty(), "already drained by the call");
    // Changes by someone else arrive as events.
    s.write(0, "/local/domain/5/dev/z", b"2").unwrap();
    assert_eq!(events(&drain(&mut s, 5)), ["dev/z\0tok\0"]);
    // Domain 6 watching domain 5's subtree hears nothing it cannot read.
    b.send(&mut s, msg::WATCH, 0, &[b"/local/domain/5\0spy\0"]);
    s.write(0, "/local/domain/5/dev/z", b"3").unwrap();
    assert!(events(&drain(&mut s, 6)).is_empty(), "no event for an unreadable node");
    // Unwatch.
    a.call(&mut s, msg::UNWATCH, 0, &[b"dev\0tok\0"]).unwrap();
    s.write(0, "/local/domain/5/dev/z", b"4").unwrap();
    assert!(events(&drain(&mut s, 5)).is_empty());
}

#[test]
fn watches_special_paths_tell_of_introductions_and_releases() {
    let mut s = store_with(&[5]);
    let mut a = Client::new(5);
    a.send(&mut s, msg::WATCH, 0, &[b"@releaseDomain\0r\0"]);
    s.introduce(6);
    s.release(6);
    assert_eq!(events(&drain(&mut s, 5)), ["@releaseDomain\0r\0"]);
    assert_eq!(s.read(0, "/local/domain/6"), Err(Error::NoEnt), "its home went with it");
    assert_eq!(a.call(&mut s, msg::WATCH, 0, &[b"@other\0x\0"]).unwrap_err(), "EINVAL");
}

#[test]
fn transactions_conflict_with_eagain_and_apply_nothing_then_a_retry_commits() {
    let mut s = store_with(&[5]);
    let mut a = Client::new(5);
    a.write(&mut s, "n", "0").unwrap();
    let tx: u32 = String::from_utf8(a.call(&mut s, msg::TRANSACTION_START, 0, &[b"\0"]).unwrap())
        .unwrap()
        .trim_end_matches('\0')
        .parse()
        .unwrap();
    assert_eq!(a.call(&mut s, msg::READ, tx, &[b"n\0"]), Ok(b"0".to_vec()));
    a.call(&mut s, msg::WRITE, tx, &[b"n\0", b"1"]).unwrap();
    a.call(&mut s, msg::WRITE, tx, &[b"other\0", b"x"]).unwrap();
    assert_eq!(a.call(&mut s, msg::READ, tx, &[b"n\0"]), Ok(b"1".to_vec()), "its own write, inside");
    assert_eq!(a.read(&mut s, "n"), Ok(b"0".to_vec()), "not outside yet");
    s.write(0, "/local/domain/5/n", b"9").unwrap(); // someone else
    assert_eq!(a.call(&mut s, msg::TRANSACTION_END, tx, &[b"T\0"]).unwrap_err(), "EAGAIN");
    assert_eq!(a.read(&mut s, "n"), Ok(b"9".to_vec()));
    assert_eq!(a.read(&mut s, "other").unwrap_err(), "ENOENT", "nothing applied");
    // Again, undisturbed.
    let tx2 = 2u32;
    a.call(&mut s, msg::TRANSACTION_START, 0, &[b"\0"]).unwrap();
    a.call(&mut s, msg::WRITE, tx2, &[b"n\0", b"10"]).unwrap();
    a.call(&mut s, msg::TRANSACTION_END, tx2, &[b"T\0"]).unwrap();
    assert_eq!(a.read(&mut s, "n"), Ok(b"10".to_vec()));
    // A transaction that is gone.
    assert_eq!(a.call(&mut s, msg::READ, tx2, &[b"n\0"]).unwrap_err(), "ENOENT");
}

#[test]
fn transactions_watches_fire_only_at_commit() {
    let mut s = store_with(&[5, 6]);
    let mut a = Client::new(5);
    s.write(0, "/local/domain/6/w", b"").unwrap();
    let mut b = Client::new(6);
    b.send(&mut s, msg::WATCH, 0, &[b"w\0t\0"]);
    s.set_perms(0, "/local/domain/6/w", &["n6".into(), "b5".into()]).unwrap();
    drain(&mut s, 6);
    a.call(&mut s, msg::TRANSACTION_START, 0, &[b"\0"]).unwrap();
    a.call(&mut s, msg::WRITE, 1, &[b"/local/domain/6/w\0", b"v"]).unwrap();
    assert!(events(&drain(&mut s, 6)).is_empty(), "nothing before the commit");
    a.call(&mut s, msg::TRANSACTION_END, 1, &[b"T\0"]).unwrap();
    assert_eq!(events(&drain(&mut s, 6)), ["w\0t\0"]);
}

#[test]
fn quotas_nodes_watches_transactions_and_value_size_give_equota_or_e2big() {
    let q = Quotas { nodes: 5, watches: 2, transactions: 1, value_bytes: 8, ..Quotas::default() };
    let mut s = Store::new(q);
    s.introduce(5);
    let mut a = Client::new(5);
    let mut made = 0;
    for i in 0..10 {
        if a.write(&mut s, &format!("n{i}"), "x").is_ok() {
            made += 1;
        }
    }
    assert_eq!(made, 4, "its home is one of its 5 nodes");
    assert_eq!(a.write(&mut s, "n9", "x").unwrap_err(), "EQUOTA");
    assert_eq!(a.write(&mut s, "n0", "123456789").unwrap_err(), "E2BIG");
    a.call(&mut s, msg::WATCH, 0, &[b"a\0t\0"]).unwrap();
    a.call(&mut s, msg::WATCH, 0, &[b"b\0t\0"]).unwrap();
    assert_eq!(a.call(&mut s, msg::WATCH, 0, &[b"c\0t\0"]).unwrap_err(), "EQUOTA");
    a.call(&mut s, msg::TRANSACTION_START, 0, &[b"\0"]).unwrap();
    assert_eq!(a.call(&mut s, msg::TRANSACTION_START, 0, &[b"\0"]).unwrap_err(), "EQUOTA");
    // Removing gives nodes back.
    a.call(&mut s, msg::RM, 0, &[b"n0\0"]).unwrap();
    a.write(&mut s, "again", "x").unwrap();
}

#[test]
fn hostile_oversized_length_is_e2big_and_closes_only_that_connection() {
    let mut s = store_with(&[5, 6]);
    let mut m = Vec::new();
    for w in [msg::READ, 1, 0, 5000] {
        m.extend_from_slice(&w.to_le_bytes());
    }
    assert_eq!(s.feed(5, &m), Err(ConnError::Broken));
    let r = drain(&mut s, 5);
    assert_eq!((r[0].0, r[0].2.as_slice()), (msg::ERROR, &b"E2BIG\0"[..]));
    assert_eq!(s.feed(5, b"more"), Err(ConnError::Broken));
    assert!(!s.accepting(5));
    let mut b = Client::new(6);
    assert_eq!(b.write(&mut s, "fine", "yes"), Ok(b"OK\0".to_vec()), "the others go on");
}

#[test]
fn hostile_unterminated_strings_bad_paths_and_unknown_types_are_einval_and_the_stream_goes_on() {
    let mut s = store_with(&[5]);
    let mut a = Client::new(5);
    assert_eq!(a.call(&mut s, msg::READ, 0, &[b"x"]).unwrap_err(), "EINVAL", "no NUL");
    assert_eq!(a.call(&mut s, msg::READ, 0, &[b"a//b\0"]).unwrap_err(), "EINVAL");
    assert_eq!(a.call(&mut s, msg::READ, 0, &[b"a/\0"]).unwrap_err(), "EINVAL");
    assert_eq!(a.call(&mut s, msg::READ, 0, &[b"a b\0"]).unwrap_err(), "EINVAL");
    assert_eq!(a.call(&mut s, msg::READ, 0, &[b"\xff\0"]).unwrap_err(), "EINVAL");
    assert_eq!(a.call(&mut s, msg::WRITE, 0, &[b"novalue"]).unwrap_err(), "EINVAL");
    assert_eq!(a.call(&mut s, 99, 0, &[b"x\0"]).unwrap_err(), "EINVAL");
    assert_eq!(a.call(&mut s, msg::INTRODUCE, 0, &[b"7\0"]).unwrap_err(), "EACCES");
    let long = "a".repeat(path::MAX_REL + 1) + "\0";
    assert_eq!(a.call(&mut s, msg::READ, 0, &[long.as_bytes()]).unwrap_err(), "E2BIG");
    assert_eq!(a.call(&mut s, msg::RM, 0, &[b"/\0"]).unwrap_err(), "EINVAL");
    assert_eq!(s.rm(0, "/"), Err(Error::Inval), "not even dom0 removes the root");
    assert_eq!(a.write(&mut s, "ok", "1"), Ok(b"OK\0".to_vec()));
}

#[test]
fn hostile_a_client_that_never_reads_is_bounded_and_loses_events_not_the_store() {
    let q = Quotas { outbox_bytes: 1024, ..Quotas::default() };
    let mut s = Store::new(q);
    s.introduce(5);
    s.introduce(6);
    let mut a = Client::new(5);
    a.call(&mut s, msg::WATCH, 0, &[b"/local/domain/5\0flood\0"]).unwrap();
    // Domain 5 never reads again; its subtree changes a lot.
    for i in 0..500 {
        s.write(0, "/local/domain/5/x", format!("{i}").as_bytes()).unwrap();
    }
    let mut buf = vec![0u8; 1 << 16];
    let waiting = s.peek_output(5, &mut buf);
    assert!(waiting <= 1024, "bounded: {waiting}");
    assert!(s.dropped_events > 400, "dropped and counted: {}", s.dropped_events);
    let mut b = Client::new(6);
    assert_eq!(b.write(&mut s, "y", "1"), Ok(b"OK\0".to_vec()), "the others go on");
    // Requests whose replies it never reads: once its outbox is full they
    // wait (backpressure) until it reads; nothing is lost.
    let mut m = Vec::new();
    for id in 0..200u32 {
        for w in [msg::READ, 1000 + id, 0, 2] {
            m.extend_from_slice(&w.to_le_bytes());
        }
        m.extend_from_slice(b"x\0");
    }
    s.consume_output(5, usize::MAX);
    s.feed(5, &m[..m.len() / 2]).unwrap();
    assert!(!s.accepting(5), "stops taking input while its replies pile up");
    let (mut replies, mut second) = (0, false);
    loop {
        let got = drain(&mut s, 5);
        if got.is_empty() {
            break;
        }
        replies += got.len();
        if s.accepting(5) && replies >= 100 && !second {
            second = true;
            let _ = s.feed(5, &m[m.len() / 2..]);
        }
    }
    assert_eq!(replies, 200, "every request answered once it read");
}

#[test]
fn introduce_again_resets_and_release_forgets_watches_and_transactions() {
    let mut s = store_with(&[5]);
    let mut a = Client::new(5);
    a.call(&mut s, msg::WATCH, 0, &[b"x\0t\0"]).unwrap();
    a.call(&mut s, msg::TRANSACTION_START, 0, &[b"\0"]).unwrap();
    s.release(5);
    assert_eq!(s.feed(5, b"x"), Err(ConnError::Unknown));
    s.introduce(5);
    let mut a = Client::new(5);
    assert_eq!(a.call(&mut s, msg::READ, 1, &[b"x\0"]).unwrap_err(), "ENOENT", "the old transaction is gone");
}

/// Every node's parent exists and lists it; every listed child exists.
fn tree_is_consistent(s: &Store) -> bool {
    s.nodes.iter().all(|(p, n)| {
        (p == "/" || s.nodes.get(&path::parent(p)).is_some_and(|q| q.children.contains(path::last(p))))
            && n.children
                .iter()
                .all(|c| s.nodes.contains_key(&if p == "/" { format!("/{c}") } else { format!("{p}/{c}") }))
    })
}

proptest! {
    /// Arbitrary bytes from a client never panic the store, never grow its
    /// buffers without bound, and never touch another domain's subtree.
    #[test]
    fn hostile_random_bytes_never_panic_and_stay_bounded(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..40)) {
        let mut s = store_with(&[5, 6]);
        s.write(0, "/local/domain/6/keep", b"v").unwrap();
        for c in &chunks {
            let _ = s.feed(5, c);
            let mut buf = vec![0u8; 1 << 17];
            let n = s.peek_output(5, &mut buf);
            prop_assert!(n <= Quotas::default().outbox_bytes + 2 * (wire::HEADER + PAYLOAD_MAX));
            if n.is_multiple_of(3) { s.consume_output(5, n); }
        }
        prop_assert_eq!(s.read(0, "/local/domain/6/keep"), Ok(b"v".to_vec()));
        prop_assert!(tree_is_consistent(&s));
    }

    /// Random well-formed operations keep the tree consistent and the
    /// quota accounting exact.
    #[test]
    fn random_operations_keep_the_tree_consistent(ops in proptest::collection::vec((0u8..5, 0usize..6, 0u8..3), 1..80)) {
        let names = ["a", "a/b", "a/b/c", "d", "a-x", "d/e"];
        let mut s = store_with(&[5]);
        let mut c = Client::new(5);
        for (op, k, v) in ops {
            let p = names[k];
            match op {
                0 => { let _ = c.write(&mut s, p, &format!("{v}")); }
                1 => { let _ = c.call(&mut s, msg::RM, 0, &[p.as_bytes(), b"\0"]); }
                2 => { let _ = c.call(&mut s, msg::MKDIR, 0, &[p.as_bytes(), b"\0"]); }
                3 => { let _ = c.call(&mut s, msg::DIRECTORY, 0, &[p.as_bytes(), b"\0"]); }
                _ => { let _ = c.read(&mut s, p); }
            }
            prop_assert!(tree_is_consistent(&s));
            let owned = s.nodes.values().filter(|n| n.perms[0].dom == 5).count();
            prop_assert_eq!(owned, s.conns[&5].owned);
        }
    }
}
