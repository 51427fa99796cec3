//! Host tests of the trap loop over a fake machine.
