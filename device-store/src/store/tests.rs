//! Store tests, named after the rules in the module docs.

use super::*;
use crate::client::{parse_tx_id, split_list, Decoder, Reply, Request};
use crate::quota::Quotas;
use crate::wire::PAYLOAD_MAX;
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::ToString;
use alloc::vec;
use proptest::prelude::*;

const D0: DomId = DomId::new(0);
const D1: DomId = DomId::new(1);
const D2: DomId = DomId::new(2);

struct H {
    s: Store,
    dec: BTreeMap<DomId, Decoder>,
    events: BTreeMap<DomId, Vec<(String, String)>>,
    next: u32,
}

type R = Result<Vec<u8>, XsError>;

impl H {
    fn new() -> Self {
        Self::with(Quotas::default())
    }
    fn with(quotas: Quotas) -> Self {
        let mut s = Store::new(Config { quotas, ..Config::default() });
        s.introduce(D1);
        s.introduce(D2);
        H { s, dec: BTreeMap::new(), events: BTreeMap::new(), next: 1 }
    }
    fn drain(&mut self, dom: DomId) -> Vec<Reply> {
        let mut buf = vec![0u8; 256];
        let mut out = Vec::new();
        loop {
            let n = self.s.take_output(dom, &mut buf);
            if n == 0 {
                break;
            }
            let dec = self.dec.entry(dom).or_default();
            out.extend(dec.push_all(&buf[..n]).into_iter().map(|r| r.unwrap()));
        }
        let mut replies = Vec::new();
        for r in out {
            match r {
                Reply::WatchEvent { path, token } => self
                    .events
                    .entry(dom)
                    .or_default()
                    .push((String::from_utf8(path).unwrap(), String::from_utf8(token).unwrap())),
                r => replies.push(r),
            }
        }
        replies
    }
    fn raw(&mut self, dom: DomId, bytes: &[u8]) -> Vec<Reply> {
        let n = self.s.feed(dom, bytes).unwrap();
        assert_eq!(n, bytes.len());
        self.drain(dom)
    }
    fn tx(&mut self, dom: DomId, tx: u32, r: Request<'_>) -> R {
        let mut bytes = Vec::new();
        let id = self.next;
        self.next += 1;
        r.encode(id, tx, &mut bytes).unwrap();
        let replies = self.raw(dom, &bytes);
        assert_eq!(replies.len(), 1, "{replies:?}");
        match replies.into_iter().next().unwrap() {
            Reply::Ok { header, payload } => {
                assert_eq!(header.req_id, id);
                Ok(payload)
            }
            Reply::Error { header, error } => {
                assert_eq!(header.req_id, id);
                Err(error.unwrap())
            }
            Reply::WatchEvent { .. } => unreachable!(),
        }
    }
    fn req(&mut self, dom: DomId, r: Request<'_>) -> R {
        self.tx(dom, 0, r)
    }
    fn ev(&mut self, dom: DomId) -> Vec<(String, String)> {
        self.drain(dom);
        self.events.remove(&dom).unwrap_or_default()
    }
    fn start(&mut self, dom: DomId) -> u32 {
        parse_tx_id(&self.req(dom, Request::TransactionStart).unwrap()).unwrap()
    }
    fn check(&self) {
        self.s.tree.check().unwrap();
    }
}

fn ok() -> R {
    Ok(b"OK\0".to_vec())
}

fn ev(p: &str, t: &str) -> (String, String) {
    (p.to_string(), t.to_string())
}

#[test]
fn home_is_created_owned_by_the_domain() {
    let mut h = H::new();
    assert_eq!(h.req(D1, Request::GetPerms("/local/domain/1")), Ok(b"n1\0".to_vec()));
    assert_eq!(h.s.owned_nodes(D1), 1);
    assert_eq!(h.req(D1, Request::GetDomainPath(D2)), Ok(b"/local/domain/2\0".to_vec()));
    h.check();
}

#[test]
fn relative_paths_resolve_under_home() {
    let mut h = H::new();
    assert_eq!(h.req(D1, Request::Write("name", b"vm1")), ok());
    assert_eq!(h.s.value("/local/domain/1/name"), Some(&b"vm1"[..]));
    assert_eq!(h.req(D1, Request::Read("/local/domain/1/name")), Ok(b"vm1".to_vec()));
    assert_eq!(h.req(D2, Request::Read("name")), Err(XsError::NoEnt));
}

#[test]
fn perms_other_domains_cannot_read_or_write_a_home() {
    let mut h = H::new();
    h.req(D1, Request::Write("secret", b"x")).unwrap();
    assert_eq!(h.req(D2, Request::Read("/local/domain/1/secret")), Err(XsError::Acces));
    assert_eq!(h.req(D2, Request::Write("/local/domain/1/secret", b"y")), Err(XsError::Acces));
    assert_eq!(h.req(D2, Request::Write("/local/domain/1/new", b"y")), Err(XsError::Acces));
    assert_eq!(h.req(D2, Request::Directory("/local/domain/1")), Err(XsError::Acces));
    assert_eq!(h.req(D2, Request::Rm("/local/domain/1/secret")), Err(XsError::Acces));
    assert_eq!(h.req(D0, Request::Read("/local/domain/1/secret")), Ok(b"x".to_vec()));
}

