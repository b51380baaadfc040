//! The `localtest` builder: a builder whose resources are plain files under
//! a root directory. It exercises the runner, the journal, cancellation and
//! `opsbake cleanup` without any IaaS, and runs provisioners through a local
//! transport in a directory that stands in for the VM. It builds no image.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use opsbake_core::builder::{
    Access, Artifact, ArtifactFile, BaseImage, BuildContext, BuildError, Builder, ConnectTarget,
    Deleted, Deleter, Made,
};
use opsbake_core::journal::Resource;
use opsbake_core::plan::BuildPlan;
use opsbake_core::template::Iaas;

/// Resource kinds.
const VM: &str = "localtest_vm";
const RES: &str = "localtest_resource";
const IMAGE: &str = "localtest_image";

pub struct Localtest {
    root: PathBuf,
    resources: u32,
    fail_at: Option<String>,
    wait_for_file: Option<PathBuf>,
}

impl Localtest {
    pub fn from_plan(plan: &BuildPlan, state_dir: &Path) -> Result<Localtest, BuildError> {
        let opts = plan
            .template
            .builds
            .localtest
            .as_ref()
            .map(|b| b.options.clone())
            .unwrap_or_default();
        let root = match &opts.root {
            Some(r) => plan.template_dir.join(r),
            None => state_dir.join("localtest"),
        };
        let resources = match &opts.resources {
            Some(t) => t.get().map_err(|e| {
                BuildError::Other(format!("builds.localtest.options.resources: {e}"))
            })?,
            None => 3,
        };
        Ok(Localtest {
            root,
            resources,
            fail_at: opts.fail_at.clone(),
            wait_for_file: opts
                .wait_for_file
                .as_ref()
                .map(|w| plan.template_dir.join(w)),
        })
    }

    fn maybe_fail(&self, step: &str) -> Result<(), BuildError> {
        if self.fail_at.as_deref() == Some(step) {
            return Err(BuildError::Other(format!(
                "localtest: failing at `{step}` as the template asks (fail_at)"
            )));
        }
        Ok(())
    }
}

/// What a localtest journal keeps for `opsbake cleanup`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CleanupConfig {
    /// The directory every resource lives under.
    pub root: String,
}

/// The deleter `opsbake cleanup` uses: only paths under the recorded root.
pub struct LocaltestDeleter {
    pub root: PathBuf,
}

impl LocaltestDeleter {
    pub fn from_config(cfg: &serde_json::Value) -> Result<LocaltestDeleter, BuildError> {
        let c = serde_json::from_value::<CleanupConfig>(cfg.clone())
            .map_err(|_| BuildError::Other("localtest journal has no `root`".into()))?;
        Ok(LocaltestDeleter {
            root: c.root.into(),
        })
    }
}

