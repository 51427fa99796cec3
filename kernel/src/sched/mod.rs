//! Scheduling: who runs next, and who pays for each nanosecond.
//!
//! | module | owns |
//! |---|---|
//! | [`bvt`] | the borrowed-virtual-time scheduler: virtual times, warps, picks |
//! | [`account`] | the charge point: every interval goes to exactly one domain or to idle |
//! | [`heap`] | an indexed min-heap by slot: the run queue's and the timers' order |
pub mod account;
pub mod bvt;
pub mod heap;
