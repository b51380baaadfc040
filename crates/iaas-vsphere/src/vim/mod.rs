//! A thin, typed vim25 SOAP client on reqwest + quick-xml: the dozen calls
//! the builder needs, against vCenter, ESXi or vcsim (which serves only SOAP
//! at `/sdk`).
//!
//! - Session: `RetrieveServiceContent`, `SessionManager.Login`/`Logout`; the
//!   `vmware_soap_session` cookie is kept in a [`Secret`], the password is
//!   sent once and never stored in an error or log.
//! - Properties: `RetrievePropertiesEx` + `ContinueRetrievePropertiesEx`,
//!   over one object or a `ContainerView`.
//! - Waiting: [`Vim::wait_for`] makes a private `PropertyCollector`, a filter
//!   on the object, and blocks in `WaitForUpdatesEx` (server push, no sleep
//!   loop) until a predicate holds, the limit passes or the build is
//!   cancelled; tasks ([`Vim::wait_task`]), the guest IP and lease states all
//!   wait this way.
//! - Faults become [`VsphereError`] variants naming the object.

mod datastore;
pub mod tls;
pub mod wait;
pub mod xml;

use std::collections::BTreeMap;
use std::time::Duration;

use opsbake_core::Secret;

use crate::error::VsphereError;
use xml::{el, esc, moref_el, Node};

/// The vim25 API version sent in `SOAPAction` (vSphere 6.7 and later, and
/// vcsim, accept it).
pub const API_VERSION: &str = "6.7";

/// A managed object reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MoRef {
    /// Its type (`VirtualMachine`).
    pub kind: String,
    /// Its id (`vm-42`).
    pub value: String,
}

impl MoRef {
    /// A reference.
    pub fn new(kind: &str, value: &str) -> MoRef {
        MoRef {
            kind: kind.to_string(),
            value: value.to_string(),
        }
    }

    /// Read `<x type="Kind">value</x>`.
    pub fn from_node(n: &Node) -> Option<MoRef> {
        let kind = n.attr("type")?;
        if n.text.is_empty() {
            return None;
        }
        Some(MoRef::new(kind, n.text.trim()))
    }
}

impl std::fmt::Display for MoRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// The service's well-known objects.
#[derive(Debug, Clone)]
pub struct ServiceContent {
    /// The root folder.
    pub root_folder: MoRef,
    /// The property collector.
    pub property_collector: MoRef,
    /// The search index.
    pub search_index: MoRef,
    /// The session manager.
    pub session_manager: MoRef,
    /// The OVF manager.
    pub ovf_manager: Option<MoRef>,
    /// The file manager.
    pub file_manager: Option<MoRef>,
    /// The view manager.
    pub view_manager: Option<MoRef>,
    /// The custom fields manager.
    pub custom_fields_manager: Option<MoRef>,
    /// `about.fullName`.
    pub full_name: String,
    /// `about.apiType` (`VirtualCenter`, `HostAgent`).
    pub api_type: String,
}

/// A connected client (before or after login).
pub struct Vim {
    http: reqwest::Client,
    sdk: reqwest::Url,
    /// `https://host:port` of the endpoint.
    base: String,
    cookie: std::sync::Mutex<Option<Secret<String>>>,
    /// The service content.
    pub sc: ServiceContent,
    user: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for Vim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vim")
            .field("sdk", &self.sdk.as_str())
            .field("api", &self.sc.api_type)
            .finish()
    }
}

/// An object's properties as read (`name` -> value element).
pub type Props = BTreeMap<String, Node>;

/// One object of a property retrieval.
#[derive(Debug, Clone)]
pub struct ObjectContent {
    /// The object.
    pub obj: MoRef,
    /// Its properties.
    pub props: Props,
}

fn http_err(op: &str, url: &str, e: reqwest::Error) -> VsphereError {
    let mut message = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        message.push_str(": ");
        message.push_str(&s.to_string());
        src = s.source();
    }
    VsphereError::Http {
        op: op.to_string(),
        url: url.to_string(),
        transient: e.is_connect() || e.is_timeout(),
        message,
    }
}

/// A normalised URL with the user and password that were inside it.
pub type UrlParts = (reqwest::Url, Option<String>, Option<Secret<String>>);

