//! Devices a run may add to the plain machine: one virtio-blk-pci disk on a
//! raw image file and one virtio-net-pci NIC on QEMU's user network.
//!
//! Invariants:
//! - [`Devices::NONE`] adds no argument at all: a run that asks for no
//!   device gets exactly the plain machine's command line.
//! - Each device sits at a fixed PCI address on q35's root bus (`pcie.0`),
//!   whether or not the other is present: the disk at
//!   [`DISK_PCI_SLOT`]`.0`, the NIC at [`NIC_PCI_SLOT`]`.0`. On q35 (QEMU
//!   7.2's ICH9), pin INTA of root-bus slot `s` drives PIRQ `4 + s % 4`
//!   (E–H), that is IOAPIC input (GSI) `20 + s % 4`, a level line: so the
//!   disk is GSI 22 and the NIC GSI 23, never a shared line. Seen by hand:
//!   under `-qtest`, each device's config-change interrupt raised exactly
//!   that IOAPIC input, and it stayed raised until the ISR was read. (The
//!   "IRQ 11" that `info pci` shows is the firmware's legacy-PIC routing,
//!   of no use in APIC mode.)
//! - Both are modern-only virtio 1.x devices (`disable-legacy=on`): no
//!   legacy I/O-port BAR, PCI ids 1af4:1042 (block) and 1af4:1041 (net).
//!   MSI-X stays offered, as QEMU makes it; a driver that does not enable
//!   it gets INTx.
//! - The disk image is a raw file that xtask creates sparse
//!   ([`Disk::create`]); QEMU opens it `cache=writethrough` by default, so
//!   every write the guest has been told is done is in the file (and a
//!   flush is then a no-op for QEMU), or `cache=writeback`, where only what
//!   the guest flushed is durable on the host (what it wrote is still in the
//!   host's page cache, so the host reads it either way).
//! - The NIC has no option ROM (`romfile=`): nothing boots from it, and the
//!   run does not depend on iPXE's ROM files being installed.
//! - Host forwards listen on 127.0.0.1 only, on ports chosen free when the
//!   NIC is made ([`Nic::user`]), and go to the guest at [`GUEST_IP`] (the
//!   first address of QEMU's user network, what its DHCP hands out first).
//!   A port found free can be taken by another process before QEMU binds
//!   it; QEMU then fails to start with a clear message.

use crate::Result;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};

/// PCI slot (device number) of the disk on bus 0.
pub const DISK_PCI_SLOT: u8 = 2;
/// PCI slot (device number) of the NIC on bus 0.
pub const NIC_PCI_SLOT: u8 = 3;
/// The guest's address on QEMU's user network (10.0.2.0/24; the host is
/// 10.0.2.2 and the DNS proxy 10.0.2.3 there).
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// Where dom0's management API listens (its own port on its bridge,
/// `api_ip=` by default), beside the domU that takes [`GUEST_IP`].
pub const DOM0_API_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 16);
/// The NIC's MAC address (QEMU's usual first one, made explicit).
pub const GUEST_MAC: &str = "52:54:00:12:34:56";
/// The size of a disk sector, in bytes.
pub const SECTOR: u64 = 512;

/// What a run adds to the plain machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Devices {
    /// A virtio-blk-pci disk.
    pub disk: Option<Disk>,
    /// A virtio-net-pci NIC on QEMU's user network.
    pub nic: Option<Nic>,
}

impl Devices {
    /// No device: the plain machine.
    pub const NONE: Devices = Devices { disk: None, nic: None };

    /// The QEMU arguments that attach these devices (none for [`Devices::NONE`]).
    pub fn qemu_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(d) = &self.disk {
            let file = d.image.to_string_lossy().replace(',', ",,");
            a.push("-drive".into());
            a.push(format!("file={file},format=raw,if=none,id=rfdisk0,cache={}", d.cache.qemu_name()));
            a.push("-device".into());
            a.push(format!(
                "virtio-blk-pci,drive=rfdisk0,bus=pcie.0,addr={DISK_PCI_SLOT:#x}.0,disable-legacy=on,disable-modern=off"
            ));
        }
        if let Some(n) = &self.nic {
            let mut netdev = "user,id=rfnet0".to_string();
            for f in &n.forwards {
                netdev.push_str(&format!(
                    ",hostfwd={}:127.0.0.1:{}-{}:{}",
                    f.proto.qemu_name(),
                    f.host_port,
                    f.guest_ip,
                    f.guest_port
                ));
            }
            a.push("-netdev".into());
            a.push(netdev);
            // `RF_PCAP=FILE`: QEMU records every frame of the NIC (both
            // ways, as pcap) for reading after a run.
            if let Ok(f) = std::env::var("RF_PCAP") {
                a.push("-object".into());
                a.push(format!("filter-dump,id=rfdump,netdev=rfnet0,file={}", f.replace(',', ",,")));
            }
            a.push("-device".into());
            a.push(format!(
                "virtio-net-pci,netdev=rfnet0,mac={GUEST_MAC},bus=pcie.0,addr={NIC_PCI_SLOT:#x}.0,\
                 disable-legacy=on,disable-modern=off,romfile="
            ));
        }
        a
    }
}

