//! opsbake-comms-ssh (see the crate table in docs/architecture.md).
