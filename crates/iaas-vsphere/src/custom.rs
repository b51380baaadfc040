//! The build id as a vSphere custom attribute (`CustomFieldsManager`), beside
//! the ExtraConfig key: what the vSphere client shows in a VM's "Custom
//! Attributes" and what `opsbake cleanup` sweeps by (with ExtraConfig and the
//! name prefix). The field `opsbake.build-id` (type VirtualMachine) is
//! defined on first use; defining it needs `Global.ManageCustomFields`,
//! setting it `Global.SetCustomField`. Without the privilege (or without a
//! CustomFieldsManager, as on a standalone ESXi) the build goes on with
//! ExtraConfig only, after a warning.

use crate::error::VsphereError;
use crate::vim::xml::{el, moref_el};
use crate::vim::{this, MoRef, Props, Vim};

/// The custom attribute's name.
pub const FIELD: &str = "opsbake.build-id";

fn manager(vim: &Vim) -> Result<MoRef, VsphereError> {
    vim.sc
        .custom_fields_manager
        .clone()
        .ok_or_else(|| VsphereError::Protocol {
            op: "AddCustomFieldDef".into(),
            message: "the service has no customFieldsManager".into(),
        })
}

/// The key of [`FIELD`], if it is defined.
pub async fn field_key(vim: &Vim) -> Result<Option<String>, VsphereError> {
    let m = manager(vim)?;
    let props = vim.props(&m, &["field"]).await?;
    Ok(props.get("field").and_then(|f| {
        f.children
            .iter()
            .find(|d| d.text_of("name") == Some(FIELD))
            .and_then(|d| d.text_of("key").map(str::to_string))
    }))
}

/// The key of [`FIELD`], defined now if it is not yet (another build may
/// define it at the same time: `DuplicateName` then reads it back).
pub async fn ensure_field(vim: &Vim) -> Result<String, VsphereError> {
    if let Some(k) = field_key(vim).await? {
        return Ok(k);
    }
    let m = manager(vim)?;
    let body = format!(
        "{}{}{}",
        this(&m),
        el("name", FIELD),
        el("moType", "VirtualMachine")
    );
    match vim.call("AddCustomFieldDef", &body, FIELD).await {
        Ok(r) => {
            let mut keys = Vec::new();
            r.descendants("key", &mut keys);
            if let Some(k) = keys.first() {
                return Ok(k.text.clone());
            }
        }
        Err(e) if e.fault_name() == Some("DuplicateName") => {}
        Err(e) => return Err(e),
    }
    field_key(vim).await?.ok_or_else(|| VsphereError::Protocol {
        op: "AddCustomFieldDef".into(),
        message: format!("custom attribute {FIELD} not found after defining it"),
    })
}

/// Set [`FIELD`] of `vm` to `build_id`.
pub async fn tag(vim: &Vim, vm: &MoRef, what: &str, build_id: &str) -> Result<(), VsphereError> {
    let key = ensure_field(vim).await?;
    let m = manager(vim)?;
    let body = format!(
        "{}{}{}{}",
        this(&m),
        moref_el("entity", vm),
        el("key", &key),
        el("value", build_id)
    );
    vim.call("SetField", &body, what).await?;
    Ok(())
}

/// The value of the custom attribute `key` in a VM's `customValue`.
pub fn value_of<'a>(props: &'a Props, key: &str) -> Option<&'a str> {
    props.get("customValue").and_then(|cv| {
        cv.children
            .iter()
            .find(|v| v.text_of("key") == Some(key))
            .and_then(|v| v.text_of("value"))
    })
}
