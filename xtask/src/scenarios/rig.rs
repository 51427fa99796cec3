//! A scenario's rig: the devices its machine gets, the host-side actions
//! that run while QEMU runs, and the host-side checks after the run.
//!
//! A scenario without a rig (`rig: None`) boots the plain machine, with the
//! command line such scenarios have always had.
//!
//! The order of a rigged run:
//! 1. The scenario's rig function gets a fresh [`Rig`]: it makes the disk
//!    image ([`Rig::disk`]) and writes what the guest must find in it, picks
//!    the NIC's host ports ([`Rig::nic`]), and registers actions
//!    ([`Rig::after_line`]) and checks ([`Rig::after_run`]).
//! 2. QEMU boots with those devices; each action starts when its line
//!    appears on the console, on its own thread, while QEMU goes on.
//! 3. After QEMU ends (and every started action has ended): the outcome
//!    and console checks of every scenario, then each action's result in
//!    order (a failed action, or one whose line never came in time, fails
//!    the scenario; a successful one's line is printed under it), then the
//!    after-run checks in order.
//!
//! Files: the disk image is `target/ringfence/<scenario>.img`, made anew
//! for every run, so nothing from an earlier run is left in it.

use crate::images;
use crate::qemu::devices::{Disk, Nic, Proto};
use crate::qemu::{Devices, Input, Typed, Watch};
use crate::Result;
use std::path::PathBuf;
use std::time::Duration;

/// A check on the host after the run, given the console.
pub type AfterRun = Box<dyn FnOnce(&str) -> Result<()>>;

/// A second boot of the same machine (same disk image) after the first
/// run's checks: a reboot, or a power cut's aftermath with
/// [`Rig::kill_on`].
pub struct Reboot {
    /// The bundle of the second boot.
    pub bundle: fn(&crate::images::Images) -> Result<Option<Vec<u8>>>,
    /// How it must end.
    pub expect: crate::qemu::Outcome,
    /// Checks on its console.
    pub check: fn(&str) -> Result<()>,
}

/// The devices and host-side work of one scenario's run.
pub struct Rig {
    scenario: &'static str,
    devices: Devices,
    watches: Vec<Watch<String>>,
    after: Vec<AfterRun>,
    kill_on: Option<String>,
    reboot: Option<Reboot>,
    typed: Vec<Typed>,
}

impl Rig {
    /// An empty rig for `scenario` (the plain machine).
    pub fn new(scenario: &'static str) -> Rig {
        Rig {
            scenario,
            devices: Devices::NONE,
            watches: Vec::new(),
            after: Vec::new(),
            kill_on: None,
            reboot: None,
            typed: Vec::new(),
        }
    }

    /// Gives the machine a virtio-blk-pci disk on a fresh sparse raw image
    /// of `bytes` (write-through); returns the image's path, for writing
    /// into it before the run and checking it after.
    pub fn disk(&mut self, bytes: u64) -> Result<PathBuf> {
        if self.devices.disk.is_some() {
            return Err(format!("scenario {} asks for a second disk; a machine has one", self.scenario));
        }
        let path = images::target_dir().join("ringfence").join(format!("{}.img", self.scenario));
        let disk = Disk::create(&path, bytes)?;
        self.devices.disk = Some(disk);
        Ok(path)
    }

    /// Gives the machine a virtio-net-pci NIC on QEMU's user network with a
    /// forward from a free port on 127.0.0.1 to each `(proto, guest port)`;
    /// returns the NIC, whose [`Nic::host_addr`] tells where to send.
    pub fn nic(&mut self, guest_ports: &[(Proto, u16)]) -> Result<Nic> {
        if self.devices.nic.is_some() {
            return Err(format!("scenario {} asks for a second NIC; a machine has one", self.scenario));
        }
        let nic = Nic::user(guest_ports)?;
        self.devices.nic = Some(nic.clone());
        Ok(nic)
    }

    /// As [`Rig::nic`], each forward to its own guest address (dom0's
    /// API at [`crate::qemu::devices::DOM0_API_IP`], say).
    pub fn nic_at(&mut self, forwards: &[(Proto, std::net::Ipv4Addr, u16)]) -> Result<Nic> {
        if self.devices.nic.is_some() {
            return Err(format!("scenario {} asks for a second NIC; a machine has one", self.scenario));
        }
        let nic = Nic::user_at(forwards)?;
        self.devices.nic = Some(nic.clone());
        Ok(nic)
    }

    /// Runs `action` on the host once a console line contains `line`, if it
    /// appears within `within` of QEMU's start. Its `Ok` text is printed
    /// under the scenario's line; an `Err`, or a line that never came,
    /// fails the scenario. The action must end by itself.
    pub fn after_line(
        &mut self,
        line: &str,
        within: Duration,
        action: impl FnOnce() -> Result<String> + Send + 'static,
    ) {
        self.watches.push(Watch::new(line, within, action));
    }

    /// Runs `check` on the host after QEMU has ended, with the console.
    pub fn after_run(&mut self, check: impl FnOnce(&str) -> Result<()> + 'static) {
        self.after.push(Box::new(check));
    }

    /// Kills QEMU hard (SIGKILL: a power cut, nothing flushed by anyone)
    /// as soon as a console line contains `line`; the run's outcome is then
    /// `Killed`.
    pub fn kill_on(&mut self, line: &str) {
        self.kill_on = Some(line.into());
    }

    /// Boots the same machine again (the same disk image, as the first run
    /// left it) once the first run passed its checks.
    pub fn reboot(&mut self, r: Reboot) {
        self.reboot = Some(r);
    }

    /// Types `text` and a newline on the serial console (dom0's shell reads
    /// it) once a console line contains `after`; the lines typed so go in
    /// the order given, each cue looked for after the line before it was
    /// typed.
    pub fn type_after(&mut self, after: &str, text: &str) {
        self.typed.push(Typed { after: after.into(), text: text.into() });
    }

    /// The console's input, for the run.
    pub fn take_input(&mut self) -> Input {
        match std::mem::take(&mut self.typed) {
            t if t.is_empty() => Input::Nothing,
            t => Input::Script(t),
        }
    }

    /// The kill cue and the second boot, for the run.
    pub fn take_power(&mut self) -> (Option<String>, Option<Reboot>) {
        (self.kill_on.take(), self.reboot.take())
    }

    /// The parts, for the run.
    pub fn into_parts(self) -> (Devices, Vec<Watch<String>>, Vec<AfterRun>) {
        (self.devices, self.watches, self.after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_rig_is_the_plain_machine() {
        let (d, w, a) = Rig::new("t-empty").into_parts();
        assert_eq!(d, Devices::NONE);
        assert!(w.is_empty() && a.is_empty());
    }

    #[test]
    fn one_disk_and_one_nic_per_machine() {
        let name: &'static str = Box::leak(format!("xtask-rig-test-{}", std::process::id()).into_boxed_str());
        let mut r = Rig::new(name);
        let p = r.disk(1 << 20).unwrap();
        assert!(p.ends_with(format!("ringfence/{name}.img")));
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 1 << 20);
        assert!(r.disk(1 << 20).is_err());
        let n = r.nic(&[(Proto::Udp, 7)]).unwrap();
        assert!(r.nic(&[(Proto::Udp, 7)]).is_err());
        let (d, _, _) = r.into_parts();
        assert_eq!(d.nic, Some(n));
        assert_eq!(d.disk.map(|d| d.image), Some(p.clone()));
        std::fs::remove_file(p).unwrap();
    }
}
