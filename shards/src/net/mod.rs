//! Packet delivery to and from the shard: batched UDP IO ([`udp`]), the per-shard sockets of one
//! `SO_REUSEPORT` group ([`reuseport`]), kernel steering by connection ID ([`steering`]), the
//! hand-off of packets a shard received for another shard's connection ([`handoff`]), and the
//! largest datagram each client's route carries ([`path_mtu`]).

pub mod handoff;
pub mod path_mtu;
pub mod reuseport;
pub mod source_limit;
pub mod steering;
pub mod udp;
