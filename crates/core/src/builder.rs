//! The `Builder` trait each IaaS implements, and what the runner hands it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::events::{Emitter, EventKind};
use crate::journal::{Journal, JournalError, ProcessIdentity, Resource};
use crate::plan::{BuildPlan, SshPlan};
use crate::secret::Secret;
use crate::template::{HostKeySpec, Iaas, TemplateError};
use crate::transport::{Transport, TransportError};

/// The tag (or label) that carries the build id on every cloud resource.
pub const BUILD_ID_TAG: &str = "opsbake:build-id";

/// Why a build (or one of its steps) failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The template or a variable is wrong.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The journal could not be written.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Talking to the build VM failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// An IaaS call failed.
    #[error("{iaas}: {source}")]
    Iaas {
        /// Which IaaS.
        iaas: Iaas,
        /// The IaaS crate's typed error (names resource, region, path).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A feature that is not built yet. Nothing pretends to work.
    #[error("{what} is not implemented yet")]
    NotImplemented {
        /// What.
        what: String,
    },
    /// A provisioning step failed.
    #[error("step `{step}` failed: {message}")]
    Step {
        /// The step.
        step: String,
        /// What happened (includes the output tail for commands).
        message: String,
    },
    /// The build was cancelled (Ctrl-C, SIGTERM, or another build failed
    /// with `--fail-fast`).
    #[error("cancelled")]
    Cancelled,
    /// A step took longer than allowed.
    #[error("step `{step}` timed out after {after:?}")]
    Timeout {
        /// The step.
        step: String,
        /// The limit.
        after: Duration,
    },
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl BuildError {
    /// Wrap an IaaS crate's error.
    pub fn iaas(iaas: Iaas, e: impl std::error::Error + Send + Sync + 'static) -> BuildError {
        BuildError::Iaas {
            iaas,
            source: Box::new(e),
        }
    }

    /// An I/O error on a path.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BuildError {
        let path = path.into();
        move |source| BuildError::Io { path, source }
    }
}

/// Options of a run that builders and provisioners may look at.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `--debug`: breakpoints after every step, chef at debug level.
    pub debug: bool,
    /// `--offline`: refuse anything that would reach the network.
    pub offline: bool,
    /// `--keep-staging`: leave the staging dir on the VM.
    pub keep_staging: bool,
    /// `--debug-keep-key`: write the ephemeral private key to the state dir.
    pub debug_keep_key: bool,
    /// `--engine` for vbox (`vbox`, `qemu`).
    pub engine: Option<String>,
    /// `--reimport`: import the stemcell again even if a base image exists.
    pub reimport: bool,
}

/// An SSH key pair made for one build.
#[derive(Debug, Clone)]
pub struct KeyPair {
    /// `ssh-ed25519 AAAA... opsbake-<build-id>`.
    pub public_openssh: String,
    /// The private key in OpenSSH format. Never logged.
    pub private_openssh: Secret<String>,
    /// `ssh-ed25519` or `ssh-rsa`.
    pub algorithm: String,
}

/// Which key type an IaaS needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// Ed25519 (default).
    Ed25519,
    /// RSA 3072 (where an IaaS refuses Ed25519).
    Rsa,
}

/// Host key policy of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Accept only these keys (`ssh-ed25519 AAAA...` or `SHA256:...`).
    Pin(Vec<String>),
    /// Trust the first key, then require it for the rest of the build.
    TrustOnFirstUse,
    /// Accept anything (warns loudly).
    Insecure,
}

/// How to log in.
#[derive(Debug, Clone)]
pub enum SshAuth {
    /// The build's ephemeral key.
    Key(Arc<KeyPair>),
    /// A private key file.
    KeyFile(PathBuf),
    /// A password (tried at most once per build).
    Password(Secret<String>),
    /// The build's ephemeral key, and the password once the key has been
    /// refused for `after` (an IaaS with no key metadata, where the key
    /// reaches the VM only through the agent's settings, which a stemcell may
    /// ignore; vcap always has a password there). The password is still sent
    /// at most once per build.
    KeyThenPassword {
        /// The build's ephemeral key.
        key: Arc<KeyPair>,
        /// `ssh.password`.
        password: Secret<String>,
        /// How long the key must have been refused before the password is sent.
        after: Duration,
    },
}

