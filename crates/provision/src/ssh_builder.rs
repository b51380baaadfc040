//! The `ssh` builder (Packer's `null` builder): provisions a machine that
//! already runs, reached over SSH with the host, port, user and key or
//! password of `builds.ssh`. It creates nothing and captures nothing: its
//! artifact names the host. It serves debugging of provisioning scripts
//! without an IaaS, and the transport and provisioning benchmarks.

use std::sync::Arc;

use async_trait::async_trait;
use opsbake_core::builder::{
    Access, Artifact, BaseImage, BuildContext, BuildError, Builder, ConnectTarget, Deleted,
    Deleter, SshAuth, SshTarget,
};
use opsbake_core::journal::Resource;
use opsbake_core::plan::{BuildPlan, SshPlan};
use opsbake_core::template::Iaas;

use crate::handoff::is_loopback;

/// The `ssh` builder.
#[derive(Debug, Clone)]
pub struct SshBuilder {
    ssh: SshPlan,
    allow_loopback: bool,
}

/// Make the builder of a plan.
pub fn builder(plan: &BuildPlan) -> Result<Arc<dyn Builder>, BuildError> {
    Ok(Arc::new(SshBuilder::from_plan(plan)))
}

impl SshBuilder {
    /// From a plan's `builds.ssh`.
    pub fn from_plan(plan: &BuildPlan) -> SshBuilder {
        SshBuilder {
            ssh: plan.ssh.clone(),
            allow_loopback: plan
                .template
                .builds
                .ssh
                .as_ref()
                .is_some_and(|b| b.options.allow_loopback),
        }
    }

    fn err(message: impl Into<String>) -> BuildError {
        BuildError::Other(format!("ssh builder: {}", message.into()))
    }

    /// Check the login settings (no I/O beyond what the plan did).
    pub fn check(&self) -> Result<(), BuildError> {
        let Some(host) = &self.ssh.host else {
            return Err(Self::err(
                "`builds.ssh.ssh.host` is required (the machine to provision)",
            ));
        };
        if is_loopback(host) && !self.allow_loopback {
            return Err(Self::err(format!(
                "{host} is the build host itself; set `builds.ssh.options.allow_loopback: true` to provision it anyway (the hand-off still refuses)"
            )));
        }
        if self.ssh.private_key_file.is_none() && self.ssh.password.is_none() {
            return Err(Self::err(
                "give `ssh.private_key_file` or `ssh.password` for the login",
            ));
        }
        Ok(())
    }

    /// The SSH target of the build.
    pub fn target(&self) -> Result<SshTarget, BuildError> {
        self.check()?;
        let host = self.ssh.host.clone().unwrap_or_default();
        let auth = match (&self.ssh.private_key_file, &self.ssh.password) {
            (Some(k), _) => SshAuth::KeyFile(k.clone()),
            (None, Some(p)) => SshAuth::Password(p.clone()),
            (None, None) => return Err(Self::err("no credentials")),
        };
        let port = self.ssh.port.unwrap_or(22);
        Ok(SshTarget::from_ssh_plan(&self.ssh, auth, host, port))
    }
}

#[async_trait]
impl Deleter for SshBuilder {
    async fn delete(&self, res: &Resource) -> Result<Deleted, BuildError> {
        Err(Self::err(format!(
            "unknown resource kind `{}` (the ssh builder creates none)",
            res.kind
        )))
    }
}

#[async_trait]
impl Builder for SshBuilder {
    fn iaas(&self) -> Iaas {
        Iaas::Ssh
    }

    async fn validate(&self, _ctx: &BuildContext) -> Result<(), BuildError> {
        self.check()
    }

    async fn base_image(&self, _ctx: &BuildContext) -> Result<BaseImage, BuildError> {
        Ok(BaseImage {
            id: format!("ssh:{}", self.ssh.host.clone().unwrap_or_default()),
            details: Default::default(),
        })
    }

    async fn launch(
        &self,
        ctx: &BuildContext,
        _base: &BaseImage,
        _access: &Access,
    ) -> Result<ConnectTarget, BuildError> {
        let t = self.target()?;
        ctx.events.info(format!(
            "provisioning the existing host {}@{}:{}",
            t.user, t.host, t.port
        ));
        Ok(ConnectTarget::Ssh(t))
    }

    async fn capture(&self, _ctx: &BuildContext) -> Result<Artifact, BuildError> {
        let host = self.ssh.host.clone().unwrap_or_default();
        let mut a = Artifact {
            id: format!("{}@{host}:{}", self.ssh.user, self.ssh.port.unwrap_or(22)),
            ..Default::default()
        };
        a.custom_data
            .insert("builder".to_string(), "ssh (no image)".to_string());
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opsbake_core::builder::HostKeyPolicy;
    use opsbake_core::plan::plan_build;
    use opsbake_core::template::parse;
    use opsbake_core::vars::{resolve, VarSources};

    fn builder_of(yaml: &str) -> SshBuilder {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("key"), "k").unwrap();
        let path = d.path().join("t.yml");
        let l = parse(&path, yaml.to_string()).unwrap();
        let v = resolve(&l, &VarSources::default()).unwrap();
        SshBuilder::from_plan(&plan_build(&l, &v, Iaas::Ssh, "b1").unwrap())
    }

    #[test]
    fn target_from_the_template() {
        let b = builder_of(
            "name: t\nbuilds:\n  ssh:\n    ssh: {host: 192.0.2.7, port: 2222, user: ops, private_key_file: key, host_key: {pin: [\"SHA256:LXEWQrcmsEQBYnyp+6wy9chTD7GQPMTbAiWHF5IaSIE\"]}}\n",
        );
        let t = b.target().unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.user.as_str()),
            ("192.0.2.7", 2222, "ops")
        );
        assert!(matches!(t.auth, SshAuth::KeyFile(ref p) if p.ends_with("key")));
        assert_eq!(
            t.host_key,
            HostKeyPolicy::Pin(vec![
                "SHA256:LXEWQrcmsEQBYnyp+6wy9chTD7GQPMTbAiWHF5IaSIE".into()
            ])
        );
        let b = builder_of("name: t\nbuilds:\n  ssh:\n    ssh: {host: 192.0.2.7, password: pw}\n");
        let t = b.target().unwrap();
        assert_eq!(t.port, 22);
        assert_eq!(t.user, "vcap");
        assert!(matches!(t.auth, SshAuth::Password(_)));
        assert_eq!(t.host_key, HostKeyPolicy::TrustOnFirstUse);
    }

    #[test]
    fn loopback_needs_allow_loopback_and_credentials_are_required() {
        let e = builder_of("name: t\nbuilds:\n  ssh:\n    ssh: {host: 127.0.0.1, password: pw}\n")
            .check()
            .unwrap_err()
            .to_string();
        assert!(e.contains("allow_loopback"), "{e}");
        assert!(builder_of(
            "name: t\nbuilds:\n  ssh:\n    ssh: {host: 127.0.0.1, password: pw}\n    options: {allow_loopback: true}\n"
        )
        .check()
        .is_ok());
        let e = builder_of("name: t\nbuilds:\n  ssh:\n    ssh: {host: 192.0.2.7}\n")
            .check()
            .unwrap_err()
            .to_string();
        assert!(e.contains("private_key_file"), "{e}");
        let e = builder_of("name: t\nbuilds:\n  ssh: {}\n")
            .check()
            .unwrap_err()
            .to_string();
        assert!(e.contains("host"), "{e}");
    }
}
