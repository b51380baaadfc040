//! Base image: light stemcells (`image_url`, or `source_url` imported),
//! heavy ones (the image member to Cloud Storage, `images.insert` with
//! `rawDisk.source`, reused by the stemcell's sha1 label).

use std::collections::BTreeMap;
use std::path::PathBuf;

use opsbake_core::builder::{BaseImage, BuildContext, BuildError, Made};
use opsbake_core::template::Iaas;
use serde_json::{json, Value};

use crate::checks::sanitize;
use crate::cleanup::{global_id, GCS_OBJECT, IMAGE, ROLE_LABEL, SHA1_LABEL};
use crate::error::GcpError;
use crate::upload;
use crate::GcpBuilder;

/// `projects/P/global/images/N` from an image URL or partial URL.
pub fn image_path(url: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = url.split('/').collect();
    let i = parts.iter().position(|p| *p == "projects")?;
    let project = parts.get(i + 1)?;
    let n = parts.iter().position(|p| *p == "images")?;
    let name = parts.get(n + 1)?;
    Some((project.to_string(), name.to_string()))
}

impl GcpBuilder {
    pub(crate) async fn manifest(
        &self,
        ctx: &BuildContext,
    ) -> Result<(PathBuf, opsbake_stemcell::Manifest), GcpError> {
        (ctx.plan)
            .read_stemcell(
                Iaas::Gcp,
                opsbake_stemcell::read_manifest,
                |m| (m.iaas(), m.name.clone()),
                GcpError::Invalid,
                |path, message| GcpError::Stemcell { path, message },
            )
            .await
    }

    /// A base image imported from stemcell `sha1`, READY, if one exists.
    pub(crate) async fn find_base_image(&self, sha1: &str) -> Result<Option<String>, GcpError> {
        let imgs = self
            .api
            .images(&format!("labels.{SHA1_LABEL} = \"{}\"", sanitize(sha1, 63)))
            .await?;
        Ok(imgs
            .iter()
            .filter(|i| i["status"] == "READY" && i["labels"][ROLE_LABEL] == "base")
            .find_map(|i| i["name"].as_str().map(str::to_string)))
    }

    /// `images.insert` from a `rawDisk.source`, waited for, kept as a cache.
    pub(crate) async fn import_raw(
        &self,
        ctx: &BuildContext,
        source: &str,
        sha1: &str,
        m: &opsbake_stemcell::Manifest,
    ) -> Result<String, BuildError> {
        let project = self.api.project.clone();
        let suffix: String = ctx.build_id().chars().rev().take(6).collect::<String>();
        let suffix: String = sanitize(&suffix.chars().rev().collect::<String>(), 6);
        let name = sanitize(
            &format!("opsbake-base-{}-{suffix}", &sha1[..sha1.len().min(12)]),
            63,
        );
        let features: Vec<Value> = m
            .cloud_properties
            .extra
            .get("guest_os_features")
            .and_then(|v| v.as_sequence())
            .map(|s| {
                s.iter()
                    .filter_map(|f| f.as_str())
                    .map(|f| json!({"type": f}))
                    .collect()
            })
            .unwrap_or_default();
        let api = self.api.clone();
        let (seq, op) = ctx
            .create_resource(
                IMAGE,
                &name,
                json!({"project": project, "source": source}),
                |token| {
                    let mut labels = self.labels(ctx, &token);
                    labels.insert(ROLE_LABEL.into(), "base".into());
                    labels.insert(SHA1_LABEL.into(), sanitize(sha1, 63));
                    let body = json!({
                        "name": name,
                        "description": format!("BOSH stemcell {} {} (sha1 {sha1}), imported by opsbake", m.name, m.version),
                        "rawDisk": {"source": source},
                        "guestOsFeatures": features,
                        "labels": labels,
                    });
                    let id = global_id(&project, "images", &name);
                    let project = project.clone();
                    async move {
                        let op = api.image_insert(body, &token).await?;
                        Ok::<_, GcpError>(
                            Made::new(id, op).with_data(json!({"project": project})),
                        )
                    }
                },
            )
            .await?;
        self.api
            .wait_op(&op, &format!("import image {name}"), Some(&ctx.cancel))
            .await?;
        // A cache for the next builds, whatever this build's outcome.
        ctx.keep(seq, IMAGE, &global_id(&self.api.project, "images", &name))?;
        Ok(name)
    }

