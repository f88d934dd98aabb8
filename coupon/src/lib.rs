//! Sluice priority coupons (work in progress).
#![forbid(unsafe_code)]
