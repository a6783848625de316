//! `securevm ctl`: sends one command to a running securevm's control
//! socket and prints the answer. Success prints a short result on stdout
//! and exits 0; any failure is one line on stderr and a non-zero status.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use clap::{Args, Subcommand};
use serde::de::DeserializeOwned;

use super::http::{decode_response, encode_request, read_reply};
use super::protocol::{
    AttachRequest, Device, ErrorBody, KeyRequest, KeyboardLayout, PolicyApplied, PolicyUpload,
    RemovableStick, Screenshot, ShutdownOutcome, ShutdownReport, ShutdownRequest, StateReport,
    StickFate, TypeRequest, VmStatus, DEFAULT_SHUTDOWN_TIMEOUT_SECS,
};

/// How long a command other than shutdown may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Attaching unlocks LUKS2 (Argon2, seconds) and detaching waits up to
/// `external_media::EJECT_TIMEOUT` for the guest.
const MEDIA_REPLY_TIMEOUT: Duration = Duration::from_secs(90);
/// Extra time a shutdown reply may take beyond the guest's bound.
const SHUTDOWN_REPLY_MARGIN: Duration = Duration::from_secs(15);

#[derive(Args)]
pub struct CtlArgs {
    /// The control socket of the running securevm (its `run --api-socket`).
    #[arg(long, value_name = "PATH")]
    pub api_socket: PathBuf,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Subcommand)]
