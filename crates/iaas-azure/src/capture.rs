//! Capture: power off, deallocate, generalize; then a managed image
//! (`image_name`) and/or a Compute Gallery image version (`gallery`), whose
//! replication is followed per region. A replication that outlives the
//! client-side limit is never abandoned or deleted (Packer #7865): the
//! version is kept and the error says it is still replicating.

use std::collections::BTreeMap;

use opsbake_core::builder::{Artifact, BuildContext, BuildError, Made};
use opsbake_core::wait::WaitError as _;
use serde_json::{json, Value};

use crate::arm::api;
use crate::checks::set;
use crate::cleanup::kind;
use crate::error::AzureError;
use crate::AzureBuilder;

impl AzureBuilder {
    pub(crate) async fn capture_image(&self, ctx: &BuildContext) -> Result<Artifact, BuildError> {
        let arm = self.arm_for(ctx);
        let scope = self.scope();
        let launched = self.launched.lock().await.clone();
        let vm = launched
            .vm
            .clone()
            .ok_or_else(|| AzureError::Invalid("capture before launch: no VM".into()))?;
        arm.action(&vm, "powerOff", &scope).await?;
        arm.action(&vm, "deallocate", &scope).await?;
        arm.action(&vm, "generalize", &scope).await?;
        let mut ids = Vec::new();
        let mut custom = BTreeMap::new();
        let mut image_id = None;
        if let Some(name) = set(&self.opts.image_name) {
            let id = arm.res_id(&self.resource_group, "Microsoft.Compute/images", &name);
            let extra = self.opts.tags.clone();
            let body_of = |tags: BTreeMap<String, String>| {
                let mut t = extra.clone();
                t.extend(tags);
                json!({"location": self.location, "tags": t, "properties": {
                    "sourceVirtualMachine": {"id": vm},
                    "hyperVGeneration": launched.generation
                }})
            };
            let (seq, ()) = ctx
                .create_resource(
                    kind::IMAGE,
                    &name,
                    json!({ "id": id, "location": self.location }),
                    |token| {
                        let b = body_of(self.tags(ctx, &token));
                        let arm = arm.clone();
                        let id = id.clone();
                        let scope = scope.clone();
                        async move {
                            arm.put(&id, &b, &scope).await?;
                            Ok::<_, AzureError>(Made::new(id, ()))
                        }
                    },
                )
                .await?;
            ctx.keep(seq, kind::IMAGE, &id)?;
            custom.insert("managed_image_id".to_string(), id.clone());
            ids.push(id.clone());
            image_id = Some(id);
        }
        if let Some(g) = &self.opts.gallery {
            let vid = self
                .publish(ctx, image_id.as_deref().unwrap_or(&vm))
                .await?;
            custom.insert("gallery_image_version_id".to_string(), vid.clone());
            custom.insert(
                "gallery_regions".to_string(),
                self.regions(g)
                    .iter()
                    .map(|r| r.0.clone())
                    .collect::<Vec<_>>()
                    .join(","),
            );
            ids.push(vid);
        }
        if let Some((seq, base)) = self.base_seq.lock().await.clone() {
            // The imported base image is kept for the next build of this stemcell.
            ctx.keep(seq, kind::IMAGE, &base)?;
        }
        custom.insert("location".to_string(), self.location.clone());
        Ok(Artifact {
            id: ids.join(","),
            files: Vec::new(),
            custom_data: custom,
        })
    }

    fn regions(&self, g: &opsbake_core::options::AzureGallery) -> Vec<(String, u32)> {
        if g.regions.is_empty() {
            vec![(self.location.clone(), 1)]
        } else {
            g.regions
                .iter()
                .map(|r| (r.name.clone(), r.replicas.unwrap_or(1).max(1)))
                .collect()
        }
    }

