//! opsbake-iaas-vsphere (see the crate table in docs/architecture.md).
