//! The signed machine policy inside securevm: the policy given at start
//! (`load`: verified, checked against the installed-version state, narrowed
//! to the role of the user who logged in) and a policy pushed to a running
//! VM through the control socket (`push`: the same checks, and newer than
//! the one in force), also from a watched directory (`dir`,
//! `--policy-dir`). The policy language itself (parsing, validation,
//! signatures) is the `guest-policy` crate.

pub mod dir;
pub mod load;
pub mod push;

pub use load::{
    accept_policy, role_for_user, AcceptedPolicy, ActiveRole, PolicyConfig, PolicyLoadError,
};
pub use push::{PolicyVerifier, PushRefused, SignedPolicy};