/// `https://host[:port]/sdk` from what the user wrote (`host`,
/// `https://host`, `https://user:pass@host:port/sdk`), and the user and
/// password found in it.
pub fn normalise_url(s: &str) -> Result<UrlParts, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("url is empty".into());
    }
    let with_scheme = if s.contains("://") {
        s.to_string()
    } else {
        format!("https://{s}")
    };
    let mut u = reqwest::Url::parse(&with_scheme).map_err(|e| {
        // never echo a URL that may hold a password
        format!("url is not a URL ({e})")
    })?;
    if u.scheme() != "https" && u.scheme() != "http" {
        return Err(format!("url scheme {:?}: use https", u.scheme()));
    }
    let user = (!u.username().is_empty()).then(|| percent_decode(u.username()));
    let pass = u.password().map(|p| Secret::new(percent_decode(p)));
    let _ = u.set_username("");
    let _ = u.set_password(None);
    if u.path().is_empty() || u.path() == "/" {
        u.set_path("/sdk");
    }
    u.set_query(None);
    u.set_fragment(None);
    Ok((u, user, pass))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(v) = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Read a SOAP fault into a typed error.
fn fault_error(op: &str, object: &str, fault: &Node) -> VsphereError {
    let message = fault
        .text_of("faultstring")
        .unwrap_or_default()
        .trim()
        .to_string();
    let detail = fault.child("detail").and_then(|d| d.children.first());
    let kind = detail
        .map(|d| {
            d.xsi_type()
                .map(str::to_string)
                .unwrap_or_else(|| d.name.trim_end_matches("Fault").to_string())
        })
        .unwrap_or_else(|| "SystemError".to_string());
    typed_fault(op, object, &kind, &message, detail)
}

/// A fault type + message (+ its detail element) as a typed error.
pub fn typed_fault(
    op: &str,
    object: &str,
    kind: &str,
    message: &str,
    detail: Option<&Node>,
) -> VsphereError {
    let d = |k: &str| {
        detail
            .and_then(|n| n.text_of(k))
            .unwrap_or_default()
            .to_string()
    };
    match kind {
        "DuplicateName" => VsphereError::DuplicateName {
            op: op.to_string(),
            name: {
                let n = d("name");
                if n.is_empty() {
                    object.to_string()
                } else {
                    n
                }
            },
            object: {
                let o = detail
                    .and_then(|n| n.child("object"))
                    .and_then(MoRef::from_node)
                    .map(|m| m.to_string())
                    .unwrap_or_default();
                if o.is_empty() {
                    message.to_string()
                } else {
                    o
                }
            },
        },
        "ManagedObjectNotFound" => VsphereError::ManagedObjectNotFound {
            op: op.to_string(),
            object: detail
                .and_then(|n| n.child("obj"))
                .and_then(MoRef::from_node)
                .map(|m| m.to_string())
                .unwrap_or_else(|| object.to_string()),
        },
        "InvalidPowerState" => VsphereError::InvalidPowerState {
            op: op.to_string(),
            object: object.to_string(),
            requested: d("requestedState"),
            existing: d("existingState"),
        },
        _ => VsphereError::Fault {
            op: op.to_string(),
            object: object.to_string(),
            fault: kind.to_string(),
            message: message.to_string(),
        },
    }
}

/// `<_this type="..">..</_this>`.
pub fn this(m: &MoRef) -> String {
    moref_el("_this", m)
}

/// The property filter spec for some paths of one object.
fn filter_spec(obj: &MoRef, paths: &[&str], all: bool) -> String {
    let mut s = String::from("<propSet>");
    s.push_str(&el("type", &obj.kind));
    if all {
        s.push_str("<all>true</all>");
    }
    for p in paths {
        s.push_str(&el("pathSet", p));
    }
    s.push_str("</propSet><objectSet>");
    s.push_str(&moref_el("obj", obj));
    s.push_str("<skip>false</skip></objectSet>");
    s
}

fn object_contents(ret: &Node) -> Vec<ObjectContent> {
    ret.children("objects")
        .filter_map(|o| {
            let obj = MoRef::from_node(o.child("obj")?)?;
            let props = o
                .children("propSet")
                .filter_map(|p| Some((p.text_of("name")?.to_string(), p.child("val")?.clone())))
                .collect();
            Some(ObjectContent { obj, props })
        })
        .collect()
}

impl Vim {
    /// Connect (TLS as asked) and read the service content. No login yet.
    pub async fn connect(
        url: &reqwest::Url,
        tls: &tls::TlsMode,
        timeout: Duration,
    ) -> Result<Vim, VsphereError> {
        match Self::connect_with(url, tls, timeout, false).await {
            Err(VsphereError::Http { message, .. })
                if message.contains("BadSignature")
                    && matches!(tls, tls::TlsMode::Thumbprint(_) | tls::TlsMode::Insecure) =>
            {
                tracing::warn!(
                    "{url}: the pinned certificate's key is too small for default TLS (1024-bit RSA, as vcsim's); retrying with TLS 1.2 and legacy RSA signatures"
                );
                Self::connect_with(url, tls, timeout, true).await
            }
            r => r,
        }
    }

