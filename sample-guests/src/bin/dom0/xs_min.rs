//! A stand-in for the device store while its crate is being written: keys
//! and values, directories, watches (no permissions, transactions always
//! commit). Only for bringing the transport and blkif up.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

#[derive(Default)]
pub struct Quotas;

#[derive(Debug)]
pub struct XsError(pub &'static str);

impl core::fmt::Display for XsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.0)
    }
}

struct Conn {
    rx: Vec<u8>,
    tx: VecDeque<u8>,
    watches: Vec<(String, String)>,
}

pub struct Store {
    nodes: BTreeMap<String, Vec<u8>>,
    conns: BTreeMap<u16, Conn>,
    next_tx: u32,
}

fn abs(domid: u16, p: &str) -> String {
    if p.starts_with('/') || p.starts_with('@') {
        p.into()
    } else {
        alloc::format!("/local/domain/{domid}/{p}")
    }
}

impl Store {
    pub fn new(_: Quotas) -> Store {
        Store { nodes: BTreeMap::new(), conns: BTreeMap::new(), next_tx: 1 }
    }
    pub fn introduce(&mut self, domid: u16) {
        self.conns.insert(domid, Conn { rx: Vec::new(), tx: VecDeque::new(), watches: Vec::new() });
        let _ = self.write(0, &alloc::format!("/local/domain/{domid}"), b"");
    }
    pub fn release(&mut self, domid: u16) {
        self.conns.remove(&domid);
    }
    fn mk(&mut self, path: &str) {
        let mut p = String::new();
        for part in path.split('/').filter(|s| !s.is_empty()) {
            p.push('/');
            p.push_str(part);
            self.nodes.entry(p.clone()).or_default();
        }
    }
    fn fire(&mut self, path: &str) {
        for c in self.conns.values_mut() {
            let mut evs = Vec::new();
            for (w, t) in &c.watches {
                if path == w || path.starts_with(&alloc::format!("{w}/")) {
                    evs.push((String::from(path), t.clone()));
                }
            }
            for (p, t) in evs {
                let mut payload = p.into_bytes();
                payload.push(0);
                payload.extend_from_slice(t.as_bytes());
                payload.push(0);
                push(&mut c.tx, 15, 0, 0, &payload);
            }
        }
    }
    pub fn write(&mut self, _dom: u16, path: &str, v: &[u8]) -> Result<(), XsError> {
        self.mk(path);
        self.nodes.insert(path.into(), v.to_vec());
        self.fire(path);
        Ok(())
    }
    pub fn read(&mut self, _dom: u16, path: &str) -> Result<Vec<u8>, XsError> {
        self.nodes.get(path).cloned().ok_or(XsError("ENOENT"))
    }
    pub fn set_perms(&mut self, _dom: u16, _path: &str, _p: &[String]) -> Result<(), XsError> {
        Ok(())
    }
    pub fn feed(&mut self, domid: u16, bytes: &[u8]) -> Result<(), XsError> {
        let Some(c) = self.conns.get_mut(&domid) else { return Err(XsError("no conn")) };
        c.rx.extend_from_slice(bytes);
        loop {
            let c = self.conns.get_mut(&domid).expect("conn");
            if c.rx.len() < 16 {
                return Ok(());
            }
            let w = |i: usize| u32::from_le_bytes([c.rx[i], c.rx[i + 1], c.rx[i + 2], c.rx[i + 3]]);
            let (ty, id, tx, len) = (w(0), w(4), w(8), w(12) as usize);
            if len > 4096 {
                return Err(XsError("E2BIG"));
            }
            if c.rx.len() < 16 + len {
                return Ok(());
            }
            let payload: Vec<u8> = c.rx[16..16 + len].to_vec();
            c.rx.drain(..16 + len);
            let mut parts = payload.split(|&b| b == 0);
            let first = String::from_utf8_lossy(parts.next().unwrap_or(&[])).into_owned();
            let path = abs(domid, &first);
            let reply: Result<Vec<u8>, &str> = match ty {
                2 => self.nodes.get(&path).cloned().ok_or("ENOENT"),
                11 => {
                    let v = payload.get(first.len() + 1..).unwrap_or(&[]);
                    let _ = self.write(domid, &path, v);
                    Ok(b"OK\0".to_vec())
                }
                12 => {
                    self.mk(&path);
                    Ok(b"OK\0".to_vec())
                }
                13 => {
                    let keys: Vec<String> = self
                        .nodes
                        .keys()
                        .filter(|k| *k == &path || k.starts_with(&alloc::format!("{path}/")))
                        .cloned()
                        .collect();
                    for k in keys {
                        self.nodes.remove(&k);
                    }
                    self.fire(&path);
                    Ok(b"OK\0".to_vec())
                }
                1 => {
                    let pre = alloc::format!("{path}/");
                    let mut out = Vec::new();
                    for k in self.nodes.keys().filter(|k| k.starts_with(&pre) && !k[pre.len()..].contains('/')) {
                        out.extend_from_slice(&k.as_bytes()[pre.len()..]);
                        out.push(0);
                    }
                    Ok(out)
                }
                4 => {
                    let tok = String::from_utf8_lossy(parts.next().unwrap_or(&[])).into_owned();
                    let c = self.conns.get_mut(&domid).expect("conn");
                    c.watches.push((path.clone(), tok.clone()));
                    let mut ev = path.into_bytes();
                    ev.push(0);
                    ev.extend_from_slice(tok.as_bytes());
                    ev.push(0);
                    push(&mut c.tx, 4, id, tx, b"OK\0");
                    push(&mut c.tx, 15, 0, 0, &ev);
                    continue;
                }
                5 => {
                    let c = self.conns.get_mut(&domid).expect("conn");
                    c.watches.retain(|(p, _)| p != &path);
                    Ok(b"OK\0".to_vec())
                }
                6 => {
                    self.next_tx += 1;
                    Ok(alloc::format!("{}\0", self.next_tx).into_bytes())
                }
                7 | 14 => Ok(b"OK\0".to_vec()),
                _ => Err("ENOSYS"),
            };
            let c = self.conns.get_mut(&domid).expect("conn");
            match reply {
                Ok(v) => push(&mut c.tx, ty, id, tx, &v),
                Err(e) => {
                    let mut v = e.as_bytes().to_vec();
                    v.push(0);
                    push(&mut c.tx, 16, id, tx, &v)
                }
            }
        }
    }
    pub fn peek_output(&mut self, domid: u16, buf: &mut [u8]) -> usize {
        let Some(c) = self.conns.get(&domid) else { return 0 };
        let n = c.tx.len().min(buf.len());
        for (i, b) in c.tx.iter().take(n).enumerate() {
            buf[i] = *b;
        }
        n
    }
    pub fn consume_output(&mut self, domid: u16, n: usize) {
        if let Some(c) = self.conns.get_mut(&domid) {
            c.tx.drain(..n.min(c.tx.len()));
        }
    }
}

fn push(q: &mut VecDeque<u8>, ty: u32, id: u32, tx: u32, payload: &[u8]) {
    for w in [ty, id, tx, payload.len() as u32] {
        q.extend(w.to_le_bytes());
    }
    q.extend(payload.iter().copied());
}
