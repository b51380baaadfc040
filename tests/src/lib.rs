//! opsbake-e2e: the product's end-to-end tests (a workspace member of its
//! own, `tests/`). Each test runs the `opsbake` CLI as a subprocess against
//! real peers: an offline vbox build under QEMU whose OVA is deployed again
//! (`qemu_vbox_e2e`), the example appliance on moto (`aws_appliance_moto`),
//! and both IaaS in one run (`qemu_aws_vbox`). `crates/*/tests` hold each
//! crate's own tests; this package holds the ones that cross crates. The
//! library is empty: the shared set-up lives in `aws_support/` and in
//! `opsbake-test-support`.