#[test]
fn perms_missing_nodes_under_unreadable_parents_are_eacces_not_enoent() {
    let mut h = H::new();
    assert_eq!(h.req(D2, Request::Read("/local/domain/1/nope")), Err(XsError::Acces));
    assert_eq!(h.req(D1, Request::Read("nope")), Err(XsError::NoEnt));
    assert_eq!(h.req(D1, Request::Read("a/b/c")), Err(XsError::NoEnt));
}

#[test]
fn perms_acl_entries_grant_access() {
    let mut h = H::new();
    h.req(D1, Request::Write("shared", b"v")).unwrap();
    let p = Perms::parse(b"n1\0r2\0").unwrap();
    assert_eq!(h.req(D1, Request::SetPerms("shared", &p)), ok());
    assert_eq!(h.req(D2, Request::Read("/local/domain/1/shared")), Ok(b"v".to_vec()));
    assert_eq!(h.req(D2, Request::Write("/local/domain/1/shared", b"w")), Err(XsError::Acces));
    // Not the owner: may not change perms.
    assert_eq!(h.req(D2, Request::SetPerms("/local/domain/1/shared", &p)), Err(XsError::Acces));
    // The owner may not give it away.
    let give = Perms::parse(b"n2\0").unwrap();
    assert_eq!(h.req(D1, Request::SetPerms("shared", &give)), Err(XsError::Perm));
    // The privileged domain may, and the accounting follows.
    assert_eq!(h.req(D0, Request::SetPerms("/local/domain/1/shared", &give)), ok());
    assert_eq!((h.s.owned_nodes(D1), h.s.owned_nodes(D2)), (1, 2));
    h.check();
}

#[test]
fn write_creates_parents_owned_by_the_writer_with_inherited_perms() {
    let mut h = H::new();
    let p = Perms::parse(b"n1\0r2\0").unwrap();
    h.req(D1, Request::Mkdir("dev")).unwrap();
    h.req(D1, Request::SetPerms("dev", &p)).unwrap();
    h.req(D1, Request::Write("dev/a/b", b"x")).unwrap();
    assert_eq!(h.req(D1, Request::GetPerms("dev/a")), Ok(b"n1\0r2\0".to_vec()));
    assert_eq!(h.req(D1, Request::Read("dev/a")), Ok(Vec::new()));
    assert_eq!(h.req(D1, Request::Directory("dev")), Ok(b"a\0".to_vec()));
    // dom0 writes under a domain's home: the node stays dom0's (Xen).
    h.req(D0, Request::Write("/local/domain/1/backend", b"")).unwrap();
    assert_eq!(h.req(D1, Request::GetPerms("backend")), Ok(b"n1\0".to_vec()));
    assert_eq!(h.s.owned_nodes(D1), 5);
    h.check();
}

#[test]
fn rm_removes_the_subtree_and_absent_nodes_are_ok() {
    let mut h = H::new();
    h.req(D1, Request::Write("a/b/c", b"1")).unwrap();
    h.req(D1, Request::Write("a/d", b"2")).unwrap();
    let before = h.s.node_count();
    assert_eq!(h.req(D1, Request::Rm("a")), ok());
    assert_eq!(h.s.node_count(), before - 4);
    assert_eq!(h.req(D1, Request::Rm("a")), ok());
    assert_eq!(h.req(D1, Request::Rm("a/x")), Err(XsError::NoEnt));
    assert_eq!(h.req(D0, Request::Rm("/")), Err(XsError::Inval));
    assert_eq!(h.s.owned_nodes(D1), 1);
    h.check();
}

#[test]
fn directory_lists_children_nul_separated_and_part_pages() {
    let mut h = H::new();
    for k in ["b", "a", "c"] {
        h.req(D1, Request::Write(&format!("d/{k}"), b"")).unwrap();
    }
    let l = h.req(D1, Request::Directory("d")).unwrap();
    assert_eq!(l, b"a\0b\0c\0");
    assert_eq!(split_list(&l).count(), 3);
    let p = h.req(D1, Request::DirectoryPart("d", 2)).unwrap();
    let mut parts = p.split(|&b| b == 0);
    parts.next(); // generation
    assert_eq!(&p[p.iter().position(|&b| b == 0).unwrap() + 1..], b"b\0c\0\0");
    assert_eq!(h.req(D1, Request::DirectoryPart("d", 1)), Err(XsError::Inval));
}

#[test]
fn directory_over_one_payload_is_e2big() {
    let mut h = H::new();
    for c in ["x", "y", "z"] {
        let name = format!("d/{}", c.repeat(2040));
        h.req(D1, Request::Write(&name, b"")).unwrap();
    }
    assert_eq!(h.req(D1, Request::Directory("d")), Err(XsError::TooBig));
    let p = h.req(D1, Request::DirectoryPart("d", 0)).unwrap();
    assert!(p.len() <= PAYLOAD_MAX && !p.ends_with(b"\0\0"));
}

