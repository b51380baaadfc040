//! The stemcell hand-off (STEMCELLS.md sections 4 and 5, docs/handoff.md).
//!
//! - At the start: the login user (`vcap`) gets passwordless sudo for the
//!   build, with its password sent once through `sudo -S` on stdin if it needs
//!   one, never retried (pam_faillock `deny=3` locks the account for a week).
//! - At the end: one root script, uploaded with the rest of the staging
//!   before it runs (`handoff.sh`), stops and disables the agent, removes the
//!   build's key, creates the appliance user, installs the OVF first-boot unit
//!   (vSphere, VirtualBox), locks root's and vcap's passwords, scrubs, and
//!   revokes vcap's passwordless sudo last. Every step checks its effect.
//! - Safety: refuses to run on the build host itself.

use std::sync::Arc;

use opsbake_core::events::Emitter;
use opsbake_core::template::{HandoffProvisioner, Iaas};
use opsbake_core::transport::{shell_quote, ExecRequest, Transport, Upload, UploadSource};
use opsbake_core::Secret;

use crate::error::ProvisionError;
use crate::output::StepSink;
use crate::staging::Staging;

const BODY: &str = include_str!("handoff/handoff.sh");
/// The first-boot helper that reads `public_ssh_key` from the OVF environment.
pub const OVF_SCRIPT: &str = include_str!("handoff/opsbake-ovf-ssh-key");

/// The sudoers file that grants the login user passwordless sudo for the build.
pub const GRANT_FILE: &str = "/etc/sudoers.d/opsbake-build";

/// What the hand-off script is generated from.
#[derive(Debug, Clone)]
pub struct HandoffConfig {
    /// The login user of the build (`vcap`).
    pub login_user: String,
    /// The appliance's login user (`ubuntu`).
    pub appliance_user: String,
    /// Keep the BOSH agent enabled.
    pub keep_agent: bool,
    /// A crypt hash for root and the login user (None: locked).
    pub password_hash: Option<Secret<String>>,
    /// Install the OVF first-boot unit.
    pub ovf_unit: bool,
    /// The comment of the build's ephemeral key (`opsbake-<build-id>`).
    pub build_key_comment: String,
    /// Keep the staging dir (`--keep-staging`).
    pub keep_staging: bool,
}

impl HandoffConfig {
    /// The configuration of a `handoff` step of a build.
    pub fn from_step(
        h: &HandoffProvisioner,
        iaas: Iaas,
        login_user: &str,
        build_id: &str,
        keep_staging: bool,
    ) -> HandoffConfig {
        HandoffConfig {
            login_user: login_user.to_string(),
            appliance_user: h.user.clone().unwrap_or_else(|| "ubuntu".to_string()),
            keep_agent: h.keep_agent,
            password_hash: h.password_hash.clone(),
            ovf_unit: h.ovf_ssh_key.unwrap_or(iaas.facts().ovf_ssh_key),
            build_key_comment: format!("opsbake-{build_id}"),
            keep_staging,
        }
    }
}

fn valid_user(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 32
        && u.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_lowercase() || b == b'_' || (i > 0 && (b.is_ascii_digit() || b == b'-'))
        })
}

/// Check the user names before they go into scripts and sudoers lines.
pub fn check_config(cfg: &HandoffConfig) -> Result<(), ProvisionError> {
    for u in [&cfg.login_user, &cfg.appliance_user] {
        if !valid_user(u) {
            return Err(ProvisionError::Config {
                step: "handoff".into(),
                message: format!("`{u}` is not a valid user name for the hand-off"),
            });
        }
    }
    if cfg.login_user == cfg.appliance_user {
        return Err(ProvisionError::Config {
            step: "handoff".into(),
            message: format!(
                "the appliance user must differ from the login user `{}` (its sudo is revoked)",
                cfg.login_user
            ),
        });
    }
    Ok(())
}

