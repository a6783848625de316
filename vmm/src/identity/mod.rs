//! Who is using the machine: user authentication below the guest.

pub mod smartcard;
