//! Raw slices, and [`VirtualDisk`]: the one type blkback serves, whatever
//! the kind of disk.

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::image::{Prep, WritePlan};
use crate::{push_extent, Device, Error, Extent, Image, PhysExtent, Region, MAX_DISCARD_SECTORS, MAX_REQUEST_SECTORS};

/// A raw slice of the real disk: virtual sector N is `region.lba + N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawSlice {
    region: Region,
}

impl RawSlice {
    /// A slice of a device of `device_sectors` sectors; the region must lie
    /// on it.
    pub fn new(device_sectors: u64, region: Region) -> Result<Self, Error> {
        if !region.on_device(device_sectors) {
            return Err(Error::RegionOutsideDevice);
        }
        Ok(Self { region })
    }

    /// The slice's region.
    pub fn region(&self) -> Region {
        self.region
    }

    /// The virtual disk's size in sectors.
    pub fn virtual_sectors(&self) -> u64 {
        self.region.sectors
    }

    fn check(&self, vlba: u64, nsect: u64, max: u64) -> Result<(), Error> {
        if nsect > max {
            return Err(Error::TooLong { nsect });
        }
        match vlba.checked_add(nsect) {
            Some(end) if end <= self.region.sectors => Ok(()),
            _ => Err(Error::OutOfRange { vlba, nsect }),
        }
    }

    /// Where `nsect` (at least one) virtual sectors from `vlba` lie on the
    /// device: [`RawSlice::plan_read`]'s one extent, checked the same way,
    /// without a list (no allocation: blkback's per-request path).
    pub fn map(&self, vlba: u64, nsect: u64) -> Result<PhysExtent, Error> {
        self.check(vlba, nsect.max(1), MAX_REQUEST_SECTORS)?;
        self.region.extent(vlba, nsect.max(1))
    }

    /// One physical extent (none for an empty request).
    pub fn plan_read(&self, vlba: u64, nsect: u64) -> Result<Vec<Extent>, Error> {
        self.check(vlba, nsect, MAX_REQUEST_SECTORS)?;
        let mut out = Vec::new();
        if nsect > 0 {
            push_extent(&mut out, Some(&self.region), Extent::Phys(self.region.extent(vlba, nsect)?));
        }
        Ok(out)
    }

    /// One physical extent, no preparation.
    pub fn plan_write(&self, vlba: u64, nsect: u64) -> Result<WritePlan, Error> {
        self.check(vlba, nsect, MAX_REQUEST_SECTORS)?;
        let data = if nsect > 0 { Vec::from([self.region.extent(vlba, nsect)?]) } else { Vec::new() };
        Ok(WritePlan::direct(self.region, vlba, nsect, data))
    }
}

/// A virtual disk as blkback serves it.
#[derive(Debug)]
pub enum VirtualDisk {
    /// A raw slice.
    Raw(RawSlice),
    /// A sparse image or an overlay.
    Image(Box<Image>),
}

impl VirtualDisk {
    /// The virtual disk's size in sectors.
    pub fn virtual_sectors(&self) -> u64 {
        match self {
            VirtualDisk::Raw(r) => r.virtual_sectors(),
            VirtualDisk::Image(i) => i.virtual_sectors(),
        }
    }

    /// See [`Image::plan_read`].
    pub fn plan_read(&self, vlba: u64, nsect: u64) -> Result<Vec<Extent>, Error> {
        match self {
            VirtualDisk::Raw(r) => r.plan_read(vlba, nsect),
            VirtualDisk::Image(i) => i.plan_read(vlba, nsect),
        }
    }

    /// See [`Image::plan_write`].
    pub fn plan_write(&mut self, vlba: u64, nsect: u64) -> Result<WritePlan, Error> {
        match self {
            VirtualDisk::Raw(r) => r.plan_write(vlba, nsect),
            VirtualDisk::Image(i) => i.plan_write(vlba, nsect),
        }
    }

    /// See [`Image::prepare`] (a raw slice's plans have no steps).
    pub fn prepare<D: Device>(&self, dev: &mut D, plan: &WritePlan) -> Result<(), Error> {
        match self {
            VirtualDisk::Raw(_) => match plan.prep().first() {
                None => Ok(()),
                Some(Prep::Zero(_) | Prep::Copy { .. }) => Err(Error::ForeignPlan),
            },
            VirtualDisk::Image(i) => i.prepare(dev, plan),
        }
    }

    /// See [`Image::commit_write`].
    pub fn commit_write(&mut self, plan: WritePlan) -> Result<(), Error> {
        match self {
            VirtualDisk::Raw(r) if plan.owner() == r.region && plan.prep().is_empty() => Ok(()),
            VirtualDisk::Raw(_) => Err(Error::ForeignPlan),
            VirtualDisk::Image(i) => i.commit_write(plan),
        }
    }

    /// See [`Image::abort_write`].
    pub fn abort_write(&mut self, plan: WritePlan) -> Result<(), Error> {
        match self {
            VirtualDisk::Raw(r) if plan.owner() == r.region && plan.prep().is_empty() => Ok(()),
            VirtualDisk::Raw(_) => Err(Error::ForeignPlan),
            VirtualDisk::Image(i) => i.abort_write(plan),
        }
    }

    /// See [`Image::discard`]; a no-op on a raw slice (after the range check).
    pub fn discard(&mut self, vlba: u64, nsect: u64) -> Result<(), Error> {
        match self {
            VirtualDisk::Raw(r) => r.check(vlba, nsect, MAX_DISCARD_SECTORS),
            VirtualDisk::Image(i) => i.discard(vlba, nsect),
        }
    }

    /// See [`Image::flush`]; a device flush for a raw slice.
    pub fn flush<D: Device>(&mut self, dev: &mut D) -> Result<(), Error> {
        match self {
            VirtualDisk::Raw(_) => Ok(dev.flush()?),
            VirtualDisk::Image(i) => i.flush(dev),
        }
    }
}
