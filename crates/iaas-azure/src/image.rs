//! The base image: a light stemcell's marketplace reference, or a heavy
//! stemcell's VHD streamed into a page blob ([`crate::blob`]) and made into
//! a managed image tagged with the stemcell's sha1, reused by later builds
//! (`--reimport` makes it again).

use std::path::PathBuf;

use opsbake_core::builder::{BaseImage, BuildContext, BuildError, Made};
use opsbake_core::template::Iaas;
use serde_json::json;

use crate::blob::{upload_vhd, BlobTarget, UploadOptions, VhdSource};
use crate::checks::set;
use crate::cleanup::{kind, STEMCELL_TAG};
use crate::error::AzureError;
use crate::{AzureBuilder, DEFAULT_CONTAINER};

/// The managed image name of a stemcell.
pub fn base_image_name(sha1: &str) -> String {
    format!("opsbake-stemcell-{}", &sha1[..sha1.len().min(16)])
}

impl AzureBuilder {
    pub(crate) async fn manifest(
        &self,
        ctx: &BuildContext,
    ) -> Result<(PathBuf, opsbake_stemcell::Manifest), AzureError> {
        (ctx.plan)
            .read_stemcell(
                Iaas::Azure,
                opsbake_stemcell::read_manifest,
                |m| (m.iaas(), m.name.clone()),
                AzureError::Invalid,
                |path, message| AzureError::Stemcell { path, message },
            )
            .await
    }

    /// Create `resource_group` when asked to and missing (kept).
    async fn ensure_resource_group(&self, ctx: &BuildContext) -> Result<(), BuildError> {
        let arm = self.arm_for(ctx);
        let id = arm.rg_id(&self.resource_group);
        if arm.get(&id, None).await?.is_some() {
            return Ok(());
        }
        let scope = self.scope();
        let (seq, ()) = ctx
            .create_resource(
                kind::RESOURCE_GROUP,
                &self.resource_group,
                json!({ "id": id, "location": self.location }),
                |token| {
                    let arm = arm.clone();
                    let id = id.clone();
                    let tags = self.tags(ctx, &token);
                    let scope = scope.clone();
                    async move {
                        arm.put(
                            &id,
                            &json!({"location": self.location, "tags": tags}),
                            &scope,
                        )
                        .await?;
                        Ok::<_, AzureError>(Made::new(id, ()))
                    }
                },
            )
            .await?;
        // Asked for by the template: it stays.
        ctx.keep(seq, kind::RESOURCE_GROUP, &id)?;
        Ok(())
    }

