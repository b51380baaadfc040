//! How to log in to the build instance: its address (the `ssh.host`
//! override, else the interface asked for), the host keys it printed on its
//! console (pinned when `host_key: tofu`), the credentials, and the one
//! [`SshTarget`] core builds from the plan.

use base64::Engine as _;
use opsbake_core::builder::{Access, BuildContext, BuildError, HostKeyPolicy, SshAuth, SshTarget};
use opsbake_core::template::HostKeySpec;

use crate::error::AwsError;
use crate::AwsBuilder;

impl AwsBuilder {
    /// The SSH target of the running instance `id`.
    pub(crate) async fn ssh_target(
        &self,
        ctx: &BuildContext,
        access: &Access,
        id: &str,
        inst: &aws_sdk_ec2::types::Instance,
    ) -> Result<SshTarget, BuildError> {
        let plan = &ctx.plan;
        // Where to connect: the override (tests, tunnels), else the address
        // of the interface asked for.
        let host = match plan.ssh.host.as_deref().map(str::trim) {
            Some(h) if !h.is_empty() => h.to_string(),
            _ => {
                let public = inst.public_ip_address().map(str::to_string);
                let private = inst.private_ip_address().map(str::to_string);
                match plan.ssh.interface.as_deref() {
                    Some("private") => private,
                    Some("public") => public,
                    _ => public.or(private),
                }
                .ok_or_else(|| AwsError::Missing {
                    op: "DescribeInstances",
                    region: self.region.clone(),
                    what: "address to connect to (ssh.interface)",
                })?
            }
        };
        let console = self.console_host_keys(id).await;
        let auth = SshAuth::for_build(plan, access, false)
            .ok_or_else(|| AwsError::Invalid(opsbake_core::builder::NO_LOGIN.into()))?;
        let mut target = SshTarget::from_plan(plan, auth, host, plan.ssh.port.unwrap_or(22));
        target.host_key = host_key_policy(&plan.ssh.host_key, console);
        Ok(target)
    }

    async fn console_host_keys(&self, id: &str) -> Vec<String> {
        let Ok(ec2) = self.clients.ec2(&self.region).await else {
            return Vec::new();
        };
        match ec2.get_console_output().instance_id(id).send().await {
            Ok(o) => o.output().map(host_keys_from_console).unwrap_or_default(),
            Err(e) => {
                tracing::debug!(instance = id, error = %aws_sdk_ec2::error::DisplayErrorContext(&e), "no console output");
                Vec::new()
            }
        }
    }
}

/// `tofu` pins the keys the console printed, when it printed some.
fn host_key_policy(spec: &HostKeySpec, console_keys: Vec<String>) -> HostKeyPolicy {
    match spec {
        HostKeySpec::Tofu if !console_keys.is_empty() => HostKeyPolicy::Pin(console_keys),
        other => HostKeyPolicy::from_spec(other),
    }
}

/// The host keys a cloud image prints between `-----BEGIN SSH HOST KEY
/// KEYS-----` and `-----END SSH HOST KEY KEYS-----` in its console output
/// (base64 as GetConsoleOutput returns it).
pub fn host_keys_from_console(b64: &str) -> Vec<String> {
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
        return Vec::new();
    };
    opsbake_core::hostkeys::from_console(&String::from_utf8_lossy(&bytes))
}
