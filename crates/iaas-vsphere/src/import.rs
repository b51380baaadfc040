//! The base image: the stemcell's OVF + VMDK imported once per stemcell
//! (`CreateImportSpec`, `ImportVApp`, the disk streamed to the
//! `HttpNfcLease` with `HttpNfcLeaseProgress`, aborted on failure), marked as
//! a template carrying the stemcell's sha1 (`opsbake.stemcell-sha1`), reused
//! by the next build of the same stemcell unless `--reimport`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opsbake_core::builder::{BuildContext, BuildError, Made};
use tokio_util::sync::CancellationToken;

use crate::cleanup::BASE;
use crate::config::{Config, TASK_TIMEOUT};
use crate::error::VsphereError;
use crate::inventory::{self, Place, KEY_BUILD_ID, KEY_ROLE, KEY_STEMCELL_SHA1};
use crate::vim::wait::TASK_STOP_GRACE;
use crate::vim::xml::{el, esc, moref_el, Node};
use crate::vim::{this, MoRef, Vim};

/// How long a lease may take to become ready.
pub const LEASE_READY: Duration = Duration::from_secs(600);

/// The base template's name for a stemcell.
pub fn base_name(prefix: &str, sha1: &str) -> String {
    format!("{prefix}stemcell-{sha1}")
}

/// An existing complete base for this sha1, if any.
pub async fn find_base(
    vim: &Vim,
    place: &Place,
    name: &str,
    sha1: &str,
) -> Result<Option<(MoRef, bool)>, VsphereError> {
    let Some(vm) = vim
        .find_by_path(&format!("{}/{name}", place.folder_path))
        .await?
    else {
        return Ok(None);
    };
    let p = vim
        .props(&vm, &["config.extraConfig", "config.template"])
        .await?;
    let ec = inventory::extra_config(&p);
    let complete = ec.get(KEY_STEMCELL_SHA1).map(String::as_str) == Some(sha1)
        && p.get("config.template").is_some_and(|t| t.text == "true");
    Ok(Some((vm, complete)))
}

/// The extracted stemcell's OVF descriptor and disk files.
#[derive(Debug, Clone)]
pub struct Extracted {
    /// The `.ovf`.
    pub ovf: PathBuf,
    /// Directory of the referenced files.
    pub dir: PathBuf,
}

/// Extract the stemcell's image into `dest`.
pub async fn extract(stemcell: &Path, dest: &Path) -> Result<Extracted, VsphereError> {
    let (s, d) = (stemcell.to_path_buf(), dest.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let rep = opsbake_stemcell::extract(&s, &d, &opsbake_stemcell::ExtractOptions::default())
            .map_err(|e| VsphereError::local(&s, e))?;
        let ovf = rep
            .files
            .iter()
            .map(|f| d.join(&f.path))
            .find(|p| p.extension().is_some_and(|x| x == "ovf"))
            .ok_or_else(|| {
                VsphereError::local(
                    &s,
                    "no .ovf in the image: the vsphere builder needs a vSphere (vsphere-ova) stemcell",
                )
            })?;
        let dir = ovf.parent().map(Path::to_path_buf).unwrap_or(d);
        Ok(Extracted { ovf, dir })
    })
    .await
    .map_err(|j| VsphereError::local(stemcell, format!("extraction task: {j}")))?
}

/// A lease's device URL.
#[derive(Debug, Clone)]
pub struct DeviceUrl {
    /// `importKey` (import) or `key` (export).
    pub key: String,
    /// `importKey`.
    pub import_key: String,
    /// The URL, `*` replaced with the endpoint's host.
    pub url: String,
    /// `targetId` (export: the file name).
    pub target_id: String,
    /// A disk.
    pub disk: bool,
}

