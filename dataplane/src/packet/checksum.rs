//! Incremental Internet checksum updates (RFC 1624, eqn. 3):
//! `HC' = ~(~HC + ~m + m')`, in one's-complement arithmetic.
//!
//! Only the changed 16-bit words are read, so a rewrite costs the same on a
//! 64-byte packet as on a 9000-byte one, and it works on the first fragment
//! of a datagram whose other fragments are never seen.
//!
//! Two properties matter and are property-tested against a full recompute:
//! - given a valid checksum, the update gives exactly the checksum a full
//!   recompute would (both land in the same canonical representative);
//! - given an invalid checksum, the error is carried over, never repaired
//!   (RFC 1624 section 3), so a corrupted packet stays detectably corrupt.

/// The one's-complement sum of the changes `~m + m'` over some 16-bit words.
/// Build it with [`Delta::word`], [`Delta::word32`] or [`Delta::word128`],
/// then apply it to every checksum that covers those words.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delta(u64);

impl Delta {
    /// Adds one changed word (`old` -> `new`). A rewrite changes at most 16
    /// words; the 64-bit accumulator would need 2^47 of them to overflow.
    #[inline(always)]
    #[must_use]
    pub fn word(self, old: u16, new: u16) -> Delta {
        Delta(self.0.wrapping_add(u64::from(!old) + u64::from(new)))
    }

    /// Adds a changed 32-bit big-endian value on a word boundary (an IPv4
    /// address). Summing it whole equals summing its two 16-bit halves:
    /// `2^16 = 1 (mod 0xFFFF)`, and its complement is the two halves'
    /// complements.
    #[inline(always)]
    #[must_use]
    pub fn word32(self, old: u32, new: u32) -> Delta {
        Delta(self.0.wrapping_add(u64::from(!old) + u64::from(new)))
    }

    /// Adds a changed 128-bit big-endian value on a word boundary (an IPv6
    /// address), as four 32-bit words.
    #[inline(always)]
    #[must_use]
    pub fn word128(self, old: u128, new: u128) -> Delta {
        self.word32((old >> 96) as u32, (new >> 96) as u32)
            .word32((old >> 64) as u32, (new >> 64) as u32)
            .word32((old >> 32) as u32, (new >> 32) as u32)
            .word32(old as u32, new as u32)
    }

    /// Adds a changed low byte of a 16-bit word whose high byte stays (the
    /// IPv4 TOS next to version/IHL): `~m + m'` is `0xFFFF - old + new`
    /// whatever the high byte, so it need not be read.
    #[inline(always)]
    #[must_use]
    pub fn low_byte(self, old: u8, new: u8) -> Delta {
        Delta(
            self.0
                .wrapping_add(0xffff - u64::from(old) + u64::from(new)),
        )
    }

    /// Adds a changed big-endian 16-bit value that sits at an odd offset of
    /// the checksummed data (a TCP option value after a single NOP): its two
    /// bytes fall in two different words. Byte-swapping commutes with the
    /// one's-complement sum (RFC 1071 section 2(B)), so the swapped values
    /// give the same delta as the two half-changed words would.
    #[inline(always)]
    #[must_use]
    pub fn word_at_odd_offset(self, old: u16, new: u16) -> Delta {
        self.word(old.swap_bytes(), new.swap_bytes())
    }
}