/// The hand-off script (header with the parameters, then the fixed body).
pub fn script(cfg: &HandoffConfig, staging: &Staging) -> String {
    let b = |v: bool| if v { "1" } else { "0" };
    let hash = cfg
        .password_hash
        .as_ref()
        .map(|h| h.expose().clone())
        .unwrap_or_default();
    format!(
        "#!/bin/sh\n# opsbake hand-off, generated for this build (see docs/handoff.md)\n\
         LOGIN_USER={}\nAPPLIANCE_USER={}\nKEEP_AGENT={}\nPASSWORD_HASH={}\nOVF_UNIT={}\n\
         BUILD_KEY_COMMENT={}\nSTAGING={}\nKEEP_STAGING={}\nHANDOFF_DIR={}\nGRANT_FILE={}\n{BODY}",
        shell_quote(&cfg.login_user),
        shell_quote(&cfg.appliance_user),
        b(cfg.keep_agent),
        shell_quote(&hash),
        b(cfg.ovf_unit),
        shell_quote(&cfg.build_key_comment),
        shell_quote(&staging.cdir),
        b(cfg.keep_staging),
        shell_quote(&staging.cpath("handoff")),
        GRANT_FILE,
    )
}

/// The systemd unit of the OVF first-boot helper.
pub fn ovf_unit(appliance_user: &str) -> String {
    format!(
        "[Unit]\n\
         Description=opsbake: SSH key of {appliance_user} from the OVF environment (public_ssh_key)\n\
         After=local-fs.target systemd-udevd.service systemd-udev-trigger.service\n\
         Wants=systemd-udev-trigger.service\n\
         Before=ssh.service sshd.service\n\n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         Environment=OPSBAKE_OVF_USER={appliance_user}\n\
         ExecStart=/usr/local/sbin/opsbake-ovf-ssh-key\n\
         StandardOutput=journal+console\n\n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// Path of the hand-off script, as commands see it.
pub fn script_path(staging: &Staging) -> String {
    staging.cpath("handoff/handoff.sh")
}

/// The files of the hand-off (in the build's first upload batch).
pub fn uploads(cfg: &HandoffConfig, staging: &Staging) -> Vec<Upload> {
    let mut v = vec![Upload {
        source: UploadSource::Bytes(script(cfg, staging).into_bytes()),
        remote: staging.remote("handoff/handoff.sh"),
        mode: Some(0o700),
        verify_sha256: true,
    }];
    if cfg.ovf_unit {
        v.push(Upload {
            source: UploadSource::Bytes(OVF_SCRIPT.as_bytes().to_vec()),
            remote: staging.remote("handoff/opsbake-ovf-ssh-key"),
            mode: Some(0o755),
            verify_sha256: true,
        });
        v.push(Upload {
            source: UploadSource::Bytes(ovf_unit(&cfg.appliance_user).into_bytes()),
            remote: staging.remote("handoff/opsbake-ovf-ssh-key.service"),
            mode: Some(0o644),
            verify_sha256: true,
        });
    }
    v
}

/// What the target told about itself when the staging dir was made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The login user's uid.
    pub uid: Option<u32>,
    /// `/etc/machine-id` (may be empty on a fresh stemcell).
    pub machine_id: String,
    /// `/proc/sys/kernel/random/boot_id`: the same value means the same
    /// running kernel, i.e. the build host itself (or a namespace on it).
    pub boot_id: String,
}

impl Identity {
    /// Parse the three lines the staging command prints.
    pub fn parse(text: &str) -> Identity {
        let mut lines = text.lines();
        Identity {
            uid: lines.next().and_then(|l| l.trim().parse().ok()),
            machine_id: lines.next().unwrap_or("").trim().to_string(),
            boot_id: lines.next().unwrap_or("").trim().to_string(),
        }
    }

    /// The build host's own identity.
    pub fn local() -> Identity {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        Identity {
            uid: None,
            machine_id: read("/etc/machine-id"),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
        }
    }
}

/// True for loopback host names and addresses.
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if h.eq_ignore_ascii_case("localhost") || h.ends_with(".localhost") {
        return true;
    }
    h.parse::<std::net::IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

/// Refuse the hand-off on the build host itself: the same kernel boot id or
/// machine id as the host, or (for targets the user names: the `ssh` and
/// `localtest` builders) a loopback address unless a test allowed it.
pub fn guard(
    remote: &Identity,
    local: &Identity,
    iaas: Iaas,
    host: Option<&str>,
    allow_loopback: bool,
) -> Result<(), ProvisionError> {
    if remote.boot_id.is_empty() {
        return Err(ProvisionError::Refused {
            reason: "the target did not tell its kernel boot id, so it cannot be told apart from the build host".into(),
        });
    }
    if !local.boot_id.is_empty() && remote.boot_id == local.boot_id {
        return Err(ProvisionError::Refused {
            reason: format!(
                "the target runs the build host's own kernel (boot id {}): the hand-off and scrubs never run on the build host",
                remote.boot_id
            ),
        });
    }
    if !local.machine_id.is_empty() && remote.machine_id == local.machine_id {
        return Err(ProvisionError::Refused {
            reason: format!(
                "the target has the build host's /etc/machine-id ({}): the hand-off and scrubs never run on the build host",
                remote.machine_id
            ),
        });
    }
    let facts = iaas.facts();
    if facts.user_named_target && !allow_loopback {
        match host {
            Some(h) if is_loopback(h) => {
                return Err(ProvisionError::Refused {
                    reason: format!("the target {h} is a loopback address of the build host"),
                })
            }
            None if facts.on_build_host => {
                return Err(ProvisionError::Refused {
                    reason: format!("the {iaas} builder runs on the build host"),
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// Grant the login user passwordless sudo for the build. `sudo -n true`
/// first; if a password is needed, it is sent once on stdin, never retried.
pub async fn grant(
    transport: &Arc<dyn Transport>,
    events: &Emitter,
    user: &str,
    password: Option<&Secret<String>>,
) -> Result<(), ProvisionError> {
    let what = "sudo grant".to_string();
    let tr = |source| ProvisionError::transport("handoff (sudo grant)", source);
    let sink = Arc::new(StepSink::new(Some(events.clone()), "handoff sudo grant"));
    let line = format!("{user} ALL=(ALL) NOPASSWD: ALL");
    let body = format!(
        "set -e; f={GRANT_FILE}; umask 0337; printf '%s\\n' {} > \"$f.tmp\"; visudo -cf \"$f.tmp\" >/dev/null; mv \"$f.tmp\" \"$f\"",
        shell_quote(&line)
    );
    let already = transport
        .exec(ExecRequest::new("sudo -n true"), sink.clone())
        .await
        .map_err(tr)?;
    let cmd = if already.success() {
        format!("sudo -n sh -c {}", shell_quote(&body))
    } else {
        let Some(pw) = password else {
            return Err(ProvisionError::Handoff {
                what,
                message: format!(
                    "{user} needs a password for sudo and none is configured: set `sudo_password` on the handoff step (or `ssh.password`)"
                ),
                tail: sink.tail_message(),
            });
        };
        if pw.expose().is_empty() {
            return Err(ProvisionError::Handoff {
                what,
                message: format!("the configured sudo password of {user} is empty"),
                tail: String::new(),
            });
        }
        // -k: ignore any cached credential, so that the password is checked
        // now, exactly once (stdin holds one line: a second prompt gets EOF).
        format!("sudo -S -k -p '' sh -c {}", shell_quote(&body))
    };
    let mut req = ExecRequest::new(cmd);
    if !already.success() {
        if let Some(pw) = password {
            let mut bytes = pw.expose().as_bytes().to_vec();
            bytes.push(b'\n');
            req.stdin = Some(Secret::new(bytes));
        }
    }
    let sink = Arc::new(StepSink::new(Some(events.clone()), "handoff sudo grant"));
    let st = transport.exec(req, sink.clone()).await.map_err(tr)?;
    if !st.success() {
        let out = sink.tail_message();
        let refused = out.contains("incorrect password")
            || out.contains("Sorry, try again")
            || out.contains("Authentication failure")
            || out.contains("no password was provided");
        let message = if refused {
            format!("sudo refused the password of {user}; not retrying (pam_faillock locks the account after 3 failures)")
        } else {
            format!("writing {GRANT_FILE} ended with {st}")
        };
        return Err(ProvisionError::Handoff {
            what,
            message,
            tail: out,
        });
    }
    let sink = Arc::new(StepSink::new(None, "handoff sudo grant"));
    let st = transport
        .exec(ExecRequest::new("sudo -n true"), sink.clone())
        .await
        .map_err(tr)?;
    if !st.success() {
        return Err(ProvisionError::Handoff {
            what,
            message: format!("{user} still has no passwordless sudo after the grant"),
            tail: sink.tail_message(),
        });
    }
    events.info(format!(
        "handoff: {user} has passwordless sudo for the build ({GRANT_FILE})"
    ));
    Ok(())
}

/// Run the uploaded hand-off script, then check from outside that the login
/// user lost its passwordless sudo.
pub async fn run(
    transport: &Arc<dyn Transport>,
    events: &Emitter,
    staging: &Staging,
    cfg: &HandoffConfig,
    as_root: bool,
) -> Result<(), ProvisionError> {
    let tr = |source| ProvisionError::transport("handoff", source);
    let path = shell_quote(&script_path(staging));
    let cmd = if as_root {
        format!("sh {path}")
    } else {
        format!("sudo -n sh {path}")
    };
    let sink = Arc::new(StepSink::new(Some(events.clone()), "handoff"));
    let st = transport
        .exec(ExecRequest::new(cmd), sink.clone())
        .await
        .map_err(tr)?;
    if !st.success() {
        let tail = sink.tail_message();
        let failed = sink
            .tail()
            .into_iter()
            .rev()
            .find(|(_, l)| l.starts_with("handoff: FAILED: "))
            .map(|(_, l)| l.trim_start_matches("handoff: FAILED: ").to_string());
        return Err(ProvisionError::Handoff {
            what: "hand-off".into(),
            message: failed.unwrap_or_else(|| format!("the script ended with {st}")),
            tail,
        });
    }
    if !as_root {
        let sink = Arc::new(StepSink::new(None, "handoff"));
        let st = transport
            .exec(ExecRequest::new("sudo -n true"), sink.clone())
            .await
            .map_err(tr)?;
        if st.success() {
            return Err(ProvisionError::Handoff {
                what: "hand-off".into(),
                message: format!(
                    "{} can still run `sudo -n true` after the revoke",
                    cfg.login_user
                ),
                tail: sink.tail_message(),
            });
        }
    }
    events.info(format!(
        "handoff: done; {} has passwordless sudo, {} no longer",
        cfg.appliance_user, cfg.login_user
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(m: &str, b: &str) -> Identity {
        Identity {
            uid: Some(1000),
            machine_id: m.into(),
            boot_id: b.into(),
        }
    }

    #[test]
    fn the_guard_refuses_the_build_host() {
        let host = id("m-host", "b-host");
        let e = guard(&id("m-vm", "b-host"), &host, Iaas::Vbox, None, false).unwrap_err();
        assert!(e.to_string().contains("boot id"), "{e}");
        let e = guard(&id("m-host", "b-vm"), &host, Iaas::Vbox, None, false).unwrap_err();
        assert!(e.to_string().contains("machine-id"), "{e}");
        assert!(guard(&id("", "b-vm"), &host, Iaas::Vbox, Some("127.0.0.1"), false).is_ok());
        let e = guard(&id("", "b-vm"), &host, Iaas::Ssh, Some("127.0.0.1"), false).unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        assert!(guard(&id("", "b-vm"), &host, Iaas::Ssh, Some("127.0.0.1"), true).is_ok());
        assert!(guard(&id("", "b-vm"), &host, Iaas::Ssh, Some("::1"), false).is_err());
        assert!(guard(
            &id("", "b-vm"),
            &host,
            Iaas::Ssh,
            Some("build-vm.invalid"),
            false
        )
        .is_ok());
        assert!(guard(&id("", ""), &host, Iaas::Vbox, None, true).is_err());
    }

    #[test]
    fn the_ovf_helper_adds_public_ssh_key_once() {
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("opsbake-ovf-ssh-key");
        std::fs::write(&script, OVF_SCRIPT).unwrap();
        let keys = d.path().join("authorized_keys");
        let run = |xml: &str| {
            let env = d.path().join("ovf-env.xml");
            std::fs::write(&env, xml).unwrap();
            std::process::Command::new("sh")
                .arg(&script)
                .env("OPSBAKE_OVF_ENV_FILE", &env)
                .env("OPSBAKE_OVF_KEYS_FILE", &keys)
                .output()
                .unwrap()
        };
        let xml = "<?xml version=\"1.0\"?>\n<Environment xmlns:oe=\"http://schemas.dmtf.org/ovf/environment/1\">\n<PropertySection>\n  <Property oe:key=\"hostname\" oe:value=\"x\"/>\n  <Property oe:key=\"public_ssh_key\" oe:value=\"ssh-ed25519 AAAAC3Nz a&amp;b\"/>\n</PropertySection>\n</Environment>\n";
        for _ in 0..2 {
            let out = run(xml);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(
            std::fs::read_to_string(&keys).unwrap(),
            "ssh-ed25519 AAAAC3Nz a&b\n"
        );
        // value before key, and a non-key value is refused
        let out = run("<Property oe:value=\"ssh-rsa BBBB r\" oe:key=\"public_ssh_key\"/>");
        assert!(out.status.success());
        assert!(std::fs::read_to_string(&keys)
            .unwrap()
            .ends_with("ssh-rsa BBBB r\n"));
        let out = run("<Property oe:key=\"public_ssh_key\" oe:value=\"rm -rf /\"/>");
        assert!(!out.status.success());
        let out = run("<Environment/>");
        assert!(out.status.success(), "no key: nothing to do");
        assert_eq!(std::fs::read_to_string(&keys).unwrap().lines().count(), 2);
    }

    #[test]
    fn identity_parses() {
        let i = Identity::parse("1000\nabc\n1234-5\n");
        assert_eq!(i, id("abc", "1234-5"));
        let i = Identity::parse("0\n\nxyz\n");
        assert_eq!(i.uid, Some(0));
        assert_eq!(i.machine_id, "");
        assert_eq!(i.boot_id, "xyz");
    }

    #[test]
    fn config_checks_user_names() {
        let mut c = HandoffConfig {
            login_user: "vcap".into(),
            appliance_user: "ubuntu".into(),
            keep_agent: false,
            password_hash: None,
            ovf_unit: true,
            build_key_comment: "opsbake-b".into(),
            keep_staging: false,
        };
        assert!(check_config(&c).is_ok());
        c.appliance_user = "ubu ntu".into();
        assert!(check_config(&c).is_err());
        c.appliance_user = "vcap".into();
        assert!(check_config(&c).is_err());
    }

    #[test]
    fn scripts_pass_sh_syntax_check() {
        let st = Staging::new("/var/tmp/opsbake", "b1", |p| p.to_string());
        let cfg = HandoffConfig {
            login_user: "vcap".into(),
            appliance_user: "ubuntu".into(),
            keep_agent: false,
            password_hash: Some(Secret::new("$6$x$y'z".into())),
            ovf_unit: true,
            build_key_comment: "opsbake-b1".into(),
            keep_staging: false,
        };
        for text in [script(&cfg, &st), OVF_SCRIPT.to_string()] {
            let out = std::process::Command::new("sh")
                .arg("-n")
                .arg("-c")
                .arg(&text)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let s = script(&cfg, &st);
        assert!(s.contains("PASSWORD_HASH='$6$x$y'\\''z'"));
        assert!(s.contains("HANDOFF_DIR=/var/tmp/opsbake/b1/handoff"));
    }
}
