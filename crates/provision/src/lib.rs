//! opsbake-provision (see the crate table in docs/architecture.md).
