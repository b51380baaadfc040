//! Upload benchmark: opsbake vs OpenSSH (scp, sftp -b, rsync, tar | ssh,
//! ControlMaster) vs Packer 1.6.6 (null builder), against one hardened test
//! sshd, directly (0 ms) and through the userspace delay proxy (50 ms RTT).
//!
//! Run it with `crates/comms-ssh/bench/run.sh` (release build). Modes:
//!   bench [--reps N] [--rtt-ms 0,50] [--cases a,b,c] [--no-packer-sftp] [--out FILE]
//!   bench client --port P --key FILE --host-keys FILE (upload SRC DEST | steps N)
//! The client mode is what the harness times for opsbake (as its own
//! process, like the OpenSSH tools, so login and peak RSS are included).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opsbake_comms_ssh::{
    Auth, HostKeyPolicy, HostKeyVerifier, KeyKind, KeyPair, SshOptions, SshTransport, Target,
};
use opsbake_core::secret::Secret;
use opsbake_core::transport::{ExecRequest, NullSink, Transport, Upload, UploadSource};
use opsbake_test_support::delay_proxy::{self, DelayProxy};
use opsbake_test_support::sshd::{Sshd, SshdOptions, USER};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// As the opsbake binary does (crates/opsbake/src/malloc.rs):
/// freed upload buffers stay in the heap instead of going back to the kernel.
#[allow(unsafe_code)]
fn tune_malloc() {
    if std::env::var_os("OPSBAKE_BENCH_DEFAULT_MALLOC").is_some() {
        return;
    }
    // SAFETY: mallopt only sets allocator parameters; no other thread yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("client") {
        tune_malloc();
        let rt = if std::env::var_os("OPSBAKE_BENCH_CURRENT_THREAD").is_some() {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        } else {
            tokio::runtime::Runtime::new().unwrap()
        };
        rt.block_on(client(&args));
        return;
    }
    harness(&args);
}

// ---------------------------------------------------------------- client