/// How long the ephemeral key must be refused before [`SshAuth::for_build`]'s
/// fallback sends the password (the agent writes the key before sshd starts
/// on a stemcell, so a refusal this long means it never will).
pub const PASSWORD_FALLBACK_AFTER: Duration = Duration::from_secs(15);

impl SshAuth {
    /// The one rule for how a build logs in: `ssh.private_key_file` if set,
    /// else the build's ephemeral key (falling back to `ssh.password` after
    /// [`PASSWORD_FALLBACK_AFTER`] of refusals when `password_fallback` and a
    /// password is set), else the password. `None`: no way to log in.
    pub fn for_build(
        plan: &BuildPlan,
        access: &Access,
        password_fallback: bool,
    ) -> Option<SshAuth> {
        if let Some(p) = &plan.ssh.private_key_file {
            return Some(SshAuth::KeyFile(p.clone()));
        }
        match (&access.key, &plan.ssh.password) {
            (Some(k), Some(p)) if password_fallback => Some(SshAuth::KeyThenPassword {
                key: k.clone(),
                password: p.clone(),
                after: PASSWORD_FALLBACK_AFTER,
            }),
            (Some(k), _) => Some(SshAuth::Key(k.clone())),
            (None, Some(p)) => Some(SshAuth::Password(p.clone())),
            (None, None) => None,
        }
    }
}

/// The error text when [`SshAuth::for_build`] finds no way to log in.
pub const NO_LOGIN: &str =
    "no way to log in: no ephemeral key, ssh.private_key_file or ssh.password";

/// Where and how to reach a build VM over SSH.
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// Address (only loopback or an address the user configured).
    pub host: String,
    /// Port.
    pub port: u16,
    /// User.
    pub user: String,
    /// Credentials.
    pub auth: SshAuth,
    /// Host key policy.
    pub host_key: HostKeyPolicy,
    /// How long to wait for a login.
    pub login_timeout: Duration,
    /// Jump host.
    pub bastion: Option<Box<SshTarget>>,
    /// The VM's CPUs, when the builder made it (`cpus` of the build): the
    /// transport sends a big tree to a one-CPU VM in one stream. None for a
    /// host it did not make (the `ssh` builder, a bastion).
    pub cpus: Option<u32>,
}

impl HostKeyPolicy {
    /// The policy a template's `host_key` setting asks for.
    pub fn from_spec(spec: &HostKeySpec) -> HostKeyPolicy {
        match spec {
            HostKeySpec::Tofu => HostKeyPolicy::TrustOnFirstUse,
            HostKeySpec::Insecure => HostKeyPolicy::Insecure,
            HostKeySpec::Pin(k) => HostKeyPolicy::Pin(k.clone()),
        }
    }
}

impl SshTarget {
    /// The one way a builder makes its SSH target: the user, host key
    /// policy, login timeout and jump host come from the plan's `ssh`
    /// block; the builder gives what only it knows (how to log in, and the
    /// address and port it launched the VM at). The jump host logs in with
    /// its own key file, else with `auth`. A builder that knows the VM's
    /// host keys (a console log) replaces `host_key` afterwards.
    pub fn from_plan(
        plan: &BuildPlan,
        auth: SshAuth,
        host: impl Into<String>,
        port: u16,
    ) -> SshTarget {
        let mut t = SshTarget::from_ssh_plan(&plan.ssh, auth, host, port);
        t.cpus = Some(plan.cpus);
        t
    }

    /// [`SshTarget::from_plan`] from the plan's `ssh` block alone.
    pub fn from_ssh_plan(
        ssh: &SshPlan,
        auth: SshAuth,
        host: impl Into<String>,
        port: u16,
    ) -> SshTarget {
        let bastion = ssh.bastion.as_ref().map(|b| {
            Box::new(SshTarget {
                host: b.host.clone(),
                port: b.port,
                user: b.user.clone(),
                auth: match &b.private_key_file {
                    Some(p) => SshAuth::KeyFile(p.clone()),
                    None => auth.clone(),
                },
                host_key: HostKeyPolicy::from_spec(&b.host_key),
                login_timeout: ssh.login_timeout,
                bastion: None,
                cpus: None,
            })
        });
        SshTarget {
            host: host.into(),
            port,
            user: ssh.user.clone(),
            auth,
            host_key: HostKeyPolicy::from_spec(&ssh.host_key),
            login_timeout: ssh.login_timeout,
            bastion,
            cpus: None,
        }
    }
}

