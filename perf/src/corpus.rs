//! Traffic with real headers for the scenarios that need the packet path
//! to parse (net_null frames are all zeros): TCP/IPv4 frames with valid
//! checksums, and a minimal pcap writer for net_pcap `rx_pcap=`.
use std::io::Write;
use std::path::Path;

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn sum(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum()
}

/// One 64-byte Ethernet/IPv4/TCP ACK frame of flow `i`: source
/// 10.x.y.z:(10000 + i % 50000), destination 198.18.0.2:80, 6 bytes of
/// payload, valid IPv4 and TCP checksums.
pub fn tcp_frame(i: u32) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 0x0b]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0x0a]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = 14;
    let tcp = ip + 20;
    let total = 20 + 20 + 6;
    f[ip] = 0x45;
    f[ip + 2..ip + 4].copy_from_slice(&(total as u16).to_be_bytes());
    f[ip + 8] = 64;
    f[ip + 9] = 6;
    f[ip + 12..ip + 16].copy_from_slice(&[10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
    f[ip + 16..ip + 20].copy_from_slice(&[198, 18, 0, 2]);
    let c = fold(sum(&f[ip..ip + 20]));
    f[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
    f[tcp..tcp + 2].copy_from_slice(&(10000 + (i % 50000) as u16).to_be_bytes());
    f[tcp + 2..tcp + 4].copy_from_slice(&80u16.to_be_bytes());
    f[tcp + 4..tcp + 8].copy_from_slice(&1u32.to_be_bytes());
    f[tcp + 12] = 5 << 4;
    f[tcp + 13] = 0x10;
    f[tcp + 14..tcp + 16].copy_from_slice(&65535u16.to_be_bytes());
    let end = ip + total;
    let pseudo = sum(&f[ip + 12..ip + 20]) + 6 + (end - tcp) as u32;
    let c = fold(pseudo + sum(&f[tcp..end]));
    f[tcp + 16..tcp + 18].copy_from_slice(&c.to_be_bytes());
    f
}

/// `n` frames, one per flow.
pub fn tcp_flows(n: u32) -> Vec<Vec<u8>> {
    (0..n).map(tcp_frame).collect()
}

/// Writes a classic (microsecond, Ethernet) pcap file.
pub fn write_pcap(path: &Path, frames: &[Vec<u8>]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(24 + frames.len() * 80);
    out.extend(0xa1b2_c3d4u32.to_le_bytes());
    out.extend(2u16.to_le_bytes());
    out.extend(4u16.to_le_bytes());
    out.extend([0u8; 8]);
    out.extend(65535u32.to_le_bytes());
    out.extend(1u32.to_le_bytes());
    for (i, f) in frames.iter().enumerate() {
        out.extend((i as u32 / 1_000_000).to_le_bytes());
        out.extend((i as u32 % 1_000_000).to_le_bytes());
        out.extend((f.len() as u32).to_le_bytes());
        out.extend((f.len() as u32).to_le_bytes());
        out.extend(f);
    }
    std::fs::File::create(path)?.write_all(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_valid_checksums_and_distinct_flows() {
        let a = tcp_frame(1);
        let b = tcp_frame(2);
        assert_eq!(a.len(), 64);
        assert_ne!(a[26..30], b[26..30]);
        // A valid header sums to 0xffff (checksum included), i.e. folds to 0.
        assert_eq!(fold(sum(&a[14..34])), 0);
        let pseudo = sum(&a[26..34]) + 6 + 26;
        assert_eq!(fold(pseudo + sum(&a[34..60])), 0);
    }

    #[test]
    fn pcap_has_header_and_records() {
        let dir = std::env::temp_dir().join(format!("corpus-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.pcap");
        write_pcap(&p, &tcp_flows(3)).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes.len(), 24 + 3 * (16 + 64));
        assert_eq!(&bytes[0..4], &0xa1b2_c3d4u32.to_le_bytes());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
