//! Server-side retention awareness (Step 9 item 8): KCR can run Harbor's tag
//! retention per namespace, which may delete what our rules keep. Before
//! planning, read the rules (DescribeRetentionRule, and GetRetentionTrigger
//! for a namespace with enabled rules) of every namespace our rules cover.
//! The result goes into the plan ([`super::planner::apply_server_side`]),
//! every report, `explain` and `kcr_server_retention_rules`.

use super::planner::{ServerSide, ServerSideState};
use crate::config::{InstanceConfig, RetentionConfig};
use crate::inventory::Inventory;
use crate::kcr::{
    Client, DescribeRetentionRule, GetRetentionTrigger, ServerRetentionRule, Supported,
};

/// Namespaces of the inventory that some rule of `rc` covers, inside the
/// instance's declared scope (`instances`, by name): outside it the key is
/// expected to be refused, and asking would only fill reports with AccessDenied.
pub fn in_scope<'a>(
    inventory: &'a Inventory,
    instances: &'a [InstanceConfig],
    rc: &'a RetentionConfig,
) -> impl Iterator<Item = (&'a str, &'a str, &'a str)> + 'a {
    inventory.instances.iter().flat_map(move |i| {
        let declared = instances.iter().find(|c| c.name == i.name);
        i.namespaces
            .iter()
            .filter(move |n| {
                declared.is_none_or(|c| c.namespace_in_scope(&n.name))
                    && rc.rules.iter().any(|r| {
                        r.namespaces.is_empty() || r.namespaces.iter().any(|p| p.is_match(&n.name))
                    })
            })
            .map(move |n| (i.name.as_str(), i.id.as_str(), n.name.as_str()))
    })
}

/// One line per rule: what it keeps, in the SDK's terms.
fn describe(rule: &ServerRetentionRule) -> String {
    let mut parts = Vec::new();
    if let Some(id) = &rule.id {
        parts.push(format!("id {id}"));
    }
    if let Some(t) = &rule.template {
        parts.push(match &rule.param {
            Some(p) => format!("{t} {p}"),
            None => t.clone(),
        });
    }
    if let Some(t) = &rule.rule_type {
        parts.push(t.clone());
    }
    if let Some(s) = &rule.registry_scope {
        parts.push(format!("repositories {s}"));
    }
    if let Some(t) = rule.tag_patten.as_deref().filter(|t| !t.is_empty()) {
        parts.push(format!("tags {t}"));
    }
    if rule.untagged {
        parts.push("untagged too".into());
    }
    parts.join(", ")
}

/// Read the server-side retention of every namespace in scope. Only
/// namespaces with something to say are returned: enabled rules, rules that
/// could not be read, and (once per instance) an endpoint that does not
/// offer the action. Never fails: an error is recorded as `Unreadable`.
pub async fn read(
    client: &Client,
    inventory: &Inventory,
    instances: &[InstanceConfig],
    rc: &RetentionConfig,
) -> Vec<ServerSide> {
    let mut out = Vec::new();
    let mut unsupported: Vec<&str> = Vec::new();
    for (instance, instance_id, namespace) in in_scope(inventory, instances, rc) {
        if unsupported.contains(&instance) {
            continue;
        }
        let ask = DescribeRetentionRule {
            instance_id: instance_id.to_string(),
            namespace: namespace.to_string(),
        };
        let state = match client.call_if_supported(&ask).await {
            Ok(Supported::No { code }) => {
                unsupported.push(instance);
                out.push(ServerSide {
                    instance: instance.to_string(),
                    namespace: "*".into(),
                    state: ServerSideState::NotSupported(code),
                });
                continue;
            }
            Ok(Supported::Yes(rules)) => {
                let enabled: Vec<String> = rules.enabled().map(describe).collect();
                if enabled.is_empty() {
                    continue;
                }
                // When they run; a refusal is shown with its code, not
                // dropped (a policy missing GetRetentionTrigger is visible).
                let trigger = match client
                    .call_if_supported(&GetRetentionTrigger {
                        instance_id: instance_id.to_string(),
                        namespace: namespace.to_string(),
                    })
                    .await
                {
                    Ok(Supported::Yes(t)) => t
                        .trigger
                        .and_then(|t| t.cron.or(t.display_text))
                        .map(|when| format!("runs {when}")),
                    Ok(Supported::No { .. }) => None,
                    Err(e) => Some(format!("trigger unreadable: {}", e.code())),
                };
                ServerSideState::Enabled {
                    rules: enabled,
                    trigger,
                }
            }
            Err(e) => ServerSideState::Unreadable(e.to_string()),
        };
        out.push(ServerSide {
            instance: instance.to_string(),
            namespace: namespace.to_string(),
            state,
        });
    }
    out
}

/// `kcr_server_retention_rules{instance,namespace}`: enabled rules of every
/// namespace in scope (0 where none); nothing for an instance whose endpoint
/// does not offer the action, or a namespace whose rules could not be read.
pub fn export(
    metrics: &crate::metrics::Metrics,
    inventory: &Inventory,
    instances: &[InstanceConfig],
    rc: &RetentionConfig,
    found: &[ServerSide],
) {
    for (instance, _, namespace) in in_scope(inventory, instances, rc) {
        let hit = found
            .iter()
            .find(|s| s.instance == instance && (s.namespace == namespace || s.namespace == "*"));
        match hit.map(|s| &s.state) {
            None => metrics.retention.server_rules(instance, namespace, 0),
            Some(ServerSideState::Enabled { rules, .. }) => {
                metrics
                    .retention
                    .server_rules(instance, namespace, rules.len())
            }
            Some(_) => {}
        }
    }
}
