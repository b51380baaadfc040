//! Artifacts' checksums and the manifest, in Packer's manifest shape
//! (`builds[]` with name, builder_type, build_time, files, artifact_id,
//! packer_run_uuid, custom_data; `last_run_uuid`), plus the SHA-256 of every
//! input of the build.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};

use crate::builder::{Artifact, ArtifactFile, BuildError};
use crate::plan::BuildPlan;
use crate::template::{ChecksumType, Provisioner};
use crate::vars::Vars;

/// SHA-256 digests of a build's inputs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InputDigests {
    /// The template file.
    pub template: String,
    /// The resolved variables (`name=value` lines, sorted; sensitive values
    /// digested as `[REDACTED]` so a digest cannot be brute-forced).
    pub variables: String,
    /// The stemcell file, if local.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stemcell: Option<String>,
    /// Every local file the provisioners upload or run, by path.
    pub provisioning: BTreeMap<String, String>,
}

/// A build's [`InputDigests`], made in the background: reading a stemcell
/// and every provisioning file takes seconds that the build's first steps
/// (validation, the base image, the login) need not wait for. The manifest
/// waits for them; a build that ends first stops the reading.
pub struct Inputs {
    state: Option<InputsState>,
    stop: Arc<AtomicBool>,
}

enum InputsState {
    Done(Box<Result<InputDigests, BuildError>>),
    Pending(tokio::task::JoinHandle<Result<InputDigests, BuildError>>),
}

impl Inputs {
    /// Start digesting the inputs of `plan` on the blocking pool of the
    /// current Tokio runtime (outside one: at once, on this thread).
    pub fn start(plan: &BuildPlan, vars: &Vars) -> Inputs {
        let stop = Arc::new(AtomicBool::new(false));
        let state = match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let (plan, vars, flag) = (plan.clone(), vars.clone(), stop.clone());
                InputsState::Pending(
                    rt.spawn_blocking(move || input_digests_until(&plan, &vars, &flag)),
                )
            }
            Err(_) => InputsState::Done(Box::new(input_digests_until(plan, vars, &stop))),
        };
        Inputs {
            state: Some(state),
            stop,
        }
    }

    /// The digests, once made.
    pub async fn get(mut self) -> Result<InputDigests, BuildError> {
        match self.state.take() {
            Some(InputsState::Done(r)) => *r,
            Some(InputsState::Pending(t)) => t
                .await
                .map_err(|e| BuildError::Other(format!("digesting the build's inputs: {e}")))?,
            None => Err(BuildError::Other(
                "the build's input digests were already taken".into(),
            )),
        }
    }
}

