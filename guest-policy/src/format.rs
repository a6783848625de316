//! Policy format versions: which schema a policy file is written in, and
//! which securevm can read it.
//!
//! The parser refuses unknown keys, so a securevm that meets a key from a
//! newer schema would refuse the policy with a puzzling "unknown key" and
//! lock its users out. `[policy] format = N` names the schema instead; a
//! file without it is format 1. The format is read from the raw TOML before
//! the strict parse, so a policy from a newer schema is refused with the
//! one message that helps (update securevm first), whatever new keys it
//! contains.
//!
//! Each schema change adds a row to [`FORMAT_FEATURES`]; validation then
//! refuses a policy that uses a feature without declaring its format, and
//! `guest-policy lint --oldest-format N` warns when a policy needs a newer
//! format than the oldest securevm in the fleet reads.

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::diag::{Diagnostic, SourceMap};
use crate::model::Policy;

/// The newest policy format this build of securevm and guest-policy reads.
pub const NEWEST_READABLE_FORMAT: u32 = 4;

/// The format of a policy that does not declare one.
pub const DEFAULT_FORMAT: u32 = 1;

/// A policy feature introduced after format 1: using it needs `format`.
#[derive(Debug, Clone, Copy)]
pub struct FormatFeature {
    /// How the feature is written in the policy, for messages (a key path).
    pub key: &'static str,
    /// The first format that has the feature.
    pub format: u32,
    /// Whether a policy uses the feature.
    pub used_by: fn(&Policy) -> bool,
}

/// Every feature added to the schema after format 1, in format order.
/// Format 1 is the schema as first published; a change to the schema adds
/// its key here and raises [`NEWEST_READABLE_FORMAT`].
pub const FORMAT_FEATURES: &[FormatFeature] = &[
    FormatFeature {
        key: "[roles.NAME.storage] watch_removable",
        format: 2,
        // Written at all, even `false`: a format-1 securevm refuses the key.
        used_by: |policy| {
            policy
                .roles
                .values()
                .any(|role| role.storage.watch_removable.is_some())
        },
    },
    FormatFeature {
        key: "[roles.NAME.display] clipboard",
        format: 3,
        // The table at all, even empty or "none": a format-2 securevm
        // refuses it.
        used_by: |policy| policy.roles.values().any(|role| role.display.is_some()),
    },
    FormatFeature {
        key: "[audit] forward",
        format: 4,
        // Written at all, even empty: a format-3 securevm refuses the key.
        used_by: |policy| !policy.audit.forward.is_empty(),
    },
];

/// The `format` key as the probe finds it, before the strict parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeclaredFormat {
    /// The format, [`DEFAULT_FORMAT`] if the key is absent.
    pub format: u32,
    /// Where `format = N` is written; `None` if the key is absent.
    pub span: Option<Range<usize>>,
}

/// Only `[policy] format`; everything else is ignored so keys from newer
/// formats do not stop the probe.
#[derive(Debug, Deserialize)]
struct FormatProbe {
    policy: Option<FormatProbeMeta>,
}

#[derive(Debug, Deserialize)]
struct FormatProbeMeta {
    format: Option<Spanned<toml::Value>>,
}

/// Reads `[policy] format` from raw TOML and checks that this build reads
/// it. Text the probe cannot parse is left to the strict parse, which
/// locates the syntax error; so is a `[policy]` that is not a table.
pub(crate) fn declared_format(
    map: &SourceMap<'_>,
    text: &str,
    newest_readable: u32,
) -> Result<DeclaredFormat, Diagnostic> {
    let Ok(probe) = toml::from_str::<FormatProbe>(text) else {
        return Ok(DeclaredFormat {
            format: DEFAULT_FORMAT,
            span: None,
        });
    };
    let Some(raw) = probe.policy.and_then(|meta| meta.format) else {
        return Ok(DeclaredFormat {
            format: DEFAULT_FORMAT,
            span: None,
        });
    };
    let span = raw.span();
    let format = match raw.get_ref() {
        toml::Value::Integer(number) => *number,
        other => {
            return Err(map.error(
                span,
                format!(
                    "format {other} is not valid; write a whole number such as format = {DEFAULT_FORMAT} (or leave the key out for format {DEFAULT_FORMAT})"
                ),
            ))
        }
    };
    match u32::try_from(format) {
        Ok(0) => Err(not_positive(map, span, 0)),
        Ok(format) if format <= newest_readable => Ok(DeclaredFormat {
            format,
            span: Some(span),
        }),
        Ok(_) => Err(too_new(map, span, format, newest_readable)),
        Err(_) if format < 0 => Err(not_positive(map, span, format)),
        Err(_) => Err(too_new(map, span, format, newest_readable)),
    }
}