#[test]
fn replies_precede_the_events_they_cause() {
    let mut h = H::new();
    let mut bytes = Vec::new();
    Request::Watch("k", b"t").encode(1, 0, &mut bytes).unwrap();
    Request::Write("k", b"v").encode(2, 0, &mut bytes).unwrap();
    h.s.feed(D1, &bytes).unwrap();
    let mut out = vec![0u8; 4096];
    let n = h.s.take_output(D1, &mut out);
    let kinds: Vec<u32> = Decoder::new()
        .push_all(&out[..n])
        .into_iter()
        .map(|r| match r.unwrap() {
            Reply::Ok { header, .. } | Reply::Error { header, .. } => header.req_id,
            Reply::WatchEvent { .. } => 0,
        })
        .collect();
    assert_eq!(kinds, vec![1, 0, 2, 0]);
}

#[test]
fn unterminated_strings_are_einval() {
    let mut h = H::new();
    for (ty, payload) in [
        (MsgType::Read, &b"name"[..]),
        (MsgType::Write, b"name"),
        (MsgType::Watch, b"name\0tok"),
        (MsgType::TransactionEnd, b"T"),
        (MsgType::GetDomainPath, b"1"),
        (MsgType::Read, b"a\0b\0"),
    ] {
        let mut bytes = Vec::new();
        wire::encode(&mut bytes, ty as u32, 9, 0, &[payload]).unwrap();
        let r = h.raw(D1, &bytes);
        assert!(matches!(&r[..], [Reply::Error { error: Some(XsError::Inval), .. }]), "{ty:?} {r:?}");
    }
}

#[test]
fn bad_paths_are_einval() {
    let mut h = H::new();
    for p in ["", "a//b", "/a/", "a b", "@x", "/a.b"] {
        assert_eq!(h.req(D1, Request::Write(p, b"")), Err(XsError::Inval), "{p}");
    }
    let long = "a".repeat(path::REL_PATH_MAX + 1);
    assert_eq!(h.req(D1, Request::Read(&long)), Err(XsError::Inval));
}

#[test]
fn oversized_len_answers_e2big_and_breaks_only_that_connection() {
    let mut h = H::new();
    let hdr = Header { ty: 2, req_id: 5, tx_id: 0, len: 5000 };
    assert_eq!(h.s.feed(D1, &hdr.to_bytes()), Err(ConnError::Broken));
    let r = h.drain(D1);
    assert!(matches!(&r[..], [Reply::Error { header, error: Some(XsError::TooBig) }] if header.req_id == 5));
    assert_eq!(h.s.feed(D1, b"more"), Err(ConnError::Broken));
    assert!(h.s.is_broken(D1));
    assert_eq!(h.req(D2, Request::Write("x", b"1")), ok());
    assert_eq!(h.s.stats().broken, 1);
}

#[test]
fn unknown_types_and_server_only_types_are_einval_unserved_are_enosys() {
    let mut h = H::new();
    for (ty, want) in [(99u32, XsError::Inval), (15, XsError::Inval), (16, XsError::Inval), (0, XsError::NoSys)] {
        let mut bytes = Vec::new();
        wire::encode(&mut bytes, ty, 1, 0, &[b"x\0"]).unwrap();
        let r = h.raw(D1, &bytes);
        assert!(matches!(&r[..], [Reply::Error { error: Some(e), .. }] if *e == want), "{ty}");
    }
    assert_eq!(h.req(D1, Request::Read("x")), Err(XsError::NoEnt));
}

#[test]
fn privileged_requests_need_the_privileged_domain() {
    let mut h = H::new();
    let d3 = DomId::new(3);
    assert_eq!(h.req(D1, Request::Introduce { domid: d3, gfn: 1, port: 2 }), Err(XsError::Acces));
    assert_eq!(h.req(D1, Request::Release(D2)), Err(XsError::Acces));
    assert_eq!(h.req(D1, Request::IsDomainIntroduced(D2)), Err(XsError::Acces));
    assert_eq!(h.req(D0, Request::IsDomainIntroduced(d3)), Ok(b"F\0".to_vec()));
    assert_eq!(h.req(D0, Request::Introduce { domid: d3, gfn: 1, port: 2 }), ok());
    assert_eq!(h.s.poll_notice(), Some(Notice::Introduced { domid: d3, gfn: 1, port: 2 }));
    assert_eq!(h.req(D0, Request::IsDomainIntroduced(d3)), Ok(b"T\0".to_vec()));
    assert_eq!(h.req(D0, Request::Release(d3)), ok());
    assert_eq!(h.s.poll_notice(), Some(Notice::Released { domid: d3 }));
    assert_eq!(h.req(D0, Request::Release(d3)), Err(XsError::NoEnt));
    assert_eq!(h.req(D0, Request::Release(D0)), Err(XsError::Inval));
}