    pub(crate) async fn base(&self, ctx: &BuildContext) -> Result<BaseImage, BuildError> {
        let (path, m) = self.manifest(ctx).await?;
        if m.is_light() {
            let r = m.light_image(None).map_err(|e| AzureError::Stemcell {
                path: path.clone(),
                message: e.to_string(),
            })?;
            let opsbake_stemcell::CloudImageRef::AzureImage {
                publisher,
                offer,
                sku,
                version,
                generation,
            } = r
            else {
                return Err(AzureError::Stemcell {
                    path,
                    message: "the light stemcell has no azure image reference".into(),
                }
                .into());
            };
            let mut d = std::collections::BTreeMap::new();
            d.insert("publisher".to_string(), publisher.clone());
            d.insert("offer".to_string(), offer.clone());
            d.insert("sku".to_string(), sku.clone());
            d.insert("version".to_string(), version.clone());
            d.insert("generation".to_string(), generation);
            d.insert("stemcell_sha1".to_string(), m.sha1.clone());
            return Ok(BaseImage {
                id: format!("{publisher}:{offer}:{sku}:{version}"),
                details: d,
            });
        }
        self.ensure_resource_group(ctx).await?;
        let arm = self.arm_for(ctx);
        let scope = self.scope();
        let name = base_image_name(&m.sha1);
        let image_id = arm.res_id(&self.resource_group, "Microsoft.Compute/images", &name);
        let mut details = std::collections::BTreeMap::new();
        details.insert("stemcell_sha1".to_string(), m.sha1.clone());
        details.insert("generation".to_string(), "gen1".to_string());
        if let Some(existing) = arm.get(&image_id, None).await? {
            let tagged = existing
                .pointer(&format!("/tags/{STEMCELL_TAG}"))
                .and_then(|v| v.as_str())
                == Some(m.sha1.as_str());
            let ok = existing
                .pointer("/properties/provisioningState")
                .and_then(|v| v.as_str())
                == Some("Succeeded");
            if tagged && ok && !ctx.options.reimport {
                tracing::info!(image = %image_id, "azure: reusing the base image of this stemcell");
                details.insert("reused".to_string(), "true".to_string());
                return Ok(BaseImage {
                    id: image_id,
                    details,
                });
            }
            tracing::info!(image = %image_id, reimport = ctx.options.reimport, "azure: replacing the base image");
            arm.delete(&image_id, &scope).await?;
        }
        let Some(st) = &self.storage else {
            return Err(AzureError::Invalid(
                "a heavy stemcell needs storage_account (or storage_endpoint)".into(),
            )
            .into());
        };
        let container =
            set(&self.opts.storage_container).unwrap_or_else(|| DEFAULT_CONTAINER.into());
        let blob_name = format!(
            "opsbake-{}-{}.vhd",
            ctx.build_id(),
            &m.sha1[..m.sha1.len().min(12)]
        );
        let mut url = st.endpoint.clone();
        url.path_segments_mut()
            .map_err(|_| {
                AzureError::Invalid(format!(
                    "storage endpoint {} cannot hold a path",
                    st.endpoint
                ))
            })?
            .pop_if_empty()
            .push(&container)
            .push(&blob_name);
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
        let opts = UploadOptions {
            concurrency: self
                .opts
                .upload_concurrency
                .map(|c| c.max(1) as usize)
                .unwrap_or(crate::blob::DEFAULT_CONCURRENCY),
            metadata: vec![
                ("opsbake_stemcell_sha1".into(), m.sha1.clone()),
                ("opsbake_build_id".into(), ctx.build_id().to_string()),
            ],
            ..UploadOptions::default()
        };
        let src = VhdSource::Stemcell(path.clone());
        let blob_url = url.to_string();
        let (blob_seq, report) = ctx
            .create_resource(
                kind::BLOB,
                &blob_name,
                json!({ "id": blob_url, "location": self.location }),
                |_token| {
                    let target = target.clone();
                    let blob_url = blob_url.clone();
                    async move {
                        let r = upload_vhd(&target, &src, &opts).await?;
                        Ok::<_, AzureError>(Made::new(blob_url, r))
                    }
                },
            )
            .await?;
        tracing::info!(
            blob = %target.name(),
            size = report.size,
            sent = report.bytes_sent,
            puts = report.puts,
            passes = report.passes,
            "azure: VHD page blob uploaded"
        );
        details.insert("vhd_bytes".to_string(), report.size.to_string());
        details.insert("vhd_bytes_sent".to_string(), report.bytes_sent.to_string());
        let (seq, ()) = ctx
            .create_resource(
                kind::IMAGE,
                &name,
                json!({ "id": image_id, "location": self.location }),
                |token| {
                    let arm = arm.clone();
                    let image_id = image_id.clone();
                    let mut tags = self.tags(ctx, &token);
                    tags.insert(STEMCELL_TAG.to_string(), m.sha1.clone());
                    let body = json!({
                        "location": self.location,
                        "tags": tags,
                        "properties": {
                            "hyperVGeneration": "V1",
                            "storageProfile": {"osDisk": {
                                "osType": "Linux",
                                "osState": "Generalized",
                                "blobUri": blob_url,
                                "storageAccountType": "Standard_LRS",
                                "caching": "ReadWrite"
                            }}
                        }
                    });
                    let scope = scope.clone();
                    async move {
                        arm.put(&image_id, &body, &scope).await?;
                        Ok::<_, AzureError>(Made::new(image_id, ()))
                    }
                },
            )
            .await?;
        *self.base_seq.lock().await = Some((seq, image_id.clone()));
        // The image holds its own copy: the blob goes now.
        if target.delete().await? {
            ctx.deleted(blob_seq, kind::BLOB, url.as_ref())?;
        }
        Ok(BaseImage {
            id: image_id,
            details,
        })
    }
}
