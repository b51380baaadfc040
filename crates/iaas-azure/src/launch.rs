//! Launch: a temporary resource group per build (deleted as a whole), or
//! resources one by one in `build_resource_group`; a virtual network (unless
//! `network.subnet` names one), an NSG allowing TCP 22 from
//! `network.ssh_cidrs` only, an optional public IP, the NIC, and the VM with
//! `osProfile.customData` = base64 of the BOSH agent settings carrying the
//! build's ephemeral key (STEMCELLS.md §3: cloud-init writes it to
//! `/var/lib/cloud/instance/user-data.txt`; admin user vcap with the same
//! key as a fallback). Connect: the `ssh.host`/`ssh.port` override, else the
//! public or private address; the host keys cloud-init prints to the serial
//! console (boot diagnostics) are pinned when the log is there, else the key
//! is trusted on first use and pinned for the build.

use base64::Engine as _;
use opsbake_core::builder::{
    Access, BaseImage, BuildContext, BuildError, ConnectTarget, HostKeyPolicy, Made, SshAuth,
    SshTarget,
};
use opsbake_core::template::HostKeySpec;
use serde_json::{json, Value};

use crate::arm::Arm;
use crate::checks::set;
use crate::cleanup::kind;
use crate::error::AzureError;
use crate::{AzureBuilder, DEFAULT_VM_SIZE};

impl AzureBuilder {
    async fn make(
        &self,
        ctx: &BuildContext,
        arm: &Arm,
        k: &str,
        id: &str,
        temp_group: Option<&str>,
        body: impl FnOnce(std::collections::BTreeMap<String, String>) -> Value,
    ) -> Result<Value, BuildError> {
        let scope = self.scope();
        let name = id.rsplit('/').next().unwrap_or(id).to_string();
        let (_, v) = ctx
            .create_resource(
                k,
                &name,
                json!({ "id": id, "location": self.location, "temp_group": temp_group }),
                |token| {
                    let b = body(self.tags(ctx, &token));
                    let arm = arm.clone();
                    let id = id.to_string();
                    async move {
                        let v = arm.put(&id, &b, &scope).await?;
                        Ok::<_, AzureError>(Made::new(id, v))
                    }
                },
            )
            .await?;
        Ok(v)
    }