pub enum CtlCommand {
    /// User, role, policy version, devices, refused flows, denied media.
    Status {
        /// Print the full status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify FILE (signature FILE.minisig) in the VM and apply it live.
    PushPolicy {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Hot-plug an external medium (image file or block device) under the
    /// role's media rule; prints the id to detach it with.
    AttachExternal {
        #[arg(value_name = "PATH")]
        path: PathBuf,
    },
    /// Flush and hot-unplug a medium attached with attach-external (the
    /// guest is asked to release it first).
    DetachExternal {
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Stop the vCPUs; the guest continues where it stopped on resume.
    Pause,
    /// Let paused vCPUs run again.
    Resume,
    /// Write what the display (--display) shows now to FILE as a PNG.
    Screenshot {
        #[arg(value_name = "FILE.png")]
        file: PathBuf,
    },
    /// Type TEXT on the guest's keyboard (\n is Enter, \t is Tab).
    Type {
        #[arg(value_name = "TEXT")]
        text: String,
        /// The keyboard layout the guest uses.
        #[arg(long, value_enum, default_value = "us")]
        layout: LayoutArg,
    },
    /// Press and release a key or combination: Return, Tab, Escape, F1-F12, a, ctrl+alt+f2, ...
    Key {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Press the ACPI power button and wait for the guest to power off.
    Shutdown {
        /// Seconds to wait before securevm stops the VM anyway.
        #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_SHUTDOWN_TIMEOUT_SECS)]
        timeout: u64,
    },
}

/// `ctl type --layout`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LayoutArg {
    Us,
    Jp,
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot connect to the control socket {path}: {source} (is securevm running with --api-socket {path}?)")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("talking to the control socket {path} failed: {source}")]
    Transport {
        path: String,
        source: std::io::Error,
    },
    #[error("the control socket {path} answered something that is not securevm's API")]
    Garbled { path: String },
    #[error("{0}")]
    Refused(String),
    #[error("cannot read {what} {path}: {source}")]
    Input {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Output {
        path: String,
        source: std::io::Error,
    },
    #[error("the guest did not power off within {0} s; securevm stopped the VM")]
    ShutdownForced(u64),
    #[error("the VM stopped during the shutdown, but not by powering off: {0}")]
    ShutdownOther(String),
}

/// Runs one `ctl` command; returns what to print on stdout.
pub fn run(args: &CtlArgs) -> Result<String, CtlError> {
    let socket = args.api_socket.as_path();
    match &args.command {
        CtlCommand::Status { json } => {
            let status: VmStatus = call(socket, "GET", "/status", b"", REPLY_TIMEOUT)?;
            Ok(if *json {
                serde_json::to_string_pretty(&status).unwrap_or_default()
            } else {
                format_status(&status)
            })
        }
        CtlCommand::PushPolicy { file } => {
            let upload = read_upload(file)?;
            let body = serde_json::to_vec(&upload).unwrap_or_default();
            let applied: PolicyApplied = call(socket, "PUT", "/policy", &body, REPLY_TIMEOUT)?;
            Ok(format!(
                "policy version {} applied (was {}); role {}; rules replaced on {} network device(s)",
                applied.version, applied.previous_version, applied.role, applied.network_devices
            ))
        }
        CtlCommand::AttachExternal { path } => {
            // securevm resolves the path from its own working directory.
            let path = std::path::absolute(path).map_err(|source| CtlError::Input {
                what: "the medium path",
                path: path.display().to_string(),
                source,
            })?;
            let body = serde_json::to_vec(&AttachRequest {
                path: path.display().to_string(),
            })
            .unwrap_or_default();
            let attached: serde_json::Value =
                call(socket, "PUT", "/external", &body, MEDIA_REPLY_TIMEOUT)?;
            let id = attached["id"].as_str().ok_or_else(|| CtlError::Garbled {
                path: socket.display().to_string(),
            })?;
            Ok(format!("attached as {id}"))
        }
        CtlCommand::DetachExternal { id } => {
            let _: serde_json::Value = call(
                socket,
                "DELETE",
                &format!("/external/{id}"),
                b"",
                MEDIA_REPLY_TIMEOUT,
            )?;
            Ok(format!("detached {id}"))
        }
        CtlCommand::Pause => {
            let state: StateReport = call(socket, "PUT", "/vm/pause", b"{}", REPLY_TIMEOUT)?;
            Ok(state_word(&state))
        }
        CtlCommand::Resume => {
            let state: StateReport = call(socket, "PUT", "/vm/resume", b"{}", REPLY_TIMEOUT)?;
            Ok(state_word(&state))
        }
        CtlCommand::Screenshot { file } => {
            let shot: Screenshot = call(socket, "GET", "/display/screenshot", b"", REPLY_TIMEOUT)?;
            let png = base64::engine::general_purpose::STANDARD
                .decode(shot.png_base64.as_bytes())
                .map_err(|_| CtlError::Garbled {
                    path: socket.display().to_string(),
                })?;
            write_new_file(file, &png)?;
            Ok(format!(
                "wrote {} ({}x{})",
                file.display(),
                shot.width,
                shot.height
            ))
        }
        CtlCommand::Type { text, layout } => {
            let body = serde_json::to_vec(&TypeRequest {
                text: text.clone(),
                layout: match layout {
                    LayoutArg::Us => KeyboardLayout::Us,
                    LayoutArg::Jp => KeyboardLayout::Jp,
                },
            })
            .unwrap_or_default();
            let _: serde_json::Value = call(socket, "PUT", "/display/type", &body, REPLY_TIMEOUT)?;
            Ok(format!("typed {} character(s)", text.chars().count()))
        }
        CtlCommand::Key { name } => {
            let body = serde_json::to_vec(&KeyRequest { name: name.clone() }).unwrap_or_default();
            let _: serde_json::Value = call(socket, "PUT", "/display/key", &body, REPLY_TIMEOUT)?;
            Ok(format!("pressed {name}"))
        }
        CtlCommand::Shutdown { timeout } => {
            let body = serde_json::to_vec(&ShutdownRequest {
                timeout_secs: *timeout,
            })
            .unwrap_or_default();
            let wait = Duration::from_secs(*timeout) + SHUTDOWN_REPLY_MARGIN;
            let report: ShutdownReport = call(socket, "PUT", "/vm/shutdown", &body, wait)?;
            match report.outcome {
                ShutdownOutcome::PoweredOff => Ok(format!(
                    "the guest powered off after {:.1} s",
                    report.seconds
                )),
                ShutdownOutcome::Forced => Err(CtlError::ShutdownForced(*timeout)),
                ShutdownOutcome::Stopped(why) => Err(CtlError::ShutdownOther(why)),
            }
        }
    }
}

/// Writes `bytes` to `path` through a temporary file renamed into place,
/// so a reader never sees half a PNG.
fn write_new_file(path: &Path, bytes: &[u8]) -> Result<(), CtlError> {
    let failed = |source| CtlError::Output {
        path: path.display().to_string(),
        source,
    };
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".part");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, bytes).map_err(failed)?;
    std::fs::rename(&temporary, path).map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        failed(e)
    })
}