/// What a builder's `launch` returns: how to reach the VM.
#[derive(Debug, Clone)]
pub enum ConnectTarget {
    /// Over SSH.
    Ssh(SshTarget),
    /// Commands run on the build host in this directory (localtest).
    Local {
        /// Working directory.
        dir: PathBuf,
    },
}

/// What `launch` gets to hand the VM its credentials.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The build's ephemeral key.
    pub key: Option<Arc<KeyPair>>,
}

impl Access {
    /// The public keys to authorise on the build VM, in OpenSSH form (the
    /// ephemeral key's, none without one): what a builder puts in the
    /// agent settings.
    pub fn public_keys(&self) -> Vec<String> {
        self.key.iter().map(|k| k.public_openssh.clone()).collect()
    }
}

/// The base image a build starts from.
#[derive(Debug, Clone, Default)]
pub struct BaseImage {
    /// The IaaS's id (AMI, image URL, local disk path).
    pub id: String,
    /// Facts for the manifest.
    pub details: BTreeMap<String, String>,
}

/// One file of an artifact.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ArtifactFile {
    /// Path.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// What a build produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Artifact {
    /// Packer-style artifact id (`us-east-1:ami-1,eu-west-1:ami-2`, a path).
    pub id: String,
    /// Local files.
    pub files: Vec<ArtifactFile>,
    /// Extra facts for the manifest.
    pub custom_data: BTreeMap<String, String>,
}

/// What a builder's step gets.
#[derive(Clone)]
pub struct BuildContext {
    /// The resolved plan.
    pub plan: Arc<BuildPlan>,
    /// The journal (record every resource before creating it).
    pub journal: Arc<Journal>,
    /// Events of this build.
    pub events: Emitter,
    /// Cancelled on Ctrl-C, SIGTERM or `--fail-fast`.
    pub cancel: CancellationToken,
    /// Run options.
    pub options: RunOptions,
    /// Create calls under way: a stopped build lets them finish and record
    /// what they made ([`crate::runner::step`]).
    pub creating: CreatesInFlight,
}

/// The create calls of a build under way ([`BuildContext::create_resource`]).
/// A stop (Ctrl-C, `--fail-fast`) drops a step's future at its next await;
/// dropped inside a create call, the resource may exist (the request reached
/// the IaaS) with no id in the journal, left for a lookup by name or tag that
/// can come before the IaaS has made it. So the runner lets a stopped step
/// run on while a create call is under way, for a bounded time.
#[derive(Clone, Debug)]
pub struct CreatesInFlight(Arc<tokio::sync::watch::Sender<usize>>);

impl Default for CreatesInFlight {
    fn default() -> CreatesInFlight {
        CreatesInFlight(Arc::new(tokio::sync::watch::channel(0).0))
    }
}

impl CreatesInFlight {
    /// How many create calls are under way.
    pub fn count(&self) -> usize {
        *self.0.borrow()
    }

    /// Count one create call until the guard is dropped.
    pub fn enter(&self) -> CreateGuard {
        self.0.send_modify(|n| *n += 1);
        CreateGuard(self.0.clone())
    }