async fn client(args: &[String]) {
    // OPSBAKE_BENCH_TRACE=debug (an env filter): the transport's log on
    // stderr with times, to see where the round trips go.
    if let Ok(f) = std::env::var("OPSBAKE_BENCH_TRACE") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(f))
            .with_writer(std::io::stderr)
            .with_timer(tracing_subscriber::fmt::time::uptime())
            .try_init();
    }
    let port: u16 = arg(args, "--port").unwrap().parse().unwrap();
    let key = std::fs::read_to_string(arg(args, "--key").unwrap()).unwrap();
    let key = KeyPair::from_openssh(&Secret::new(key)).unwrap();
    let hk: Vec<String> = std::fs::read_to_string(arg(args, "--host-keys").unwrap())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let mut o = SshOptions::new(
        Target {
            host: "127.0.0.1".into(),
            port,
            user: USER.into(),
        },
        Auth::Key(key),
        HostKeyVerifier::new(HostKeyPolicy::Pin(hk)),
    );
    o.login_timeout = Duration::from_secs(30);
    if let Some(n) = arg(args, "--channels") {
        o.sftp_channels = n.parse().unwrap();
    }
    if let Some(w) = arg(args, "--window-kib") {
        o.sftp_window = w.parse::<usize>().unwrap() << 10;
    }
    let t0 = Instant::now();
    let t = SshTransport::connect(o).await.unwrap();
    let login = t0.elapsed();
    let i = args
        .iter()
        .position(|a| a == "upload" || a == "steps" || a == "scripts")
        .unwrap();
    let t1 = Instant::now();
    match args[i].as_str() {
        "upload" => {
            let r = t
                .upload(vec![Upload {
                    source: UploadSource::Path(PathBuf::from(&args[i + 1])),
                    remote: args[i + 2].clone(),
                    mode: None,
                    verify_sha256: false,
                }])
                .await
                .unwrap();
            eprintln!("opsbake: {r:?}");
        }
        "scripts" => {
            // What the provisioner does for a build whose one (last)
            // `shell` step has N scripts: make the staging dir writing the
            // scripts, then one exec running them in turn (reporting each
            // start and status) that also removes the staging dir.
            let dir = PathBuf::from(&args[i + 1]);
            let n: usize = args[i + 2].parse().unwrap();
            let home = arg(args, "--home").unwrap();
            let st = format!("{home}/opsbake-stage-{}", std::process::id());
            let run = |cmd: String| {
                let t = &t;
                async move {
                    let st = t
                        .exec(ExecRequest::new(cmd), Arc::new(NullSink))
                        .await
                        .unwrap();
                    assert!(st.success());
                }
            };
            // The provisioner writes a small batch of scripts with the
            // staging dir's mkdir (one exec, no upload).
            let q = opsbake_core::transport::shell_quote;
            let mut mk = format!("set -e; umask 022; mkdir {st} {st}/scripts; ");
            let wrapper = "#!/bin/sh\ncd \"$(dirname \"$0\")/scripts\" && exec \"$@\"\n";
            mk.push_str(&format!("printf '%s' {} > {st}/run; ", q(wrapper)));
            // The runner as the provisioner folds the default
            // execute_command: PATH and directory once, each script
            // started directly in a subshell with its variables exported.
            let mut runner =
                format!("PATH={st}/scripts:\"$PATH\"; export PATH; cd {st}/scripts || exit 125\n");
            for k in 0..n {
                let name = format!("script{k:02}.sh");
                let text = std::fs::read_to_string(dir.join(&name)).unwrap();
                mk.push_str(&format!("printf '%s' {} > {st}/scripts/{name}; ", q(&text)));
                runner.push_str(&format!(
                    "printf '\\036M start {k}\\n'\n( export OPSBAKE_STAGING={st}; exec {st}/scripts/{name}\n)\nrc=$?; printf '\\036M exit {k} %s\\n' \"$rc\"; [ $rc -eq 0 ] || exit $rc\n"
                ));
            }
            mk.push_str(&format!("chmod 755 {st}/run {st}/scripts/*; id -u"));
            // The last step removes the staging dir in its own exec once
            // its scripts succeeded, as the provisioner does.
            runner.push_str(&format!(
                "( cd / && rm -rf {st}; test ! -e {st} ) && printf '\\036M cleaned\\n'\nexit 0\n"
            ));
            run(mk).await;
            run(runner).await;
        }
        _ => {
            let n: usize = args[i + 1].parse().unwrap();
            for _ in 0..n {
                let st = t
                    .exec(ExecRequest::new("true"), Arc::new(NullSink))
                    .await
                    .unwrap();
                assert!(st.success());
            }
        }
    }
    let work = t1.elapsed();
    let _ = t.close().await;
    eprintln!(
        "opsbake: login {:.3}s, work {:.3}s",
        login.as_secs_f64(),
        work.as_secs_f64()
    );
}

// ---------------------------------------------------------------- harness

struct Ctx {
    sshd: Sshd,
    work: PathBuf,
    client_key: PathBuf,
    opsbake_key: PathBuf,
    host_keys: PathBuf,
    known_hosts: PathBuf,
    self_exe: PathBuf,
}