    /// Heavy stemcell: the image member to GCS, imported, object deleted.
    pub(crate) async fn import_heavy(
        &self,
        ctx: &BuildContext,
        path: &std::path::Path,
        m: &opsbake_stemcell::Manifest,
    ) -> Result<String, BuildError> {
        let bucket = self.opts.bucket.clone().ok_or_else(|| {
            GcpError::Invalid(
                "a heavy stemcell needs builds.gcp.options.bucket (a bucket for the import)".into(),
            )
        })?;
        let object = format!("opsbake/{}/{}-{}.tar.gz", ctx.build_id(), m.name, m.version);
        let api = self.api.clone();
        let id = format!("gs://{bucket}/{object}");
        let (oseq, rep) = ctx
            .create_resource(
                GCS_OBJECT,
                &id,
                json!({"bucket": bucket, "object": object}),
                |_token| {
                    let (bucket, object, id) = (bucket.clone(), object.clone(), id.clone());
                    async move {
                        let rep =
                            upload::upload_image_member(&api, path, &bucket, &object, &m.sha1)
                                .await?;
                        Ok::<_, GcpError>(
                            Made::new(id, rep)
                                .with_data(json!({"bucket": bucket, "object": object})),
                        )
                    }
                },
            )
            .await?;
        ctx.events.info(format!(
            "uploaded the image of {} ({} MiB) to gs://{bucket}/{object} in {:.1} s (sha1 {} checked)",
            path.display(),
            rep.bytes >> 20,
            rep.seconds,
            rep.sha1
        ));
        let source = format!("https://storage.googleapis.com/{bucket}/{object}");
        let name = self.import_raw(ctx, &source, &m.sha1, m).await?;
        // The object is no longer needed once the image exists.
        self.api.object_delete(&bucket, &object).await?;
        ctx.deleted(oseq, GCS_OBJECT, &format!("gs://{bucket}/{object}"))?;
        Ok(name)
    }

    pub(crate) async fn make_base_image(
        &self,
        ctx: &BuildContext,
    ) -> Result<BaseImage, BuildError> {
        let (path, m) = self.manifest(ctx).await?;
        let mut details = BTreeMap::new();
        details.insert("stemcell".into(), format!("{} {}", m.name, m.version));
        if m.is_light() {
            let r = m.light_image(None).map_err(|e| GcpError::Stemcell {
                path: path.clone(),
                message: e.to_string(),
            })?;
            match r {
                opsbake_stemcell::CloudImageRef::GcpImage { image_url } => {
                    let (p, n) = image_path(&image_url).ok_or_else(|| GcpError::Stemcell {
                        path: path.clone(),
                        message: format!(
                            "image_url {image_url} names no projects/P/global/images/N"
                        ),
                    })?;
                    if self.api.image(&p, &n).await?.is_none() {
                        return Err(GcpError::Stemcell {
                            path,
                            message: format!("its image {image_url} does not exist (or is not visible to project {})", self.api.project),
                        }
                        .into());
                    }
                    details.insert("source".into(), "light stemcell".into());
                    return Ok(BaseImage {
                        id: global_id(&p, "images", &n),
                        details,
                    });
                }
                opsbake_stemcell::CloudImageRef::GcpSource {
                    source_url,
                    raw_disk_sha1,
                } => {
                    let key = raw_disk_sha1.clone().unwrap_or_else(|| {
                        use sha1::Digest as _;
                        hex::encode(sha1::Sha1::digest(source_url.as_bytes()))
                    });
                    let reimport = self.opts.reimport || ctx.options.reimport;
                    let name = match (reimport, self.find_base_image(&key).await?) {
                        (false, Some(n)) => n,
                        _ => self.import_raw(ctx, &source_url, &key, &m).await?,
                    };
                    details.insert("source".into(), "light stemcell (source_url)".into());
                    return Ok(BaseImage {
                        id: global_id(&self.api.project, "images", &name),
                        details,
                    });
                }
                _ => {
                    return Err(GcpError::Stemcell {
                        path,
                        message: "is light but names no GCE image".into(),
                    }
                    .into())
                }
            }
        }
        let reimport = self.opts.reimport || ctx.options.reimport;
        if !reimport {
            if let Some(name) = self.find_base_image(&m.sha1).await? {
                ctx.events.info(format!(
                    "reusing image {name}, imported earlier from stemcell sha1 {}",
                    m.sha1
                ));
                details.insert("source".into(), "reused".into());
                details.insert("stemcell_sha1".into(), m.sha1.clone());
                return Ok(BaseImage {
                    id: global_id(&self.api.project, "images", &name),
                    details,
                });
            }
        }
        let name = self.import_heavy(ctx, &path, &m).await?;
        details.insert("source".into(), "imported".into());
        details.insert("stemcell_sha1".into(), m.sha1.clone());
        Ok(BaseImage {
            id: global_id(&self.api.project, "images", &name),
            details,
        })
    }
}