/// How QEMU caches the disk image on the host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DiskCache {
    /// Every write reaches the file (synced) before the guest hears it is
    /// done; the guest sees a disk without a volatile write cache.
    #[default]
    WriteThrough,
    /// Writes go to the host's page cache; a guest flush syncs the file.
    /// Faster writes, for benchmarks that should not measure the host's disk.
    WriteBack,
}

impl DiskCache {
    fn qemu_name(self) -> &'static str {
        match self {
            DiskCache::WriteThrough => "writethrough",
            DiskCache::WriteBack => "writeback",
        }
    }
}

/// A virtio-blk-pci disk on a raw image file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// The raw image file.
    pub image: PathBuf,
    /// How QEMU caches it.
    pub cache: DiskCache,
}

impl Disk {
    /// Creates a sparse raw image of `bytes` (a whole number of sectors) at
    /// `image`, replacing any file there (so no earlier run's data is left),
    /// and returns a write-through disk on it.
    pub fn create(image: &Path, bytes: u64) -> Result<Disk> {
        if bytes == 0 || !bytes.is_multiple_of(SECTOR) {
            return Err(format!(
                "a disk image must be a whole, non-zero number of {SECTOR}-byte sectors, not {bytes} bytes"
            ));
        }
        if let Some(dir) = image.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let f = File::create(image).map_err(|e| format!("cannot create disk image {}: {e}", image.display()))?;
        f.set_len(bytes).map_err(|e| format!("cannot size disk image {} to {bytes} bytes: {e}", image.display()))?;
        Ok(Disk { image: image.to_path_buf(), cache: DiskCache::WriteThrough })
    }
}

/// A transport protocol of a host forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
}

impl Proto {
    pub fn qemu_name(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        }
    }
}

/// One host forward: host `127.0.0.1:host_port` to the guest's `guest_port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forward {
    /// UDP or TCP.
    pub proto: Proto,
    /// The port on 127.0.0.1 that QEMU listens on.
    pub host_port: u16,
    /// The guest's port it goes to, at `guest_ip` ([`GUEST_IP`] unless
    /// made with [`Nic::user_at`]).
    pub guest_port: u16,
    pub guest_ip: Ipv4Addr,
}

/// A virtio-net-pci NIC on QEMU's user network, with its host forwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    /// The forwards, in the order asked for.
    pub forwards: Vec<Forward>,
}

impl Nic {
    /// A NIC forwarding each `(proto, guest port)` from a host port on
    /// 127.0.0.1 found free now.
    pub fn user(guest_ports: &[(Proto, u16)]) -> Result<Nic> {
        let at: Vec<(Proto, Ipv4Addr, u16)> = guest_ports.iter().map(|&(p, port)| (p, GUEST_IP, port)).collect();
        Nic::user_at(&at)
    }

    /// A NIC forwarding each `(proto, guest address, guest port)` from a
    /// host port on 127.0.0.1 found free now (guest ports are distinct:
    /// [`Nic::host_addr`] finds a forward by its port).
    pub fn user_at(forwards_to: &[(Proto, Ipv4Addr, u16)]) -> Result<Nic> {
        let mut forwards: Vec<Forward> = Vec::new();
        for &(proto, guest_ip, guest_port) in forwards_to {
            if forwards.iter().any(|f| f.proto == proto && f.guest_port == guest_port) {
                return Err(format!("guest port {} {guest_port} is forwarded twice", proto.qemu_name()));
            }
            // Distinct host ports even if the OS hands one out twice.
            let host_port = loop {
                let p = free_port(proto)?;
                if !forwards.iter().any(|f| f.proto == proto && f.host_port == p) {
                    break p;
                }
            };
            forwards.push(Forward { proto, host_port, guest_port, guest_ip });
        }
        Ok(Nic { forwards })
    }

    /// The host address that reaches the guest's `guest_port`.
    pub fn host_addr(&self, proto: Proto, guest_port: u16) -> Result<SocketAddr> {
        self.forwards
            .iter()
            .find(|f| f.proto == proto && f.guest_port == guest_port)
            .map(|f| SocketAddr::from((Ipv4Addr::LOCALHOST, f.host_port)))
            .ok_or_else(|| format!("the NIC has no {} forward to guest port {guest_port}", proto.qemu_name()))
    }
}