#[derive(Clone)]
struct Row {
    case: &'static str,
    rtt: u64,
    tool: String,
    secs: Vec<f64>,
    rss_kib: Option<u64>,
    note: String,
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

fn ssh_opts(c: &Ctx, port: u16) -> Vec<String> {
    vec![
        "-i".into(),
        c.client_key.display().to_string(),
        "-o".into(),
        format!("Port={port}"),
        "-o".into(),
        format!("UserKnownHostsFile={}", c.known_hosts.display()),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        format!("User={USER}"),
        "-F".into(),
        "/dev/null".into(),
    ]
}

fn sh_join(v: &[String]) -> String {
    v.iter()
        .map(|s| opsbake_core::transport::shell_quote(s))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run `sh -c script` under /usr/bin/time -v; returns (seconds, max RSS KiB).
fn timed(script: &str, env: &[(&str, &str)]) -> (f64, Option<u64>) {
    let t = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-v", "timeout", "900", "sh", "-c", script])
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        eprintln!("benchmark command failed: {script}\n{err}");
        return (f64::NAN, None);
    }
    let traced = std::env::var_os("OPSBAKE_BENCH_TRACE").is_some();
    for l in err.lines().filter(|l| {
        l.starts_with("opsbake: login")
            || (traced && (!l.starts_with('\t') || l.contains("time (seconds)")))
    }) {
        eprintln!("    {l}");
    }
    let rss = err
        .lines()
        .find(|l| l.contains("Maximum resident set size"))
        .and_then(|l| l.rsplit(':').next())
        .and_then(|v| v.trim().parse().ok());
    (secs, rss)
}

fn fresh_dest(c: &Ctx, name: &str) -> String {
    let d = c.sshd.home().join(name);
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_file(&d);
    d.display().to_string()
}

fn clean(c: &Ctx) {
    // The CLI rows' manifest (the templates' `out/`): each build appends
    // its entry, so a run would read and write a larger one than the last.
    let _ = std::fs::remove_dir_all(c.work.join("out"));
    for e in std::fs::read_dir(c.sshd.home()).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("dest-"))
        {
            let _ = std::fs::remove_dir_all(&p);
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// Read every file of a case's data, so that each tool starts with it in
/// the page cache (this machine's memory reclaim empties the cache between
/// runs: without it the first tool after a pause reads from disk).
fn warm(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            warm(&p);
        } else if let Ok(mut f) = std::fs::File::open(&p) {
            let _ = std::io::copy(&mut f, &mut std::io::sink());
        }
    }
}

/// Run one tool `reps` times (once if a run takes longer than `long`).
fn measure(
    c: &Ctx,
    case: &'static str,
    rtt: u64,
    tool: &str,
    reps: usize,
    mut make: impl FnMut(&str) -> (String, Vec<(&'static str, String)>),
) -> Row {
    let mut secs = Vec::new();
    let mut rss = None;
    let mut note = String::new();
    for i in 0..reps {
        let safe: String = tool
            .chars()
            .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '_' })
            .collect();
        clean(c);
        let dest = fresh_dest(c, &format!("dest-{safe}"));
        warm(&c.work.join(case));
        let (script, env) = make(&dest);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (s, r) = timed(&script, &env);
        if s.is_nan() {
            note = "FAILED (see stderr)".into();
            break;
        }
        secs.push(s);
        rss = rss.max(r);
        clean(c);
        if s > 40.0 && i + 1 < reps {
            note = "1 run (slow)".into();
            break;
        }
    }
    let row = Row {
        case,
        rtt,
        tool: tool.to_string(),
        secs,
        rss_kib: rss,
        note,
    };
    eprintln!(
        "  {case} {rtt:>2} ms {:<28} median {:>8.3} s  runs {:?}  rss {:?} KiB {}",
        row.tool,
        median(&row.secs),
        row.secs
            .iter()
            .map(|s| (s * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>(),
        row.rss_kib,
        row.note
    );
    row
}

fn write_file(p: &Path, data: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn prepare(work: &Path) {
    // (a) 256 MiB of incompressible data.
    let big = work.join("a/big.img");
    if !big.exists() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&big).unwrap_or_else(|_| {
            std::fs::create_dir_all(big.parent().unwrap()).unwrap();
            std::fs::File::create(&big).unwrap()
        }));
        use std::io::Write as _;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..256 {
            for ch in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ch.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&buf).unwrap();
        }
    }
    // (b) 2000 files of 4 KiB in 20 folders.
    let tree = work.join("b/tree");
    if !tree.exists() {
        for d in 0..20 {
            for i in 0..100 {
                let mut data = vec![b'x'; 4096];
                data[..16].copy_from_slice(format!("{d:04}-{i:04}-opsbak").as_bytes());
                write_file(&tree.join(format!("dir{d:02}/file{i:03}.txt")), &data);
            }
        }
    }
    // (c) 20 scripts of `true`.
    for i in 0..20 {
        write_file(
            &work.join(format!("c/script{i:02}.sh")),
            b"#!/bin/sh\ntrue\n",
        );
    }
}

fn packer_template(c: &Ctx, port: u16, method: &str, prov: serde_json::Value) -> PathBuf {
    let tpl = serde_json::json!({
        "builders": [{
            "type": "null",
            "ssh_host": "127.0.0.1",
            "ssh_port": port,
            "ssh_username": USER,
            "ssh_private_key_file": c.client_key.display().to_string(),
            "ssh_file_transfer_method": method,
        }],
        "provisioners": prov,
    });
    let p = c.work.join(format!("packer-{method}-{port}.json"));
    std::fs::write(&p, serde_json::to_vec_pretty(&tpl).unwrap()).unwrap();
    p
}