    /// Resolves once no create call is under way.
    pub async fn settled(&self) {
        let mut rx = self.0.subscribe();
        // the sender lives in `self`: `wait_for` fails only if it is gone
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// One create call under way ([`CreatesInFlight::enter`]).
#[derive(Debug)]
pub struct CreateGuard(Arc<tokio::sync::watch::Sender<usize>>);

impl Drop for CreateGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl BuildContext {
    /// The build id.
    pub fn build_id(&self) -> &str {
        &self.plan.build_id
    }

    /// This build's state directory (temporary files go here).
    pub fn state_dir(&self) -> PathBuf {
        self.journal.dir().to_path_buf()
    }

    /// Tags every cloud resource of this build carries.
    pub fn tags(&self) -> BTreeMap<String, String> {
        let mut t = BTreeMap::new();
        t.insert(BUILD_ID_TAG.to_string(), self.build_id().to_string());
        t.insert("opsbake:image".to_string(), self.plan.template.name.clone());
        t
    }

    /// An idempotency token for the resource with this sequence number.
    pub fn token(&self, seq: u64) -> String {
        format!("{}-{seq}", self.build_id())
    }

    /// Record the intent to create a resource (before the create call).
    /// Returns its sequence number; [`BuildContext::token`] gives the token
    /// that was recorded.
    pub fn intent(
        &self,
        kind: &str,
        name: &str,
        data: serde_json::Value,
    ) -> Result<u64, BuildError> {
        let seq = self.journal.intent(kind, name, data)?;
        self.events.emit(EventKind::ResourceIntent {
            seq,
            kind: kind.to_string(),
            name: name.to_string(),
        });
        Ok(seq)
    }

    /// Record a created resource (right after the create call returns).
    pub fn created(
        &self,
        seq: u64,
        kind: &str,
        id: &str,
        data: serde_json::Value,
    ) -> Result<(), BuildError> {
        self.journal.created(seq, id, data)?;
        self.events.emit(EventKind::ResourceCreated {
            seq,
            kind: kind.to_string(),
            id: id.to_string(),
        });
        Ok(())
    }

    /// The one way a builder creates a cloud resource: journal the intent
    /// (`kind`, `name`, `intent` data such as the region or zone), run
    /// `create` with the idempotency token of that record (pass it as the
    /// IaaS's client token / requestId / tag), then record the id and data it
    /// returns. The IaaS error converts through `From` (each IaaS crate
    /// implements `From<ItsError> for BuildError`). Returns the journal
    /// sequence number and the create call's value.
    ///
    /// A build stopped while `create` runs lets it finish (for at most
    /// [`crate::runner::CREATE_STOP_GRACE`]) so that what it made is
    /// recorded and unwound by id; `create`'s own waits may still end early
    /// on the stop (they watch `ctx.cancel`), and should then learn the
    /// resource's id if the IaaS has already taken the request.
    pub async fn create_resource<T, E, F, Fut>(
        &self,
        kind: &str,
        name: &str,
        intent: serde_json::Value,
        create: F,
    ) -> Result<(u64, T), BuildError>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<Made<T>, E>>,
        BuildError: From<E>,
    {
        // once stopped, no new create call begins
        if self.cancel.is_cancelled() {
            return Err(BuildError::Cancelled);
        }
        let seq = self.intent(kind, name, intent)?;
        // counted until the id is recorded: a stop waits for it
        let _creating = self.creating.enter();
        let made = create(self.token(seq)).await?;
        self.created(seq, kind, &made.id, made.data)?;
        Ok((seq, made.value))
    }

    /// Keep a resource after a successful build (an image).
    pub fn keep(&self, seq: u64, kind: &str, id: &str) -> Result<(), BuildError> {
        self.journal.kept(seq)?;
        self.events.emit(EventKind::ResourceKept {
            seq,
            kind: kind.to_string(),
            id: id.to_string(),
        });
        Ok(())
    }

    /// Record that a resource was deleted by the builder itself (e.g. the
    /// build VM terminated before capture).
    pub fn deleted(&self, seq: u64, kind: &str, id: &str) -> Result<(), BuildError> {
        self.journal.deleted(seq)?;
        self.events.emit(EventKind::ResourceDeleted {
            seq,
            kind: kind.to_string(),
            id: id.to_string(),
        });
        Ok(())
    }

    /// Create a local file as a journaled resource (`local_file`): the
    /// intent is recorded, then the file written.
    pub async fn create_local_file(
        &self,
        path: &std::path::Path,
        contents: &[u8],
    ) -> Result<u64, BuildError> {
        let name = path.display().to_string();
        let seq = self.intent(LOCAL_FILE, &name, serde_json::Value::Null)?;
        tokio::fs::write(path, contents)
            .await
            .map_err(BuildError::io(path))?;
        self.created(seq, LOCAL_FILE, &name, serde_json::Value::Null)?;
        Ok(seq)
    }

    /// Record a local process (`local_process`) by PID and start time.
    pub fn record_process(&self, seq: u64, pid: i32) -> Result<(), BuildError> {
        let ident = ProcessIdentity::of(pid).ok_or_else(|| {
            BuildError::Other(format!("process {pid} vanished right after start"))
        })?;
        self.created(
            seq,
            LOCAL_PROCESS,
            &pid.to_string(),
            serde_json::json!({ "start_time": ident.start_time }),
        )
    }
}

/// What a create call hands back to [`BuildContext::create_resource`].
#[derive(Debug, Clone)]
pub struct Made<T> {
    /// The IaaS's id of the new resource.
    pub id: String,
    /// Facts the deleter needs later (zone, disk names...); `null` if none.
    pub data: serde_json::Value,
    /// What the builder keeps using (the SDK's answer, an address...).
    pub value: T,
}

impl<T> Made<T> {
    /// A resource with this id and no extra data.
    pub fn new(id: impl Into<String>, value: T) -> Made<T> {
        Made {
            id: id.into(),
            data: serde_json::Value::Null,
            value,
        }
    }

    /// Add the data the deleter needs.
    pub fn with_data(mut self, data: serde_json::Value) -> Made<T> {
        self.data = data;
        self
    }
}

/// A problem a builder's offline checks found, at a key of the template
/// (`builds.gcp.options.project_id`). `validate` reports it at that key's
/// file:line:col, before anything is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The key path in the template.
    pub key: String,
    /// What is wrong, with the rendered value (or the variable's name when
    /// it is sensitive) and the rule it breaks.
    pub message: String,
}

impl Finding {
    /// A finding at `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Finding {
        Finding {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Kind of a local file resource (deleted by core).
pub const LOCAL_FILE: &str = "local_file";
/// Kind of a local directory resource (deleted recursively by core).
pub const LOCAL_DIR: &str = "local_dir";
/// Kind of a local process resource (PID + start time; SIGTERM, then SIGKILL).
pub const LOCAL_PROCESS: &str = "local_process";

/// How a delete went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deleted {
    /// It was deleted now.
    Now,
    /// It was already gone (or never created).
    AlreadyGone,
}

/// Deletes the resources of one IaaS, in a build or from `opsbake cleanup`.
#[async_trait]
pub trait Deleter: Send + Sync {
    /// Delete one resource. A resource without an id (the process died
    /// between intent and create) must be looked up by name, token or tag.
    async fn delete(&self, res: &Resource) -> Result<Deleted, BuildError>;