    async fn connect_with(
        url: &reqwest::Url,
        tls: &tls::TlsMode,
        timeout: Duration,
        legacy: bool,
    ) -> Result<Vim, VsphereError> {
        let cfg = tls::client_config(tls, legacy).map_err(|message| VsphereError::Tls {
            url: url.to_string(),
            message,
        })?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(cfg)
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(timeout)
            .no_proxy()
            .build()
            .map_err(|e| http_err("client", url.as_str(), e))?;
        let base = format!(
            "{}://{}",
            url.scheme(),
            url.host_str().map_or(String::new(), |h| match url.port() {
                Some(p) => {
                    if h.contains(':') {
                        format!("[{h}]:{p}")
                    } else {
                        format!("{h}:{p}")
                    }
                }
                None => h.to_string(),
            })
        );
        let mut vim = Vim {
            http,
            sdk: url.clone(),
            base,
            cookie: std::sync::Mutex::new(None),
            sc: ServiceContent {
                root_folder: MoRef::new("Folder", "group-d1"),
                property_collector: MoRef::new("PropertyCollector", "propertyCollector"),
                search_index: MoRef::new("SearchIndex", "SearchIndex"),
                session_manager: MoRef::new("SessionManager", "SessionManager"),
                ovf_manager: None,
                file_manager: None,
                view_manager: None,
                custom_fields_manager: None,
                full_name: String::new(),
                api_type: String::new(),
            },
            user: std::sync::Mutex::new(None),
        };
        let si = MoRef::new("ServiceInstance", "ServiceInstance");
        let r = vim
            .call("RetrieveServiceContent", &this(&si), "ServiceInstance")
            .await?;
        let rv = r.child("returnval").ok_or_else(|| VsphereError::Protocol {
            op: "RetrieveServiceContent".into(),
            message: "no returnval".into(),
        })?;
        let m = |k: &str| rv.child(k).and_then(MoRef::from_node);
        let need = |k: &str| {
            m(k).ok_or_else(|| VsphereError::Protocol {
                op: "RetrieveServiceContent".into(),
                message: format!("no {k}"),
            })
        };
        vim.sc = ServiceContent {
            root_folder: need("rootFolder")?,
            property_collector: need("propertyCollector")?,
            search_index: need("searchIndex")?,
            session_manager: need("sessionManager")?,
            ovf_manager: m("ovfManager"),
            file_manager: m("fileManager"),
            view_manager: m("viewManager"),
            custom_fields_manager: m("customFieldsManager"),
            full_name: rv
                .path("about.fullName")
                .map(|n| n.text.clone())
                .unwrap_or_default(),
            api_type: rv
                .path("about.apiType")
                .map(|n| n.text.clone())
                .unwrap_or_default(),
        };
        Ok(vim)
    }

    /// The endpoint (`https://host:port/sdk`).
    pub fn url(&self) -> &str {
        self.sdk.as_str()
    }

    /// `https://host:port`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The HTTP client (for datastore and NFC transfers).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The session cookie header value, once logged in.
    pub fn cookie(&self) -> Option<Secret<String>> {
        self.cookie.lock().ok().and_then(|c| c.clone())
    }

