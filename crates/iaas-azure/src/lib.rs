//! opsbake-iaas-azure (see the crate table in docs/architecture.md).
