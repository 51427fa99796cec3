//! `net-attacker`: a hostile netfront (`sample-guests/src/bin/net_attacker.rs`)
//! throws what a front must not at dom0's netback while two bystander
//! domUs on its VLAN keep exchanging frames across the bridge.

use super::{entry, finish, need, Scenario};
use crate::qemu::Outcome;
use ringfence_bundle::Expect;
use ringfence_bundle_writer::BundleWriter;

const PINGS: u32 = 32;

pub(super) fn scenarios() -> Vec<Scenario> {
    vec![Scenario {
        name: "net-attacker",
        what: "a hostile netfront sends dom0's netback frames in pages never granted or granted to another domain, pieces past their page, frames of no bytes, shorter than a header or longer than the largest, chains that do not add up or run past 18 slots, unknown flags and extra info, posts a receive buffer it never granted, floods 2048 frames and finally lies about its producer index: every bad request is answered ERROR exactly once, the flood is served, the lie gets the NIC disconnected, and two bystander domUs on its VLAN keep exchanging frames throughout",
        bundle: |imgs| {
            let mut w = BundleWriter::new();
            let cmdline = "serve vif=evil:10:02-00-00-00-00-ee vif=alice:10:02-00-00-00-00-0a vif=bob:10:02-00-00-00-00-0b";
            w.domain(super::net_split::net_dom0(imgs, cmdline)?);
            w.domain(entry(imgs, "evil", "net_attacker", 1024, "", Expect::Poweroff)?);
            w.domain(entry(imgs, "alice", "netpeer", 1024, &format!("role=ping count={PINGS}"), Expect::Poweroff)?);
            w.domain(entry(imgs, "bob", "netpeer", 1024, &format!("role=echo count={PINGS}"), Expect::Poweroff)?);
            finish(w, imgs)
        },
        append: "",
        icount: false,
        rig: Some(super::net_split::serve_disk),
        expect: Outcome::Pass,
        check: |out| {
            need(out, "[evil] net-attacker: every hostile request refused, the flood served, the index lie disconnected")?;
            need(out, "[evil] net-attacker: a frame in a page never granted (4000): every request answered ERROR, once")?;
            need(out, &format!("[alice] alice: {PINGS}/{PINGS} pings answered, intact"))?;
            need(out, "serve: dom1: NIC ring broken: ")?;
            Ok(())
        },
    }]
}