impl From<InputDigests> for Inputs {
    fn from(d: InputDigests) -> Inputs {
        Inputs {
            state: Some(InputsState::Done(Box::new(Ok(d)))),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Drop for Inputs {
    /// A build that ended without its manifest: the reading stops (the
    /// runtime's shutdown waits for blocking tasks).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Hex SHA-256 of a file, streamed (read once per process while the file is
/// unchanged: [`crate::digest`]).
pub fn sha256_file(path: &Path) -> Result<String, BuildError> {
    sha256_until(path, &AtomicBool::new(false))
}

fn sha256_until(path: &Path, stop: &AtomicBool) -> Result<String, BuildError> {
    crate::digest::sha256_file_until(path, stop).map_err(|e| match e {
        crate::digest::DigestError::Io { source, .. } => BuildError::io(path)(source),
        crate::digest::DigestError::Stopped { .. } => BuildError::Cancelled,
    })
}

fn digest_file<D: Digest>(path: &Path) -> Result<String, BuildError> {
    let mut f = std::fs::File::open(path).map_err(BuildError::io(path))?;
    crate::digest::hex_digest::<D>(&mut f, &AtomicBool::new(false))
        .map_err(BuildError::io(path))?
        .ok_or(BuildError::Cancelled)
}

fn collect_files(p: &Path, out: &mut Vec<PathBuf>) -> Result<(), BuildError> {
    let meta = std::fs::symlink_metadata(p).map_err(BuildError::io(p))?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(BuildError::io(p))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            collect_files(&e, out)?;
        }
    } else if meta.is_file() {
        out.push(p.to_path_buf());
    }
    Ok(())
}

/// Digest every input of a build.
pub fn input_digests(plan: &BuildPlan, vars: &Vars) -> Result<InputDigests, BuildError> {
    input_digests_until(plan, vars, &AtomicBool::new(false))
}

/// [`input_digests`] that stops (with [`BuildError::Cancelled`]) when `stop`
/// is raised.
fn input_digests_until(
    plan: &BuildPlan,
    vars: &Vars,
    stop: &AtomicBool,
) -> Result<InputDigests, BuildError> {
    let template = sha256_until(&plan.template_path, stop)?;
    let redacted = vars.redacted();
    let mut h = Sha256::new();
    for (k, v) in &redacted {
        h.update(format!("{k}={v}\n"));
    }
    let variables = hex::encode(h.finalize());
    let stemcell = match plan.stemcell.as_ref().and_then(|s| s.path.as_ref()) {
        Some(p) => Some(sha256_until(Path::new(p), stop)?),
        None => None,
    };
    let mut paths: Vec<String> = Vec::new();
    for p in &plan.provision {
        match p {
            Provisioner::File(f) if f.direction.as_deref() != Some("download") => {
                paths.extend(f.source.iter().cloned());
                paths.extend(f.sources.iter().cloned());
            }
            Provisioner::Shell(s) | Provisioner::ShellLocal(s) => {
                paths.extend(s.script.iter().cloned());
                paths.extend(s.scripts.iter().cloned());
            }
            Provisioner::ChefSolo(c) => {
                paths.extend(c.cookbook_paths.iter().cloned());
                paths.extend(c.roles_path.iter().cloned());
                paths.extend(c.data_bags_path.iter().cloned());
                paths.extend(c.environments_path.iter().cloned());
            }
            _ => {}
        }
    }
    let mut provisioning = BTreeMap::new();
    for p in paths {
        let full = plan.template_dir.join(&p);
        let mut files = Vec::new();
        collect_files(&full, &mut files)?;
        for f in files {
            let rel = f
                .strip_prefix(&plan.template_dir)
                .map(|r| r.display().to_string())
                .unwrap_or_else(|_| f.display().to_string());
            provisioning.insert(rel, sha256_until(&f, stop)?);
        }
    }
    Ok(InputDigests {
        template,
        variables,
        stemcell,
        provisioning,
    })
}

/// Write `<file>.<type>` checksum files (`HEX  NAME`) next to each artifact
/// file; returns the checksum files.
pub fn write_checksums(
    files: &[ArtifactFile],
    types: &[ChecksumType],
) -> Result<Vec<ArtifactFile>, BuildError> {
    let mut out = Vec::new();
    for f in files {
        let path = Path::new(&f.name);
        let base = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for t in types {
            let (hex, ext) = match t {
                ChecksumType::Sha256 => (digest_file::<Sha256>(path)?, "sha256"),
                ChecksumType::Sha512 => (digest_file::<Sha512>(path)?, "sha512"),
                ChecksumType::Sha1 => (digest_file::<sha1::Sha1>(path)?, "sha1"),
            };
            let sum_path = PathBuf::from(format!("{}.{ext}", f.name));
            let line = format!("{hex}  {base}\n");
            std::fs::write(&sum_path, &line).map_err(BuildError::io(&sum_path))?;
            out.push(ArtifactFile {
                name: sum_path.display().to_string(),
                size: line.len() as u64,
            });
        }
    }
    Ok(out)
}

/// One build in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestBuild {
    /// The image name.
    pub name: String,
    /// `opsbake-<iaas>`.
    pub builder_type: String,
    /// Unix time the build finished.
    pub build_time: i64,
    /// Local files.
    pub files: Vec<ArtifactFile>,
    /// Artifact id.
    pub artifact_id: String,
    /// The build id (Packer calls it the run UUID).
    pub packer_run_uuid: String,
    /// Extra facts (engine, stemcell sha1 ...).
    pub custom_data: BTreeMap<String, String>,
    /// Digests of every input.
    #[serde(default)]
    pub inputs: InputDigests,
    /// How long the build took, start to manifest (seconds): what
    /// `opsbake inspect --matrix` gives as the expected duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_seconds: Option<f64>,
}

/// How one build of the last run ended (the manifest's `last_run`): the
/// succeeded ones have an entry in `builds`, the others only this line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOutcome {
    /// The IaaS.
    pub iaas: String,
    /// The build id.
    pub build_id: String,
    /// `succeeded`, `failed` or `cancelled`.
    pub outcome: String,
    /// The artifact id, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_id: Option<String>,
    /// The error, on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The manifest file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Every build recorded so far (new ones appended, like Packer).
    pub builds: Vec<ManifestBuild>,
    /// The build id of the last one.
    pub last_run_uuid: String,
    /// The latest outcome of each IaaS that built into this manifest (one
    /// line per IaaS, replaced by its next run): which succeeded, which to
    /// run again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_run: Vec<RunOutcome>,
}

