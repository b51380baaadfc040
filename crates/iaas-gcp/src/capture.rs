//! Capture: stop, `images.insert` from the boot disk (family, labels,
//! storage locations), IAM sharing.

use std::collections::BTreeMap;

use opsbake_core::builder::{Artifact, BuildContext, BuildError, Made};
use serde_json::{json, Value};

use crate::cleanup::{global_id, IMAGE};
use crate::error::GcpError;
use crate::GcpBuilder;

impl GcpBuilder {
    pub(crate) async fn capture_image(&self, ctx: &BuildContext) -> Result<Artifact, BuildError> {
        let l = self.launched.lock().await.clone();
        let (Some(inst), Some(disk)) = (l.instance, l.disk) else {
            return Err(BuildError::Other(
                "capture without a launched instance".into(),
            ));
        };
        let (project, zone) = (self.api.project.clone(), self.api.zone.clone());
        let op = self.api.instance_verb(&zone, &inst, "stop").await?;
        self.api
            .wait_op(&op, &format!("stop instance {inst}"), Some(&ctx.cancel))
            .await?;
        let name = self.image_name.clone();
        let api = self.api.clone();
        let (seq, op) = ctx
            .create_resource(
                IMAGE,
                &name,
                json!({"project": project, "disk": disk}),
                |token| {
                    let mut labels = self.labels(ctx, &token);
                    labels.extend(self.opts.image_labels.clone());
                    let mut body = json!({
                        "name": name,
                        "sourceDisk": format!("projects/{project}/zones/{zone}/disks/{disk}"),
                        "labels": labels,
                        "description": self.opts.image_description.clone().unwrap_or_else(|| {
                            format!("{} built by opsbake (build {})", ctx.plan.template.name, ctx.build_id())
                        }),
                    });
                    if let Some(f) = &self.opts.image_family {
                        body["family"] = json!(f);
                    }
                    if !self.opts.image_storage_locations.is_empty() {
                        body["storageLocations"] = json!(self.opts.image_storage_locations);
                    }
                    let id = global_id(&project, "images", &name);
                    let project = project.clone();
                    async move {
                        let op = api.image_insert(body, &token).await?;
                        Ok::<_, GcpError>(Made::new(id, op).with_data(json!({"project": project})))
                    }
                },
            )
            .await?;
        self.api
            .wait_op(&op, &format!("create image {name}"), Some(&ctx.cancel))
            .await?;
        if !self.opts.image_users.is_empty() {
            self.api.share_image(&name, &self.opts.image_users).await?;
        }
        let id = global_id(&project, "images", &name);
        ctx.keep(seq, IMAGE, &id)?;
        let img = self
            .api
            .image(&project, &name)
            .await?
            .unwrap_or(Value::Null);
        let mut custom = BTreeMap::new();
        custom.insert("project".into(), project.clone());
        custom.insert("zone".into(), zone.clone());
        custom.insert("image_name".into(), name.clone());
        if let Some(f) = &self.opts.image_family {
            custom.insert("image_family".into(), f.clone());
        }
        if let Some(s) = img["selfLink"].as_str() {
            custom.insert("self_link".into(), s.to_string());
        }
        Ok(Artifact {
            id: name,
            files: Vec::new(),
            custom_data: custom,
        })
    }
}
