//! opsbake-iaas-gcp (see the crate table in docs/architecture.md).
