//! The frames of in-band control packets: reading a punted Ethernet frame
//! down to its UDP payload, and building the answer that goes back the way
//! the request came (MACs, VLAN tags, addresses and ports swapped), so
//! that the appliance answers in the name of the address the client
//! wrote to.
use std::net::IpAddr;

use etherparse::{
    InternetSlice, LinkSlice, PacketBuilder, SlicedPacket, TransportSlice, VlanSlice,
};

/// A UDP datagram inside a punted frame, with what an answer needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram<'a> {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// Outer, then inner VLAN id.
    pub vlans: Vec<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: &'a [u8],
}

/// Reads `frame` as Ethernet (0–2 VLAN tags) / IPv4 or IPv6 / UDP.
/// `None` for anything else, or anything truncated; never panics.
pub fn datagram(frame: &[u8]) -> Option<Datagram<'_>> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(LinkSlice::Ethernet2(eth)) = &p.link else {
        return None;
    };
    let vlans = match &p.vlan {
        None => Vec::new(),
        Some(VlanSlice::SingleVlan(v)) => vec![v.vlan_identifier()],
        Some(VlanSlice::DoubleVlan(v)) => {
            vec![v.outer().vlan_identifier(), v.inner().vlan_identifier()]
        }
    };
    let (src, dst) = match &p.ip {
        Some(InternetSlice::Ipv4(h, _)) => {
            if h.is_fragmenting_payload() {
                return None;
            }
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
            )
        }
        Some(InternetSlice::Ipv6(h, _)) => (
            IpAddr::V6(h.source_addr()),
            IpAddr::V6(h.destination_addr()),
        ),
        None => return None,
    };
    let Some(TransportSlice::Udp(u)) = &p.transport else {
        return None;
    };
    // The UDP length bounds the payload (Ethernet may pad short frames).
    let udp_payload = usize::from(u.length()).checked_sub(8)?;
    let payload = p.payload.get(..udp_payload)?;
    Some(Datagram {
        src_mac: eth.source(),
        dst_mac: eth.destination(),
        vlans,
        src,
        dst,
        src_port: u.source_port(),
        dst_port: u.destination_port(),
        payload,
    })
}

/// Whether `d` came from one host: a unicast source MAC and address (an
/// answer to anything else would go to many, or to nobody).
pub fn unicast(d: &Datagram<'_>) -> bool {
    let mac_ok = d.src_mac[0] & 1 == 0 && d.src_mac != [0; 6];
    let ip_ok = match d.src {
        IpAddr::V4(a) => {
            !(a.is_broadcast() || a.is_multicast() || a.is_unspecified() || a.is_loopback())
        }
        IpAddr::V6(a) => !(a.is_multicast() || a.is_unspecified() || a.is_loopback()),
    };
    mac_ok && ip_ok
}

/// The answer to `req` carrying `payload`: from the address and port it
/// was sent to, to where it came from, on the same VLANs.
pub fn answer(req: &Datagram<'_>, payload: &[u8]) -> Option<Vec<u8>> {
    let eth = PacketBuilder::ethernet2(req.dst_mac, req.src_mac);
    let mut out = Vec::with_capacity(payload.len() + 80);
    let written = match (req.dst, req.src, req.vlans.as_slice()) {
        (IpAddr::V4(s), IpAddr::V4(d), []) => eth
            .ipv4(s.octets(), d.octets(), 64)
            .udp(req.dst_port, req.src_port)
            .write(&mut out, payload),
        (IpAddr::V4(s), IpAddr::V4(d), [v]) => eth
            .single_vlan(*v)
            .ipv4(s.octets(), d.octets(), 64)
            .udp(req.dst_port, req.src_port)
            .write(&mut out, payload),
        (IpAddr::V4(s), IpAddr::V4(d), [o, i]) => eth
            .double_vlan(*o, *i)
            .ipv4(s.octets(), d.octets(), 64)
            .udp(req.dst_port, req.src_port)
            .write(&mut out, payload),
        (IpAddr::V6(s), IpAddr::V6(d), []) => eth
            .ipv6(s.octets(), d.octets(), 64)
            .udp(req.dst_port, req.src_port)
            .write(&mut out, payload),
        (IpAddr::V6(s), IpAddr::V6(d), [v]) => eth
            .single_vlan(*v)
            .ipv6(s.octets(), d.octets(), 64)
            .udp(req.dst_port, req.src_port)
            .write(&mut out, payload),
        (IpAddr::V6(s), IpAddr::V6(d), [o, i]) => eth
            .double_vlan(*o, *i)
            .ipv6(s.octets(), d.octets(), 64)
            .udp(req.dst_port, req.src_port)
            .write(&mut out, payload),
        _ => return None,
    };
    written.ok().map(|_| out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request(vlan: Option<u16>, v6: bool) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let mut out = Vec::new();
        match (vlan, v6) {
            (None, false) => eth
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .udp(40000, 7466)
                .write(&mut out, b"hello"),
            (Some(v), false) => eth
                .single_vlan(v)
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .udp(40000, 7466)
                .write(&mut out, b"hello"),
            (_, true) => eth
                .ipv6([0xfd; 16], [0xfe; 16], 64)
                .udp(40000, 7466)
                .write(&mut out, b"hello"),
        }
        .unwrap();
        out
    }

    #[test]
    fn an_answer_goes_back_the_way_the_request_came() {
        for (vlan, v6) in [(None, false), (Some(42), false), (None, true)] {
            let mut f = request(vlan, v6);
            f.extend([0u8; 20]); // Ethernet padding is not payload
            let d = datagram(&f).unwrap();
            assert_eq!(d.payload, b"hello");
            assert_eq!(d.dst_port, 7466);
            let a = answer(&d, b"status").unwrap();
            let back = datagram(&a).unwrap();
            assert_eq!(back.src, d.dst);
            assert_eq!(back.dst, d.src);
            assert_eq!((back.src_port, back.dst_port), (7466, 40000));
            assert_eq!((back.src_mac, back.dst_mac), (d.dst_mac, d.src_mac));
            assert_eq!(back.vlans, d.vlans);
            assert_eq!(back.payload, b"status");
            assert!(unicast(&d));
            let mut bcast = d.clone();
            bcast.src = "255.255.255.255".parse().unwrap();
            assert!(!unicast(&bcast));
            let mut mcast_mac = d.clone();
            mcast_mac.src_mac[0] |= 1;
            assert!(!unicast(&mcast_mac));
        }
    }

    proptest! {
        #[test]
        fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = datagram(&bytes);
        }

        #[test]
        fn truncated_requests_never_panic(cut in 0usize..60) {
            let f = request(Some(7), false);
            let _ = datagram(&f[..f.len().saturating_sub(cut)]);
        }
    }
}
