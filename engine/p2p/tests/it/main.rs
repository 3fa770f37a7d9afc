//! Integration tests of kwaainet-p2p, in one binary (one link of the libp2p stack instead
//! of one per file). Every test uses real nodes over loopback TCP or the memory transport.

mod http;
mod network;
mod sim;
