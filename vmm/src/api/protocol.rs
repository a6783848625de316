//! What travels over the control socket: the JSON bodies of requests and
//! responses (shared by the server and `securevm ctl`), and the errors a
//! request can end in, each with its HTTP status. The routes and their
//! meaning are documented in `docs/api.md` and `docs/api.yaml`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::policy::{PushRefused, SignedPolicy};

/// Shutdown waits this long for the guest when the request names no bound.
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 30;
/// The longest shutdown wait a request may ask for.
pub const MAX_SHUTDOWN_TIMEOUT_SECS: u64 = 3600;

/// Whether the vCPUs run guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    Running,
    Paused,
    /// Stopped because the session's smart card was removed; only the
    /// card (reinserted, PIN verified again) lets it run.
    Locked,
}

/// `GET /status`. New fields are added with defaults, so older clients
/// keep reading newer servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatus {
    pub state: RunState,
    /// The authenticated user, once ID management selects one.
    #[serde(default)]
    pub user: Option<String>,
    /// The policy role whose rules apply.
    #[serde(default)]
    pub role: Option<String>,
    /// Version of the policy in force (`None`: no `--policy`).
    #[serde(default)]
    pub policy_version: Option<u64>,
    #[serde(default)]
    pub devices: Vec<Device>,
    /// One entry per network device.
    #[serde(default)]
    pub network: Vec<NetworkCounters>,
    #[serde(default)]
    pub media: MediaCounters,
    /// Sticks on the host's USB or MMC bus (`--watch-removable`) and what
    /// became of each; empty when nothing is watched.
    #[serde(default)]
    pub removable: Vec<RemovableStick>,
}

/// A stick the watch found on the host, while it is plugged in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovableStick {
    /// Its device node on the host, e.g. `/dev/sdb`.
    pub device: String,
    /// The serial its hardware reports, if any.
    pub serial: Option<String>,
    /// The kernel's sequence number for this disk.
    pub diskseq: u64,
    pub fate: StickFate,
    /// The medium's id in the VM, once attached.
    #[serde(default)]
    pub id: Option<String>,
    /// `encrypt` or `read-only`, once attached.
    #[serde(default)]
    pub mode: Option<String>,
    /// Why it is not attached.
    #[serde(default)]
    pub reason: Option<String>,
}

/// What became of a stick on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StickFate {
    /// In the guest.
    Attached,
    /// Refused by the role's rules (counted as denied).
    Denied,
    /// Another program holds it (a mount on the host, another securevm).
    Busy,
    /// It could not be attached (gone meanwhile, a damaged volume, a size
    /// change while attached).
    Failed,
    /// The role in force does not watch removable media.
    Ignored,
    /// It was attached, and the guest has let go of it (or `ctl
    /// detach-external` took it out) while it stays plugged in.
    Released,
}

impl StickFate {
    pub fn as_str(self) -> &'static str {
        match self {
            StickFate::Attached => "attached",
            StickFate::Denied => "denied",
            StickFate::Busy => "busy",
            StickFate::Failed => "failed",
            StickFate::Ignored => "ignored",
            StickFate::Released => "released",
        }
    }
}

/// A device the guest sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Device {
    Disk {
        id: String,
        path: String,
        read_only: bool,
        encrypted: bool,
    },
    External {
        id: String,
        path: String,
        /// `encrypt` or `read-only`: how the medium is attached.
        mode: String,
    },
    Net {
        tap: String,
        mac: String,
        addresses: Vec<String>,
    },
}

/// The packet filter's counters of one network device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkCounters {
    pub tap: String,
    pub passed_out: u64,
    pub passed_in: u64,
    pub refused_out: u64,
    pub refused_in: u64,
    /// Refused frames (both directions) by reason, e.g. `default`, `cut`.
    pub refused_by_reason: BTreeMap<String, u64>,
    pub tracked_flows: u64,
    /// 1 for the policy at start, +1 for every policy pushed since.
    pub rules_generation: u64,
}

/// External media decisions since the VM started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaCounters {
    pub attached: u64,
    pub denied: u64,
}

