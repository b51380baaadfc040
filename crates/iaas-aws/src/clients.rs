//! SDK clients per region, from the standard credential chain (env, profile,
//! SSO, IMDS) with an optional endpoint override (tests: moto), and the
//! SDK's standard retry mode (throttling and 5xx retried with jittered
//! exponential backoff).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use tokio::sync::OnceCell;

use crate::error::AwsError;

/// Attempts per call (first try included).
pub const MAX_ATTEMPTS: u32 = 6;

/// Clients for every region a build touches.
pub struct Clients {
    attempts: u32,
    endpoint: Option<String>,
    home: String,
    offline: AtomicBool,
    sdk: OnceCell<SdkConfig>,
    ec2: Mutex<HashMap<String, aws_sdk_ec2::Client>>,
    ebs: Mutex<HashMap<String, aws_sdk_ebs::Client>>,
    s3: Mutex<HashMap<String, aws_sdk_s3::Client>>,
}

impl Clients {
    /// Clients whose default region is `home`, talking to `endpoint` when set.
    pub fn new(home: &str, endpoint: Option<String>) -> Clients {
        Clients::with_attempts(home, endpoint, MAX_ATTEMPTS)
    }

    /// The same with another number of attempts per call (1: no retries).
    pub fn with_attempts(home: &str, endpoint: Option<String>, attempts: u32) -> Clients {
        Clients {
            attempts: attempts.max(1),
            endpoint,
            home: home.to_string(),
            offline: AtomicBool::new(false),
            sdk: OnceCell::new(),
            ec2: Mutex::new(HashMap::new()),
            ebs: Mutex::new(HashMap::new()),
            s3: Mutex::new(HashMap::new()),
        }
    }

    /// The endpoint override.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// `--offline`: take credentials from the environment only (no IMDS,
    /// SSO, container or web-identity endpoints are contacted). Must be set
    /// before the first client is made.
    pub fn set_offline(&self) {
        self.offline.store(true, Ordering::SeqCst);
    }

    async fn sdk(&self) -> &SdkConfig {
        self.sdk
            .get_or_init(|| async {
                let mut loader = aws_config::defaults(BehaviorVersion::latest());
                if self.offline.load(Ordering::SeqCst) {
                    loader = loader.credentials_provider(
                        aws_config::environment::credentials::EnvironmentVariableCredentialsProvider::new(),
                    );
                }
                loader
                    .region(Region::new(self.home.clone()))
                    .retry_config(
                        RetryConfig::standard()
                            .with_max_attempts(self.attempts)
                            .with_initial_backoff(Duration::from_millis(250))
                            .with_max_backoff(Duration::from_secs(20)),
                    )
                    .timeout_config(
                        TimeoutConfig::builder()
                            .connect_timeout(Duration::from_secs(10))
                            .operation_attempt_timeout(Duration::from_secs(120))
                            .build(),
                    )
                    .load()
                    .await
            })
            .await
    }

    /// The EC2 client of a region.
    pub async fn ec2(&self, region: &str) -> Result<aws_sdk_ec2::Client, AwsError> {
        if let Some(c) = self.ec2.lock().ok().and_then(|m| m.get(region).cloned()) {
            return Ok(c);
        }
        let sdk = self.sdk().await;
        let mut b = aws_sdk_ec2::config::Builder::from(sdk).region(Region::new(region.to_string()));
        if let Some(e) = &self.endpoint {
            b = b.endpoint_url(e);
        }
        let c = aws_sdk_ec2::Client::from_conf(b.build());
        if let Ok(mut m) = self.ec2.lock() {
            m.insert(region.to_string(), c.clone());
        }
        Ok(c)
    }

    /// The EBS direct APIs client of a region.
    pub async fn ebs(&self, region: &str) -> Result<aws_sdk_ebs::Client, AwsError> {
        if let Some(c) = self.ebs.lock().ok().and_then(|m| m.get(region).cloned()) {
            return Ok(c);
        }
        let sdk = self.sdk().await;
        let mut b = aws_sdk_ebs::config::Builder::from(sdk).region(Region::new(region.to_string()));
        if let Some(e) = &self.endpoint {
            b = b.endpoint_url(e);
        }
        let c = aws_sdk_ebs::Client::from_conf(b.build());
        if let Ok(mut m) = self.ebs.lock() {
            m.insert(region.to_string(), c.clone());
        }
        Ok(c)
    }

    /// The S3 client of a region (path-style addressing with an endpoint
    /// override, as moto needs; virtual-hosted on AWS).
    pub async fn s3(&self, region: &str) -> Result<aws_sdk_s3::Client, AwsError> {
        if let Some(c) = self.s3.lock().ok().and_then(|m| m.get(region).cloned()) {
            return Ok(c);
        }
        let sdk = self.sdk().await;
        let mut b = aws_sdk_s3::config::Builder::from(sdk).region(Region::new(region.to_string()));
        if let Some(e) = &self.endpoint {
            b = b.endpoint_url(e).force_path_style(true);
        }
        let c = aws_sdk_s3::Client::from_conf(b.build());
        if let Ok(mut m) = self.s3.lock() {
            m.insert(region.to_string(), c.clone());
        }
        Ok(c)
    }
}
