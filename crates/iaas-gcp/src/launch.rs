//! Launch: a temporary firewall rule for `network.ssh_cidrs` to the
//! build's network tag, the instance with the BOSH agent settings in the
//! `bosh_settings` metadata key, then the SSH target ([`crate::connect`]).

use opsbake_core::builder::{
    Access, BaseImage, BuildContext, BuildError, ConnectTarget, Made, SshAuth, SshTarget,
};
use serde_json::json;

use crate::cleanup::{global_id, zonal_id, DISK, FIREWALL, INSTANCE};
use crate::connect::host_keys_from_serial;
use crate::error::GcpError;
use crate::options::*;
use crate::GcpBuilder;

impl GcpBuilder {
    pub(crate) async fn launch_instance(
        &self,
        ctx: &BuildContext,
        base: &BaseImage,
        access: &Access,
    ) -> Result<ConnectTarget, BuildError> {
        let plan = &ctx.plan;
        let (project, zone) = (self.api.project.clone(), self.api.zone.clone());
        let name = Self::vm_name(ctx);
        let tag = name.clone();
        let network = plan
            .network
            .network
            .clone()
            .filter(|s| !s.trim().is_empty())
            .map(|n| {
                if n.contains('/') {
                    n
                } else {
                    format!("global/networks/{n}")
                }
            })
            .unwrap_or_else(|| "global/networks/default".to_string());
        // The temporary firewall rule: TCP 22 from ssh_cidrs to this build's tag.
        let fw_name = format!("{name}-ssh");
        let api = self.api.clone();
        let (_, fw_op) = ctx
            .create_resource(FIREWALL, &fw_name, json!({"project": project}), |token| {
                let body = json!({
                    "name": fw_name,
                    "network": network,
                    "direction": "INGRESS",
                    "priority": 1000,
                    "sourceRanges": self.plan_ssh_cidrs,
                    "targetTags": [tag],
                    "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}],
                    "description": format!("opsbake build {}: SSH to the build VM only (token {token})", ctx.build_id()),
                });
                let id = global_id(&project, "firewalls", &fw_name);
                let project = project.clone();
                async move {
                    let op = api.firewall_insert(body, &token).await?;
                    Ok::<_, GcpError>(Made::new(id, op).with_data(json!({"project": project})))
                }
            })
            .await?;
        self.api
            .wait_op(
                &fw_op,
                &format!("create firewall {fw_name}"),
                Some(&ctx.cancel),
            )
            .await?;
        // The agent settings with the build's key, in `bosh_settings`.
        let keys = access.public_keys();
        let settings = opsbake_stemcell::AgentSettings::minimal(&name, keys, None);
        let settings = String::from_utf8(
            settings
                .to_json()
                .map_err(|e| BuildError::Other(format!("agent settings: {e}")))?,
        )
        .map_err(|e| BuildError::Other(format!("agent settings: {e}")))?;
        // The boot disk is made by instances.insert under the instance's
        // name; its record comes first so that a reverse unwind deletes
        // the instance (which deletes it) before looking at it.
        let dseq = ctx.intent(DISK, &name, json!({"project": project, "zone": zone}))?;
        let mt = self
            .opts
            .machine_type
            .clone()
            .unwrap_or_else(|| DEFAULT_MACHINE_TYPE.to_string());
        let public = plan.network.public_ip.unwrap_or(true);
        let mut tags = self.opts.network_tags.clone();
        tags.push(tag.clone());
        let api = self.api.clone();
        let (_, op) = ctx
            .create_resource(
                INSTANCE,
                &name,
                json!({"project": project, "zone": zone, "image": base.id}),
                |token| {
                    let labels = self.labels(ctx, &token);
                    let mut init = json!({
                        "sourceImage": base.id,
                        "labels": labels,
                    });
                    if let Some(mib) = plan.disk_mib {
                        init["diskSizeGb"] = json!(mib.div_ceil(1024).to_string());
                    }
                    let mut nic = json!({"network": network});
                    if let Some(s) = plan
                        .network
                        .subnet
                        .as_ref()
                        .filter(|s| !s.trim().is_empty())
                    {
                        nic["subnetwork"] = json!(s);
                    }
                    if public {
                        nic["accessConfigs"] =
                            json!([{"type": "ONE_TO_ONE_NAT", "name": "External NAT"}]);
                    }
                    let body = json!({
                        "name": name,
                        "machineType": format!("zones/{zone}/machineTypes/{mt}"),
                        "disks": [{
                            "boot": true,
                            "autoDelete": true,
                            "deviceName": name,
                            "initializeParams": init,
                        }],
                        "networkInterfaces": [nic],
                        "metadata": {"items": [{"key": SETTINGS_KEY, "value": settings}]},
                        "labels": labels,
                        "tags": {"items": tags},
                    });
                    let id = zonal_id(&project, &zone, "instances", &name);
                    let data = json!({"project": project, "zone": zone});
                    async move {
                        let op = api.instance_insert(body, &token).await?;
                        Ok::<_, GcpError>(Made::new(id, op).with_data(data))
                    }
                },
            )
            .await?;
        {
            let mut l = self.launched.lock().await;
            l.instance = Some(name.clone());
            l.disk = Some(name.clone());
        }
        self.api
            .wait_op(&op, &format!("create instance {name}"), Some(&ctx.cancel))
            .await?;
        ctx.created(
            dseq,
            DISK,
            &zonal_id(&project, &zone, "disks", &name),
            json!({"project": project, "zone": zone}),
        )?;
        let inst = self.api.instance(&zone, &name).await?.ok_or_else(|| {
            GcpError::Invalid(format!(
                "instance {name} (project {project}, {zone}) vanished right after its insert finished"
            ))
        })?;
        let nic = &inst["networkInterfaces"][0];
        let private = nic["networkIP"].as_str().map(str::to_string);
        let public_ip = nic["accessConfigs"][0]["natIP"]
            .as_str()
            .map(str::to_string);
        let host = match plan.ssh.host.as_deref().map(str::trim) {
            Some(h) if !h.is_empty() => h.to_string(),
            _ => match plan.ssh.interface.as_deref() {
                Some("private") => private,
                Some("public") => public_ip,
                _ => public_ip.or(private),
            }
            .ok_or_else(|| {
                GcpError::Invalid(format!(
                    "instance {name} (project {project}, {zone}) has no address to connect to (ssh.interface, network.public_ip)"
                ))
            })?,
        };
        let serial = match self.api.serial_output(&name).await {
            Ok(t) => host_keys_from_serial(&t),
            Err(e) => {
                tracing::debug!(instance = %name, error = %e, "no serial console output");
                Vec::new()
            }
        };
        if !serial.is_empty() {
            ctx.events.info(format!(
                "pinning {} host key(s) {name} printed on its serial console",
                serial.len()
            ));
        }
        let auth = SshAuth::for_build(plan, access, false)
            .ok_or_else(|| GcpError::Invalid(opsbake_core::builder::NO_LOGIN.into()))?;
        let mut target = SshTarget::from_plan(plan, auth, host, plan.ssh.port.unwrap_or(22));
        target.host_key = self.host_key_policy(ctx, serial);
        Ok(ConnectTarget::Ssh(target))
    }
}
