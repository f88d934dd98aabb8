//! The client side of the control socket (work in progress).
