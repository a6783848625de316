//! The decision on one external medium, shared by the boot sequence
//! (`--external`) and the control API's hot-plug (`ctl attach-external`),
//! so that a medium is treated the same whenever it arrives: the role's
//! allow-list of serials first, then its rule (`encrypt`, `read-only`,
//! `deny`) through [`super::open::attach_decision`], each decision
//! recorded in the audit log before it takes effect.

use std::path::Path;

use guest_policy::ExternalMedia;

use super::open::{attach_decision, ExternalAttach, ExternalMediaPolicy};
use crate::audit::{Audit, AuditError, Event};
use crate::block::BlockBackend;
use crate::config::ExternalMediaConfig;
use crate::devices::virtio::block::disk_id_from_path;
use crate::policy::ActiveRole;
use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum MediumError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// The rules a medium is judged by: the role's (or, without a policy,
/// `--external-policy`'s) and the organisation key.
pub struct MediaRules<'a> {
    pub policy: ExternalMediaPolicy,
    /// Empty: every serial may attach.
    pub allowed_serials: &'a [String],
    pub key: Option<&'a [u8]>,
    pub format_blank: bool,
}

/// The media policy in force: `--external-policy` when given (only
/// without a policy), else the role's rule, else `deny`.
pub fn media_policy(
    external: &ExternalMediaConfig,
    role: Option<&ActiveRole>,
) -> ExternalMediaPolicy {
    external.policy.unwrap_or(
        match role.map(|active| active.role.storage.external_media) {
            Some(ExternalMedia::Encrypt) => ExternalMediaPolicy::Encrypt,
            Some(ExternalMedia::ReadOnly) => ExternalMediaPolicy::ReadOnly,
            Some(ExternalMedia::Deny) | None => ExternalMediaPolicy::Deny,
        },
    )
}

/// The role's allow-list of medium serials (empty: any).
pub fn allowed_serials(role: Option<&ActiveRole>) -> &[String] {
    role.map_or(&[][..], |active| {
        &active.role.storage.allowed_media_serials[..]
    })
}

/// A medium to judge: where it is and what identifies it.
pub struct Medium<'a> {
    pub path: &'a Path,
    pub serial: MediumSerial<'a>,
}

/// What a role's `allowed_media_serials` is matched against.
pub enum MediumSerial<'a> {
    /// An image or device named by path (`--external`, `ctl
    /// attach-external`): its file name, as the guest sees it.
    FileName,
    /// A stick found on the host's USB or MMC bus: the serial its hardware
    /// reports, recorded in the audit; `None` when it reports none (or one
    /// unfit to show), which matches no allow-list.
    Reported(Option<&'a str>),
}

impl<'a> Medium<'a> {
    /// An image or device named by path.
    pub fn named(path: &'a Path) -> Self {
        Self {
            path,
            serial: MediumSerial::FileName,
        }
    }
}

/// What became of a medium.
pub enum MediumOutcome {
    /// Open and ready for a virtio-blk device; `mode` is `encrypt` or
    /// `read-only`, as status shows it.
    Attach {
        backend: Box<dyn BlockBackend>,
        mode: &'static str,
    },
    /// Refused by policy; the reason is for the user.
    Denied { reason: String },
}