#[test]
fn watches_fire_initially_and_on_changes_below() {
    let mut h = H::new();
    assert_eq!(h.req(D1, Request::Watch("dev", b"t")), ok());
    assert_eq!(h.ev(D1), vec![ev("dev", "t")]);
    h.req(D1, Request::Write("dev/a", b"1")).unwrap();
    h.req(D1, Request::Write("other", b"1")).unwrap();
    assert_eq!(h.ev(D1), vec![ev("dev/a", "t")]);
    h.req(D1, Request::Watch("/local/domain/1/dev/a/b", b"abs")).unwrap();
    h.ev(D1);
    h.req(D1, Request::Rm("dev")).unwrap();
    assert_eq!(h.ev(D1), vec![ev("dev", "t"), ev("/local/domain/1/dev/a/b", "abs")]);
    assert_eq!(h.req(D1, Request::Watch("dev", b"t")), Err(XsError::Exist));
    assert_eq!(h.req(D1, Request::Unwatch("dev", b"t")), ok());
    assert_eq!(h.req(D1, Request::Unwatch("dev", b"t")), Err(XsError::NoEnt));
    h.req(D1, Request::Write("dev/x", b"1")).unwrap();
    assert_eq!(h.ev(D1), Vec::new());
}

#[test]
fn watches_dont_leak_nodes_the_watcher_cannot_read() {
    let mut h = H::new();
    h.req(D2, Request::Watch("/local/domain/1", b"spy")).unwrap();
    h.req(D2, Request::Watch("/", b"root")).unwrap();
    h.req(D2, Request::Watch("@introduceDomain", b"i")).unwrap();
    h.ev(D2);
    h.req(D1, Request::Write("secret", b"x")).unwrap();
    h.req(D1, Request::Rm("secret")).unwrap();
    h.s.introduce(DomId::new(7));
    assert_eq!(h.ev(D2), Vec::new());
    // Once readable, it is told.
    let p = Perms::parse(b"n1\0r2\0").unwrap();
    h.req(D1, Request::Write("pub", b"x")).unwrap();
    h.req(D1, Request::SetPerms("pub", &p)).unwrap();
    assert_eq!(h.ev(D2), vec![ev("/local/domain/1/pub", "spy"), ev("/local/domain/1/pub", "root")]);
}

#[test]
fn special_watches_reach_the_privileged_domain() {
    let mut h = H::new();
    h.req(D0, Request::Watch("@introduceDomain", b"i")).unwrap();
    h.req(D0, Request::Watch("@releaseDomain", b"r")).unwrap();
    h.ev(D0);
    h.s.introduce(DomId::new(7));
    h.s.release(DomId::new(7));
    assert_eq!(h.ev(D0), vec![ev("@introduceDomain", "i"), ev("@releaseDomain", "r")]);
}

#[test]
fn release_drops_state_and_a_reused_domid_inherits_nothing() {
    let mut h = H::new();
    h.req(D0, Request::Write("/shared", b"")).unwrap();
    let p = Perms::parse(b"n0\0b1\0").unwrap();
    h.req(D0, Request::SetPerms("/shared", &p)).unwrap();
    h.req(D1, Request::Write("/shared/mine", b"x")).unwrap();
    h.req(D1, Request::Watch("/shared", b"w")).unwrap();
    h.start(D1);
    assert!(h.s.release(D1));
    assert!(!h.s.is_introduced(D1));
    assert_eq!(h.s.owned_nodes(D1), 0);
    assert_eq!(h.s.value("/local/domain/1"), None);
    h.s.introduce(D1);
    h.ev(D1);
    assert_eq!(h.req(D1, Request::Read("/shared/mine")), Err(XsError::Acces));
    assert_eq!(h.req(D0, Request::GetPerms("/shared")), Ok(b"n0\0".to_vec()));
    h.req(D0, Request::Write("/shared/x", b"")).unwrap();
    assert_eq!(h.ev(D1), Vec::new());
    h.check();
}

#[test]
fn transactions_apply_on_commit_only_and_watches_fire_then() {
    let mut h = H::new();
    h.req(D1, Request::Watch("k", b"t")).unwrap();
    h.ev(D1);
    let t = h.start(D1);
    assert_eq!(h.tx(D1, t, Request::Write("k", b"1")), ok());
    assert_eq!(h.tx(D1, t, Request::Read("k")), Ok(b"1".to_vec()));
    assert_eq!(h.req(D1, Request::Read("k")), Err(XsError::NoEnt));
    assert_eq!(h.ev(D1), Vec::new());
    assert_eq!(h.tx(D1, t, Request::TransactionEnd(true)), ok());
    assert_eq!(h.req(D1, Request::Read("k")), Ok(b"1".to_vec()));
    assert_eq!(h.ev(D1), vec![ev("k", "t")]);
    let t = h.start(D1);
    h.tx(D1, t, Request::Rm("k")).unwrap();
    assert_eq!(h.tx(D1, t, Request::TransactionEnd(false)), ok());
    assert_eq!(h.req(D1, Request::Read("k")), Ok(b"1".to_vec()));
    assert_eq!(h.tx(D1, t, Request::Read("k")), Err(XsError::NoEnt));
    h.check();
}