/// An opsbake template for the `ssh` builder against the bench's sshd (the
/// host keys pinned), with `provision` as its steps: the CLI as a user runs
/// it. JSON is YAML.
fn opsbake_template(c: &Ctx, port: u16, name: &str, provision: serde_json::Value) -> PathBuf {
    let pins: Vec<String> = std::fs::read_to_string(&c.host_keys)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let tpl = serde_json::json!({
        "name": "bench",
        "builds": {"ssh": {
            "ssh": {
                "host": "127.0.0.1",
                "port": port,
                "user": USER,
                "private_key_file": c.opsbake_key.display().to_string(),
                "host_key": {"pin": pins},
            },
            // The bench's sshd is on this host (in its own namespace).
            "options": {"allow_loopback": true},
        }},
        "provision": provision,
    });
    let p = c.work.join(format!("opsbake-{name}-{port}.yml"));
    std::fs::write(&p, serde_json::to_vec_pretty(&tpl).unwrap()).unwrap();
    p
}

/// The port to reach the bench's sshd at `rtt`: 0 ms goes straight to
/// sshd, anything else through a delay proxy (kept alive by the caller).
fn link(c: &Ctx, rtt: u64) -> (DelayProxy, u16) {
    let proxy = DelayProxy::start(c.sshd.addr(), Duration::from_millis(rtt / 2)).unwrap();
    let port = if rtt == 0 {
        c.sshd.port()
    } else {
        proxy.addr().port()
    };
    (proxy, port)
}

/// Case (c)'s 20 scripts.
fn case_c_scripts(work: &Path) -> Vec<String> {
    (0..20)
        .map(|i| {
            work.join(format!("c/script{i:02}.sh"))
                .display()
                .to_string()
        })
        .collect()
}

/// `opsbake build TEMPLATE --iaas ssh` with its own state dir.
fn opsbake_build(c: &Ctx, cli: &Path, tpl: &Path) -> String {
    let state = c.work.join("opsbake-state");
    format!(
        "OPSBAKE_STATE_DIR={} {} build {} --iaas ssh",
        state.display(),
        cli.display(),
        tpl.display()
    )
}