    pub(crate) async fn launch_vm(
        &self,
        ctx: &BuildContext,
        base: &BaseImage,
        access: &Access,
    ) -> Result<ConnectTarget, BuildError> {
        let arm = self.arm_for(ctx);
        let plan = &ctx.plan;
        let loc = self.location.clone();
        let name = format!("opsbake-{}", ctx.build_id());
        // The group the VM lives in.
        let group = match set(&self.opts.build_resource_group) {
            Some(g) => g,
            None => {
                let id = arm.rg_id(&name);
                self.make(
                    ctx,
                    &arm,
                    kind::RESOURCE_GROUP,
                    &id,
                    None,
                    |tags| json!({"location": loc, "tags": tags}),
                )
                .await?;
                name.clone()
            }
        };
        self.launched.lock().await.group = Some(group.clone());
        // In a temporary group, each resource goes with the group (one call).
        let tg_id = arm.rg_id(&group);
        let tg = set(&self.opts.build_resource_group)
            .is_none()
            .then_some(tg_id.as_str());
        // Network.
        let subnet = match set(&plan.network.subnet) {
            Some(s) => s,
            None => {
                let vnet = arm.res_id(
                    &group,
                    "Microsoft.Network/virtualNetworks",
                    &format!("{name}-vnet"),
                );
                self.make(ctx, &arm, kind::VNET, &vnet, tg, |tags| {
                    json!({"location": loc, "tags": tags, "properties": {
                        "addressSpace": {"addressPrefixes": ["10.250.0.0/16"]},
                        "subnets": [{"name": "build", "properties": {"addressPrefix": "10.250.0.0/24"}}]
                    }})
                })
                .await?;
                format!("{vnet}/subnets/build")
            }
        };
        let cidrs = plan.ssh_cidrs();
        let nsg = arm.res_id(
            &group,
            "Microsoft.Network/networkSecurityGroups",
            &format!("{name}-nsg"),
        );
        self.make(ctx, &arm, kind::NSG, &nsg, tg, |tags| {
            json!({"location": loc, "tags": tags, "properties": {"securityRules": [{
                "name": "opsbake-ssh",
                "properties": {
                    "priority": 100, "direction": "Inbound", "access": "Allow", "protocol": "Tcp",
                    "sourceAddressPrefixes": cidrs, "sourcePortRange": "*",
                    "destinationAddressPrefix": "*", "destinationPortRange": "22"
                }
            }]}})
        })
        .await?;
        let want_public = plan.network.public_ip.unwrap_or(true);
        let pip = if want_public {
            let id = arm.res_id(
                &group,
                "Microsoft.Network/publicIPAddresses",
                &format!("{name}-ip"),
            );
            self.make(ctx, &arm, kind::PUBLIC_IP, &id, tg, |tags| {
                json!({"location": loc, "tags": tags, "sku": {"name": "Standard"},
                    "properties": {"publicIPAllocationMethod": "Static"}})
            })
            .await?;
            Some(id)
        } else {
            None
        };
        let nic = arm.res_id(
            &group,
            "Microsoft.Network/networkInterfaces",
            &format!("{name}-nic"),
        );
        let mut ipcfg = json!({"name": "ipconfig1", "properties": {
            "subnet": {"id": subnet}, "privateIPAllocationMethod": "Dynamic"}});
        if let Some(p) = &pip {
            ipcfg["properties"]["publicIPAddress"] = json!({"id": p});
        }
        let nic_v = self
            .make(ctx, &arm, kind::NIC, &nic, tg, |tags| {
                json!({"location": loc, "tags": tags, "properties": {
                    "ipConfigurations": [ipcfg],
                    "networkSecurityGroup": {"id": nsg}
                }})
            })
            .await?;
        // The agent settings with the ephemeral key, as customData.
        let keys = access.public_keys();
        let settings = opsbake_stemcell::AgentSettings::minimal(&name, keys.clone(), None);
        let json_bytes = settings
            .to_json()
            .map_err(|e| AzureError::Invalid(format!("agent settings: {e}")))?;
        let custom_data = base64::engine::general_purpose::STANDARD.encode(json_bytes);
        let image_ref = if base.id.starts_with("/subscriptions/") {
            json!({"id": base.id})
        } else {
            let d = |k: &str| base.details.get(k).cloned().unwrap_or_default();
            json!({"publisher": d("publisher"), "offer": d("offer"), "sku": d("sku"), "version": d("version")})
        };
        let generation = if base.details.get("generation").map(String::as_str) == Some("gen2") {
            "V2"
        } else {
            "V1"
        };
        self.launched.lock().await.generation = generation.to_string();
        let size = set(&self.opts.vm_size).unwrap_or_else(|| DEFAULT_VM_SIZE.to_string());
        let disk_name = format!("{name}-osdisk");
        let disk_id = arm.res_id(&group, "Microsoft.Compute/disks", &disk_name);
        let vm_id = arm.res_id(&group, "Microsoft.Compute/virtualMachines", &name);
        let per_resource = set(&self.opts.build_resource_group).is_some();
        if per_resource {
            // The OS disk is made by the VM's create call: journal it first,
            // so that it is never left behind (its id is known: we name it).
            ctx.create_resource(
                kind::OS_DISK,
                &disk_name,
                json!({ "id": disk_id, "location": loc, "vm": vm_id }),
                |_t| async { Ok::<_, AzureError>(Made::new(disk_id.clone(), ())) },
            )
            .await?;
        }
        let mut os_disk = json!({"name": disk_name, "createOption": "FromImage", "deleteOption": "Delete",
            "caching": "ReadWrite", "managedDisk": {"storageAccountType": "Standard_LRS"}});
        if let Some(mib) = plan.disk_mib {
            os_disk["diskSizeGB"] = json!(mib.div_ceil(1024));
        }
        let admin_keys: Vec<Value> = keys
            .iter()
            .map(|k| json!({"path": format!("/home/{}/.ssh/authorized_keys", plan.ssh.user), "keyData": k}))
            .collect();
        let user = plan.ssh.user.clone();
        self.make(ctx, &arm, kind::VM, &vm_id, tg, |tags| {
            json!({"location": loc, "tags": tags, "properties": {
                "hardwareProfile": {"vmSize": size},
                "storageProfile": {"imageReference": image_ref, "osDisk": os_disk},
                "osProfile": {
                    "computerName": name, "adminUsername": user, "customData": custom_data,
                    "linuxConfiguration": {"disablePasswordAuthentication": true,
                        "ssh": {"publicKeys": admin_keys}}
                },
                "networkProfile": {"networkInterfaces": [
                    {"id": nic, "properties": {"primary": true, "deleteOption": "Delete"}}]},
                "diagnosticsProfile": {"bootDiagnostics": {"enabled": true}}
            }})
        })
        .await?;
        self.launched.lock().await.vm = Some(vm_id.clone());
        // Running?
        let scope = self.scope();
        self.waiter
            .wait_cancellable(
                &format!("VM {vm_id} running"),
                &scope,
                Some(&ctx.cancel),
                || {
                    let arm = arm.clone();
                    let vm_id = vm_id.clone();
                    async move {
                        let v = arm
                            .get(&vm_id, Some("instanceView"))
                            .await?
                            .ok_or_else(|| AzureError::Invalid(format!("VM {vm_id} vanished")))?;
                        let power = power_state(&v);
                        Ok::<_, AzureError>(match power.as_str() {
                            "PowerState/running" => opsbake_core::wait::Poll::Ready(()),
                            "" | "PowerState/starting" => opsbake_core::wait::Poll::Pending(power),
                            other => opsbake_core::wait::Poll::Failed(other.to_string()),
                        })
                    }
                },
            )
            .await?;
        // Where to connect.
        let host = match plan.ssh.host.as_deref().map(str::trim) {
            Some(h) if !h.is_empty() => h.to_string(),
            _ => {
                let private = nic_v
                    .pointer("/properties/ipConfigurations/0/properties/privateIPAddress")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let public = match &pip {
                    Some(p) => arm.get(p, None).await?.and_then(|v| {
                        v.pointer("/properties/ipAddress")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    }),
                    None => None,
                };
                match plan.ssh.interface.as_deref() {
                    Some("private") => private,
                    Some("public") => public,
                    _ => public.or(private),
                }
                .ok_or_else(|| {
                    AzureError::Invalid(format!(
                        "VM {vm_id}: no address to connect to (ssh.interface)"
                    ))
                })?
            }
        };
        let auth = SshAuth::for_build(plan, access, false)
            .ok_or_else(|| AzureError::Invalid(opsbake_core::builder::NO_LOGIN.into()))?;
        let host_key = match &plan.ssh.host_key {
            HostKeySpec::Pin(k) => HostKeyPolicy::Pin(k.clone()),
            HostKeySpec::Insecure => HostKeyPolicy::Insecure,
            HostKeySpec::Tofu => {
                let keys = boot_diagnostics_host_keys(&arm, &vm_id).await;
                if keys.is_empty() {
                    HostKeyPolicy::TrustOnFirstUse
                } else {
                    tracing::info!(vm = %vm_id, keys = keys.len(), "azure: pinning the host keys from the boot diagnostics serial log");
                    ctx.events.info(format!(
                        "azure: pinning {} host key(s) from the serial log of {name}",
                        keys.len()
                    ));
                    HostKeyPolicy::Pin(keys)
                }
            }
        };
        let mut target = SshTarget::from_plan(plan, auth, host, plan.ssh.port.unwrap_or(22));
        target.host_key = host_key;
        Ok(ConnectTarget::Ssh(target))
    }
}