#[test]
fn transactions_conflict_eagain_and_retry_succeeds() {
    let mut h = H::new();
    h.req(D1, Request::Write("n", b"0")).unwrap();
    let t = h.start(D1);
    let v = h.tx(D1, t, Request::Read("n")).unwrap();
    h.req(D0, Request::Write("/local/domain/1/n", b"5")).unwrap();
    h.tx(D1, t, Request::Write("n", &[v[0] + 1])).unwrap();
    assert_eq!(h.tx(D1, t, Request::TransactionEnd(true)), Err(XsError::Again));
    assert_eq!(h.req(D1, Request::Read("n")), Ok(b"5".to_vec()));
    assert_eq!(h.s.stats().conflicts, 1);
    let t = h.start(D1);
    let v = h.tx(D1, t, Request::Read("n")).unwrap();
    h.tx(D1, t, Request::Write("n", &[v[0] + 1])).unwrap();
    assert_eq!(h.tx(D1, t, Request::TransactionEnd(true)), ok());
    assert_eq!(h.req(D1, Request::Read("n")), Ok(b"6".to_vec()));
    // A node the transaction found absent and someone then created conflicts too.
    let t = h.start(D1);
    assert_eq!(h.tx(D1, t, Request::Read("m")), Err(XsError::NoEnt));
    h.req(D1, Request::Write("m", b"")).unwrap();
    h.tx(D1, t, Request::Write("z", b"")).unwrap();
    assert_eq!(h.tx(D1, t, Request::TransactionEnd(true)), Err(XsError::Again));
    h.check();
}

#[test]
fn transactions_fire_one_event_per_watch_and_path_on_commit() {
    let mut h = H::new();
    h.req(D1, Request::Watch("k", b"t")).unwrap();
    h.req(D2, Request::Watch("/local/domain/1/k", b"spy")).unwrap();
    h.ev(D1);
    h.ev(D2);
    let t = h.start(D1);
    h.tx(D1, t, Request::Write("k", b"1")).unwrap();
    h.tx(D1, t, Request::Write("k", b"2")).unwrap();
    h.tx(D1, t, Request::Write("k/sub", b"3")).unwrap();
    h.tx(D1, t, Request::TransactionEnd(true)).unwrap();
    assert_eq!(h.ev(D1), vec![ev("k", "t"), ev("k/sub", "t")]);
    assert_eq!(h.ev(D2), Vec::new());
}

#[test]
fn transactions_conflict_when_a_removed_subtree_changed() {
    let mut h = H::new();
    h.req(D1, Request::Write("a/b", b"0")).unwrap();
    let t = h.start(D1);
    h.tx(D1, t, Request::Rm("a")).unwrap();
    h.req(D1, Request::Write("a/b", b"1")).unwrap();
    assert_eq!(h.tx(D1, t, Request::TransactionEnd(true)), Err(XsError::Again));
    assert_eq!(h.req(D1, Request::Read("a/b")), Ok(b"1".to_vec()));
    // Unrelated changes elsewhere do not conflict.
    let t = h.start(D1);
    h.tx(D1, t, Request::Rm("a")).unwrap();
    h.req(D2, Request::Write("x", b"1")).unwrap();
    assert_eq!(h.tx(D1, t, Request::TransactionEnd(true)), ok());
    assert_eq!(h.req(D1, Request::Read("a")), Err(XsError::NoEnt));
    h.check();
}

#[test]
fn transactions_unknown_id_nested_start_and_bad_end() {
    let mut h = H::new();
    assert_eq!(h.tx(D1, 77, Request::Read("x")), Err(XsError::NoEnt));
    assert_eq!(h.tx(D1, 77, Request::TransactionEnd(true)), Err(XsError::NoEnt));
    let t = h.start(D1);
    assert_eq!(h.tx(D1, t, Request::TransactionStart), Err(XsError::Busy));
    // Another domain cannot use it.
    assert_eq!(h.tx(D2, t, Request::Read("x")), Err(XsError::NoEnt));
}

#[test]
fn quotas_nodes_enospc_and_accounting() {
    let mut h = H::with(Quotas { nodes: 4, ..Quotas::default() });
    assert_eq!(h.req(D1, Request::Write("a/b/c", b"")), ok());
    assert_eq!(h.req(D1, Request::Write("d", b"")), Err(XsError::NoSpc));
    assert_eq!(h.req(D1, Request::Write("a", b"overwrite is fine")), ok());
    h.req(D1, Request::Rm("a/b")).unwrap();
    assert_eq!(h.req(D1, Request::Write("d", b"")), ok());
    // At commit too.
    let t = h.start(D1);
    h.tx(D1, t, Request::Write("a/e", b"")).unwrap();
    h.req(D1, Request::Write("f", b"")).unwrap();
    assert_eq!(h.tx(D1, t, Request::TransactionEnd(true)), Err(XsError::NoSpc));
    // dom0 is exempt.
    h.req(D0, Request::Write("/x/y/z/w/v", b"")).unwrap();
    h.check();
}

