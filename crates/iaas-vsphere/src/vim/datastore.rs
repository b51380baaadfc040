//! Datastore files through vCenter's `/folder` HTTP interface, and their
//! deletion through the `FileManager`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::xml::{el, moref_el};
use super::{http_err, this, MoRef, Vim};
use crate::error::VsphereError;

impl Vim {
    /// The URL of a datastore file (`/folder/<path>?dcPath=..&dsName=..`).
    pub fn datastore_url(
        &self,
        datacenter: &str,
        datastore: &str,
        path: &str,
    ) -> Result<reqwest::Url, VsphereError> {
        let mut u = reqwest::Url::parse(&format!("{}/folder/", self.base)).map_err(|e| {
            VsphereError::Protocol {
                op: "datastore URL".into(),
                message: e.to_string(),
            }
        })?;
        if let Ok(mut seg) = u.path_segments_mut() {
            seg.pop_if_empty();
            for s in path.split('/').filter(|s| !s.is_empty()) {
                seg.push(s);
            }
        }
        u.query_pairs_mut()
            .append_pair("dcPath", datacenter)
            .append_pair("dsName", datastore);
        Ok(u)
    }

    /// Upload bytes to a datastore file (HTTP PUT through vCenter).
    pub async fn upload_file(
        &self,
        datacenter: &str,
        datastore: &str,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<(), VsphereError> {
        let u = self.datastore_url(datacenter, datastore, path)?;
        let mut req = self
            .http
            .put(u.clone())
            .header("Content-Type", "application/octet-stream")
            .body(bytes);
        if let Some(c) = self.cookie() {
            req = req.header("Cookie", c.expose().as_str());
        }
        let op = format!("upload [{datastore}] {path}");
        let resp = req.send().await.map_err(|e| http_err(&op, u.as_str(), e))?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let body = resp.text().await.unwrap_or_default();
            return Err(VsphereError::Status {
                op,
                url: u.to_string(),
                status,
                body: body.chars().take(300).collect(),
            });
        }
        Ok(())
    }

    /// Download a datastore file.
    pub async fn download_file(
        &self,
        datacenter: &str,
        datastore: &str,
        path: &str,
    ) -> Result<Vec<u8>, VsphereError> {
        let u = self.datastore_url(datacenter, datastore, path)?;
        let mut req = self.http.get(u.clone());
        if let Some(c) = self.cookie() {
            req = req.header("Cookie", c.expose().as_str());
        }
        let op = format!("download [{datastore}] {path}");
        let resp = req.send().await.map_err(|e| http_err(&op, u.as_str(), e))?;
        let status = resp.status().as_u16();
        if status == 404 {
            return Err(VsphereError::Fault {
                op,
                object: format!("[{datastore}] {path}"),
                fault: "FileNotFound".into(),
                message: "HTTP 404".into(),
            });
        }
        if !(200..300).contains(&status) {
            return Err(VsphereError::Status {
                op,
                url: u.to_string(),
                status,
                body: String::new(),
            });
        }
        Ok(resp
            .bytes()
            .await
            .map_err(|e| http_err(&op, u.as_str(), e))?
            .to_vec())
    }

    /// `FileManager.DeleteDatastoreFile_Task` (`[ds] path`); a missing file
    /// is `Ok(false)`.
    pub async fn delete_datastore_file(
        &self,
        ds_path: &str,
        datacenter: &MoRef,
        cancel: &CancellationToken,
    ) -> Result<bool, VsphereError> {
        let fm = self
            .sc
            .file_manager
            .clone()
            .ok_or_else(|| VsphereError::Protocol {
                op: "DeleteDatastoreFile_Task".into(),
                message: "the service has no fileManager".into(),
            })?;
        let body = format!(
            "{}{}{}",
            this(&fm),
            el("name", ds_path),
            moref_el("datacenter", datacenter)
        );
        match self
            .run_task(
                "DeleteDatastoreFile_Task",
                &body,
                ds_path,
                Duration::from_secs(600),
                cancel,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.fault_name() == Some("FileNotFound") => Ok(false),
            Err(e) => Err(e),
        }
    }
}