    /// Gallery and definition (created if missing, kept), then the version.
    async fn publish(&self, ctx: &BuildContext, source: &str) -> Result<String, BuildError> {
        let Some(g) = &self.opts.gallery else {
            return Err(AzureError::Invalid("no gallery".into()).into());
        };
        let arm = self.arm_for(ctx);
        let scope = self.scope();
        let gal = arm.res_id(&self.resource_group, "Microsoft.Compute/galleries", &g.name);
        if arm.get(&gal, None).await?.is_none() {
            let (seq, ()) = ctx
                .create_resource(
                    "gallery",
                    &g.name,
                    json!({"id": gal, "location": self.location}),
                    |t| {
                        let b = json!({"location": self.location, "tags": self.tags(ctx, &t),
                        "properties": {"description": "opsbake images"}});
                        let (arm, gal, scope) = (arm.clone(), gal.clone(), scope.clone());
                        async move {
                            arm.put(&gal, &b, &scope).await?;
                            Ok::<_, AzureError>(Made::new(gal, ()))
                        }
                    },
                )
                .await?;
            ctx.keep(seq, "gallery", &gal)?;
        }
        let def = format!("{gal}/images/{}", g.image);
        if arm.get(&def, None).await?.is_none() {
            let gen = self.launched.lock().await.generation.clone();
            let (seq, ()) = ctx
                .create_resource("gallery_image", &g.image, json!({"id": def, "location": self.location}), |t| {
                    let b = json!({"location": self.location, "tags": self.tags(ctx, &t), "properties": {
                        "osType": "Linux", "osState": "Generalized", "hyperVGeneration": gen,
                        "identifier": {
                            "publisher": g.publisher.clone().unwrap_or_else(|| "opsbake".into()),
                            "offer": g.offer.clone().unwrap_or_else(|| g.image.clone()),
                            "sku": g.sku.clone().unwrap_or_else(|| g.image.clone())
                        }
                    }});
                    let (arm, def, scope) = (arm.clone(), def.clone(), scope.clone());
                    async move {
                        arm.put(&def, &b, &scope).await?;
                        Ok::<_, AzureError>(Made::new(def, ()))
                    }
                })
                .await?;
            ctx.keep(seq, "gallery_image", &def)?;
        }
        let vid = format!("{def}/versions/{}", g.version);
        let regions = self.regions(g);
        let targets: Vec<Value> = regions
            .iter()
            .map(|(r, n)| {
                let mut t = json!({"name": r, "regionalReplicaCount": n});
                if let Some(sa) = &g.storage_account_type {
                    t["storageAccountType"] = json!(sa);
                }
                t
            })
            .collect();
        let mut profile = json!({"targetRegions": targets, "replicaCount": 1});
        if g.shallow_replication {
            profile["replicationMode"] = json!("Shallow");
        }
        let (seq, first) = ctx
            .create_resource(
                kind::GALLERY_VERSION,
                &g.version,
                json!({"id": vid, "location": self.location}),
                |t| {
                    let mut tags = self.opts.tags.clone();
                    tags.extend(self.tags(ctx, &t));
                    let b = json!({"location": self.location, "tags": tags, "properties": {
                        "publishingProfile": profile,
                        "storageProfile": {"source": {"id": source}}
                    }});
                    let (arm, vid) = (arm.clone(), vid.clone());
                    async move {
                        let a = arm
                            .call(
                                reqwest::Method::PUT,
                                &vid,
                                Some(api::GALLERY),
                                Some(&b),
                                "PUT galleries/images/versions",
                            )
                            .await?;
                        if !(a.status == 200 || a.status == 201 || a.status == 202) {
                            return Err(crate::arm::Arm::api_error(
                                "PUT galleries/images/versions",
                                &vid,
                                &a,
                            ));
                        }
                        Ok::<_, AzureError>(Made::new(vid, a))
                    }
                },
            )
            .await?;
        // Follow the operation and report replication per region.
        let what = format!("gallery image version {vid} replicated");
        let wait = arm.wait_operation_with(&first, &vid, &scope, &what, || async {
            if let Ok(Some(v)) = arm.get(&vid, Some("ReplicationStatus")).await {
                let summary = v
                    .pointer("/properties/replicationStatus/summary")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let line: Vec<String> = summary
                    .iter()
                    .map(|r| {
                        format!(
                            "{} {} {}%",
                            r.get("region").and_then(Value::as_str).unwrap_or("?"),
                            r.get("state").and_then(Value::as_str).unwrap_or("?"),
                            r.get("progress").and_then(Value::as_u64).unwrap_or(0)
                        )
                    })
                    .collect();
                tracing::info!(version = %vid, "replication: {}", line.join(", "));
                ctx.events.info(format!(
                    "azure: replication of {}: {}",
                    g.version,
                    line.join(", ")
                ));
            }
        });
        match wait.await {
            Ok(()) => {
                ctx.keep(seq, kind::GALLERY_VERSION, &vid)?;
                Ok(vid)
            }
            Err(e @ AzureError::TimedOut { .. }) => {
                // Never abandon a replication that is still running.
                ctx.keep(seq, kind::GALLERY_VERSION, &vid)?;
                Err(AzureError::Invalid(format!(
                    "{e}; the version {vid} is kept and still replicating in Azure (not deleted)"
                ))
                .into())
            }
            Err(e) => {
                if e.is_transient() {
                    ctx.keep(seq, kind::GALLERY_VERSION, &vid)?;
                }
                Err(e.into())
            }
        }
    }
}