#[test]
fn quotas_value_watches_transactions_and_tx_size() {
    let q = Quotas { value_bytes: 8, watches: 2, transactions: 1, tx_ops: 3, tx_nodes: 4, ..Quotas::default() };
    let mut h = H::with(q);
    assert_eq!(h.req(D1, Request::Write("v", &[0; 9])), Err(XsError::NoSpc));
    assert_eq!(h.req(D1, Request::Write("v", &[0; 8])), ok());
    h.req(D1, Request::Watch("a", b"1")).unwrap();
    h.req(D1, Request::Watch("a", b"2")).unwrap();
    assert_eq!(h.req(D1, Request::Watch("a", b"3")), Err(XsError::NoSpc));
    assert_eq!(h.req(D1, Request::Watch("a", &[b'x'; TOKEN_MAX + 1])), Err(XsError::TooBig));
    let t = h.start(D1);
    assert_eq!(h.req(D1, Request::TransactionStart), Err(XsError::NoSpc));
    assert_eq!(h.tx(D1, t, Request::Write("p/q/r/s", b"")), Err(XsError::NoSpc)); // 5 nodes touched
                                                                                  // The read set stays full: the transaction can only end.
    assert_eq!(h.tx(D1, t, Request::Read("v")), Err(XsError::NoSpc));
    assert_eq!(h.tx(D1, t, Request::TransactionEnd(false)), ok());
    let t = h.start(D1);
    for _ in 0..3 {
        h.tx(D1, t, Request::Read("v")).unwrap();
    }
    assert_eq!(h.tx(D1, t, Request::Read("v")), Err(XsError::NoSpc)); // 4th op
    assert_eq!(h.tx(D1, t, Request::TransactionEnd(false)), ok());
    let t = h.start(D1);
    h.tx(D1, t, Request::TransactionEnd(true)).unwrap();
}

#[test]
fn quotas_payload_over_limit_is_e2big_and_the_stream_continues() {
    let mut h = H::with(Quotas { payload: 64, ..Quotas::default() });
    let big = "a".repeat(100);
    assert_eq!(h.req(D1, Request::Write(&big, b"")), Err(XsError::TooBig));
    assert_eq!(h.req(D1, Request::Write("x", b"")), ok());
}

#[test]
fn watch_floods_are_bounded_and_dropped_events_counted() {
    let mut h = H::with(Quotas { outbox_bytes: 3 * wire::MSG_MAX, ..Quotas::default() });
    h.req(D0, Request::Watch("/", b"all")).unwrap();
    h.ev(D0);
    for i in 0..2000 {
        h.req(D1, Request::Write(&format!("k{}", i % 500), b"x")).unwrap();
        assert!(h.s.pending_output(D0) <= 3 * wire::MSG_MAX);
    }
    let st = h.s.conn_stats(D0).unwrap();
    assert!(st.events_dropped > 0 && st.events_sent > 0);
    // dom0 still gets its replies.
    assert_eq!(h.req(D0, Request::Read("/local/domain/1/k1")), Ok(b"x".to_vec()));
}

#[test]
fn a_client_that_never_reads_stalls_only_itself() {
    let q = Quotas { outbox_bytes: 2 * wire::MSG_MAX, ..Quotas::default() };
    let mut h = H::with(q);
    let mut bytes = Vec::new();
    for i in 0..1000 {
        Request::Read("/").encode(i, 0, &mut bytes).unwrap();
    }
    let n = h.s.feed(D1, &bytes).unwrap();
    assert!(n < bytes.len());
    assert!(h.s.pending_output(D1) <= q.outbox_bytes);
    assert_eq!(h.s.feed(D1, &bytes[n..]), Ok(0));
    assert_eq!(h.req(D2, Request::Write("x", b"1")), ok());
    // Reading the replies lets it continue.
    h.drain(D1);
    assert!(h.s.feed(D1, &bytes[n..]).unwrap() > 0);
}

#[test]
fn two_clients_are_isolated() {
    let mut h = H::new();
    h.req(D1, Request::Write("k", b"1")).unwrap();
    h.req(D2, Request::Write("k", b"2")).unwrap();
    assert_eq!(h.req(D1, Request::Read("k")), Ok(b"1".to_vec()));
    assert_eq!(h.req(D2, Request::Read("k")), Ok(b"2".to_vec()));
    // A half-sent request from D1 does not disturb D2.
    let mut bytes = Vec::new();
    Request::Read("k").encode(1, 0, &mut bytes).unwrap();
    assert_eq!(h.s.feed(D1, &bytes[..5]), Ok(5));
    assert_eq!(h.req(D2, Request::Read("k")), Ok(b"2".to_vec()));
    assert!(h.raw(D1, &bytes[5..]).len() == 1);
    assert_eq!(h.req(D1, Request::ResetWatches), ok());
}

#[test]
fn feed_of_an_unintroduced_domain_is_refused() {
    let mut s = Store::new(Config::default());
    assert_eq!(s.feed(DomId::new(9), b"x"), Err(ConnError::NotIntroduced));
    assert_eq!(s.take_output(DomId::new(9), &mut [0; 4]), 0);
}

// ---------------------------------------------------------------- proptest

fn invariants(s: &Store) {
    s.tree.check().unwrap();
    for (&d, c) in &s.conns {
        assert!(c.out.len() <= s.cfg.quotas.outbox_bytes);
        assert!(c.framer.buffered() <= wire::HEADER_LEN + s.cfg.quotas.payload);
        if d != s.cfg.privileged {
            assert!(c.watches.len() <= s.cfg.quotas.watches);
            assert!(c.txs.len() <= s.cfg.quotas.transactions);
        }
    }
    // Q1 is checked when a domain creates nodes; the privileged domain may
    // still hand it more (SET_PERMS), so counts are checked for accuracy
    // (Tree::check), not against the quota.
}