/// A port on 127.0.0.1 that is free for `proto` now (the OS's choice for
/// port 0). Another process may take it before it is used.
pub fn free_port(proto: Proto) -> Result<u16> {
    let any = (Ipv4Addr::LOCALHOST, 0);
    let port = match proto {
        Proto::Udp => UdpSocket::bind(any).and_then(|s| s.local_addr()),
        Proto::Tcp => TcpListener::bind(any).and_then(|s| s.local_addr()),
    }
    .map_err(|e| format!("cannot find a free {} port on 127.0.0.1: {e}", proto.qemu_name()))?
    .port();
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("xtask-devices-{}-{name}", std::process::id()))
    }

    #[test]
    fn no_devices_add_no_argument() {
        assert!(Devices::NONE.qemu_args().is_empty());
        assert_eq!(Devices::default(), Devices::NONE);
    }

    #[test]
    fn the_disk_is_raw_writethrough_at_its_fixed_slot() {
        let d = Devices { disk: Some(Disk { image: "/t/a,b.img".into(), cache: DiskCache::WriteThrough }), nic: None };
        assert_eq!(
            d.qemu_args(),
            [
                "-drive",
                "file=/t/a,,b.img,format=raw,if=none,id=rfdisk0,cache=writethrough",
                "-device",
                "virtio-blk-pci,drive=rfdisk0,bus=pcie.0,addr=0x2.0,disable-legacy=on,disable-modern=off",
            ]
        );
        let wb = Devices { disk: Some(Disk { image: "/t/x.img".into(), cache: DiskCache::WriteBack }), nic: None };
        assert!(wb.qemu_args()[1].ends_with(",cache=writeback"));
    }

    #[test]
    fn the_nic_forwards_each_port_from_localhost_to_the_guest() {
        let n = Nic {
            forwards: vec![
                Forward { proto: Proto::Udp, host_port: 40001, guest_port: 7, guest_ip: GUEST_IP },
                Forward { proto: Proto::Tcp, host_port: 40002, guest_port: 80, guest_ip: DOM0_API_IP },
            ],
        };
        let d = Devices { disk: None, nic: Some(n.clone()) };
        assert_eq!(
            d.qemu_args(),
            [
                "-netdev",
                "user,id=rfnet0,hostfwd=udp:127.0.0.1:40001-10.0.2.15:7,hostfwd=tcp:127.0.0.1:40002-10.0.2.16:80",
                "-device",
                "virtio-net-pci,netdev=rfnet0,mac=52:54:00:12:34:56,bus=pcie.0,addr=0x3.0,\
                 disable-legacy=on,disable-modern=off,romfile=",
            ]
        );
        assert_eq!(n.host_addr(Proto::Tcp, 80).unwrap(), "127.0.0.1:40002".parse().unwrap());
        assert!(n.host_addr(Proto::Udp, 80).is_err());
    }

    #[test]
    fn nic_ports_are_free_distinct_and_bindable() {
        let n = Nic::user(&[(Proto::Udp, 7), (Proto::Tcp, 80), (Proto::Udp, 9)]).unwrap();
        let ports: Vec<u16> = n.forwards.iter().map(|f| f.host_port).collect();
        assert!(ports.iter().all(|&p| p != 0));
        assert_ne!(ports[0], ports[2]);
        // Free means QEMU can bind it: so can we.
        UdpSocket::bind((Ipv4Addr::LOCALHOST, ports[0])).unwrap();
        TcpListener::bind((Ipv4Addr::LOCALHOST, ports[1])).unwrap();
        assert!(Nic::user(&[(Proto::Udp, 7), (Proto::Udp, 7)]).is_err());
    }

    #[test]
    fn a_disk_image_is_sparse_sized_and_fresh() {
        let p = temp("sparse.img");
        std::fs::write(&p, b"an earlier run's data").unwrap();
        let d = Disk::create(&p, 64 << 20).unwrap();
        assert_eq!(d.image, p);
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.len(), 64 << 20);
        // Sparse: (almost) no block allocated for 64 MiB.
        assert!(m.blocks() * 512 < 1 << 20, "{} blocks allocated", m.blocks());
        let head = std::fs::read(&p).unwrap();
        assert!(head[..64].iter().all(|&b| b == 0), "the earlier data was not removed");
        std::fs::remove_file(&p).unwrap();
        assert!(Disk::create(&p, 1000).is_err());
        assert!(Disk::create(&p, 0).is_err());
    }
}
