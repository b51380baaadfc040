//! The `builds.gcp.options` of a template (one file per IaaS, so that a builder
//! changes only its own). See docs/gcp.md.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::template::Dur;

/// GCP options (see docs/gcp.md). Empty strings count as unset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct GcpOptions {
    /// Project (else `GOOGLE_PROJECT_ID`, else `GOOGLE_CLOUD_PROJECT`).
    #[serde(default)]
    pub project_id: Option<String>,
    /// Zone of the build VM (e.g. `us-central1-a`).
    #[serde(default)]
    pub zone: Option<String>,
    /// Machine type (default `e2-medium`).
    #[serde(default)]
    pub machine_type: Option<String>,
    /// Name of the image made (default `<template name>-<build id>`); must match
    /// `[a-z]([-a-z0-9]{0,61}[a-z0-9])?`.
    #[serde(default)]
    pub image_name: Option<String>,
    /// Image family.
    #[serde(default)]
    pub image_family: Option<String>,
    /// Image description.
    #[serde(default)]
    pub image_description: Option<String>,
    /// Labels on the image (besides opsbake's own).
    #[serde(default)]
    pub image_labels: BTreeMap<String, String>,
    /// Storage locations of the image (e.g. `us`, `eu`).
    #[serde(default)]
    pub image_storage_locations: Vec<String>,
    /// IAM members granted `roles/compute.imageUser` on the image
    /// (`user:a@example.com`, `serviceAccount:...`, `group:...`, `domain:...`).
    #[serde(default)]
    pub image_users: Vec<String>,
    /// Bucket for heavy stemcell imports (the image member is uploaded
    /// there, imported, then deleted).
    #[serde(default)]
    pub bucket: Option<String>,
    /// Network tags of the build VM (the build's own tag is added; the
    /// temporary firewall rule targets only that one).
    #[serde(default)]
    pub network_tags: Vec<String>,
    /// Labels on every resource of the build (besides opsbake's own).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Import the stemcell again even if a base image with its sha1 exists.
    #[serde(default)]
    pub reimport: bool,
    /// Overall limit of each wait (operation, instance stopped); default 30m.
    #[serde(default)]
    pub wait_timeout: Option<Dur>,
    /// First delay between polls of an operation (a duration such as `2s`
    /// or `20ms`, default 2s; it grows by half per poll up to 15s). A string
    /// so that a template variable can set it.
    #[serde(default)]
    pub poll_interval: Option<String>,
    /// A service account key file instead of Application Default Credentials.
    #[serde(default)]
    pub credentials_file: Option<String>,
    /// Use no credentials at all (test servers only).
    #[serde(default)]
    pub anonymous_credentials: bool,
    /// Compute Engine endpoint override (tests).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Cloud Storage endpoint override (tests: fake-gcs-server).
    #[serde(default)]
    pub storage_endpoint: Option<String>,
}