    /// Find resources tagged with this build id that are not in the journal
    /// (a kill between the create call and its record). Default: none.
    async fn sweep(&self, _build_id: &str) -> Result<Vec<Resource>, BuildError> {
        Ok(Vec::new())
    }
}

/// One IaaS's builder. Steps run in this order: validate, base_image,
/// launch, (connect), before_provision, (provision), after_provision,
/// capture, export.
#[async_trait]
pub trait Builder: Deleter {
    /// Which IaaS.
    fn iaas(&self) -> Iaas;

    /// What `opsbake cleanup` needs to build a [`Deleter`] for this build
    /// later (region, endpoint, root dir...). Never secrets.
    fn cleanup_config(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// The key type the IaaS needs.
    fn key_algorithm(&self) -> KeyAlgorithm {
        KeyAlgorithm::Ed25519
    }

    /// Checks that need no network (names after interpolation, required
    /// settings from options or environment, region lists). `opsbake
    /// validate` runs them for every selected IaaS and reports each finding
    /// at its template key; `build` runs them before `validate`. Default:
    /// none.
    fn offline_checks(&self) -> Vec<Finding> {
        Vec::new()
    }

    /// Offline findings that do not stop a build (a setting de-duplicated or
    /// ignored): `validate` and `build` print them with their place.
    /// Default: none.
    fn offline_warnings(&self) -> Vec<Finding> {
        Vec::new()
    }

    /// Fail fast, before anything is created: credentials, env vars, files,
    /// quotas.
    async fn validate(&self, ctx: &BuildContext) -> Result<(), BuildError>;

    /// Find or import the base image.
    async fn base_image(&self, ctx: &BuildContext) -> Result<BaseImage, BuildError>;

    /// Start the build VM.
    async fn launch(
        &self,
        ctx: &BuildContext,
        base: &BaseImage,
        access: &Access,
    ) -> Result<ConnectTarget, BuildError>;

    /// Runs after the first login, before the provisioners.
    async fn before_provision(
        &self,
        _ctx: &BuildContext,
        _transport: &dyn Transport,
    ) -> Result<(), BuildError> {
        Ok(())
    }

    /// Runs after the provisioners, before capture.
    async fn after_provision(
        &self,
        _ctx: &BuildContext,
        _transport: &dyn Transport,
    ) -> Result<(), BuildError> {
        Ok(())
    }

    /// Stop the VM and make the image.
    async fn capture(&self, ctx: &BuildContext) -> Result<Artifact, BuildError>;

    /// Write local artifacts (OVA, VHD ...) where the IaaS has them.
    async fn export(
        &self,
        _ctx: &BuildContext,
        _artifact: &mut Artifact,
    ) -> Result<(), BuildError> {
        Ok(())
    }
}

/// Connects to build VMs (implemented by `comms-ssh`).
#[async_trait]
pub trait Connector: Send + Sync {
    /// Make an ephemeral key pair in memory.
    fn generate_key(
        &self,
        algorithm: KeyAlgorithm,
        comment: &str,
    ) -> Result<KeyPair, TransportError>;

