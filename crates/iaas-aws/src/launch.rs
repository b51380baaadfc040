//! `launch`: the key pair (the build's ephemeral key), a temporary security
//! group unless one is given, the instance with the BOSH agent settings as
//! user data, its volumes recorded, then the SSH target ([`crate::connect`]).

use aws_sdk_ec2::types::InstanceStateName;
use base64::Engine as _;
use opsbake_core::builder::{Access, BaseImage, BuildContext, BuildError, ConnectTarget};

use crate::resources::instance::RunSpec;
use crate::AwsBuilder;

impl AwsBuilder {
    pub(crate) async fn launch_instance(
        &self,
        ctx: &BuildContext,
        base: &BaseImage,
        access: &Access,
    ) -> Result<ConnectTarget, BuildError> {
        let name = format!("opsbake-{}", ctx.build_id());
        // Key pair.
        let mut key_name = None;
        if let Some(k) = &access.key {
            self.import_key_pair(ctx, &name, k).await?;
            key_name = Some(name.clone());
        }
        // Security group.
        let sg = match &self.opts.security_group_id {
            Some(g) => g.clone(),
            None => self.create_security_group(ctx, &name).await?,
        };
        // User data: the BOSH agent settings with the build's key.
        let keys = access.public_keys();
        let settings = opsbake_stemcell::AgentSettings::minimal(&name, keys, None);
        let json = settings
            .to_json()
            .map_err(|e| BuildError::Other(format!("agent settings: {e}")))?;
        let user_data = base64::engine::general_purpose::STANDARD.encode(json);
        // The instance.
        let spec = RunSpec {
            name: &name,
            key_name: key_name.as_deref(),
            security_group: &sg,
            user_data,
        };
        let id = self.run_instance(ctx, base, spec).await?;
        self.launched.lock().await.instance = Some(id.clone());
        let inst = self.wait_instance(&id, InstanceStateName::Running).await?;
        self.record_volumes(ctx, &name, &id, &inst).await?;
        Ok(ConnectTarget::Ssh(
            self.ssh_target(ctx, access, &id, &inst).await?,
        ))
    }
}
