//! Opening the VM's disks before it starts: every `--disk` (LUKS volumes
//! with the logged-in user's credential, a smart card, or the disk
//! passphrase; others raw) and every `--external` medium under the role's
//! external-media policy, each recorded in the audit log.

use crate::api::protocol::{Device, MediaCounters};
use crate::audit::{Audit, AuditError, Event};
use crate::block::{BlockBackend, RawFileBackend};
use crate::config::{DiskConfig, VmConfig};
use crate::devices::virtio::block::{disk_id_from_path, Block};
use crate::external_media::{
    allowed_serials, decide_medium, media_policy, MediaRules, Medium, MediumOutcome,
};
use crate::identity::disk::unlock_for_user;
use crate::identity::session::Session;
use crate::identity::smartcard::login::CardCredential;
use crate::identity::smartcard::{disk as card_disk, SmartCardError};
use crate::policy::ActiveRole;
use crate::storage::luks::is_luks;
use crate::storage::passphrase_input::{read_passphrase, PassphraseSource};
use crate::storage::secret::SecretBuf;
use crate::storage::EncryptedBackend;

use super::VmmError;

/// The disks and media to attach, as devices and as the control API
/// shows them, and the media decisions.
pub(super) struct OpenedDisks {
    pub blocks: Vec<Block>,
    pub devices: Vec<Device>,
    pub media: MediaCounters,
}

/// Opens every `--disk` and every `--external` medium, recording each in
/// the audit log. Secrets are read once and dropped (zeroized) before the
/// VM starts.
pub(super) fn open_disks(
    config: &VmConfig,
    session: &Session,
    role: Option<&ActiveRole>,
    card_only: Option<&CardCredential>,
) -> Result<OpenedDisks, VmmError> {
    let mut opened = OpenedDisks {
        blocks: Vec::new(),
        devices: Vec::new(),
        media: MediaCounters::default(),
    };
    let mut disk_passphrase: Option<SecretBuf> = None;
    for disk in &config.disks {
        let disk_error = |source| VmmError::Disk {
            path: disk.path.display().to_string(),
            source,
        };
        let encrypted = is_luks(&disk.path)?;
        let backend = if encrypted {
            open_encrypted(config, disk, session, card_only, &mut disk_passphrase)?
        } else {
            Box::new(RawFileBackend::open(&disk.path, disk.read_only).map_err(disk_error)?)
        };
        let id = disk_id_from_path(&disk.path);
        opened
            .blocks
            .push(Block::new(backend, &id).map_err(disk_error)?);
        opened.devices.push(Device::Disk {
            id,
            path: disk.path.display().to_string(),
            read_only: disk.read_only,
            encrypted,
        });
    }
    drop(disk_passphrase);
    open_external_media(config, role, &session.audit, &mut opened)?;
    Ok(opened)
}

/// Opens the LUKS volume `disk` with the logged-in user's credential, or
/// without a login with the card given to open disks, or else with the
/// disk passphrase (asked at most once, kept in `disk_passphrase`).
fn open_encrypted(
    config: &VmConfig,
    disk: &DiskConfig,
    session: &Session,
    card_only: Option<&CardCredential>,
    disk_passphrase: &mut Option<SecretBuf>,
) -> Result<Box<dyn BlockBackend>, VmmError> {
    let audit = &session.audit;
    if let Some(login) = &session.login {
        let unlocked = unlock_for_user(&disk.path, login)?;
        record_disk_opened(
            audit,
            disk,
            Some(unlocked.volume.keyslot),
            unlocked.own_slot,
        )?;
        let backend = EncryptedBackend::from_unlocked(&disk.path, unlocked.volume, disk.read_only)?;
        return Ok(Box::new(backend));
    }
    if let Some(card) = card_only {
        if let Some((backend, keyslot)) = open_by_card(card, disk)? {
            record_disk_opened(audit, disk, Some(keyslot), false)?;
            return Ok(Box::new(backend));
        }
    }
    if disk_passphrase.is_none() {
        let source = match &config.passphrase_file {
            Some(file) => PassphraseSource::File(file),
            None => PassphraseSource::Terminal {
                prompt: "Disk passphrase: ",
                confirm: false,
            },
        };
        *disk_passphrase = Some(read_passphrase(source)?);
    }
    let passphrase = disk_passphrase.as_ref().map_or(&[][..], |p| p.as_bytes());
    let backend = EncryptedBackend::open(&disk.path, passphrase, disk.read_only)?;
    record_disk_opened(audit, disk, None, false)?;
    Ok(Box::new(backend))
}

/// The audit record of an opened disk: `keyslot` is the LUKS keyslot
/// that opened it when known, `user_slot` whether that keyslot is the
/// logged-in user's own.
fn record_disk_opened(
    audit: &Audit,
    disk: &DiskConfig,
    keyslot: Option<u32>,
    user_slot: bool,
) -> Result<(), AuditError> {
    audit.record(Event::DiskOpened {
        path: disk.path.display().to_string(),
        keyslot,
        user_slot,
        read_only: disk.read_only,
    })
}

/// Decides every `--external` medium under `role`'s external-media
/// policy; the allowed ones join `opened`.
fn open_external_media(
    config: &VmConfig,
    role: Option<&ActiveRole>,
    audit: &Audit,
    opened: &mut OpenedDisks,
) -> Result<(), VmmError> {
    let external = &config.external;
    let medium_key = match (&external.passphrase_file, external.media.is_empty()) {
        (Some(file), false) => Some(read_passphrase(PassphraseSource::File(file))?),
        _ => None,
    };
    let rules = MediaRules {
        policy: media_policy(external, role),
        allowed_serials: allowed_serials(role),
        key: medium_key.as_ref().map(|k| k.as_bytes()),
        format_blank: external.format_blank,
    };
    for medium in &external.media {
        let shown = medium.display();
        let (backend, mode) = match decide_medium(&Medium::named(medium), &rules, audit)? {
            MediumOutcome::Attach { backend, mode } => (backend, mode),
            MediumOutcome::Denied { .. } => {
                opened.media.denied += 1;
                continue;
            }
        };
        let id = disk_id_from_path(medium);
        opened
            .blocks
            .push(Block::new(backend, &id).map_err(|source| VmmError::Disk {
                path: shown.to_string(),
                source,
            })?);
        opened.media.attached += 1;
        opened.devices.push(Device::External {
            id,
            path: shown.to_string(),
            mode: mode.to_string(),
        });
    }
    Ok(())
}

/// A LUKS disk opened by the logged-in card (and the keyslot that
/// opened it), or `None` when no keyslot of it is bound to the card (the
/// passphrase is asked instead).
fn open_by_card(
    card: &CardCredential,
    disk: &DiskConfig,
) -> Result<Option<(EncryptedBackend, u32)>, VmmError> {
    match card.with_login(|login| card_disk::unlock(&disk.path, &login.token)) {
        Ok(volume) => {
            let keyslot = volume.keyslot;
            log::info!(
                "{}: opened by the smart card (keyslot {keyslot})",
                disk.path.display()
            );
            let backend = EncryptedBackend::from_unlocked(&disk.path, volume, disk.read_only)?;
            Ok(Some((backend, keyslot)))
        }
        Err(SmartCardError::NoCardKeyslot { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
