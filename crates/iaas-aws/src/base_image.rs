//! `base_image`: a light stemcell's AMI in the region; else an AMI imported
//! earlier from the same stemcell (by its sha1 tag); else the heavy import:
//! the raw disk extracted, made a snapshot (EBS direct APIs, or with
//! `import: s3` an S3 upload and ImportSnapshot), RegisterImage. Snapshot
//! and AMI are kept as a cache for the next builds.

use std::collections::BTreeMap;
use std::path::Path;

use aws_sdk_ec2::types::ImageState;
use opsbake_core::builder::{BaseImage, BuildContext, BuildError, Made, LOCAL_DIR};

use crate::error::{api, AwsError};
use crate::options::DEFAULT_UPLOAD_CONCURRENCY;
use crate::resources::{filter, rid, ROLE_BASE, ROLE_TAG, SNAPSHOT, STEMCELL_SHA1_TAG};
use crate::{import, s3import, AwsBuilder};

impl AwsBuilder {
    pub(crate) async fn find_or_import(&self, ctx: &BuildContext) -> Result<BaseImage, BuildError> {
        let (path, m) = self.manifest(ctx).await?;
        let region = self.region.as_str();
        if m.is_light() {
            let r = m
                .light_image(Some(region))
                .map_err(|e| AwsError::Stemcell {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            let opsbake_stemcell::CloudImageRef::AwsAmi { ami, .. } = r else {
                return Err(AwsError::Stemcell {
                    path,
                    message: "is light but names no AMI".into(),
                }
                .into());
            };
            let ec2 = self.clients.ec2(region).await?;
            let out = ec2
                .describe_images()
                .image_ids(&ami)
                .send()
                .await
                .map_err(api("DescribeImages", region, Some(&ami)))?;
            let img = out.images().first().ok_or_else(|| AwsError::Stemcell {
                path: path.clone(),
                message: format!("its AMI {ami} does not exist in {region}"),
            })?;
            let mut details = BTreeMap::new();
            details.insert("source".into(), "light stemcell".into());
            details.insert(
                "root_device_name".into(),
                img.root_device_name().unwrap_or("/dev/sda1").to_string(),
            );
            details.insert("stemcell".into(), format!("{} {}", m.name, m.version));
            return Ok(BaseImage { id: ami, details });
        }
        let reimport = self.opts.reimport || ctx.options.reimport;
        if !reimport {
            if let Some((ami, root)) = self.find_base_image(&m.sha1).await? {
                ctx.events.info(format!(
                    "reusing {ami} in {region}, imported earlier from stemcell sha1 {}",
                    m.sha1
                ));
                let mut details = BTreeMap::new();
                details.insert("source".into(), "reused".into());
                details.insert("root_device_name".into(), root);
                details.insert("stemcell_sha1".into(), m.sha1.clone());
                return Ok(BaseImage { id: ami, details });
            }
        }
        self.import(ctx, &path, &m).await
    }

    async fn find_base_image(&self, sha1: &str) -> Result<Option<(String, String)>, AwsError> {
        let ec2 = self.clients.ec2(&self.region).await?;
        let out = ec2
            .describe_images()
            .owners("self")
            .filters(filter(&format!("tag:{STEMCELL_SHA1_TAG}"), sha1))
            .send()
            .await
            .map_err(api("DescribeImages", &self.region, Some(sha1)))?;
        Ok(out
            .images()
            .iter()
            .filter(|i| i.state() == Some(&ImageState::Available))
            .find_map(|i| {
                Some((
                    i.image_id()?.to_string(),
                    i.root_device_name().unwrap_or("/dev/sda1").to_string(),
                ))
            }))
    }

    /// Heavy stemcell: extract, upload, RegisterImage; both kept as a cache
    /// for the next builds.
    async fn import(
        &self,
        ctx: &BuildContext,
        path: &Path,
        m: &opsbake_stemcell::Manifest,
    ) -> Result<BaseImage, BuildError> {
        let region = self.region.as_str();
        // Extract the raw disk (SHA-1 checked on the way) into the state dir.
        let dest = ctx.state_dir().join("stemcell");
        let dname = dest.display().to_string();
        let (dseq, report) = ctx
            .create_resource(LOCAL_DIR, &dname, serde_json::Value::Null, |_| async {
                let (p, d) = (path.to_path_buf(), dest.clone());
                let report = tokio::task::spawn_blocking(move || {
                    opsbake_stemcell::extract(&p, &d, &opsbake_stemcell::ExtractOptions::default())
                })
                .await
                .map_err(|e| BuildError::Other(format!("extracting {}: {e}", path.display())))?
                .map_err(|e| AwsError::Stemcell {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
                Ok::<_, BuildError>(Made::new(dname.clone(), report))
            })
            .await?;
        let disk = report
            .files
            .iter()
            .find(|f| f.kind == "file" && f.path.file_name().is_some_and(|n| n == "root.img"))
            .map(|f| dest.join(&f.path))
            .ok_or_else(|| AwsError::Stemcell {
                path: path.to_path_buf(),
                message: "its image holds no root.img (an aws-raw stemcell does)".into(),
            })?;
        let short_sha = &m.sha1[..m.sha1.len().min(12)];
        let name = format!("opsbake-base-{}-{}-{}", m.name, m.version, short_sha);
        // Snapshot.
        let mut tags_base = BTreeMap::new();
        tags_base.insert(ROLE_TAG.to_string(), ROLE_BASE.to_string());
        tags_base.insert(STEMCELL_SHA1_TAG.to_string(), m.sha1.clone());
        let (sseq, snap, uploaded) = if self.opts.import.as_deref() == Some("s3") {
            self.snapshot_via_s3(ctx, &disk, &name, &tags_base).await?
        } else {
            self.snapshot_via_ebs(ctx, &disk, m, &name, &tags_base)
                .await?
        };
        self.wait_snapshot(region, &snap).await?;
        // The AMI.
        let root = m
            .cloud_properties
            .root_device_name
            .clone()
            .unwrap_or_else(|| "/dev/sda1".to_string());
        let img_name = format!("{name}-{}", ctx.build_id());
        let (iseq, ami) = self.register_image(ctx, &img_name, m, &snap, &root).await?;
        let mut itags = self.tags(ctx, &ctx.token(iseq), &img_name);
        itags.insert(ROLE_TAG.into(), ROLE_BASE.into());
        itags.insert(STEMCELL_SHA1_TAG.into(), m.sha1.clone());
        self.create_tags(region, &ami, &itags).await?;
        self.wait_image(region, &ami).await?;
        // A cache for the next builds: kept whatever this build's outcome.
        ctx.keep(sseq, SNAPSHOT, &rid(region, &snap))?;
        ctx.keep(iseq, crate::resources::IMAGE, &rid(region, &ami))?;
        // The extracted disk is no longer needed.
        if tokio::fs::remove_dir_all(&dest).await.is_ok() {
            ctx.deleted(dseq, LOCAL_DIR, &dname)?;
        }
        let mut details = BTreeMap::new();
        details.insert("source".into(), "imported".into());
        details.insert("snapshot".into(), snap);
        details.insert("root_device_name".into(), root);
        details.insert("stemcell_sha1".into(), m.sha1.clone());
        details.insert("blocks_uploaded".into(), uploaded);
        Ok(BaseImage { id: ami, details })
    }

    /// The raw disk through the EBS direct APIs (StartSnapshot with the
    /// client token, blocks, CompleteSnapshot); returns (journal seq,
    /// snapshot id, blocks sent).
    async fn snapshot_via_ebs(
        &self,
        ctx: &BuildContext,
        disk: &Path,
        m: &opsbake_stemcell::Manifest,
        name: &str,
        extra_tags: &BTreeMap<String, String>,
    ) -> Result<(u64, String, String), BuildError> {
        let region = self.region.as_str();
        let len = std::fs::metadata(disk).map_err(BuildError::io(disk))?.len();
        let gib = 1u64 << 30;
        let volume_gib = len.div_ceil(gib).max(m.disk_mib().div_ceil(1024)).max(1);
        let ebs = self.clients.ebs(region).await?;
        let ebs = &ebs;
        let (sseq, (up, snap, block_size)) = ctx
            .create_resource(
                SNAPSHOT,
                name,
                serde_json::json!({ "region": region }),
                |token| async move {
                    let mut tags = self.tags(ctx, &token, name);
                    tags.extend(extra_tags.clone());
                    let up = import::Upload {
                        ebs,
                        region,
                        disk,
                        volume_gib: volume_gib as i64,
                        description: format!("{name} (opsbake {})", ctx.build_id()),
                        client_token: token.clone(),
                        tags,
                        concurrency: self
                            .opts
                            .upload_concurrency
                            .map(|c| c as usize)
                            .unwrap_or(DEFAULT_UPLOAD_CONCURRENCY),
                    };
                    let (snap, block_size) = import::start(&up).await?;
                    Ok::<_, AwsError>(
                        Made::new(rid(region, &snap), (up, snap, block_size))
                            .with_data(serde_json::json!({ "region": region })),
                    )
                },
            )
            .await?;
        let rep = import::upload_blocks(&up, &snap, block_size).await?;
        ctx.events.info(format!(
            "uploaded {} of {} blocks ({} MiB) of {} to {snap} in {:.1} s",
            rep.sent,
            rep.blocks,
            rep.bytes_sent >> 20,
            disk.display(),
            rep.seconds
        ));
        Ok((sseq, snap, rep.sent.to_string()))
    }

    /// `import: s3`: the raw disk to S3 (multipart), ImportSnapshot, wait,
    /// the object deleted; returns (journal seq, snapshot id, what was sent).
    async fn snapshot_via_s3(
        &self,
        ctx: &BuildContext,
        disk: &Path,
        name: &str,
        extra_tags: &BTreeMap<String, String>,
    ) -> Result<(u64, String, String), BuildError> {
        let region = self.region.as_str();
        let bucket =
            self.opts.import_bucket.clone().ok_or_else(|| {
                AwsError::Invalid("import: s3 needs options.import_bucket".into())
            })?;
        let key = format!("opsbake/{}/{name}.raw", ctx.build_id());
        let s3 = self.clients.s3(region).await?;
        let object = format!("{bucket}/{key}");
        let up = s3import::S3Upload {
            s3: &s3,
            region,
            bucket: &bucket,
            key: &key,
            disk,
            part_size: s3import::part_size(
                std::fs::metadata(disk).map_err(BuildError::io(disk))?.len(),
                s3import::DEFAULT_PART,
            ),
            concurrency: self
                .opts
                .upload_concurrency
                .map(|c| c as usize)
                .unwrap_or(s3import::DEFAULT_CONCURRENCY)
                .min(16),
        };
        let (oseq, rep) = self.upload_object(ctx, &up).await?;
        ctx.events.info(format!(
            "uploaded {} ({} MiB, {} parts) to s3://{object} in {:.1} s",
            disk.display(),
            rep.bytes >> 20,
            rep.parts,
            rep.seconds
        ));
        let (tseq, task) = self.start_import_snapshot(ctx, name, &bucket, &key).await?;
        let snap = self.wait_import(region, &task).await?;
        // A finished task cannot be cancelled (it expires by itself).
        ctx.deleted(tseq, crate::resources::IMPORT_TASK, &rid(region, &task))?;
        let sseq = self
            .record_snapshot(
                ctx,
                name,
                serde_json::json!({ "region": region }),
                region,
                &snap,
            )
            .await?;
        let mut tags = self.tags(ctx, &ctx.token(sseq), name);
        tags.extend(extra_tags.clone());
        self.create_tags(region, &snap, &tags).await?;
        // The object is no longer needed.
        s3import::delete_object(&s3, region, &bucket, &key).await?;
        ctx.deleted(oseq, crate::resources::S3_OBJECT, &rid(region, &object))?;
        Ok((sseq, snap, format!("{} bytes through S3", rep.bytes)))
    }
}