fn state_word(state: &StateReport) -> String {
    serde_json::to_value(state.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn read_upload(file: &Path) -> Result<PolicyUpload, CtlError> {
    let read = |what: &'static str, path: &Path| {
        std::fs::read_to_string(path).map_err(|source| CtlError::Input {
            what,
            path: path.display().to_string(),
            source,
        })
    };
    let signature_path = guest_policy::signature_path_for(file);
    Ok(PolicyUpload {
        policy: read("the policy", file)?,
        signature: read("the policy's signature", &signature_path).map_err(|e| match e {
            CtlError::Input { path, source, .. }
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                CtlError::Refused(format!(
                    "the policy has no signature {path}; sign it (guest-policy sign) before pushing it"
                ))
            }
            other => other,
        })?,
        name: file
            .file_name()
            .map(|name| name.to_string_lossy().into_owned()),
    })
}

/// Sends one request and decodes a 200 answer as `T`; any other status
/// becomes the server's error message.
fn call<T: DeserializeOwned>(
    socket: &Path,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<T, CtlError> {
    let shown = socket.display().to_string();
    let transport = |source| CtlError::Transport {
        path: shown.clone(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| CtlError::Connect {
        path: shown.clone(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(transport)?;
    stream.set_write_timeout(Some(timeout)).map_err(transport)?;
    stream
        .write_all(&encode_request(method, path, body))
        .map_err(transport)?;
    let reply = read_reply(&mut stream).map_err(transport)?;
    let garbled = || CtlError::Garbled {
        path: shown.clone(),
    };
    let response = decode_response(&reply).ok_or_else(garbled)?;
    if response.status == 200 {
        serde_json::from_slice(&response.body).map_err(|_| garbled())
    } else {
        let error: ErrorBody = serde_json::from_slice(&response.body).map_err(|_| garbled())?;
        Err(CtlError::Refused(error.error))
    }
}

/// The status for a terminal: one fact per line.
pub fn format_status(status: &VmStatus) -> String {
    let mut lines = Vec::new();
    let state = serde_json::to_value(status.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    lines.push(format!("state: {state}"));
    lines.push(format!(
        "user: {}",
        status.user.as_deref().unwrap_or("(none)")
    ));
    lines.push(format!(
        "role: {}",
        status.role.as_deref().unwrap_or("(none: no --policy)")
    ));
    lines.push(format!(
        "policy version: {}",
        status
            .policy_version
            .map_or_else(|| "(none)".to_string(), |v| v.to_string())
    ));
    for device in &status.devices {
        lines.push(match device {
            Device::Disk {
                id,
                path,
                read_only,
                encrypted,
            } => format!(
                "device: disk {id} {path} ({}, {})",
                if *read_only {
                    "read-only"
                } else {
                    "read-write"
                },
                if *encrypted { "encrypted" } else { "raw" }
            ),
            Device::External { id, path, mode } => {
                format!("device: external {id} {path} ({mode})")
            }
            Device::Net {
                tap,
                mac,
                addresses,
            } => format!(
                "device: net {tap} mac {mac} addresses {}",
                if addresses.is_empty() {
                    "(none)".to_string()
                } else {
                    addresses.join(",")
                }
            ),
        });
    }
    for net in &status.network {
        let reasons: Vec<String> = net
            .refused_by_reason
            .iter()
            .map(|(reason, count)| format!("{reason} {count}"))
            .collect();
        lines.push(format!(
            "network {}: passed out {} in {}; refused out {} in {}{}; {} flows tracked; rules generation {}",
            net.tap,
            net.passed_out,
            net.passed_in,
            net.refused_out,
            net.refused_in,
            if reasons.is_empty() {
                String::new()
            } else {
                format!(" ({})", reasons.join(", "))
            },
            net.tracked_flows,
            net.rules_generation
        ));
    }
    lines.push(format!(
        "media: {} attached, {} denied",
        status.media.attached, status.media.denied
    ));
    for stick in &status.removable {
        lines.push(removable_line(stick));
    }
    lines.join("\n")
}

/// `removable /dev/sdb serial 'X' diskseq 9: attached as 'X' (encrypt)`.
fn removable_line(stick: &RemovableStick) -> String {
    let serial = stick
        .serial
        .as_ref()
        .map_or_else(|| "none".to_string(), |serial| format!("'{serial}'"));
    let fate = match (stick.fate, &stick.id, &stick.mode) {
        (StickFate::Attached, Some(id), Some(mode)) => format!("attached as '{id}' ({mode})"),
        (fate, ..) => match &stick.reason {
            Some(reason) => format!("{} ({reason})", fate.as_str()),
            None => fate.as_str().to_string(),
        },
    };
    format!(
        "removable {} serial {serial} diskseq {}: {fate}",
        stick.device, stick.diskseq
    )
}