/// Wait until a lease is ready (at most `timeout`); its `info` element.
pub async fn lease_ready(
    vim: &Vim,
    lease: &MoRef,
    what: &str,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<Node, VsphereError> {
    vim.wait_for(lease, &["state"], what, timeout, cancel, |p| {
        match p.get("state").map(|s| s.text.as_str()) {
            Some("ready") => Some(Ok(())),
            Some("error") => Some(Err(VsphereError::WaitFailed {
                what: what.to_string(),
                object: lease.to_string(),
                state: "lease error".into(),
            })),
            _ => None,
        }
    })
    .await?;
    let p = vim.props(lease, &["info", "error"]).await?;
    p.get("info")
        .cloned()
        .ok_or_else(|| VsphereError::Protocol {
            op: "HttpNfcLease.info".into(),
            message: format!("{lease} is ready but has no info"),
        })
}

/// The device URLs of a lease's info, with `*` replaced by `base`.
pub fn device_urls(info: &Node, base: &str) -> Vec<DeviceUrl> {
    info.children("deviceUrl")
        .map(|d| {
            let url = d.text_of("url").unwrap_or_default();
            let url = match url.split_once("://*") {
                Some((_, rest)) => format!("{base}{rest}"),
                None => url.to_string(),
            };
            DeviceUrl {
                key: d.text_of("key").unwrap_or_default().to_string(),
                import_key: d.text_of("importKey").unwrap_or_default().to_string(),
                url,
                target_id: d.text_of("targetId").unwrap_or_default().to_string(),
                disk: d.text_of("disk") == Some("true"),
            }
        })
        .collect()
}

/// `HttpNfcLeaseAbort` (best effort).
pub async fn lease_abort(vim: &Vim, lease: &MoRef, why: &str) {
    let body = format!(
        "{}<fault xsi:type=\"LocalizedMethodFault\"><fault xsi:type=\"SystemError\">{}</fault>{}</fault>",
        this(lease),
        el("reason", why),
        el("localizedMessage", why)
    );
    if vim
        .call("HttpNfcLeaseAbort", &body, &lease.to_string())
        .await
        .is_err()
    {
        let _ = vim
            .call("HttpNfcLeaseAbort", &this(lease), &lease.to_string())
            .await;
    }
}

/// Stream a file to a lease URL, reporting progress to the lease.
async fn upload(
    vim: &Vim,
    lease: &MoRef,
    url: &str,
    file: &Path,
    done: Arc<AtomicU64>,
) -> Result<(), VsphereError> {
    use futures::StreamExt as _;
    let f = tokio::fs::File::open(file)
        .await
        .map_err(|e| VsphereError::local(file, e))?;
    let len = f
        .metadata()
        .await
        .map_err(|e| VsphereError::local(file, e))?
        .len();
    let d2 = done.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20).map(move |chunk| {
        if let Ok(c) = &chunk {
            d2.fetch_add(c.len() as u64, Ordering::Relaxed);
        }
        chunk
    });
    let mut req = vim
        .http()
        .put(url)
        .header("Content-Type", "application/x-vnd.vmware-streamVmdk")
        .header("Content-Length", len.to_string())
        .body(reqwest::Body::wrap_stream(stream));
    if let Some(c) = vim.cookie() {
        req = req.header("Cookie", c.expose().as_str());
    }
    let op = format!("upload {} to {lease}", file.display());
    let resp = req.send().await.map_err(|e| VsphereError::Http {
        op: op.clone(),
        url: url.to_string(),
        message: e.to_string(),
        transient: e.is_connect() || e.is_timeout(),
    })?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(VsphereError::Status {
            op,
            url: url.to_string(),
            status,
            body: resp
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect(),
        });
    }
    Ok(())
}

/// Run `work` while telling the lease how far it got every few seconds
/// (the lease times out without it).
pub async fn with_progress<T>(
    vim: &Vim,
    lease: &MoRef,
    total: u64,
    done: Arc<AtomicU64>,
    work: impl std::future::Future<Output = Result<T, VsphereError>>,
) -> Result<T, VsphereError> {
    let report = async {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.tick().await;
        loop {
            tick.tick().await;
            let pct = (done.load(Ordering::Relaxed).saturating_mul(100) / total.max(1)).min(99);
            let body = format!("{}<percent>{pct}</percent>", this(lease));
            if let Err(e) = vim
                .call("HttpNfcLeaseProgress", &body, &lease.to_string())
                .await
            {
                tracing::warn!("HttpNfcLeaseProgress on {lease}: {e}");
            }
        }
    };
    tokio::select! {
        r = work => r,
        _ = report => Err(VsphereError::Protocol { op: "HttpNfcLeaseProgress".into(), message: "stopped".into() }),
    }
}