fn harness(args: &[String]) {
    let reps: usize = arg(args, "--reps").map(|r| r.parse().unwrap()).unwrap_or(3);
    let rtts: Vec<u64> = arg(args, "--rtt-ms")
        .unwrap_or_else(|| "0,50".into())
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let cases = arg(args, "--cases").unwrap_or_else(|| "a,b,c".into());
    let packer_sftp =
        !args.iter().any(|a| a == "--no-packer-sftp") && !args.iter().any(|a| a == "--quick");
    let packer = Path::new("/usr/bin/packer").exists() && !args.iter().any(|a| a == "--no-packer");
    let out_file = arg(args, "--out");
    // --quick: the rows of issue 18's table in a few minutes: the tools that
    // take minutes at 50 ms (SFTP-protocol scp/sftp on 2000 files, legacy
    // scp -r, Packer's sftp mode) are left out, slow ones run once.
    let quick = args.iter().any(|a| a == "--quick");
    let docs = arg(args, "--docs");
    let load_before = loadavg();
    let started_at = utc_now();
    let only_ours = args.iter().any(|a| a == "--only-opsbake");
    // The CLI (`opsbake build` with the `ssh` builder), when built
    // (run.sh builds it): the same work as a user writes it.
    let cli = Path::new("target/release/opsbake")
        .canonicalize()
        .ok()
        .filter(|_| std::env::var_os("OPSBAKE_BENCH_NO_CLI").is_none());

    let work =
        PathBuf::from(arg(args, "--work").unwrap_or_else(|| "/var/tmp/opsbake-bench".into()));
    std::fs::create_dir_all(&work).unwrap();
    eprintln!("preparing data in {}", work.display());
    prepare(&work);

    let key = KeyPair::generate(KeyKind::Ed25519, "opsbake-bench").unwrap();
    let opsbake_key = work.join("opsbake-bench-key");
    key.write_private_key(&opsbake_key).unwrap();
    let sshd = Sshd::start(SshdOptions {
        openssh_client_key: true,
        authorized_keys: vec![key.public_openssh().to_string()],
        ..Default::default()
    })
    .unwrap();
    let client_key = PathBuf::from(sshd.openssh_args().unwrap()[1].clone());
    let host_keys = work.join("host-keys");
    std::fs::write(&host_keys, sshd.host_public_keys().join("\n")).unwrap();
    let known_hosts = work.join("known_hosts");
    let kh: String = sshd
        .host_public_keys()
        .iter()
        .map(|k| {
            let mut p = k.split_whitespace();
            format!("* {} {}\n", p.next().unwrap(), p.next().unwrap())
        })
        .collect();
    std::fs::write(&known_hosts, kh).unwrap();
    let c = Ctx {
        sshd,
        work: work.clone(),
        client_key,
        opsbake_key,
        host_keys,
        known_hosts,
        self_exe: std::env::current_exe().unwrap(),
    };

    // --serve: the same sshd (and a delay proxy per RTT) kept up, with the
    // commands of each case printed, until stdin closes: for tracing or
    // profiling one run by hand.
    if args.iter().any(|a| a == "--serve") {
        let mut proxies = Vec::new();
        for &rtt in &rtts {
            let (proxy, port) = link(&c, rtt);
            let d = c.sshd.home().join("dest-serve").display().to_string();
            let big = work.join("a/big.img").display().to_string();
            let tree = work.join("b/tree").display().to_string();
            let scripts = case_c_scripts(&work);
            println!("# RTT {rtt} ms (port {port}); remove {d} between runs");
            println!(
                "{} client --port {port} --key {} --host-keys {} upload {big} {d}",
                c.self_exe.display(),
                c.opsbake_key.display(),
                c.host_keys.display()
            );
            if let Some(cli) = &cli {
                for (name, prov) in [
                    (
                        "a",
                        serde_json::json!([{"type": "file", "source": big, "destination": d}]),
                    ),
                    (
                        "b",
                        serde_json::json!([{"type": "file", "source": format!("{tree}/"), "destination": d}]),
                    ),
                    (
                        "b-verify",
                        serde_json::json!([{"type": "file", "source": format!("{tree}/"), "destination": d, "verify": true}]),
                    ),
                    (
                        "c",
                        serde_json::json!([{"type": "shell", "scripts": scripts, "sudo": false}]),
                    ),
                ] {
                    let tpl = opsbake_template(&c, port, &format!("{name}-serve"), prov);
                    println!("{}", opsbake_build(&c, cli, &tpl));
                }
            }
            proxies.push(proxy);
        }
        println!("# serving until stdin closes");
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        drop(proxies);
        return;
    }

    let mut md = String::new();
    let _ = writeln!(md, "Machine: {} cores, `{}`; OpenSSH {}; sshd hardened as a stemcell (AES-GCM/CTR, HMAC-SHA2, MaxAuthTries 3, MaxSessions 10); uploads land in its home under `{}`; every tool's source files are read into the page cache before each run.", num_cpus(), uname(), openssh_version(), std::env::temp_dir().display());
    let _ = writeln!(md);
    let _ = writeln!(md, "### The delay proxy itself\n");
    let _ = writeln!(md, "| one-way delay | measured RTT (median of 20 pings) | bulk throughput (256 MiB) |\n|---|---|---|");
    for ow in [0u64, 25] {
        let f = delay_proxy::measure(Duration::from_millis(ow), 20, 256 << 20).unwrap();
        let _ = writeln!(
            md,
            "| {ow} ms | {:.2} ms | {:.0} MiB/s |",
            f.rtt.as_secs_f64() * 1000.0,
            f.mib_per_s
        );
        eprintln!("proxy {ow} ms: {f:?}");
    }
    let _ = writeln!(md);

    let mut rows: Vec<Row> = Vec::new();
    for &rtt in &rtts {
        let (proxy, port) = link(&c, rtt);
        let so = sh_join(&ssh_opts(&c, port));
        let extra = arg(args, "--client-args").unwrap_or_default();
        let ops = |what: &str| {
            format!(
                "{} client --port {port} --key {} --host-keys {} {extra} {what}",
                c.self_exe.display(),
                c.opsbake_key.display(),
                c.host_keys.display()
            )
        };
        let host = "127.0.0.1";
        if cases.contains('a') {
            let src = work.join("a/big.img").display().to_string();
            eprintln!("(a) 256 MiB file, RTT {rtt} ms");
            rows.push(measure(&c, "a", rtt, "opsbake", reps, |d| {
                (ops(&format!("upload {src} {d}")), vec![])
            }));
            if let Some(cli) = &cli {
                rows.push(measure(
                    &c,
                    "a",
                    rtt,
                    "opsbake build (ssh builder, file step)",
                    reps,
                    |d| {
                        let tpl = opsbake_template(
                            &c,
                            port,
                            "a",
                            serde_json::json!([{"type": "file", "source": src, "destination": d}]),
                        );
                        (opsbake_build(&c, cli, &tpl), vec![])
                    },
                ));
            }
            if !only_ours {
                rows.push(measure(&c, "a", rtt, "scp (sftp protocol)", reps, |d| {
                    (format!("scp -q {so} {src} {host}:{d}"), vec![])
                }));
                rows.push(measure(&c, "a", rtt, "scp -O (legacy)", reps, |d| {
                    (format!("scp -O -q {so} {src} {host}:{d}"), vec![])
                }));
                rows.push(measure(&c, "a", rtt, "sftp -b", reps, |d| {
                    let b = work.join("batch-a");
                    std::fs::write(&b, format!("put {src} {d}\n")).unwrap();
                    (format!("sftp -q -b {} {so} {host}", b.display()), vec![])
                }));
                rows.push(measure(&c, "a", rtt, "rsync -e ssh", reps, |d| {
                    (
                        format!(
                            "rsync -a -e {} {src} {host}:{d}",
                            opsbake_core::transport::shell_quote(&format!("ssh {so}"))
                        ),
                        vec![],
                    )
                }));
                rows.push(measure(&c, "a", rtt, "tar | ssh tar x", reps, |d| (format!("tar -C {} -cf - big.img | ssh {so} {host} 'mkdir -p {d} && tar -C {d} -xf -'", work.join("a").display()), vec![])));
                if packer {
                    rows.push(measure(&c, "a", rtt, "packer file (scp)", reps, |d| {
                        let tpl = packer_template(
                            &c,
                            port,
                            "scp",
                            serde_json::json!([{"type": "file", "source": src, "destination": d}]),
                        );
                        (
                            format!("packer build -color=false {}", tpl.display()),
                            vec![("CHECKPOINT_DISABLE", "1".into())],
                        )
                    }));
                    if packer_sftp {
                        rows.push(measure(&c, "a", rtt, "packer file (sftp)", if rtt > 0 { 1 } else { reps }, |d| {
                        let tpl = packer_template(&c, port, "sftp", serde_json::json!([{"type": "file", "source": src, "destination": d}]));
                        (format!("packer build -color=false {}", tpl.display()), vec![("CHECKPOINT_DISABLE", "1".into())])
                    }));
                    }
                }
            }
        }
        if cases.contains('b') {
            let tree = work.join("b/tree");
            let src = tree.display().to_string();
            eprintln!("(b) 2000 x 4 KiB in 20 folders, RTT {rtt} ms");
            rows.push(measure(&c, "b", rtt, "opsbake", reps, |d| {
                (ops(&format!("upload {src} {d}")), vec![])
            }));
            if let Some(cli) = &cli {
                rows.push(measure(&c, "b", rtt, "opsbake build (ssh builder, file step)", reps, |d| {
                    let tpl = opsbake_template(&c, port, "b", serde_json::json!([{"type": "file", "source": format!("{src}/"), "destination": d}]));
                    (opsbake_build(&c, cli, &tpl), vec![])
                }));
                // Issue 18 asks for the tree "verified by sha256": the same
                // step with `verify: true` (`sha256sum -c` in the same exec).
                rows.push(measure(&c, "b", rtt, "opsbake build (file step, verify: true)", reps, |d| {
                    let tpl = opsbake_template(&c, port, "b-verify", serde_json::json!([{"type": "file", "source": format!("{src}/"), "destination": d, "verify": true}]));
                    (opsbake_build(&c, cli, &tpl), vec![])
                }));
            }
            if !only_ours {
                let slow = quick && rtt > 0;
                if !slow {
                    rows.push(measure(&c, "b", rtt, "scp -O -r (legacy)", reps, |d| {
                        (format!("scp -O -q -r {so} {src} {host}:{d}"), vec![])
                    }));
                    rows.push(measure(
                        &c,
                        "b",
                        rtt,
                        "scp -r (sftp protocol)",
                        if rtt > 0 { 1 } else { reps },
                        |d| (format!("scp -q -r {so} {src} {host}:{d}"), vec![]),
                    ));
                    rows.push(measure(
                        &c,
                        "b",
                        rtt,
                        "sftp -b put -r",
                        if rtt > 0 { 1 } else { reps },
                        |d| {
                            let b = work.join("batch-b");
                            std::fs::write(&b, format!("mkdir {d}\nput -r {src}/. {d}\n")).unwrap();
                            (format!("sftp -q -b {} {so} {host}", b.display()), vec![])
                        },
                    ));
                }
                rows.push(measure(&c, "b", rtt, "rsync -e ssh", reps, |d| {
                    (
                        format!(
                            "rsync -a -e {} {src}/ {host}:{d}/",
                            opsbake_core::transport::shell_quote(&format!("ssh {so}"))
                        ),
                        vec![],
                    )
                }));
                rows.push(measure(&c, "b", rtt, "tar | ssh tar x", reps, |d| {
                    (
                        format!(
                        "tar -C {src} -cf - . | ssh {so} {host} 'mkdir -p {d} && tar -C {d} -xf -'"
                    ),
                        vec![],
                    )
                }));
                if packer {
                    let preps = if quick && rtt > 0 { 1 } else { reps };
                    rows.push(measure(&c, "b", rtt, "packer file (scp)", preps, |d| {
                    let tpl = packer_template(&c, port, "scp", serde_json::json!([{"type": "file", "source": format!("{src}/"), "destination": d}]));
                    (format!("ssh {so} {host} mkdir -p {d} && packer build -color=false {}", tpl.display()), vec![("CHECKPOINT_DISABLE", "1".into())])
                }));
                }
            }
        }
        if cases.contains('c') {
            eprintln!("(c) 20 steps of `true`, RTT {rtt} ms");
            let cdir = work.join("c").display().to_string();
            let home = c.sshd.home().display().to_string();
            rows.push(measure(
                &c,
                "c",
                rtt,
                "opsbake shell step (20 scripts)",
                reps,
                |_| (ops(&format!("--home {home} scripts {cdir} 20")), vec![]),
            ));
            let scripts = case_c_scripts(&work);
            if let Some(cli) = &cli {
                rows.push(measure(&c, "c", rtt, "opsbake build (ssh builder, shell step)", reps, |_| {
                    // No sudo: the bench's vcap has none (Packer's shell
                    // provisioner runs without it too).
                    let tpl = opsbake_template(&c, port, "c", serde_json::json!([{"type": "shell", "scripts": scripts, "sudo": false}]));
                    (opsbake_build(&c, cli, &tpl), vec![])
                }));
            }
            rows.push(measure(
                &c,
                "c",
                rtt,
                "opsbake (1 connection)",
                reps,
                |_| (ops("steps 20"), vec![]),
            ));
            rows.push(measure(&c, "c", rtt, "ssh x20", reps, |_| {
                (
                    format!("for i in $(seq 20); do ssh {so} {host} true || exit 1; done"),
                    vec![],
                )
            }));
            let cp = work.join(format!("cm-{rtt}"));
            let cps = cp.display().to_string();
            rows.push(measure(&c, "c", rtt, "ssh x20 + ControlMaster", reps, |_| {
                (format!("ssh {so} -o ControlMaster=yes -o ControlPath={cps} -o ControlPersist=60 -fN {host} && for i in $(seq 20); do ssh {so} -o ControlPath={cps} {host} true || exit 1; done; ssh {so} -o ControlPath={cps} -O exit {host} 2>/dev/null"), vec![])
            }));
            if packer {
                rows.push(measure(
                    &c,
                    "c",
                    rtt,
                    "packer shell (20 scripts)",
                    reps,
                    |_| {
                        let tpl = packer_template(
                            &c,
                            port,
                            "scp",
                            serde_json::json!([{"type": "shell", "scripts": scripts}]),
                        );
                        (
                            format!("packer build -color=false {}", tpl.display()),
                            vec![("CHECKPOINT_DISABLE", "1".into())],
                        )
                    },
                ));
            }
        }
        drop(proxy);
    }

    // Tables.
    for case in ["a", "b", "c"] {
        let title = match case {
            "a" => "(a) one 256 MiB file",
            "b" => "(b) 2000 files of 4 KiB in 20 folders",
            _ => "(c) 20 scripts running `true`: one `shell` step (the provisioner's sequence: mkdir writing the scripts, one exec running them and removing the staging dir), 20 execs on one connection, OpenSSH per script, Packer's shell provisioner",
        };
        let rs: Vec<&Row> = rows.iter().filter(|r| r.case == case).collect();
        if rs.is_empty() {
            continue;
        }
        let _ = writeln!(md, "### {title}\n");
        let _ = writeln!(md, "| RTT | tool | median s | runs (s) | vs opsbake | peak RSS | note |\n|---|---|---|---|---|---|---|");
        for &rtt in &rtts {
            let ours = rs
                .iter()
                .find(|r| r.rtt == rtt && r.tool.starts_with("opsbake"))
                .map(|r| median(&r.secs));
            for r in rs.iter().filter(|r| r.rtt == rtt) {
                let m = median(&r.secs);
                let ratio = ours.map(|o| format!("{:.1}x", m / o)).unwrap_or_default();
                let rss = r
                    .rss_kib
                    .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
                    .unwrap_or_default();
                let runs = r
                    .secs
                    .iter()
                    .map(|s| format!("{s:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let _ = writeln!(
                    md,
                    "| {rtt} ms | {} | {m:.2} | {runs} | {ratio} | {rss} | {} |",
                    r.tool.replace('|', "\\|"),
                    r.note
                );
            }
        }
        let _ = writeln!(md);
    }
    let header = format!(
        "### Run {started_at} (`{}`)\n\nLoad average (1, 5, 15 min) before: {load_before}; after: {}. Median of {reps} runs (fewer where the note says so), wall time from process start (login included); ratios are each tool's median over opsbake's first row.\n\n",
        args[1..].join(" "),
        loadavg()
    );
    let md = format!("{header}{md}");
    println!("{md}");
    if let Some(d) = docs {
        write_docs(Path::new(&d), &md);
        eprintln!("results written into {d}");
    }
    if let Some(f) = out_file {
        std::fs::write(&f, &md).unwrap();
        eprintln!("results written to {f}");
    }
}

const BEGIN: &str = "<!-- comms-ssh bench: generated by crates/comms-ssh/bench/run.sh -->";
const END: &str = "<!-- end of the comms-ssh bench -->";

/// Replace the generated block of docs/benchmarks.md (between the markers;
/// appended to the comms-ssh section's end the first time).
fn write_docs(path: &Path, md: &str) {
    let doc = std::fs::read_to_string(path).unwrap();
    let block = format!("{BEGIN}\n\n{md}\n{END}");
    let new = match (doc.find(BEGIN), doc.find(END)) {
        (Some(a), Some(b)) if b > a => format!("{}{block}{}", &doc[..a], &doc[b + END.len()..]),
        _ => {
            // Before the next "## " section after "## comms-ssh".
            let at = doc
                .find("## comms-ssh")
                .and_then(|s| doc[s + 3..].find("\n## ").map(|n| s + 3 + n + 1))
                .unwrap_or(doc.len());
            format!("{}{block}\n\n{}", &doc[..at], &doc[at..])
        }
    };
    std::fs::write(path, new).unwrap();
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn uname() -> String {
    Command::new("uname")
        .arg("-srm")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn openssh_version() -> String {
    Command::new("ssh")
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_default()
}
