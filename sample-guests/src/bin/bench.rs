//! (being written)
#![no_std]
#![no_main]
use pvguest_sdk::StartInfo;
pvguest_sdk::entry!(main);
fn main(_si: &'static StartInfo) {}
