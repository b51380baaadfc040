//! `capture`: an AMI of this name deregistered first (force_deregister),
//! the instance stopped, CreateImage (an encrypted copy replaces it when
//! asked), copies to the other regions in parallel, then per image its
//! tags, permissions, deprecation and snapshots ([`crate::copy`]); images
//! and snapshots are kept.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::InstanceStateName;
use opsbake_core::builder::{Artifact, BuildContext, BuildError};

use crate::error::api;
use crate::options::all_regions;
use crate::resources::{rid, IMAGE, SNAPSHOT};
use crate::AwsBuilder;

impl AwsBuilder {
    pub(crate) async fn capture_image(&self, ctx: &BuildContext) -> Result<Artifact, BuildError> {
        let region = self.region.clone();
        let region = region.as_str();
        let id = self
            .launched
            .lock()
            .await
            .instance
            .clone()
            .ok_or_else(|| BuildError::Other("capture without a launched instance".into()))?;
        let ec2 = self.clients.ec2(region).await?;
        let name = self
            .opts
            .ami_name
            .clone()
            .unwrap_or_else(|| format!("{}-{}", ctx.plan.template.name, ctx.build_id()));
        for r in all_regions(region, &self.opts) {
            self.deregister_named(&r, &name).await?;
        }
        ec2.stop_instances()
            .instance_ids(&id)
            .send()
            .await
            .map_err(api("StopInstances", region, Some(&id)))?;
        self.wait_instance(&id, InstanceStateName::Stopped).await?;
        // The image.
        let create_name = if self.opts.encrypt {
            format!("{name}-unencrypted")
        } else {
            name.clone()
        };
        let (seq, mut ami, token) = self.create_image(ctx, &id, &create_name).await?;
        self.wait_image(region, &ami).await?;
        let mut images: Vec<(String, u64, String, String)> = Vec::new(); // region, seq, ami, token
        if self.opts.encrypt {
            // An encrypted copy in the same region replaces the original.
            let (eseq, eami, etoken) = self.copy_to(ctx, region, &ami, region, &name).await?;
            self.deleter.delete_image(region, &ami).await?;
            ctx.deleted(seq, IMAGE, &rid(region, &ami))?;
            ami = eami;
            images.push((region.to_string(), eseq, ami.clone(), etoken));
        } else {
            images.push((region.to_string(), seq, ami.clone(), token));
        }
        // Copies, in parallel.
        let copies = futures::future::join_all(
            self.opts
                .copy_regions
                .iter()
                .filter(|r| r.as_str() != region)
                .map(|r| {
                    let ami = ami.clone();
                    let name = name.clone();
                    async move {
                        self.copy_to(ctx, region, &ami, r, &name)
                            .await
                            .map(|(s, a, t)| (r.clone(), s, a, t))
                    }
                }),
        )
        .await;
        let mut errors = Vec::new();
        for c in copies {
            match c {
                Ok(x) => images.push(x),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if !errors.is_empty() {
            return Err(BuildError::Other(format!(
                "copying {ami}: {}",
                errors.join("; ")
            )));
        }
        // Tags, permissions, deprecation; snapshots recorded and kept.
        let mut kept = Vec::new();
        for (r, s, a, t) in &images {
            self.finish_image(ctx, r, a, &name, t).await?;
            for (sseq, sid) in self.adopt_snapshots(ctx, r, a, &name).await? {
                kept.push((sseq, SNAPSHOT, sid));
            }
            kept.push((*s, IMAGE, rid(r, a)));
        }
        for (s, k, i) in kept {
            ctx.keep(s, k, &i)?;
        }
        let artifact_id = images
            .iter()
            .map(|(r, _, a, _)| format!("{r}:{a}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut custom = BTreeMap::new();
        custom.insert("ami_name".into(), name);
        custom.insert("source_region".into(), region.to_string());
        Ok(Artifact {
            id: artifact_id,
            files: Vec::new(),
            custom_data: custom,
        })
    }
}
