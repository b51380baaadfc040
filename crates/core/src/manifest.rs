//! Artifacts' checksums and the manifest, in Packer's manifest shape
//! (`builds[]` with name, builder_type, build_time, files, artifact_id,
//! packer_run_uuid, custom_data; `last_run_uuid`), plus the SHA-256 of every
//! input of the build.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

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

/// Hex SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, BuildError> {
    digest_file::<Sha256>(path)
}

fn digest_file<D: Digest>(path: &Path) -> Result<String, BuildError> {
    let mut f = std::fs::File::open(path).map_err(BuildError::io(path))?;
    let mut h = D::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(BuildError::io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
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
    let template = sha256_file(&plan.template_path)?;
    let redacted = vars.redacted();
    let mut h = Sha256::new();
    for (k, v) in &redacted {
        h.update(format!("{k}={v}\n"));
    }
    let variables = hex::encode(h.finalize());
    let stemcell = match plan.stemcell.as_ref().and_then(|s| s.path.as_ref()) {
        Some(p) => Some(sha256_file(Path::new(p))?),
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
            provisioning.insert(rel, sha256_file(&f)?);
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
}

/// The manifest file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Every build recorded so far (new ones appended, like Packer).
    pub builds: Vec<ManifestBuild>,
    /// The build id of the last one.
    pub last_run_uuid: String,
}

/// Append a build to the manifest at `path` (written atomically).
pub fn append(path: &Path, build: ManifestBuild) -> Result<(), BuildError> {
    let mut m: Manifest = match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| BuildError::Other(format!("{}: not a manifest: {e}", path.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest::default(),
        Err(e) => {
            return Err(BuildError::Io {
                path: path.into(),
                source: e,
            })
        }
    };
    m.last_run_uuid = build.packer_run_uuid.clone();
    m.builds.push(build);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(BuildError::io(parent))?;
    }
    let text = serde_json::to_string_pretty(&m)
        .map_err(|e| BuildError::Other(format!("manifest: {e}")))?;
    let text = crate::secret::redactor().scrub(&text);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text + "\n").map_err(BuildError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(BuildError::io(path))?;
    Ok(())
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
    }
}