    /// `SessionManager.Login`.
    pub async fn login(&self, user: &str, password: &Secret<String>) -> Result<(), VsphereError> {
        let body = format!(
            "{}{}{}",
            this(&self.sc.session_manager),
            el("userName", user),
            el("password", password.expose())
        );
        match self.call("Login", &body, user).await {
            Ok(_) => {
                if let Ok(mut u) = self.user.lock() {
                    *u = Some(user.to_string());
                }
                Ok(())
            }
            Err(VsphereError::Fault { fault, .. }) if fault == "InvalidLogin" => {
                Err(VsphereError::InvalidLogin {
                    url: self.url().to_string(),
                    user: user.to_string(),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// `SessionManager.Logout` (errors ignored by callers at shutdown).
    pub async fn logout(&self) -> Result<(), VsphereError> {
        self.call("Logout", &this(&self.sc.session_manager), "session")
            .await?;
        if let Ok(mut c) = self.cookie.lock() {
            *c = None;
        }
        Ok(())
    }

    /// One SOAP call: `<op xmlns="urn:vim25">body</op>`. Returns the
    /// `<opResponse>` element; faults become typed errors naming `object`.
    pub async fn call(&self, op: &str, body: &str, object: &str) -> Result<Node, VsphereError> {
        let envelope = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><soapenv:Body><{op} xmlns=\"urn:vim25\">{body}</{op}></soapenv:Body></soapenv:Envelope>"
        );
        let mut req = self
            .http
            .post(self.sdk.clone())
            .header("Content-Type", "text/xml; charset=utf-8")
            .header("SOAPAction", format!("urn:vim25/{API_VERSION}"))
            .body(envelope);
        if let Some(c) = self.cookie() {
            req = req.header("Cookie", c.expose().as_str());
        }
        tracing::trace!(op, object, "vim25 call");
        let resp = req
            .send()
            .await
            .map_err(|e| http_err(op, self.sdk.as_str(), e))?;
        let status = resp.status().as_u16();
        if let Some(sc) = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("vmware_soap_session="))
        {
            let pair = sc.split(';').next().unwrap_or(sc).to_string();
            if let Ok(mut c) = self.cookie.lock() {
                *c = Some(Secret::new(pair));
            }
        }
        let text = resp
            .text()
            .await
            .map_err(|e| http_err(op, self.sdk.as_str(), e))?;
        let doc = match xml::parse(&text) {
            Ok(d) => d,
            Err(m) => {
                return Err(if status >= 400 {
                    VsphereError::Status {
                        op: op.to_string(),
                        url: self.sdk.to_string(),
                        status,
                        body: text.chars().take(300).collect(),
                    }
                } else {
                    VsphereError::Protocol {
                        op: op.to_string(),
                        message: format!("not XML ({m})"),
                    }
                })
            }
        };
        let body = doc
            .child("Body")
            .and_then(|b| b.children.first())
            .ok_or_else(|| VsphereError::Protocol {
                op: op.to_string(),
                message: format!("no SOAP body (HTTP {status})"),
            })?;
        if body.name == "Fault" {
            return Err(fault_error(op, object, body));
        }
        if status >= 400 {
            return Err(VsphereError::Status {
                op: op.to_string(),
                url: self.sdk.to_string(),
                status,
                body: text.chars().take(300).collect(),
            });
        }
        Ok(body.clone())
    }

    /// Call and return the `returnval` element (if any).
    pub async fn call_rv(
        &self,
        op: &str,
        body: &str,
        object: &str,
    ) -> Result<Option<Node>, VsphereError> {
        Ok(self
            .call(op, body, object)
            .await?
            .child("returnval")
            .cloned())
    }

    /// Call a method that returns a managed object (a task, a lease).
    pub async fn call_moref(
        &self,
        op: &str,
        body: &str,
        object: &str,
    ) -> Result<MoRef, VsphereError> {
        self.call_rv(op, body, object)
            .await?
            .as_ref()
            .and_then(MoRef::from_node)
            .ok_or_else(|| VsphereError::Protocol {
                op: op.to_string(),
                message: format!("no managed object returned for {object}"),
            })
    }

    /// `RetrievePropertiesEx` (+ `ContinueRetrievePropertiesEx`) with raw
    /// specs.
    pub async fn retrieve(
        &self,
        spec_set: &str,
        what: &str,
    ) -> Result<Vec<ObjectContent>, VsphereError> {
        let pc = &self.sc.property_collector;
        let body = format!("{}<specSet>{spec_set}</specSet><options/>", this(pc));
        let mut out = Vec::new();
        let mut rv = self.call_rv("RetrievePropertiesEx", &body, what).await?;
        while let Some(r) = rv {
            out.extend(object_contents(&r));
            match r.text_of("token") {
                Some(t) if !t.is_empty() => {
                    let body = format!("{}{}", this(pc), el("token", t));
                    rv = self
                        .call_rv("ContinueRetrievePropertiesEx", &body, what)
                        .await?;
                }
                _ => break,
            }
        }
        Ok(out)
    }

    /// Some properties of one object.
    pub async fn props(&self, obj: &MoRef, paths: &[&str]) -> Result<Props, VsphereError> {
        let objs = self
            .retrieve(&filter_spec(obj, paths, false), &obj.to_string())
            .await?;
        Ok(objs.into_iter().next().map(|o| o.props).unwrap_or_default())
    }

    /// One property's text (empty if unset).
    pub async fn prop_text(&self, obj: &MoRef, path: &str) -> Result<String, VsphereError> {
        Ok(self
            .props(obj, &[path])
            .await?
            .get(path)
            .map(|n| n.text.clone())
            .unwrap_or_default())
    }

    /// Every object of `kind` under `root` (a `ContainerView`), with paths.
    pub async fn list(
        &self,
        root: &MoRef,
        kind: &str,
        paths: &[&str],
    ) -> Result<Vec<ObjectContent>, VsphereError> {
        let vm = self
            .sc
            .view_manager
            .clone()
            .ok_or_else(|| VsphereError::Protocol {
                op: "CreateContainerView".into(),
                message: "the service has no viewManager".into(),
            })?;
        let body = format!(
            "{}{}{}<recursive>true</recursive>",
            this(&vm),
            moref_el("container", root),
            el("type", kind)
        );
        let view = self
            .call_moref("CreateContainerView", &body, &root.to_string())
            .await?;
        let mut spec = String::from("<propSet>");
        spec.push_str(&el("type", kind));
        for p in paths {
            spec.push_str(&el("pathSet", p));
        }
        spec.push_str("</propSet><objectSet>");
        spec.push_str(&moref_el("obj", &view));
        spec.push_str("<skip>true</skip><selectSet xsi:type=\"TraversalSpec\"><type>ContainerView</type><path>view</path><skip>false</skip></selectSet></objectSet>");
        let r = self.retrieve(&spec, &format!("{kind} objects")).await;
        let _ = self
            .call("DestroyView", &this(&view), &view.to_string())
            .await;
        r
    }

    /// `SearchIndex.FindByInventoryPath` (`DC0/vm/name`).
    pub async fn find_by_path(&self, path: &str) -> Result<Option<MoRef>, VsphereError> {
        let body = format!(
            "{}{}",
            this(&self.sc.search_index),
            el("inventoryPath", path)
        );
        Ok(self
            .call_rv("FindByInventoryPath", &body, path)
            .await?
            .as_ref()
            .and_then(MoRef::from_node))
    }

    /// `SearchIndex.FindChild`.
    pub async fn find_child(
        &self,
        parent: &MoRef,
        name: &str,
    ) -> Result<Option<MoRef>, VsphereError> {
        let body = format!(
            "{}{}{}",
            this(&self.sc.search_index),
            moref_el("entity", parent),
            el("name", name)
        );
        Ok(self
            .call_rv("FindChild", &body, name)
            .await?
            .as_ref()
            .and_then(MoRef::from_node))
    }

    /// The user logged in, if any.
    pub fn user(&self) -> Option<String> {
        self.user.lock().ok().and_then(|u| u.clone())
    }

    /// Escape helper re-exported for the step modules.
    pub fn esc(s: &str) -> String {
        esc(s)
    }
}

fn short(s: &str) -> String {
    let t = s.trim();
    if t.chars().count() > 60 {
        format!("{}...", t.chars().take(60).collect::<String>())
    } else {
        t.to_string()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        let (u, user, pass) = normalise_url("https://user:p%40ss@127.0.0.1:8989/sdk").unwrap();
        assert_eq!(u.as_str(), "https://127.0.0.1:8989/sdk");
        assert_eq!(user.as_deref(), Some("user"));
        assert_eq!(pass.unwrap().expose(), "p@ss");
        let (u, user, pass) = normalise_url("vcenter.example.com").unwrap();
        assert_eq!(u.as_str(), "https://vcenter.example.com/sdk");
        assert!(user.is_none() && pass.is_none());
        let e = normalise_url("https://u:secret@[::1").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
        assert!(normalise_url("").is_err());
    }

    #[test]
    fn faults_are_typed_and_name_the_object() {
        let f = xml::parse(r#"<Fault><faultcode>ServerFaultCode</faultcode><faultstring>The name 'x' already exists.</faultstring><detail><DuplicateNameFault xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="DuplicateName"><name>x</name><object type="VirtualMachine">vm-7</object></DuplicateNameFault></detail></Fault>"#).unwrap();
        match fault_error("CloneVM_Task", "/DC0/vm/x", &f) {
            VsphereError::DuplicateName { name, object, .. } => {
                assert_eq!(name, "x");
                assert_eq!(object, "VirtualMachine:vm-7");
            }
            other => panic!("{other:?}"),
        }
        let f = xml::parse(r#"<Fault><faultstring>Cannot complete login due to an incorrect user name or password.</faultstring><detail><InvalidLoginFault/></detail></Fault>"#).unwrap();
        assert_eq!(
            fault_error("Login", "u", &f).fault_name(),
            Some("InvalidLogin")
        );
        let f = xml::parse(r#"<Fault><faultstring>x</faultstring><detail><InvalidPowerStateFault xsi:type="InvalidPowerState" xmlns:xsi="i"><requestedState>poweredOn</requestedState><existingState>poweredOff</existingState></InvalidPowerStateFault></detail></Fault>"#).unwrap();
        let e = fault_error("ShutdownGuest", "vm-1", &f);
        assert!(
            e.to_string()
                .contains("requested poweredOn, it is poweredOff"),
            "{e}"
        );
    }
}
