//! opsbake-stemcell (see the crate table in docs/architecture.md).