const NAMES: [&str; 4] = ["a", "b", "a/b", "/local/domain/2/a"];

#[derive(Clone, Debug)]
enum Op {
    Write(u8, usize, u8),
    Mkdir(u8, usize),
    Rm(u8, usize),
    Read(u8, usize),
    Dir(u8, usize),
    Share(u8, usize),
    Watch(u8, usize),
    Start(u8),
    End(u8, bool),
    InTx(Box<Op>),
    Garbage(u8, Vec<u8>),
    Drain(u8),
    Cycle(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let d = 0u8..3;
    let n = 0usize..NAMES.len();
    let leaf = prop_oneof![
        (d.clone(), n.clone(), any::<u8>()).prop_map(|(d, n, v)| Op::Write(d, n, v)),
        (d.clone(), n.clone()).prop_map(|(d, n)| Op::Mkdir(d, n)),
        (d.clone(), n.clone()).prop_map(|(d, n)| Op::Rm(d, n)),
        (d.clone(), n.clone()).prop_map(|(d, n)| Op::Read(d, n)),
        (d.clone(), n.clone()).prop_map(|(d, n)| Op::Dir(d, n)),
        (d.clone(), n.clone()).prop_map(|(d, n)| Op::Share(d, n)),
        (d.clone(), n.clone()).prop_map(|(d, n)| Op::Watch(d, n)),
    ];
    prop_oneof![
        4 => leaf.clone(),
        3 => leaf.prop_map(|o| Op::InTx(Box::new(o))),
        1 => d.clone().prop_map(Op::Start),
        1 => (d.clone(), any::<bool>()).prop_map(|(d, c)| Op::End(d, c)),
        1 => (d.clone(), proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(d, v)| Op::Garbage(d, v)),
        1 => d.clone().prop_map(Op::Drain),
        1 => (1u8..3).prop_map(Op::Cycle),
    ]
}

fn run_ops(ops: &[Op]) {
    let q = Quotas {
        nodes: 6,
        watches: 3,
        transactions: 2,
        tx_nodes: 16,
        outbox_bytes: 3 * wire::MSG_MAX,
        ..Quotas::default()
    };
    let mut s = Store::new(Config { quotas: q, ..Config::default() });
    s.introduce(D1);
    s.introduce(D2);
    let mut txs: BTreeMap<u8, Vec<u32>> = BTreeMap::new();
    let mut buf = vec![0u8; 512];
    for o in ops {
        let (dom, tx, leaf) = match o {
            Op::InTx(inner) => {
                let d = match **inner {
                    Op::Write(d, ..) | Op::Mkdir(d, _) | Op::Rm(d, _) | Op::Read(d, _) | Op::Dir(d, _) => d,
                    Op::Share(d, _) | Op::Watch(d, _) => d,
                    _ => 0,
                };
                let tx = txs.get(&d).and_then(|v| v.last().copied()).unwrap_or(1);
                (d, tx, &**inner)
            }
            o => (0, 0, o),
        };
        let mut bytes = Vec::new();
        let perms = Perms::parse(b"n1\0r2\0").unwrap();
        let enc = |r: Request<'_>, tx: u32, bytes: &mut Vec<u8>| r.encode(1, tx, bytes).unwrap();
        let d = match leaf {
            Op::Write(d, n, v) => {
                enc(Request::Write(NAMES[*n], &[*v]), tx, &mut bytes);
                *d
            }
            Op::Mkdir(d, n) => {
                enc(Request::Mkdir(NAMES[*n]), tx, &mut bytes);
                *d
            }
            Op::Rm(d, n) => {
                enc(Request::Rm(NAMES[*n]), tx, &mut bytes);
                *d
            }
            Op::Read(d, n) => {
                enc(Request::Read(NAMES[*n]), tx, &mut bytes);
                *d
            }
            Op::Dir(d, n) => {
                enc(Request::Directory(NAMES[*n]), tx, &mut bytes);
                *d
            }
            Op::Share(d, n) => {
                enc(Request::SetPerms(NAMES[*n], &perms), tx, &mut bytes);
                *d
            }
            Op::Watch(d, n) => {
                enc(Request::Watch(NAMES[*n], b"t"), 0, &mut bytes);
                *d
            }
            Op::Start(d) => {
                enc(Request::TransactionStart, 0, &mut bytes);
                *d
            }
            Op::End(d, c) => {
                let t = txs.get_mut(d).and_then(|v| v.pop()).unwrap_or(1);
                enc(Request::TransactionEnd(*c), t, &mut bytes);
                *d
            }
            Op::Garbage(d, v) => {
                // Mostly a well-delimited frame with a random type and
                // payload; sometimes raw bytes (which may break the stream).
                if v.first().is_some_and(|b| b % 8 != 0) {
                    let ty = u32::from(v[0] % 25);
                    wire::encode(&mut bytes, ty, 1, tx, &[&v[1..]]).unwrap();
                } else {
                    bytes.extend_from_slice(v);
                }
                *d
            }
            Op::Drain(d) => {
                while s.take_output(DomId::new(u16::from(*d)), &mut buf) > 0 {}
                continue;
            }
            Op::Cycle(d) => {
                let d = DomId::new(u16::from(*d));
                s.release(d);
                s.introduce(d);
                txs.remove(&(d.get() as u8));
                continue;
            }
            Op::InTx(_) => continue,
        };
        let dom = if tx != 0 { dom } else { d };
        let dd = DomId::new(u16::from(dom));
        let _ = s.feed(dd, &bytes);
        // Learn transaction ids from replies when the outbox has only ours.
        if matches!(leaf, Op::Start(_)) {
            let mut out = vec![0u8; s.pending_output(dd)];
            let n = s.take_output(dd, &mut out);
            for r in Decoder::new().push_all(&out[..n]).into_iter().flatten() {
                if let Reply::Ok { header, payload } = r {
                    if header.ty == MsgType::TransactionStart as u32 {
                        if let Ok(id) = parse_tx_id(&payload) {
                            txs.entry(dom).or_default().push(id);
                        }
                    }
                }
            }
        }
        invariants(&s);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_into_feed_never_panic_and_stay_bounded(
        chunks in proptest::collection::vec((0u8..3, proptest::collection::vec(any::<u8>(), 0..300)), 0..40),
        valid_hdr in any::<bool>(),
    ) {
        let q = Quotas { outbox_bytes: 2 * wire::MSG_MAX, ..Quotas::default() };
        let mut s = Store::new(Config { quotas: q, ..Config::default() });
        s.introduce(D1);
        s.introduce(D2);
        let mut buf = [0u8; 100];
        for (i, (d, mut c)) in chunks.into_iter().enumerate() {
            if valid_hdr && c.len() >= 16 {
                // Make the header plausible so payload paths get exercised.
                let len = (c.len() - 16) as u32;
                c[0] %= 23;
                c[1..4].fill(0);
                c[12..16].copy_from_slice(&len.to_le_bytes());
            }
            let d = DomId::new(u16::from(d));
            let _ = s.feed(d, &c);
            if i % 3 == 0 {
                s.take_output(d, &mut buf);
            }
            invariants(&s);
            prop_assert!(s.node_count() < 100);
        }
    }

    #[test]
    fn random_op_sequences_keep_invariants(ops in proptest::collection::vec(op(), 0..60)) {
        run_ops(&ops);
    }

    #[test]
    fn transaction_commit_matches_a_serial_reference(
        tx_ops in proptest::collection::vec((0u8..3, 0usize..4, any::<u8>()), 1..8),
        other in proptest::collection::vec((0u8..3, 0usize..4, any::<u8>()), 0..4),
    ) {
        // Reference: a map of values where writes create parents and rm
        // removes subtrees, run serially.
        fn ref_apply(m: &mut BTreeMap<String, Vec<u8>>, (k, n, v): (u8, usize, u8)) -> Option<Vec<u8>> {
            let path = format!("/local/domain/1/{}", ["a", "b", "a/b", "c/d"][n]);
            match k {
                0 => {
                    let mut p = path.as_str();
                    while let Some(par) = path::parent(p) {
                        m.entry(par.to_string()).or_default();
                        p = par;
                    }
                    m.insert(path, vec![v]);
                    None
                }
                1 => {
                    m.retain(|q, _| !path::is_under(q, &path));
                    None
                }
                _ => m.get(&path).cloned(),
            }
        }
        fn req(k: u8, n: usize, v: &[u8]) -> (Request<'_>, ()) {
            let name = ["a", "b", "a/b", "c/d"][n];
            (match k { 0 => Request::Write(name, v), 1 => Request::Rm(name), _ => Request::Read(name) }, ())
        }
        let mut h = H::new();
        let base: Vec<_> = h.s.tree.dump().into_iter().collect();
        let mut model: BTreeMap<String, Vec<u8>> = base.into_iter().collect();
        let t = h.start(D1);
        let mut tx_model = model.clone();
        for &(k, n, v) in &tx_ops {
            let got = h.tx(D1, t, req(k, n, &[v]).0).ok();
            let want = ref_apply(&mut tx_model, (k, n, v));
            if k >= 2 {
                prop_assert_eq!(got, want);
            }
        }
        // Concurrent changes by dom0, outside the transaction.
        let touched_by_other = !other.is_empty();
        for &(k, n, v) in &other {
            let name = format!("/local/domain/1/{}", ["a", "b", "a/b", "c/d"][n]);
            let _ = h.req(D0, req(k, n, &[v]).0.with_path(&name));
            ref_apply(&mut model, (k, n, v));
        }
        let r = h.tx(D1, t, Request::TransactionEnd(true));
        if r.is_ok() {
            // Serializable: the result equals running the transaction after
            // the concurrent changes.
            for &(k, n, v) in &tx_ops {
                ref_apply(&mut model, (k, n, v));
            }
        } else {
            prop_assert_eq!(r, Err(XsError::Again));
            prop_assert!(touched_by_other);
        }
        prop_assert_eq!(h.s.tree.dump(), model);
        h.check();
    }
}

impl<'a> Request<'a> {
    fn with_path(self, p: &'a str) -> Request<'a> {
        match self {
            Request::Write(_, v) => Request::Write(p, v),
            Request::Rm(_) => Request::Rm(p),
            Request::Read(_) => Request::Read(p),
            r => r,
        }
    }
}