/// Import the stemcell as this build's base template. Journaled as
/// [`BASE`] before `ImportVApp`; kept once it is a complete template.
pub async fn import(
    ctx: &BuildContext,
    vim: &Vim,
    cfg: &Config,
    place: &Place,
    name: &str,
    sha1: &str,
    ex: &Extracted,
) -> Result<MoRef, BuildError> {
    let ovfm = vim
        .sc
        .ovf_manager
        .clone()
        .ok_or_else(|| VsphereError::Protocol {
            op: "CreateImportSpec".into(),
            message: "the service has no ovfManager".into(),
        })?;
    let descriptor = tokio::fs::read_to_string(&ex.ovf)
        .await
        .map_err(|e| VsphereError::local(&ex.ovf, e))?;
    // the descriptor must at least parse before vCenter sees it
    opsbake_stemcell::Ovf::parse(&descriptor).map_err(|e| VsphereError::local(&ex.ovf, e))?;
    let mut cisp = String::new();
    cisp.push_str(&el("locale", ""));
    cisp.push_str(&el("deploymentOption", ""));
    cisp.push_str(&el("entityName", name));
    if let Some(h) = &place.host {
        cisp.push_str(&moref_el("hostSystem", h));
    }
    if let Some(net) = &place.network {
        // every OVF network onto the build's network
        let src = descriptor_networks(&descriptor);
        for n in src {
            cisp.push_str(&format!(
                "<networkMapping>{}{}</networkMapping>",
                el("name", &n),
                moref_el("network", &net.moref)
            ));
        }
    }
    cisp.push_str(&el("diskProvisioning", "thin"));
    let body = format!(
        "{}<ovfDescriptor>{}</ovfDescriptor>{}{}<cisp>{cisp}</cisp>",
        this(&ovfm),
        esc(&descriptor),
        moref_el("resourcePool", &place.pool),
        moref_el("datastore", &place.datastore),
    );
    let r = vim
        .call_rv("CreateImportSpec", &body, &ex.ovf.display().to_string())
        .await?
        .ok_or_else(|| VsphereError::Protocol {
            op: "CreateImportSpec".into(),
            message: "no result".into(),
        })?;
    if let Some(e) = r.child("error") {
        return Err(VsphereError::Fault {
            op: "CreateImportSpec".into(),
            object: ex.ovf.display().to_string(),
            fault: e
                .child("fault")
                .and_then(Node::xsi_type)
                .unwrap_or("OvfFault")
                .to_string(),
            message: e
                .text_of("localizedMessage")
                .unwrap_or_default()
                .to_string(),
        }
        .into());
    }
    for w in r.children("warning") {
        ctx.events.warn(format!(
            "CreateImportSpec: {}",
            w.text_of("localizedMessage").unwrap_or_default()
        ));
    }
    let spec = r
        .child("importSpec")
        .cloned()
        .ok_or_else(|| VsphereError::Protocol {
            op: "CreateImportSpec".into(),
            message: "no importSpec".into(),
        })?;
    let items: Vec<(String, String)> = r
        .children("fileItem")
        .map(|f| {
            (
                f.text_of("deviceId").unwrap_or_default().to_string(),
                f.text_of("path").unwrap_or_default().to_string(),
            )
        })
        .collect();
    let mut import_body = this(&place.pool);
    spec.write_as("spec", &mut import_body);
    import_body.push_str(&moref_el("folder", &place.folder));
    if let Some(h) = &place.host {
        import_body.push_str(&moref_el("host", h));
    }
    let intent = serde_json::json!({
        "datacenter": place.dc_name, "folder": place.folder_path, "stemcell_sha1": sha1,
    });
    let cancel = ctx.cancel.clone();
    let (seq, (vm, lease, info)) = ctx
        .create_resource(BASE, name, intent, |_token| async {
            let lease = vim.call_moref("ImportVApp", &import_body, name).await?;
            let info = match lease_ready(vim, &lease, "import lease", LEASE_READY, &cancel).await {
                Ok(i) => i,
                // Stopped while the lease is `initializing`: the server makes
                // the VM after ImportVApp has returned (vCenter and vcsim
                // alike). Aborted now, the VM could appear after the unwind
                // looked for it by name, and stay. So wait a little longer,
                // stop or not, to learn the VM: it is then journaled as made
                // and removed by id (the stop is seen right after).
                Err(e) if cancel.is_cancelled() => {
                    match lease_ready(
                        vim,
                        &lease,
                        "import lease (settling after the stop)",
                        TASK_STOP_GRACE,
                        &CancellationToken::new(),
                    )
                    .await
                    {
                        Ok(i) => i,
                        Err(settle) => {
                            tracing::debug!("import lease {lease} after the stop: {settle}");
                            lease_abort(vim, &lease, &e.to_string()).await;
                            return Err(e);
                        }
                    }
                }
                Err(e) => {
                    lease_abort(vim, &lease, &e.to_string()).await;
                    return Err(e);
                }
            };
            let vm = info
                .child("entity")
                .and_then(MoRef::from_node)
                .ok_or_else(|| VsphereError::Protocol {
                    op: "ImportVApp".into(),
                    message: format!("lease {lease} names no VM"),
                })?;
            Ok::<_, VsphereError>(Made::new(vm.value.clone(), (vm, lease, info)))
        })
        .await?;
    if ctx.cancel.is_cancelled() {
        // stopped while the lease settled: the VM is journaled, the unwind
        // destroys it
        lease_abort(vim, &lease, "the build was stopped").await;
        return Err(VsphereError::Cancelled(format!("importing {name}")).into());
    }
    let urls = device_urls(&info, vim.base());
    let mut total = 0u64;
    let mut uploads = Vec::new();
    for (dev, path) in &items {
        let Some(u) = urls.iter().find(|u| &u.import_key == dev) else {
            lease_abort(vim, &lease, "no device URL").await;
            return Err(VsphereError::Protocol {
                op: "ImportVApp".into(),
                message: format!("lease {lease} has no URL for {dev} ({path})"),
            }
            .into());
        };
        let file = ex.dir.join(path);
        total += tokio::fs::metadata(&file)
            .await
            .map_err(|e| VsphereError::local(&file, e))?
            .len();
        uploads.push((u.url.clone(), file));
    }
    let done = Arc::new(AtomicU64::new(0));
    let t0 = std::time::Instant::now();
    let up = with_progress(vim, &lease, total, done.clone(), async {
        for (url, file) in &uploads {
            tokio::select! {
                r = upload(vim, &lease, url, file, done.clone()) => r?,
                _ = ctx.cancel.cancelled() => return Err(VsphereError::Cancelled("uploading the stemcell disk".into())),
            }
        }
        Ok(())
    })
    .await;
    if let Err(e) = up {
        lease_abort(vim, &lease, &e.to_string()).await;
        return Err(e.into());
    }
    vim.call("HttpNfcLeaseComplete", &this(&lease), &lease.to_string())
        .await?;
    ctx.events.info(format!(
        "imported {} ({} MiB uploaded in {:.1}s) as {name} ({vm})",
        ex.ovf.display(),
        total >> 20,
        t0.elapsed().as_secs_f64()
    ));
    // the sha1 marks it complete; then a template, kept as the cache
    let spec = inventory::extra_config_xml(&[
        (KEY_BUILD_ID, ctx.build_id()),
        (KEY_ROLE, "base"),
        (KEY_STEMCELL_SHA1, sha1),
    ]);
    inventory::reconfigure(vim, &vm, name, &spec, &ctx.cancel).await?;
    vim.call("MarkAsTemplate", &this(&vm), name).await?;
    ctx.keep(seq, BASE, &vm.value)?;
    let _ = (cfg, TASK_TIMEOUT);
    Ok(vm)
}

/// The `ovf:name`s of the descriptor's NetworkSection.
fn descriptor_networks(xml: &str) -> Vec<String> {
    let Ok(root) = crate::vim::xml::parse(xml) else {
        return Vec::new();
    };
    root.child("NetworkSection")
        .map(|s| {
            s.children("Network")
                .filter_map(|n| n.attr("name").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