fn not_positive(map: &SourceMap<'_>, span: Range<usize>, format: i64) -> Diagnostic {
    map.error(
        span,
        format!(
            "format {format} is not valid; policy formats start at {DEFAULT_FORMAT} (leave the key out for format {DEFAULT_FORMAT})"
        ),
    )
}

fn too_new(
    map: &SourceMap<'_>,
    span: Range<usize>,
    format: i64,
    newest_readable: u32,
) -> Diagnostic {
    map.error(
        span,
        format!(
            "this policy needs policy format {format}, but this securevm/guest-policy reads formats up to {newest_readable}; update securevm (and guest-policy) on every machine to a release that reads format {format} before pushing this policy"
        ),
    )
}

/// The features a policy uses that its declared format does not have,
/// as errors located at the `format` key (or the file start).
pub(crate) fn undeclared_features(
    map: &SourceMap<'_>,
    policy: &Policy,
    declared: &DeclaredFormat,
    features: &[FormatFeature],
) -> Vec<Diagnostic> {
    features
        .iter()
        .filter(|feature| feature.format > declared.format && (feature.used_by)(policy))
        .map(|feature| {
            map.error(
                declared.span.clone().unwrap_or(0..0),
                format!(
                    "{} needs policy format {}, but the policy declares format {}; write format = {} in [policy] (and update securevm everywhere before pushing it)",
                    feature.key, feature.format, declared.format, feature.format
                ),
            )
        })
        .collect()
}