/// `PowerState/...` of a VM with its instance view.
pub fn power_state(vm: &Value) -> String {
    vm.pointer("/properties/instanceView/statuses")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter().find_map(|s| {
                s.get("code")
                    .and_then(Value::as_str)
                    .filter(|c| c.starts_with("PowerState/"))
                    .map(str::to_string)
            })
        })
        .unwrap_or_default()
}

/// The host keys in the VM's serial log (boot diagnostics:
/// `retrieveBootDiagnosticsData` hands out a SAS URL of the log). Empty when
/// there is no log (yet) or no keys in it.
pub async fn boot_diagnostics_host_keys(arm: &Arm, vm_id: &str) -> Vec<String> {
    let a = match arm
        .call(
            reqwest::Method::POST,
            &format!("{vm_id}/retrieveBootDiagnosticsData?sasUriExpirationTimeInMinutes=10"),
            Some(crate::arm::api::COMPUTE),
            None,
            "POST retrieveBootDiagnosticsData",
        )
        .await
    {
        Ok(a) if a.status == 200 => a,
        Ok(a) => {
            tracing::debug!(vm = vm_id, status = a.status, "no boot diagnostics");
            return Vec::new();
        }
        Err(e) => {
            tracing::debug!(vm = vm_id, error = %e, "no boot diagnostics");
            return Vec::new();
        }
    };
    let Some(uri) = a
        .body
        .get("serialConsoleLogBlobUri")
        .and_then(Value::as_str)
    else {
        return Vec::new();
    };
    match arm
        .get_sas_text(uri, &format!("serial log of {vm_id}"))
        .await
    {
        Ok(t) => host_keys_from_serial_log(&t),
        Err(e) => {
            tracing::debug!(vm = vm_id, error = %e, "serial log not readable");
            Vec::new()
        }
    }
}

/// The `type key` pairs cloud-init prints between `-----BEGIN SSH HOST KEY
/// KEYS-----` and `-----END SSH HOST KEY KEYS-----` on the serial console.
pub fn host_keys_from_serial_log(text: &str) -> Vec<String> {
    opsbake_core::hostkeys::from_console(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_log_host_keys_are_read_between_the_markers() {
        let log = "[  5.1] cloud-init[812]: -----BEGIN SSH HOST KEY KEYS-----\n\
                   [  5.1] cloud-init[812]: ssh-ed25519 AAAAC3Nza root@vm\n\
                   ecdsa-sha2-nistp256 AAAAE2V root@vm\n\
                   -----END SSH HOST KEY KEYS-----\nssh-rsa AAAAB3 outside\n";
        assert_eq!(
            host_keys_from_serial_log(log),
            ["ssh-ed25519 AAAAC3Nza", "ecdsa-sha2-nistp256 AAAAE2V"]
        );
        assert!(host_keys_from_serial_log("no keys").is_empty());
    }
}
