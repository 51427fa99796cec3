//! Tests of the network protocol.