/// `PUT /policy`: the policy file and its minisign signature, as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyUpload {
    /// The exact bytes of the policy file (TOML, UTF-8).
    pub policy: String,
    /// The `.minisig` file's text.
    pub signature: String,
    /// The file name, used only in messages.
    #[serde(default)]
    pub name: Option<String>,
}

impl PolicyUpload {
    /// The upload as the policy checks see it.
    pub fn signed(&self) -> SignedPolicy<'_> {
        SignedPolicy {
            name: self.name.as_deref().unwrap_or("pushed policy"),
            policy: self.policy.as_bytes(),
            signature: &self.signature,
        }
    }
}

/// The answer to an accepted `PUT /policy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyApplied {
    pub version: u64,
    pub previous_version: u64,
    pub role: String,
    /// Network devices whose rules were replaced.
    pub network_devices: usize,
}

/// `PUT /vm/shutdown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownRequest {
    #[serde(default = "default_shutdown_timeout")]
    pub timeout_secs: u64,
}

fn default_shutdown_timeout() -> u64 {
    DEFAULT_SHUTDOWN_TIMEOUT_SECS
}

/// How a shutdown ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShutdownOutcome {
    /// The guest powered itself off after the power button.
    PoweredOff,
    /// The guest did not power off in time; securevm stopped the VM.
    Forced,
    /// The VM stopped for another reason while waiting (the text says which).
    Stopped(String),
}

/// The answer to `PUT /vm/shutdown`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShutdownReport {
    pub outcome: ShutdownOutcome,
    pub seconds: f64,
}

/// `PUT /vm/pause` and `PUT /vm/resume` answer the state after the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateReport {
    pub state: RunState,
}

/// `PUT /external`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    pub path: String,
}

/// `GET /display/screenshot`: what the display shows, as a PNG file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Screenshot {
    pub width: u32,
    pub height: u32,
    /// The PNG file's bytes, base64 (standard alphabet, padded).
    pub png_base64: String,
}

/// The keyboard layout the guest is set to, which decides the keys that
/// type a character.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyboardLayout {
    #[default]
    Us,
    Jp,
}

/// `PUT /display/type`: type `text` on the guest's keyboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeRequest {
    pub text: String,
    #[serde(default)]
    pub layout: KeyboardLayout,
}

/// `PUT /display/key`: press and release a key or a combination
/// (`Return`, `ctrl+alt+f2`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    pub name: String,
}

/// Every error body: `{"error": "..."}`, one line a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Why a request failed; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The request itself is wrong (malformed JSON, missing field).
    #[error("{0}")]
    BadRequest(String),
    /// No such route.
    #[error("{0}")]
    NotFound(String),
    /// The route exists, but not with this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The client sent its request too slowly.
    #[error("{0}")]
    Timeout(String),
    /// A body without Content-Length.
    #[error("{0}")]
    LengthRequired(String),
    /// Request larger than the server accepts.
    #[error("{0}")]
    TooLarge(String),
    /// A policy that fails verification, the version check or the role lookup.
    #[error("{0}")]
    PolicyRefused(String),
    /// The VM's state does not allow the request now.
    #[error("{0}")]
    Conflict(String),
    /// Policy refuses the request (e.g. an external medium under `deny`).
    #[error("{0}")]
    Forbidden(String),
    /// Every worker is busy.
    #[error("{0}")]
    Busy(String),
    /// The command exists in the protocol but this securevm cannot do it yet.
    #[error("{0}")]
    NotSupported(String),
    /// securevm failed while carrying out a valid request.
    #[error("{0}")]
    Internal(String),
}

impl From<PushRefused> for ApiError {
    fn from(refused: PushRefused) -> ApiError {
        ApiError::PolicyRefused(refused.to_string())
    }
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Forbidden(_) => 403,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::Timeout(_) => 408,
            ApiError::Conflict(_) => 409,
            ApiError::LengthRequired(_) => 411,
            ApiError::TooLarge(_) => 413,
            ApiError::PolicyRefused(_) => 422,
            ApiError::Internal(_) => 500,
            ApiError::NotSupported(_) => 501,
            ApiError::Busy(_) => 503,
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.to_string(),
        }
    }
}
