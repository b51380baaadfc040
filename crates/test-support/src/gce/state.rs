//! The server state: options, images, operations, injected faults.

#[allow(unused_imports)]
use super::*;

impl State {
    pub(super) fn opts(&self) -> GceOptions {
        self.opts.clone().unwrap_or_default()
    }

    pub(super) fn id(&mut self) -> String {
        self.next_id += 1;
        format!("{}", 4_000_000_000_000_000_000u64 + self.next_id)
    }

    pub(super) fn op(
        &mut self,
        project: &str,
        scope: &str,
        op_type: &str,
        target: &str,
        effect: Option<Effect>,
        error: Option<(String, String)>,
    ) -> Value {
        let id = self.id();
        let name = format!("operation-{id}-{op_type}");
        let mut j = json!({
            "kind": "compute#operation",
            "id": id,
            "name": name,
            "operationType": op_type,
            "targetLink": link(target),
            "status": "PENDING",
            "progress": 0,
            "insertTime": "2026-01-01T00:00:00.000-00:00",
        });
        if scope == "global" {
            j["selfLink"] = json!(link(&format!(
                "projects/{project}/global/operations/{name}"
            )));
        } else {
            j["zone"] = json!(link(&format!("projects/{project}/zones/{scope}")));
            j["selfLink"] = json!(link(&format!(
                "projects/{project}/zones/{scope}/operations/{name}"
            )));
        }
        self.ops.insert(
            (project.into(), scope.into(), name),
            Op {
                json: j.clone(),
                polls: 0,
                effect,
                error,
            },
        );
        j
    }

    pub(super) fn apply(&mut self, e: Effect) {
        match e {
            Effect::InstanceRunning { key } => {
                if let Some(i) = self.instances.get_mut(&key) {
                    i["status"] = json!("RUNNING");
                }
            }
            Effect::InstanceStopped { key } => {
                if let Some(i) = self.instances.get_mut(&key) {
                    i["status"] = json!("TERMINATED");
                }
            }
            Effect::InstanceDeleted { key } => {
                if let Some(i) = self.instances.remove(&key) {
                    let disks = i["disks"].as_array().cloned().unwrap_or_default();
                    for d in disks {
                        let name = last_seg(d["source"].as_str().unwrap_or("")).to_string();
                        let dk = (key.0.clone(), key.1.clone(), name);
                        if d["autoDelete"].as_bool().unwrap_or(false) {
                            self.disks.remove(&dk);
                        } else if let Some(disk) = self.disks.get_mut(&dk) {
                            disk["users"] = json!([]);
                        }
                    }
                }
            }
            Effect::DiskDeleted { key } => {
                self.disks.remove(&key);
            }
            Effect::ImageReady { key } => {
                if let Some(i) = self.images.get_mut(&key) {
                    i.json["status"] = json!("READY");
                }
            }
            Effect::ImageDeleted { key } => {
                self.images.remove(&key);
            }
            Effect::FirewallDeleted { key } => {
                self.firewalls.remove(&key);
            }
            Effect::Undo(inner) => match *inner {
                Effect::InstanceRunning { key } => {
                    self.instances.remove(&key);
                    self.disks.remove(&key);
                }
                Effect::ImageReady { key } => {
                    self.images.remove(&key);
                }
                _ => {}
            },
        }
    }

    pub(super) fn advance(&mut self, key: &Key) -> Option<Value> {
        let done_after = self.opts().polls_to_done.max(1);
        let op = self.ops.get_mut(key)?;
        if op.json["status"] != "DONE" {
            op.polls += 1;
            if op.polls >= done_after {
                op.json["status"] = json!("DONE");
                op.json["progress"] = json!(100);
                op.json["endTime"] = json!("2026-01-01T00:00:01.000-00:00");
                if let Some((code, message)) = op.error.clone() {
                    op.json["error"] = json!({"errors": [{"code": code, "message": message}]});
                    op.json["httpErrorStatusCode"] =
                        json!(if code == "QUOTA_EXCEEDED" { 403 } else { 400 });
                    op.json["httpErrorMessage"] = json!(if code == "QUOTA_EXCEEDED" {
                        "FORBIDDEN"
                    } else {
                        "BAD REQUEST"
                    });
                    let e = op.effect.take();
                    if let Some(e) = e {
                        self.apply(Effect::Undo(Box::new(e)));
                    }
                } else if let Some(e) = op.effect.take() {
                    self.apply(e);
                }
            } else {
                op.json["status"] = json!("RUNNING");
                op.json["progress"] = json!(op.polls * 100 / done_after);
            }
        }
        self.ops.get(key).map(|o| o.json.clone())
    }

    /// Finish every operation (as time passing would).
    pub(super) fn settle(&mut self) {
        let keys: Vec<Key> = self.ops.keys().cloned().collect();
        for k in keys {
            for _ in 0..self.opts().polls_to_done.max(1) {
                self.advance(&k);
            }
        }
    }

    pub(super) fn take_injected(&mut self, method: &str) -> Option<Injected> {
        let i = self
            .injected
            .iter()
            .position(|(m, _, left)| (m == method || m == "*") && left.is_none_or(|n| n > 0))?;
        let (_, inj, left) = &mut self.injected[i];
        let inj = inj.clone();
        if let Some(n) = left {
            *n -= 1;
            if *n == 0 {
                self.injected.remove(i);
            }
        }
        Some(inj)
    }
}