    /// Wait for a login and return the connection.
    async fn connect(
        &self,
        target: &SshTarget,
        cancel: CancellationToken,
    ) -> Result<Arc<dyn Transport>, TransportError>;
}

/// Runs the plan's provisioners (implemented by `provision`).
#[async_trait]
pub trait Provisioning: Send + Sync {
    /// Run every step of `ctx.plan.provision` over `transport`.
    async fn run(
        &self,
        ctx: &BuildContext,
        transport: Arc<dyn Transport>,
    ) -> Result<(), BuildError>;
}

/// Delete a local resource kind that core knows (`local_file`, `local_dir`,
/// `local_process`). `None` for other kinds.
pub async fn delete_local(res: &Resource) -> Option<Result<Deleted, BuildError>> {
    match res.kind.as_str() {
        LOCAL_FILE => {
            let p = PathBuf::from(&res.name);
            Some(match tokio::fs::remove_file(&p).await {
                Ok(()) => Ok(Deleted::Now),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Deleted::AlreadyGone),
                Err(e) => Err(BuildError::Io { path: p, source: e }),
            })
        }
        LOCAL_DIR => {
            let p = PathBuf::from(&res.name);
            Some(match tokio::fs::remove_dir_all(&p).await {
                Ok(()) => Ok(Deleted::Now),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Deleted::AlreadyGone),
                Err(e) => Err(BuildError::Io { path: p, source: e }),
            })
        }
        LOCAL_PROCESS => Some(kill_recorded_process(res).await),
        _ => None,
    }
}

async fn kill_recorded_process(res: &Resource) -> Result<Deleted, BuildError> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let (Some(id), Some(start)) = (
        res.id.as_deref().and_then(|i| i.parse::<i32>().ok()),
        res.created_data.get("start_time").and_then(|v| v.as_u64()),
    ) else {
        // Never started, or the record is incomplete: nothing we can
        // identify safely. A PID alone is not enough (PIDs are reused).
        return Ok(Deleted::AlreadyGone);
    };
    let ident = ProcessIdentity {
        pid: id,
        start_time: start,
    };
    if !ident.is_alive() {
        return Ok(Deleted::AlreadyGone);
    }
    let pid = Pid::from_raw(id);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ident.is_alive() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if ident.is_alive() {
        let _ = kill(pid, Signal::SIGKILL);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while ident.is_alive() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if ident.is_alive() {
        return Err(BuildError::Other(format!(
            "process {id} (start time {start}) survived SIGKILL"
        )));
    }
    Ok(Deleted::Now)
}
