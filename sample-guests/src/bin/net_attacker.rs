//! `net-attacker`: a hostile netfront. It connects to its virtual NIC like
//! any front (the store's directories, the handshake) but drives both
//! netif rings by hand, and sends dom0's netback what a front must not:
//! a frame in a page it never granted; a piece past its page; frames of no
//! bytes, of less than an Ethernet header and of more than the largest
//! frame; a chain whose pieces do not add up to its first size; a chain
//! of 19 slots; unknown flags and extra info; then a flood of frames; it
//! posts a receive buffer it never granted; last, a lie about the tx
//! ring's producer index. Every bad request must be answered with an
//! error (each exactly once), the flood served, and the lie get the NIC
//! disconnected (its backend state `Closed`); meanwhile the other domUs'
//! frames keep flowing (the `net-attacker` scenario's bystanders).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use pvguest_sdk::check::Checks;
use pvguest_sdk::event::{self, EventChannel, Port};
use pvguest_sdk::grant;
use pvguest_sdk::netif::{tx_flags, RxRequest, RxResponse, TxRequest, TxResponse, TxStatus};
use pvguest_sdk::store::Store;
use pvguest_sdk::xenbus_state::State;
use pvguest_sdk::{heap, mm, println, sched, StartInfo};
use ring_protocol::{Front, SharedMem};

pvguest_sdk::entry!(main);

fn wake(_: Port) {}

const OKAY: i16 = TxStatus::OKAY;
const ERROR: i16 = TxStatus::ERROR;

fn num(store: &mut Store, path: &str) -> u64 {
    store.read_u64(path).unwrap_or_else(|e| {
        println!("net-attacker: {path}: {e:?}");
        sched::crash()
    })
}

fn wait_state(store: &mut Store, path: &str, want: &[State]) -> State {
    store.watch(path, "attacker").expect("watch");
    loop {
        if let Ok(v) = store.read(path) {
            if let Ok(s) = State::parse(&v) {
                if want.contains(&s) {
                    let _ = store.unwatch(path, "attacker");
                    return s;
                }
            }
        }
        let _ = store.wait_event();
    }
}

/// A ring page of ours, granted to the backend, as a front ring.
fn ring<Req: ring_protocol::Pod, Rsp: ring_protocol::Pod>(back: u16) -> (Front<'static, Req, Rsp>, u32, u64) {
    let page = mm::alloc_page().expect("page");
    // SAFETY: the page is ours for the domain's life, used only as this
    // ring (and, for the tx ring, the one raw index write at the end).
    let mem = unsafe { SharedMem::new(page.va() as *mut u8, 4096) }.expect("page");
    let r = Front::<Req, Rsp>::init(mem).expect("ring");
    let gref = grant::shared().expect("grant table").lock().grant(back, page, false).expect("grant").gref();
    (r, gref, page.va())
}