fn read_manifest(path: &Path) -> Result<Option<Manifest>, BuildError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| BuildError::Other(format!("{}: not a manifest: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(BuildError::Io {
            path: path.into(),
            source: e,
        }),
    }
}

fn write_manifest(path: &Path, m: &Manifest) -> Result<(), BuildError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(BuildError::io(parent))?;
    }
    let text =
        serde_json::to_string_pretty(m).map_err(|e| BuildError::Other(format!("manifest: {e}")))?;
    let text = crate::secret::redactor().scrub(&text);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text + "\n").map_err(BuildError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(BuildError::io(path))?;
    Ok(())
}

/// Read a manifest file (`opsbake manifest merge`, `inspect --matrix`).
pub fn read(path: &Path) -> Result<Manifest, BuildError> {
    read_manifest(path)?.ok_or_else(|| BuildError::Io {
        path: path.into(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

/// Write a manifest file atomically (secrets scrubbed).
pub fn write(path: &Path, m: &Manifest) -> Result<(), BuildError> {
    write_manifest(path, m)
}

/// Record the outcome of every build of this run in the manifest at `path`
/// (created if no build succeeded): each IaaS's line in `last_run` is
/// replaced, the other IaaSes' lines stay (re-running one failed IaaS).
pub fn record_run(path: &Path, outcomes: Vec<RunOutcome>) -> Result<(), BuildError> {
    let mut m = read_manifest(path)?.unwrap_or_default();
    for o in outcomes {
        match m.last_run.iter_mut().find(|x| x.iaas == o.iaas) {
            Some(x) => *x = o,
            None => m.last_run.push(o),
        }
    }
    write_manifest(path, &m)
}

/// Join per-worker manifests into one release manifest: every build once
/// (by build id; a later file's entry wins), ordered by build time; the
/// last run is every file's `last_run` (one line per IaaS, the latest
/// build id winning); `last_run_uuid` is the newest build's.
pub fn merge(parts: Vec<Manifest>) -> Manifest {
    let mut builds: Vec<ManifestBuild> = Vec::new();
    let mut last_run: Vec<RunOutcome> = Vec::new();
    for m in parts {
        for b in m.builds {
            builds.retain(|x| x.packer_run_uuid != b.packer_run_uuid);
            builds.push(b);
        }
        for r in m.last_run {
            match last_run.iter_mut().find(|x| x.iaas == r.iaas) {
                // build ids start with their UTC time: the larger is newer
                Some(x) if x.build_id <= r.build_id => *x = r,
                Some(_) => {}
                None => last_run.push(r),
            }
        }
    }
    builds.sort_by(|a, b| {
        a.build_time
            .cmp(&b.build_time)
            .then_with(|| a.packer_run_uuid.cmp(&b.packer_run_uuid))
    });
    let last_run_uuid = builds
        .last()
        .map(|b| b.packer_run_uuid.clone())
        .unwrap_or_default();
    Manifest {
        builds,
        last_run_uuid,
        last_run,
    }
}

/// Append a build to the manifest at `path` (written atomically).
pub fn append(path: &Path, build: ManifestBuild) -> Result<(), BuildError> {
    let mut m = read_manifest(path)?.unwrap_or_default();
    m.last_run_uuid = build.packer_run_uuid.clone();
    m.builds.push(build);
    write_manifest(path, &m)
}

/// The manifest entry of a finished build.
pub fn entry(plan: &BuildPlan, artifact: &Artifact, inputs: InputDigests) -> ManifestBuild {
    let mut custom_data = artifact.custom_data.clone();
    if let Some(sha1) = plan.stemcell.as_ref().and_then(|s| s.sha1.clone()) {
        custom_data.entry("stemcell_sha1".into()).or_insert(sha1);
    }
    ManifestBuild {
        name: plan.template.name.clone(),
        builder_type: format!("opsbake-{}", plan.iaas),
        build_time: time::OffsetDateTime::now_utc().unix_timestamp(),
        files: artifact.files.clone(),
        artifact_id: artifact.id.clone(),
        packer_run_uuid: plan.build_id.clone(),
        custom_data,
        inputs,
        build_seconds: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn build(id: &str, iaas: &str, t: i64) -> ManifestBuild {
        ManifestBuild {
            name: "appliance".into(),
            builder_type: format!("opsbake-{iaas}"),
            build_time: t,
            files: Vec::new(),
            artifact_id: format!("art-{id}"),
            packer_run_uuid: id.into(),
            custom_data: BTreeMap::new(),
            inputs: InputDigests::default(),
            build_seconds: Some(12.5),
        }
    }

    fn outcome(iaas: &str, id: &str, o: &str) -> RunOutcome {
        RunOutcome {
            iaas: iaas.into(),
            build_id: id.into(),
            outcome: o.into(),
            artifact_id: None,
            error: None,
        }
    }

    #[test]
    fn merge_joins_orders_by_time_and_dedupes_by_build_id() {
        let a = Manifest {
            builds: vec![build("ob-2-aws", "aws", 20), build("ob-1-gcp", "gcp", 10)],
            last_run_uuid: "ob-1-gcp".into(),
            last_run: vec![outcome("aws", "ob-2-aws", "succeeded")],
        };
        let mut again = build("ob-1-gcp", "gcp", 10);
        again.artifact_id = "second".into();
        let b = Manifest {
            builds: vec![build("ob-3-vbox", "vbox", 30), again],
            last_run_uuid: "ob-3-vbox".into(),
            last_run: vec![
                outcome("aws", "ob-1-aws", "failed"),
                outcome("vbox", "ob-3-vbox", "succeeded"),
            ],
        };
        let m = merge(vec![a, b]);
        let ids: Vec<&str> = m
            .builds
            .iter()
            .map(|b| b.packer_run_uuid.as_str())
            .collect();
        assert_eq!(ids, ["ob-1-gcp", "ob-2-aws", "ob-3-vbox"]);
        assert_eq!(m.builds[0].artifact_id, "second");
        assert_eq!(m.last_run_uuid, "ob-3-vbox");
        // the older aws failure does not replace the newer success
        assert_eq!(m.last_run.len(), 2);
        assert_eq!(m.last_run[0].outcome, "succeeded");
        assert_eq!(merge(Vec::new()), Manifest::default());
    }

    #[test]
    fn record_run_keeps_builds_and_reads_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out/manifest.json");
        record_run(&p, vec![outcome("gcp", "ob-1-gcp", "failed")]).unwrap();
        append(&p, build("ob-2-aws", "aws", 20)).unwrap();
        record_run(
            &p,
            vec![
                outcome("aws", "ob-2-aws", "succeeded"),
                outcome("gcp", "ob-2-gcp", "cancelled"),
            ],
        )
        .unwrap();
        let m = read(&p).unwrap();
        assert_eq!(m.builds.len(), 1);
        assert_eq!(m.builds[0].build_seconds, Some(12.5));
        assert_eq!(m.last_run.len(), 2);
        // gcp's line replaced in place, aws's added
        assert_eq!(m.last_run[0].iaas, "gcp");
        assert_eq!(m.last_run[0].outcome, "cancelled");
        assert_eq!(m.last_run[0].build_id, "ob-2-gcp");
        assert_eq!(m.last_run[1].outcome, "succeeded");
        std::fs::write(&p, "{").unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("not a manifest"), "{e}");
        assert!(read(&d.path().join("none.json")).is_err());
    }
}
