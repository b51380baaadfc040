//! What builders read off a plan: the SSH CIDRs, the stemcell.

use std::path::{Path, PathBuf};

use super::BuildPlan;
use crate::template::Iaas;

impl BuildPlan {
    /// The local path of the plan's stemcell (`stemcell.path` as written),
    /// or why there is none: no stemcell, or only a URL (builders do not
    /// download stemcells).
    pub fn stemcell_path(&self) -> Result<PathBuf, String> {
        let s = self
            .stemcell
            .as_ref()
            .ok_or_else(|| "the template names no stemcell".to_string())?;
        match (&s.path, &s.url) {
            (Some(p), _) => Ok(PathBuf::from(p)),
            (None, Some(u)) => Err(format!(
                "stemcell {u}: download it first (stemcell.path); URLs are not fetched by the {} builder",
                self.iaas
            )),
            (None, None) => Err("stemcell has neither path nor url".into()),
        }
    }

    /// The plan's stemcell for a builder of `iaas`: its path
    /// ([`Self::stemcell_path`], else `invalid`), its manifest as `read`
    /// gives it (run off the async threads), checked to be one for `iaas`
    /// (`infrastructure` gives the manifest's infrastructure and name);
    /// `unusable` makes the builder's error for a stemcell that cannot be
    /// read or is another IaaS's.
    pub async fn read_stemcell<M, E, X>(
        &self,
        iaas: Iaas,
        read: fn(&Path) -> Result<M, E>,
        infrastructure: fn(&M) -> (String, String),
        invalid: fn(String) -> X,
        unusable: fn(PathBuf, String) -> X,
    ) -> Result<(PathBuf, M), X>
    where
        M: Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let path = self.stemcell_path().map_err(invalid)?;
        let p = path.clone();
        let m = crate::task::blocking(move || read(&p))
            .await
            .map_err(|e| unusable(path.clone(), e))?;
        let (infra, name) = infrastructure(&m);
        match iaas.check_stemcell_infrastructure(&infra, &name) {
            Ok(()) => Ok((path, m)),
            Err(e) => Err(unusable(path, e)),
        }
    }

    /// The CIDRs allowed to reach SSH on the build VM (`network.ssh_cidrs`),
    /// trimmed, without empty entries.
    pub fn ssh_cidrs(&self) -> Vec<String> {
        self.network
            .ssh_cidrs
            .iter()
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect()
    }
}