#[async_trait]
impl Deleter for LocaltestDeleter {
    async fn delete(&self, res: &Resource) -> Result<Deleted, BuildError> {
        let path = PathBuf::from(&res.name);
        if !path.starts_with(&self.root) || res.name.contains("..") {
            return Err(BuildError::Other(format!(
                "refusing to delete {} outside the localtest root {}",
                path.display(),
                self.root.display()
            )));
        }
        let r = if res.kind == VM {
            tokio::fs::remove_dir_all(&path).await
        } else {
            tokio::fs::remove_file(&path).await
        };
        match r {
            Ok(()) => Ok(Deleted::Now),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Deleted::AlreadyGone),
            Err(e) => Err(BuildError::Io { path, source: e }),
        }
    }

    async fn sweep(&self, build_id: &str) -> Result<Vec<Resource>, BuildError> {
        // The "tag" of a localtest resource is its file name prefix.
        let mut out = Vec::new();
        let mut rd = match tokio::fs::read_dir(&self.root).await {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => {
                return Err(BuildError::Io {
                    path: self.root.clone(),
                    source: e,
                })
            }
        };
        while let Ok(Some(e)) = rd.next_entry().await {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{build_id}-")) && !name.ends_with("-image.txt") {
                let is_dir = e.file_type().await.map(|t| t.is_dir()).unwrap_or(false);
                out.push(Resource {
                    seq: 0,
                    kind: if is_dir { VM } else { RES }.to_string(),
                    name: e.path().display().to_string(),
                    token: String::new(),
                    id: Some(e.path().display().to_string()),
                    data: serde_json::Value::Null,
                    created_data: serde_json::Value::Null,
                    last_error: None,
                });
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Deleter for Localtest {
    async fn delete(&self, res: &Resource) -> Result<Deleted, BuildError> {
        LocaltestDeleter {
            root: self.root.clone(),
        }
        .delete(res)
        .await
    }

    async fn sweep(&self, build_id: &str) -> Result<Vec<Resource>, BuildError> {
        LocaltestDeleter {
            root: self.root.clone(),
        }
        .sweep(build_id)
        .await
    }
}

#[async_trait]
impl Builder for Localtest {
    fn iaas(&self) -> Iaas {
        Iaas::Localtest
    }

    fn cleanup_config(&self) -> serde_json::Value {
        serde_json::to_value(CleanupConfig {
            root: self.root.display().to_string(),
        })
        .unwrap_or(serde_json::Value::Null)
    }

    async fn validate(&self, _ctx: &BuildContext) -> Result<(), BuildError> {
        self.maybe_fail("validate")?;
        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(BuildError::io(&self.root))
    }

    async fn base_image(&self, _ctx: &BuildContext) -> Result<BaseImage, BuildError> {
        self.maybe_fail("base_image")?;
        Ok(BaseImage {
            id: "localtest-base".into(),
            ..Default::default()
        })
    }

    async fn launch(
        &self,
        ctx: &BuildContext,
        _base: &BaseImage,
        _access: &Access,
    ) -> Result<ConnectTarget, BuildError> {
        let id = ctx.build_id().to_string();
        for i in 0..self.resources {
            let p = self.root.join(format!("{id}-res-{i}"));
            let name = p.display().to_string();
            ctx.create_resource(RES, &name, serde_json::Value::Null, |_| async {
                tokio::fs::write(&p, format!("resource {i} of {id}\n"))
                    .await
                    .map_err(BuildError::io(&p))?;
                Ok::<_, BuildError>(Made::new(name.clone(), ()))
            })
            .await?;
        }
        let vm = self.root.join(format!("{id}-vm"));
        let name = vm.display().to_string();
        ctx.create_resource(VM, &name, serde_json::Value::Null, |_| async {
            tokio::fs::create_dir_all(&vm)
                .await
                .map_err(BuildError::io(&vm))?;
            Ok::<_, BuildError>(Made::new(name.clone(), ()))
        })
        .await?;
        self.maybe_fail("launch")?;
        Ok(ConnectTarget::Local { dir: vm })
    }

    async fn capture(&self, ctx: &BuildContext) -> Result<Artifact, BuildError> {
        if let Some(w) = &self.wait_for_file {
            ctx.events
                .info(format!("waiting for {} to exist", w.display()));
            while !w.exists() {
                // Cancellation drops this future (the runner selects on it).
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.maybe_fail("capture")?;
        let id = ctx.build_id().to_string();
        let img = self.root.join(format!("{id}-image.txt"));
        let name = img.display().to_string();
        let (seq, ()) = ctx
            .create_resource(IMAGE, &name, serde_json::Value::Null, |_| async {
                // The "image" holds the VM directory's file names.
                let vm = self.root.join(format!("{id}-vm"));
                let mut names = Vec::new();
                if let Ok(mut rd) = tokio::fs::read_dir(&vm).await {
                    while let Ok(Some(e)) = rd.next_entry().await {
                        names.push(e.file_name().to_string_lossy().into_owned());
                    }
                }
                names.sort();
                tokio::fs::write(&img, names.join("\n") + "\n")
                    .await
                    .map_err(BuildError::io(&img))?;
                Ok::<_, BuildError>(Made::new(name.clone(), ()))
            })
            .await?;
        ctx.keep(seq, IMAGE, &name)?;
        Ok(Artifact {
            id: name,
            ..Default::default()
        })
    }

    async fn export(&self, ctx: &BuildContext, artifact: &mut Artifact) -> Result<(), BuildError> {
        self.maybe_fail("export")?;
        let out = &ctx.plan.output_dir;
        tokio::fs::create_dir_all(out)
            .await
            .map_err(BuildError::io(out))?;
        let dst = out.join(format!("{}-localtest.txt", ctx.plan.template.name));
        tokio::fs::copy(&artifact.id, &dst)
            .await
            .map_err(BuildError::io(&dst))?;
        let size = tokio::fs::metadata(&dst)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        artifact.files.push(ArtifactFile {
            name: dst.display().to_string(),
            size,
        });
        Ok(())
    }
}

pub fn builder(plan: &BuildPlan, state_dir: &Path) -> Result<Arc<dyn Builder>, BuildError> {
    Ok(Arc::new(Localtest::from_plan(plan, state_dir)?))
}
