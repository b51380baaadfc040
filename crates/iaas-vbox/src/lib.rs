//! opsbake-iaas-vbox (see the crate table in docs/architecture.md).
