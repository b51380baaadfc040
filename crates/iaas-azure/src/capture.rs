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
use crate::blob::{upload_vhd, BlobTarget, SasUrl, UploadOptions, VhdSource};
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
        let mut keeps: Vec<(u64, &str, String)> = Vec::new();
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
            // Kept once every output is made (a failed VHD copy or gallery
            // version unwinds it).
            keeps.push((seq, kind::IMAGE, id.clone()));
            custom.insert("managed_image_id".to_string(), id.clone());
            ids.push(id.clone());
            image_id = Some(id);
        }
        if let Some(blob) = set(&self.opts.vhd_output) {
            let (seq, url, size, sent) = self.export_vhd(ctx, &vm, &blob).await?;
            custom.insert("vhd_url".to_string(), url.clone());
            custom.insert("vhd_bytes".to_string(), size.to_string());
            custom.insert("vhd_bytes_sent".to_string(), sent.to_string());
            keeps.push((seq, kind::BLOB, url.clone()));
            ids.push(url);
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
        for (seq, k, id) in keeps {
            ctx.keep(seq, k, &id)?;
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

    /// The OS disk's VHD copied out into the page blob `blob` of the
    /// storage container (Packer's VHD output): a read SAS of the
    /// deallocated VM's disk (`beginGetAccess`), its non-zero pages streamed
    /// into the blob (the same page upload as a heavy stemcell's import,
    /// footer last, resumable), then the SAS revoked (`endGetAccess`), also
    /// when the copy failed. The blob is journaled before its create, so a
    /// failed build deletes it; a successful one keeps it.
    async fn export_vhd(
        &self,
        ctx: &BuildContext,
        vm: &str,
        blob: &str,
    ) -> Result<(u64, String, u64, u64), BuildError> {
        let arm = self.arm_for(ctx);
        let scope = self.scope();
        let Some(st) = &self.storage else {
            return Err(AzureError::Invalid(
                "vhd_output needs storage_account (or storage_endpoint)".into(),
            )
            .into());
        };
        let disk = arm
            .get(vm, None)
            .await?
            .and_then(|v| {
                v.pointer("/properties/storageProfile/osDisk/managedDisk/id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .ok_or_else(|| AzureError::Invalid(format!("VM {vm} has no managed OS disk")))?;
        let container =
            set(&self.opts.storage_container).unwrap_or_else(|| crate::DEFAULT_CONTAINER.into());
        let mut url = st.endpoint.clone();
        {
            let mut segs = url.path_segments_mut().map_err(|_| {
                AzureError::Invalid(format!(
                    "storage endpoint {} cannot hold a path",
                    st.endpoint
                ))
            })?;
            segs.pop_if_empty().push(&container);
            for p in blob.split('/') {
                segs.push(p);
            }
        }
        let target = BlobTarget {
            url: url.clone(),
            sas: st.sas.clone(),
            credential: if st.sas.is_some() {
                None
            } else {
                st.credential.clone()
            },
        };
        target.ensure_container().await?;
        let granted = arm
            .action_result(
                &disk,
                "beginGetAccess",
                &json!({"access": "Read", "durationInSeconds": 3600}),
                &scope,
            )
            .await?;
        let sas = granted
            .get("accessSAS")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                AzureError::Invalid(format!(
                    "beginGetAccess of {disk}: no accessSAS in its result"
                ))
            })
            .and_then(|s| {
                url::Url::parse(s).map_err(|_| {
                    AzureError::Invalid(format!("beginGetAccess of {disk}: accessSAS is not a URL"))
                })
            });
        let copied = match sas {
            Ok(sas) => {
                let opts = UploadOptions {
                    concurrency: self
                        .opts
                        .upload_concurrency
                        .map(|c| c.max(1) as usize)
                        .unwrap_or(crate::blob::DEFAULT_CONCURRENCY),
                    metadata: vec![
                        ("opsbake_build_id".into(), ctx.build_id().to_string()),
                        ("opsbake_source_disk".into(), disk.clone()),
                    ],
                    ..UploadOptions::default()
                };
                let src = VhdSource::Sas(SasUrl(sas));
                let blob_url = url.to_string();
                ctx.create_resource(
                    kind::BLOB,
                    blob,
                    json!({ "id": blob_url, "location": self.location, "vhd_output": true }),
                    |_token| {
                        let target = target.clone();
                        let blob_url = blob_url.clone();
                        async move {
                            let r = upload_vhd(&target, &src, &opts).await?;
                            Ok::<_, AzureError>(Made::new(blob_url, r))
                        }
                    },
                )
                .await
            }
            Err(e) => Err(e.into()),
        };
        // Revoke the SAS whatever happened: a disk with an active SAS cannot
        // be deleted.
        let revoked = arm.action(&disk, "endGetAccess", &scope).await;
        let (seq, report) = copied?;
        revoked?;
        tracing::info!(blob = %target.name(), size = report.size, sent = report.bytes_sent, "azure: OS disk VHD copied out");
        ctx.events.info(format!(
            "azure: VHD output {} ({} bytes, {} sent)",
            target.name(),
            report.size,
            report.bytes_sent
        ));
        Ok((seq, target.name(), report.size, report.bytes_sent))
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
