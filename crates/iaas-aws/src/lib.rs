//! opsbake-iaas-aws (see the crate table in docs/architecture.md).