/// `guest-policy lint --oldest-format N`: a warning when the policy needs a
/// newer format than `oldest_in_fleet`, the format the oldest securevm the
/// administrator runs reads. `text` is the policy that validated.
pub fn rollout_warning(file_name: &str, text: &str, oldest_in_fleet: u32) -> Option<Diagnostic> {
    let map = SourceMap::new(file_name, text);
    let declared = declared_format(&map, text, u32::MAX).ok()?;
    (declared.format > oldest_in_fleet).then(|| {
        map.warning(
            declared.span.unwrap_or(0..0),
            format!(
                "this policy needs policy format {}, but the oldest securevm in the fleet reads format {oldest_in_fleet}; machines still on that release would refuse it: update securevm everywhere first, then push this policy",
                declared.format
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AuditForward, Clipboard, DisplayPolicy, RemoteCollector};
    use crate::validate::validate_for_format;

    const EXAMPLE: &str = include_str!("../examples/policy.toml");

    fn with_format(format: &str) -> String {
        EXAMPLE.replacen("version = 7", &format!("version = 7\nformat = {format}"), 1)
    }

    fn probe(text: &str) -> Result<DeclaredFormat, Diagnostic> {
        declared_format(
            &SourceMap::new("p.toml", text),
            text,
            NEWEST_READABLE_FORMAT,
        )
    }

    #[test]
    fn a_policy_without_the_key_is_format_1() {
        assert_eq!(
            probe(EXAMPLE),
            Ok(DeclaredFormat {
                format: 1,
                span: None
            })
        );
        assert_eq!(probe(&with_format("1")).unwrap().format, 1);
    }

    #[test]
    fn zero_negative_and_non_integer_formats_are_refused() {
        for (value, expected) in [
            ("0", "format 0 is not valid; policy formats start at 1"),
            ("-3", "format -3 is not valid; policy formats start at 1"),
            ("\"2\"", "format \"2\" is not valid; write a whole number"),
            ("1.5", "format 1.5 is not valid; write a whole number"),
        ] {
            let error = probe(&with_format(value)).unwrap_err();
            assert!(error.message.contains(expected), "{value}: {error}");
            assert_eq!(error.line, 18, "{error}");
        }
    }

    #[test]
    fn a_newer_format_is_refused_even_with_keys_this_build_does_not_know() {
        let next = NEWEST_READABLE_FORMAT + 1;
        let newer = with_format(&next.to_string()).replacen(
            "[audit]",
            "[display]\nmode = \"x\"\n\n[audit]",
            1,
        );
        for format in [i64::MAX.to_string(), next.to_string()] {
            let text = newer.replacen(
                &format!("format = {next}"),
                &format!("format = {format}"),
                1,
            );
            let error = probe(&text).unwrap_err();
            assert!(
                error.message.contains(&format!(
                    "this policy needs policy format {format}, but this securevm/guest-policy reads formats up to {NEWEST_READABLE_FORMAT}; update securevm (and guest-policy)"
                )),
                "{error}"
            );
        }
    }

    #[test]
    fn syntax_errors_are_left_to_the_strict_parse() {
        assert_eq!(probe("[policy\nformat = 9").unwrap().format, 1);
        assert_eq!(probe("policy = 3").unwrap().format, 1);
    }

    #[test]
    fn lint_warns_when_the_fleet_is_older_than_the_policy() {
        // A build that reads format 2 accepts a policy declaring it.
        let newer = with_format("2");
        let validated = validate_for_format("p.toml", &newer, 2, &[]).unwrap();
        assert_eq!(validated.policy.meta.format, 2);
        let warning = rollout_warning("p.toml", &newer, 1).expect("a warning");
        assert_eq!(warning.severity, crate::Severity::Warning);
        assert_eq!(warning.line, 18);
        assert!(
            warning.message.contains("needs policy format 2")
                && warning
                    .message
                    .contains("update securevm everywhere first, then push this policy"),
            "{warning}"
        );
        assert_eq!(rollout_warning("p.toml", &newer, 2), None);
        assert_eq!(rollout_warning("p.toml", EXAMPLE, 1), None);
        assert_eq!(rollout_warning("p.toml", &with_format("1"), 1), None);
    }

    #[test]
    fn a_feature_needs_its_format_declared() {
        // The mechanism the next schema change uses, with a feature table of
        // this test's own: "uses a VPN" standing in for a new key.
        let features = [FormatFeature {
            key: "[roles.NAME.network.vpn]",
            format: 2,
            used_by: |policy| policy.roles.values().any(|role| role.network.vpn.is_some()),
        }];
        let errors = validate_for_format("p.toml", EXAMPLE, 2, &features).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].message.starts_with(
                "[roles.NAME.network.vpn] needs policy format 2, but the policy declares format 1; write format = 2 in [policy]"
            ),
            "{}",
            errors[0]
        );
        validate_for_format("p.toml", &with_format("2"), 2, &features).unwrap();
    }

    /// The example with `watch_removable = VALUE` in the staff role.
    fn watching(value: &str) -> String {
        EXAMPLE.replacen(
            "external_media = \"encrypt\"",
            &format!("external_media = \"encrypt\"\nwatch_removable = {value}"),
            1,
        )
    }

    #[test]
    fn watch_removable_is_read_in_format_2_and_false_by_default() {
        let example = crate::validate("p.toml", EXAMPLE).unwrap().policy;
        assert!(example.roles.values().all(
            |role| role.storage.watch_removable.is_none() && !role.storage.watches_removable()
        ));
        for (value, written) in [("true", true), ("false", false)] {
            let text = watching(value).replacen("version = 7", "version = 7\nformat = 2", 1);
            let policy = crate::validate("p.toml", &text).unwrap().policy;
            let staff = &policy.roles["staff"].storage;
            assert_eq!(staff.watch_removable, Some(written));
            assert_eq!(staff.watches_removable(), written);
            assert_eq!(policy.roles["contractor"].storage.watch_removable, None);
            assert_eq!(policy.meta.format, 2);
        }
    }

    #[test]
    fn watch_removable_without_format_2_is_refused_even_when_false() {
        // A format-1 securevm refuses the key whatever its value.
        for value in ["true", "false"] {
            for text in [
                watching(value),
                watching(value).replacen("version = 7", "version = 7\nformat = 1", 1),
            ] {
                let errors = crate::validate("p.toml", &text).unwrap_err();
                assert_eq!(errors.len(), 1, "{errors:?}");
                assert_eq!(
                    errors[0].message,
                    "[roles.NAME.storage] watch_removable needs policy format 2, but the policy declares format 1; write format = 2 in [policy] (and update securevm everywhere before pushing it)"
                );
            }
        }
    }

    #[test]
    fn lint_warns_a_fleet_on_format_1_about_watch_removable() {
        let text = watching("true").replacen("version = 7", "version = 7\nformat = 2", 1);
        crate::validate("p.toml", &text).unwrap();
        let warning = rollout_warning("p.toml", &text, 1).expect("a warning");
        assert_eq!((warning.line, warning.column), (18, 10));
        assert!(
            warning
                .message
                .starts_with("this policy needs policy format 2, but the oldest securevm in the fleet reads format 1"),
            "{warning}"
        );
        assert_eq!(rollout_warning("p.toml", &text, 2), None);
    }

    /// The example with a `[roles.staff.display]` table holding `body`.
    fn with_display(body: &str) -> String {
        EXAMPLE.replacen(
            "\n[roles.staff.network]",
            &format!("\n[roles.staff.display]\n{body}\n[roles.staff.network]"),
            1,
        )
    }

    #[test]
    fn clipboard_is_read_in_format_3_and_none_by_default() {
        let example = crate::validate("p.toml", EXAMPLE).unwrap().policy;
        for role in example.roles.values() {
            assert_eq!(role.display, None);
            assert_eq!(role.clipboard(), Clipboard::None);
        }
        for (body, expected, to_guest, from_guest) in [
            ("clipboard = \"none\"\n", Clipboard::None, false, false),
            (
                "clipboard = \"to-guest\"\n",
                Clipboard::ToGuest,
                true,
                false,
            ),
            (
                "clipboard = \"from-guest\"\n",
                Clipboard::FromGuest,
                false,
                true,
            ),
            ("clipboard = \"both\"\n", Clipboard::Both, true, true),
            ("", Clipboard::None, false, false),
        ] {
            let text = with_display(body).replacen("version = 7", "version = 7\nformat = 3", 1);
            let policy = crate::validate("p.toml", &text).unwrap().policy;
            let staff = &policy.roles["staff"];
            assert_eq!(
                staff.display,
                Some(DisplayPolicy {
                    clipboard: expected
                })
            );
            assert_eq!(staff.clipboard(), expected);
            assert_eq!(staff.clipboard().allows_to_guest(), to_guest, "{body}");
            assert_eq!(staff.clipboard().allows_from_guest(), from_guest, "{body}");
            assert_eq!(policy.roles["contractor"].clipboard(), Clipboard::None);
        }
    }

    #[test]
    fn the_display_table_without_format_3_is_refused_even_when_none() {
        // A format-2 securevm refuses the table whatever it holds.
        for body in ["clipboard = \"both\"\n", "clipboard = \"none\"\n", ""] {
            for format in ["", "\nformat = 1", "\nformat = 2"] {
                let text =
                    with_display(body).replacen("version = 7", &format!("version = 7{format}"), 1);
                let errors = crate::validate("p.toml", &text).unwrap_err();
                assert_eq!(errors.len(), 1, "{errors:?}");
                let declared = if format.is_empty() {
                    "1"
                } else {
                    &format[10..]
                };
                assert_eq!(
                    errors[0].message,
                    format!("[roles.NAME.display] clipboard needs policy format 3, but the policy declares format {declared}; write format = 3 in [policy] (and update securevm everywhere before pushing it)")
                );
            }
        }
    }

    #[test]
    fn a_format_2_build_refuses_a_format_3_policy_with_the_update_message() {
        let text = with_display("clipboard = \"both\"\n").replacen(
            "version = 7",
            "version = 7\nformat = 3",
            1,
        );
        let errors = validate_for_format("p.toml", &text, 2, FORMAT_FEATURES).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].message.starts_with(
                "this policy needs policy format 3, but this securevm/guest-policy reads formats up to 2; update securevm"
            ),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn a_bad_clipboard_value_is_refused_with_the_choices() {
        let text = with_display("clipboard = \"sometimes\"\n").replacen(
            "version = 7",
            "version = 7\nformat = 3",
            1,
        );
        let errors = crate::validate("p.toml", &text).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(
            errors[0].message,
            "clipboard \"sometimes\" is not valid; use one of \"none\", \"to-guest\", \"from-guest\", \"both\""
        );
        let unknown =
            with_display("paste = true\n").replacen("version = 7", "version = 7\nformat = 3", 1);
        assert!(crate::validate("p.toml", &unknown).is_err());
    }

    /// The example with `lines` added to its `[audit]` table, declaring `format`.
    fn with_audit(lines: &str, format: &str) -> String {
        EXAMPLE
            .replacen(
                "path = \"/var/log/securevm/audit.jsonl\"\n",
                &format!("path = \"/var/log/securevm/audit.jsonl\"\n{lines}"),
                1,
            )
            .replacen("version = 7", &format!("version = 7{format}"), 1)
    }

    const REMOTE: &str = "forward = [\"syslog\", \"remote\"]\n\n[audit.remote]\nhost = \"collector.example.org\"\nca_file = \"/etc/securevm/collector-ca.pem\"\n";

    #[test]
    fn forwarding_is_read_in_format_4_with_the_rfc_5425_port_by_default() {
        let example = crate::validate("p.toml", EXAMPLE).unwrap().policy;
        assert!(example.audit.forward.is_empty());
        let policy = crate::validate("p.toml", &with_audit(REMOTE, "\nformat = 4"))
            .unwrap()
            .policy;
        assert_eq!(
            policy.audit.forward,
            [
                AuditForward::Syslog,
                AuditForward::Remote(RemoteCollector {
                    host: "collector.example.org".into(),
                    port: 6514,
                    ca_file: "/etc/securevm/collector-ca.pem".into(),
                    server_name: "collector.example.org".into(),
                })
            ]
        );
        let named = with_audit(
            &format!("{REMOTE}port = 10514\nserver_name = \"logs.example.org\"\n"),
            "\nformat = 4",
        );
        let policy = crate::validate("p.toml", &named).unwrap().policy;
        let AuditForward::Remote(collector) = &policy.audit.forward[1] else {
            panic!("no remote collector");
        };
        assert_eq!(
            (collector.port, collector.server_name.as_str()),
            (10514, "logs.example.org")
        );
        let syslog = with_audit("forward = [\"syslog\"]\n", "\nformat = 4");
        let policy = crate::validate("p.toml", &syslog).unwrap().policy;
        assert_eq!(policy.audit.forward, [AuditForward::Syslog]);
    }

    #[test]
    fn forwarding_without_format_4_is_refused() {
        for format in ["", "\nformat = 3"] {
            let errors = crate::validate("p.toml", &with_audit("forward = [\"syslog\"]\n", format))
                .unwrap_err();
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(
                errors[0]
                    .message
                    .starts_with("[audit] forward needs policy format 4"),
                "{}",
                errors[0]
            );
        }
    }

    #[test]
    fn bad_forwarding_is_refused_with_what_would_be_valid() {
        for (lines, expected) in [
            ("forward = [\"email\"]\n", "forward \"email\" is not valid; use \"syslog\" and/or \"remote\""),
            ("forward = [\"syslog\", \"syslog\"]\n", "forward \"syslog\" is listed twice"),
            ("forward = []\n", "forward = [] forwards nowhere"),
            ("forward = [\"remote\"]\n", "forward = [\"remote\"] needs an [audit.remote] table"),
            (
                "forward = [\"syslog\"]\n[audit.remote]\nhost = \"c.example.org\"\nca_file = \"/ca.pem\"\n",
                "[audit.remote] is used only with forward = [\"remote\"]",
            ),
            (
                "forward = [\"remote\"]\n[audit.remote]\nhost = \"bad host\"\nca_file = \"/ca.pem\"\n",
                "audit collector host \"bad host\" is not a DNS name or an IP address",
            ),
            (
                "forward = [\"remote\"]\n[audit.remote]\nhost = \"c.example.org\"\nport = 70000\nca_file = \"/ca.pem\"\n",
                "audit collector port 70000 is not valid",
            ),
            (
                "forward = [\"remote\"]\n[audit.remote]\nhost = \"c.example.org\"\nca_file = \"ca.pem\"\n",
                "audit ca_file \"ca.pem\" is not absolute",
            ),
            (
                "forward = [\"remote\"]\n[audit.remote]\nhost = \"c.example.org\"\nserver_name = \"-x\"\nca_file = \"/ca.pem\"\n",
                "audit server_name \"-x\" is not a DNS name or an IP address",
            ),
        ] {
            let errors = crate::validate("p.toml", &with_audit(lines, "\nformat = 4")).unwrap_err();
            assert_eq!(errors.len(), 1, "{lines}: {errors:?}");
            assert!(errors[0].message.starts_with(expected), "{lines}: {}", errors[0]);
        }
        let unknown = with_audit(
            "forward = [\"remote\"]\n[audit.remote]\nhost = \"c.example.org\"\nca_file = \"/ca.pem\"\nclient_key = \"/k\"\n",
            "\nformat = 4",
        );
        assert!(crate::validate("p.toml", &unknown).is_err());
    }
}