/// Judges and opens `medium` under `rules`, records the decision in the
/// audit log and prints refusals on stderr. Failing to open a medium that
/// should attach (wrong key, damaged header, I/O) is an error.
pub fn decide_medium(
    medium: &Medium<'_>,
    rules: &MediaRules<'_>,
    audit: &Audit,
) -> Result<MediumOutcome, MediumError> {
    let shown = medium.path.display();
    let (serial, recorded_serial) = match medium.serial {
        MediumSerial::FileName => (Some(disk_id_from_path(medium.path)), None),
        MediumSerial::Reported(serial) => (serial.map(str::to_string), serial.map(str::to_string)),
    };
    let decided = |decision: &str, reason: Option<String>| {
        audit.record(Event::ExternalMedium {
            path: shown.to_string(),
            serial: recorded_serial.clone(),
            decision: decision.into(),
            reason,
        })
    };
    let listed = |serial: &String| rules.allowed_serials.contains(serial);
    if !rules.allowed_serials.is_empty() && !serial.as_ref().is_some_and(listed) {
        let what = match &serial {
            Some(serial) => format!("its serial '{serial}' is not on the role's allow-list"),
            None => "it reports no serial, and the role allows only listed serials".to_string(),
        };
        decided("deny", Some(what.clone()))?;
        let reason = format!("external medium {shown} not attached: {what}");
        crate::notice!("securevm: {reason}");
        return Ok(MediumOutcome::Denied { reason });
    }
    match attach_decision(rules.policy, medium.path, rules.key, rules.format_blank)? {
        ExternalAttach::Encrypted { backend, formatted } => {
            if formatted {
                log::warn!("external medium {shown} was blank and is now a LUKS2 volume");
            }
            decided(
                "encrypt",
                formatted.then(|| "formatted a blank medium".into()),
            )?;
            Ok(MediumOutcome::Attach {
                backend: Box::new(backend),
                mode: "encrypt",
            })
        }
        ExternalAttach::ReadOnly(backend) => {
            decided("read-only", None)?;
            Ok(MediumOutcome::Attach {
                backend: Box::new(backend),
                mode: "read-only",
            })
        }
        ExternalAttach::Denied { reason } => {
            decided("deny", Some(reason.clone()))?;
            crate::notice!("securevm: external medium {reason}");
            Ok(MediumOutcome::Denied {
                reason: format!("external medium {reason}"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::external_media::hotplug::tests::Scratch;

    fn rules(policy: ExternalMediaPolicy, allowed: &[String]) -> MediaRules<'_> {
        MediaRules {
            policy,
            allowed_serials: allowed,
            key: None,
            format_blank: false,
        }
    }

    #[test]
    fn a_serial_off_the_allow_list_is_denied_before_the_rule() {
        let dir = Scratch::new("medium-allow");
        let medium = dir.raw("other.img");
        let allowed = vec!["stick.img".to_string()];
        match decide_medium(
            &Medium::named(&medium),
            &rules(ExternalMediaPolicy::ReadOnly, &allowed),
            &Audit::default(),
        )
        .unwrap()
        {
            MediumOutcome::Denied { reason } => assert!(reason.contains("allow-list"), "{reason}"),
            MediumOutcome::Attach { .. } => panic!("attached a medium off the allow-list"),
        }
    }

    #[test]
    fn a_stick_is_matched_by_its_reported_serial_and_one_without_a_serial_never_is() {
        let dir = Scratch::new("medium-reported");
        // The file name would match; a stick is judged by its hardware's serial.
        let medium = dir.raw("AA11.img");
        let allowed = vec!["AA11".to_string(), "AA11.img".to_string()];
        let judge = |serial| {
            decide_medium(
                &Medium {
                    path: &medium,
                    serial: MediumSerial::Reported(serial),
                },
                &rules(ExternalMediaPolicy::ReadOnly, &allowed),
                &Audit::default(),
            )
            .unwrap()
        };
        assert!(matches!(judge(Some("AA11")), MediumOutcome::Attach { .. }));
        match judge(Some("BB22")) {
            MediumOutcome::Denied { reason } => assert!(reason.contains("'BB22'"), "{reason}"),
            MediumOutcome::Attach { .. } => panic!("attached a serial off the list"),
        }
        match judge(None) {
            MediumOutcome::Denied { reason } => {
                assert!(reason.contains("reports no serial"), "{reason}")
            }
            MediumOutcome::Attach { .. } => panic!("attached a stick without a serial"),
        }
    }

    #[test]
    fn read_only_attaches_a_read_only_device() {
        let dir = Scratch::new("medium-ro");
        let medium = dir.raw("stick.img");
        let allowed = vec!["stick.img".to_string()];
        match decide_medium(
            &Medium::named(&medium),
            &rules(ExternalMediaPolicy::ReadOnly, &allowed),
            &Audit::default(),
        )
        .unwrap()
        {
            MediumOutcome::Attach { backend, mode } => {
                assert_eq!(mode, "read-only");
                assert!(backend.read_only());
            }
            MediumOutcome::Denied { reason } => panic!("denied: {reason}"),
        }
    }

    #[test]
    fn deny_and_encrypt_without_a_key_are_refusals_not_errors() {
        let dir = Scratch::new("medium-deny");
        let medium = dir.raw("stick.img");
        for policy in [ExternalMediaPolicy::Deny, ExternalMediaPolicy::Encrypt] {
            match decide_medium(
                &Medium::named(&medium),
                &rules(policy, &[]),
                &Audit::default(),
            )
            .unwrap()
            {
                MediumOutcome::Denied { reason } => {
                    assert!(reason.starts_with("external medium "), "{reason}")
                }
                MediumOutcome::Attach { .. } => panic!("{policy:?} attached"),
            }
        }
    }

    #[test]
    fn the_role_decides_unless_the_command_line_does() {
        let external = ExternalMediaConfig {
            media: vec![],
            policy: None,
            passphrase_file: None,
            format_blank: false,
            watch_removable: false,
        };
        assert_eq!(media_policy(&external, None), ExternalMediaPolicy::Deny);
        let forced = ExternalMediaConfig {
            policy: Some(ExternalMediaPolicy::ReadOnly),
            ..external
        };
        assert_eq!(media_policy(&forced, None), ExternalMediaPolicy::ReadOnly);
        assert!(allowed_serials(None).is_empty());
    }
}