fn main(si: &'static StartInfo) {
    heap::init(64).expect("heap");
    let who = "net-attacker";
    let mut c = Checks::new();
    let mut store = Store::open().unwrap_or_else(|e| {
        println!("{who}: no store: {e:?}");
        sched::crash()
    });
    let dir = format!("{}/device/vif/0", store.home());
    let back: String = store.read_string(&format!("{dir}/backend")).expect("backend path");
    let back_id = num(&mut store, &format!("{dir}/backend-id")) as u16;
    let mac = store.read_string(&format!("{dir}/mac")).expect("mac");
    wait_state(&mut store, &format!("{back}/state"), &[State::InitWait]);
    let (mut tx, tx_gref, tx_va) = ring::<TxRequest, TxResponse>(back_id);
    let (mut rx, rx_gref, _) = ring::<RxRequest, RxResponse>(back_id);
    let tx_chan = EventChannel::offer(back_id).expect("port");
    let rx_chan = EventChannel::offer(back_id).expect("port");
    tx_chan.on_event(wake).expect("handler");
    rx_chan.on_event(wake).expect("handler");
    let w = |store: &mut Store, k: &str, v: u64| store.write(&format!("{dir}/{k}"), format!("{v}").as_bytes());
    w(&mut store, "tx-ring-ref", u64::from(tx_gref)).expect("store");
    w(&mut store, "rx-ring-ref", u64::from(rx_gref)).expect("store");
    w(&mut store, "event-channel-tx", u64::from(tx_chan.port().0)).expect("store");
    w(&mut store, "event-channel-rx", u64::from(rx_chan.port().0)).expect("store");
    store.write(&format!("{dir}/state"), b"3").expect("state");
    wait_state(&mut store, &format!("{back}/state"), &[State::Connected]);
    println!("{who}: connected by hand to dom{back_id}'s netback (MAC {mac})");

    // A frame page granted read-only to the backend, with a valid frame
    // in it from our MAC; one granted to nobody it knows (domain 0x7000).
    let data = mm::alloc_page().expect("page");
    let other = mm::alloc_page().expect("page");
    let (g_data, g_other) = {
        let t = grant::shared().expect("grant table");
        let mut t = t.lock();
        (t.grant(back_id, data, true).expect("grant").gref(), t.grant(0x7000, other, true).expect("grant").gref())
    };
    let mut mac_bytes = [0u8; 6];
    for (b, p) in mac_bytes.iter_mut().zip(mac.split(':')) {
        *b = u8::from_str_radix(p, 16).unwrap_or(0);
    }
    let mut frame = [0u8; 64];
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&mac_bytes);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    // SAFETY: the page is ours for the domain's life, granted read-only:
    // only the backend's copies read it.
    let mem = unsafe { SharedMem::new(data.va() as *mut u8, 4096) }.expect("page");
    let _ = mem.write_bytes(0, &frame);

    let mut id = 0u16;
    // Pushes `reqs` (ids stamped in order) and waits for as many
    // responses; returns their statuses (None if the ring broke).
    let mut ask = |tx: &mut Front<'_, TxRequest, TxResponse>, reqs: &[TxRequest]| -> Option<alloc::vec::Vec<i16>> {
        for r in reqs {
            id = id.wrapping_add(1);
            tx.try_push(TxRequest { id, ..*r }).ok()?;
        }
        if tx.push_and_check_notify().ok()? {
            let _ = tx_chan.send();
        }
        let mut got = alloc::vec::Vec::new();
        while got.len() < reqs.len() {
            match tx.pop_response() {
                Ok(Some(r)) => got.push(r.status),
                Ok(None) => {
                    event::clear_pending(tx_chan.port());
                    if !matches!(tx.final_check_for_responses(), Ok(true)) {
                        let _ = sched::poll(&[tx_chan.port().0], pvguest_sdk::time::now_ns() + 50_000_000);
                    }
                }
                Err(_) => return None,
            }
        }
        Some(got)
    };
    let one = |gref: u32, offset: u16, flags: u16, size: u16| TxRequest { gref, offset, flags, id: 0, size };
    let good = ask(&mut tx, &[one(g_data, 0, 0, 64)]);
    c.holds(who, format_args!("a good frame is answered OKAY (the ring works): {good:?}"), good == Some([OKAY].into()));
    let more = tx_flags::MORE_DATA;
    let attacks: [(&str, alloc::vec::Vec<TxRequest>); 9] = [
        ("a frame in a page never granted (4000)", [one(4000, 0, 0, 64)].into()),
        ("a frame in a page granted to another domain", [one(g_other, 0, 0, 64)].into()),
        ("a piece past the end of its page", [one(g_data, 4090, 0, 64)].into()),
        ("a frame of no bytes", [one(g_data, 0, 0, 0)].into()),
        ("a frame shorter than an Ethernet header", [one(g_data, 0, 0, 10)].into()),
        ("a frame longer than the largest (2000 bytes)", [one(g_data, 0, 0, 2000)].into()),
        (
            "a chain whose pieces add up to more than its size",
            [one(g_data, 0, more, 50), one(g_data, 64, 0, 60)].into(),
        ),
        ("unknown flags", [one(g_data, 0, 1 << 9, 64)].into()),
        ("extra info", [one(g_data, 0, tx_flags::EXTRA_INFO, 64)].into()),
    ];
    for (what, reqs) in attacks {
        let n = reqs.len();
        let got = ask(&mut tx, &reqs);
        let ok = got.as_ref().is_some_and(|g| g.len() == n && g.iter().all(|&s| s == ERROR));
        c.holds(who, format_args!("{what}: every request answered ERROR, once ({got:?})"), ok);
    }
    // 19 slots, all marked "more data": the 18th ends the chain refused,
    // the 19th starts a new one (refused too: it is 64 bytes of nothing
    // it claims to continue).
    let chain: alloc::vec::Vec<TxRequest> = (0..19).map(|_| one(g_data, 0, more, 64)).collect();
    let got = ask(&mut tx, &chain[..18]);
    let ok = got.as_ref().is_some_and(|g| g.len() == 18 && g.iter().all(|&s| s == ERROR));
    c.holds(who, format_args!("a chain of more than 18 slots: the first 18 answered ERROR ({ok})"), ok);
    // A receive buffer it never granted: frames for it fail the copy
    // (answered with an error status), nothing else.
    let _ = rx.try_push(RxRequest { id: 1, _pad: 0, gref: 4001 });
    if matches!(rx.push_and_check_notify(), Ok(true)) {
        let _ = rx_chan.send();
    }
    // A flood: 2048 good frames, 32 at a time.
    let mut answered = 0usize;
    let batch = [one(g_data, 0, 0, 64); 32];
    for _ in 0..64 {
        if let Some(g) = ask(&mut tx, &batch) {
            answered += g.iter().filter(|&&s| s == OKAY).count();
        }
    }
    c.holds(who, format_args!("a flood of 2048 frames all answered OKAY ({answered})"), answered == 2048);
    // Last: the tx producer index jumps far past the ring.
    // SAFETY: the tx ring page is ours (above); one volatile write of the
    // request producer index at its header offset 0, the lie under test.
    unsafe { (tx_va as *mut u32).write_volatile(0x7fff_0000) };
    let _ = tx_chan.send();
    let s = wait_state(&mut store, &format!("{back}/state"), &[State::Closing, State::Closed]);
    c.holds(who, format_args!("a producer index past the ring: dom0 drops the NIC (backend {s})"), true);
    if c.wrong() == 0 {
        println!("{who}: every hostile request refused, the flood served, the index lie disconnected");
    }
    c.verdict(si.name());
}