/// Folds a one's-complement accumulator to 16 bits (end-around carry).
/// A non-zero input never folds to 0.
#[inline(always)]
pub fn fold(sum: u64) -> u16 {
    let s = (sum & 0xffff_ffff) + (sum >> 32);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Applies a change to a stored checksum: `HC' = ~(~HC + delta)`.
#[inline(always)]
pub fn update(hc: u16, d: Delta) -> u16 {
    // fold(a + b) and fold(a + fold(b)) agree: both are congruent mod
    // 0xFFFF, and both are 0 only when a and b are.
    !fold(u64::from(!hc).wrapping_add(d.0))
}

/// Applies a change to a stored UDP checksum that is not 0 (0 means "no
/// checksum" and the caller keeps it). A result of 0 is sent as 0xFFFF
/// (RFC 768), which is the same value in one's complement.
#[inline(always)]
pub fn update_udp(hc: u16, d: Delta) -> u16 {
    match update(hc, d) {
        0 => 0xffff,
        c => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The oracle: a straightforward RFC 1071 sum over the whole data.
    fn full(data: &[u8]) -> u16 {
        let mut sum: u64 = 0;
        for c in data.chunks(2) {
            let hi = u64::from(c[0]) << 8;
            let lo = c.get(1).map_or(0, |&b| u64::from(b));
            sum += hi | lo;
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn with_checksum(mut data: Vec<u8>, at: usize) -> Vec<u8> {
        data[at] = 0;
        data[at + 1] = 0;
        let c = full(&data);
        data[at..at + 2].copy_from_slice(&c.to_be_bytes());
        data
    }

    #[test]
    fn rfc1624_example_gives_the_expected_checksum() {
        // RFC 1624 section 4: HC = 0xDD2F, m = 0x5555, m' = 0x3285 -> 0x0000.
        assert_eq!(
            update(0xdd2f, Delta::default().word(0x5555, 0x3285)),
            0x0000
        );
    }

    #[test]
    fn udp_update_never_yields_zero() {
        // ~(~0x0000 + ~0x0001 + 0x0001) would be 0 in one's complement.
        assert_eq!(update(0x0000, Delta::default().word(0x0001, 0x0001)), 0);
        assert_eq!(
            update_udp(0x0000, Delta::default().word(0x0001, 0x0001)),
            0xffff
        );
    }

    #[test]
    fn many_words_cannot_overflow_the_accumulator() {
        let mut d = Delta::default();
        for _ in 0..1_000_000 {
            d = d.word(0, 0xffff);
        }
        let _ = update(0x1234, d);
    }

    proptest! {
        #[test]
        fn word_update_matches_full_recompute(
            mut data in prop::collection::vec(any::<u8>(), 4..64),
            csum_word in 0usize..32,
            changed_word in 0usize..32,
            new in any::<u16>(),
        ) {
            data.truncate(data.len() & !1);
            let n = data.len() / 2;
            let (cw, xw) = (csum_word % n, changed_word % n);
            prop_assume!(cw != xw);
            let before = with_checksum(data, cw * 2);
            let hc = u16::from_be_bytes([before[cw * 2], before[cw * 2 + 1]]);
            let old = u16::from_be_bytes([before[xw * 2], before[xw * 2 + 1]]);
            let mut after = before.clone();
            after[xw * 2..xw * 2 + 2].copy_from_slice(&new.to_be_bytes());
            let expect = with_checksum(after.clone(), cw * 2);
            let got = update(hc, Delta::default().word(old, new));
            prop_assert_eq!(got.to_be_bytes(), [expect[cw * 2], expect[cw * 2 + 1]]);
        }

        #[test]
        fn wide_words_give_the_same_delta_as_16_bit_words(
            hc in any::<u16>(),
            old in any::<u128>(),
            new in any::<u128>(),
        ) {
            let mut narrow = Delta::default();
            for i in (0..8).rev() {
                narrow = narrow.word((old >> (16 * i)) as u16, (new >> (16 * i)) as u16);
            }
            prop_assert_eq!(update(hc, Delta::default().word128(old, new)), update(hc, narrow));
            let (o, n) = (old as u32, new as u32);
            let narrow = Delta::default().word((o >> 16) as u16, (n >> 16) as u16).word(o as u16, n as u16);
            prop_assert_eq!(update(hc, Delta::default().word32(o, n)), update(hc, narrow));
        }

        #[test]
        fn low_byte_gives_the_same_delta_as_the_word(
            hc in any::<u16>(),
            high in any::<u8>(),
            old in any::<u8>(),
            new in any::<u8>(),
        ) {
            let word = |lo: u8| u16::from_be_bytes([high, lo]);
            prop_assert_eq!(
                update(hc, Delta::default().low_byte(old, new)),
                update(hc, Delta::default().word(word(old), word(new)))
            );
        }

        #[test]
        fn odd_offset_update_matches_full_recompute(
            mut data in prop::collection::vec(any::<u8>(), 8..64),
            at in 0usize..64,
            new in any::<u16>(),
        ) {
            // Checksum in word 0; the changed value starts at an odd byte.
            data.truncate(data.len() & !1);
            let at = (at % ((data.len() - 4) / 2)) * 2 + 3;
            let before = with_checksum(data, 0);
            let hc = u16::from_be_bytes([before[0], before[1]]);
            let old = u16::from_be_bytes([before[at], before[at + 1]]);
            let mut after = before.clone();
            after[at..at + 2].copy_from_slice(&new.to_be_bytes());
            let expect = with_checksum(after, 0);
            let got = update(hc, Delta::default().word_at_odd_offset(old, new));
            prop_assert_eq!(got.to_be_bytes(), [expect[0], expect[1]]);
        }
    }
}
