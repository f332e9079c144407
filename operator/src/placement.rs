//! Where runner pods may go: the node selector and tolerations the operator's settings give
//! every runner pod (a dedicated, tainted node pool for sandboxes), and whether a node takes
//! them. Admission counts as room only the nodes that do, so a tainted pool of other
//! workloads is not taken for room, and a run is never admitted to room its pod cannot use.
//! Pure: parsing of the settings and the scheduler's matching rules, nothing else.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Taint, Toleration};

/// The node selector and tolerations of every runner pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Placement {
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
}

/// The setting `RUNNER_NODE_SELECTOR`, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeSelector(pub BTreeMap<String, String>);

/// The setting `RUNNER_TOLERATIONS`, parsed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tolerations(pub Vec<Toleration>);

impl Placement {
    /// Whether the scheduler may put a runner pod on the node, as far as its labels and
    /// taints go: it has every label of the selector, and every taint that keeps pods off
    /// (`NoSchedule`, `NoExecute`) is tolerated. `PreferNoSchedule` keeps nothing off.
    pub fn admits(&self, node: &Node) -> bool {
        let labels = node.metadata.labels.as_ref();
        let selected = self
            .node_selector
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v));
        let taints = node.spec.as_ref().and_then(|s| s.taints.as_ref());
        selected
            && taints
                .into_iter()
                .flatten()
                .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
                .all(|t| self.tolerations.iter().any(|tol| tolerates(tol, t)))
    }
}

/// The scheduler's rule: the effect matches (an empty one matches all), the key matches (an
/// empty key with `Exists` matches every key), and the operator is `Exists` or the values
/// are equal (`Equal`, the default).
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or_default();
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    let exists = toleration.operator.as_deref() == Some("Exists");
    if key.is_empty() {
        return exists;
    }
    key == taint.key
        && (exists
            || toleration.value.as_deref().unwrap_or_default()
                == taint.value.as_deref().unwrap_or_default())
}

/// `RUNNER_NODE_SELECTOR`: `key=value` pairs, comma-separated (empty: none).
pub fn parse_node_selector(value: &str) -> Result<NodeSelector, String> {
    let mut out = BTreeMap::new();
    for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, v)) = pair.split_once('=') else {
            return Err(format!("{pair:?} is not key=value"));
        };
        check_key(key)?;
        if !v.is_empty() {
            codeinterp_settings::parse_label_value(v)?;
        }
        if out.insert(key.to_string(), v.to_string()).is_some() {
            return Err(format!("{key:?} is given twice"));
        }
    }
    Ok(NodeSelector(out))
}

/// `RUNNER_TOLERATIONS`: a JSON list of Kubernetes tolerations (as in a pod spec), e.g.
/// `[{"key":"dedicated","operator":"Equal","value":"sandbox","effect":"NoSchedule"}]`.
/// Checked as the API server would, so a bad one stops the operator at start-up instead of
/// failing every pod.
pub fn parse_tolerations(value: &str) -> Result<Tolerations, String> {
    if value.trim().is_empty() {
        return Ok(Tolerations::default());
    }
    let list: Vec<Toleration> =
        serde_json::from_str(value).map_err(|e| format!("not a JSON list of tolerations: {e}"))?;
    for (i, t) in list.iter().enumerate() {
        check_toleration(t).map_err(|e| format!("toleration {i}: {e}"))?;
    }
    Ok(Tolerations(list))
}

fn check_toleration(t: &Toleration) -> Result<(), String> {
    let key = t.key.as_deref().unwrap_or_default();
    let value = t.value.as_deref().unwrap_or_default();
    match t.operator.as_deref() {
        None | Some("Equal") => {
            if key.is_empty() {
                return Err("an empty key needs operator Exists".into());
            }
            if !value.is_empty() {
                codeinterp_settings::parse_label_value(value)?;
            }
        }
        Some("Exists") if !value.is_empty() => {
            return Err("operator Exists takes no value".into());
        }
        Some("Exists") => {}
        Some(other) => return Err(format!("operator {other:?} is not Equal or Exists")),
    }
    if !key.is_empty() {
        check_key(key)?;
    }
    let effect = t.effect.as_deref().unwrap_or_default();
    if !matches!(effect, "" | "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(format!(
            "effect {effect:?} is not NoSchedule, PreferNoSchedule or NoExecute"
        ));
    }
    if t.toleration_seconds.is_some() && effect != "NoExecute" {
        return Err("tolerationSeconds goes only with effect NoExecute".into());
    }
    Ok(())
}

/// A label (or taint) key: an optional DNS prefix and `/`, then a name as a label value.
fn check_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            })
    });
    if !prefix_ok || codeinterp_settings::parse_label_value(name).is_err() {
        return Err(format!(
            "{key:?} is not a label key (an optional DNS prefix and '/', then a name)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;

    fn node(labels: &[(&str, &str)], taints: &[(&str, &str, &str)]) -> Node {
        Node {
            metadata: kube::api::ObjectMeta {
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(
                    taints
                        .iter()
                        .map(|(k, v, e)| Taint {
                            key: k.to_string(),
                            value: (!v.is_empty()).then(|| v.to_string()),
                            effect: e.to_string(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn placement(selector: &str, tolerations: &str) -> Placement {
        Placement {
            node_selector: parse_node_selector(selector).unwrap().0,
            tolerations: parse_tolerations(tolerations).unwrap().0,
        }
    }

    #[test]
    fn without_settings_only_untainted_nodes_take_runner_pods() {
        let none = Placement::default();
        assert!(none.admits(&node(&[], &[])));
        assert!(none.admits(&node(&[], &[("soft", "", "PreferNoSchedule")])));
        assert!(!none.admits(&node(&[], &[("gpu", "true", "NoSchedule")])));
        assert!(!none.admits(&node(&[], &[("drain", "", "NoExecute")])));
    }

    #[test]
    fn a_dedicated_pool_is_room_only_for_runner_pods_that_tolerate_and_select_it() {
        let pool = node(
            &[("pool", "sandbox")],
            &[("dedicated", "sandbox", "NoSchedule")],
        );
        let other = node(&[], &[]);
        let tolerate =
            r#"[{"key":"dedicated","operator":"Equal","value":"sandbox","effect":"NoSchedule"}]"#;
        let ours = placement("pool=sandbox", tolerate);
        assert!(ours.admits(&pool));
        assert!(
            !ours.admits(&other),
            "the selector keeps them off other nodes"
        );
        assert!(placement("", tolerate).admits(&other));
        let wrong_value = r#"[{"key":"dedicated","value":"gpu","effect":"NoSchedule"}]"#;
        assert!(!placement("", wrong_value).admits(&pool));
        let any_value = r#"[{"key":"dedicated","operator":"Exists"}]"#;
        assert!(placement("", any_value).admits(&pool));
        let everything = r#"[{"operator":"Exists"}]"#;
        assert!(placement("", everything).admits(&pool));
    }

    #[test]
    fn a_toleration_for_another_effect_does_not_let_a_pod_on() {
        let tainted = node(&[], &[("k", "v", "NoExecute")]);
        let no_schedule = r#"[{"key":"k","value":"v","effect":"NoSchedule"}]"#;
        assert!(!placement("", no_schedule).admits(&tainted));
    }

    #[test]
    fn bad_settings_are_refused_naming_what_is_wrong() {
        let bad = |t: &str| parse_tolerations(t).unwrap_err();
        assert!(bad("{").contains("JSON"));
        assert!(bad(r#"[{"key":"k","operator":"Exists","value":"v"}]"#).contains("no value"));
        assert!(bad(r#"[{"key":"k","operator":"Gt"}]"#).contains("Gt"));
        assert!(bad(r#"[{"key":"k","effect":"Sometimes"}]"#).contains("Sometimes"));
        assert!(bad(r#"[{"value":"v"}]"#).contains("empty key"));
        assert!(
            bad(r#"[{"key":"k","effect":"NoSchedule","tolerationSeconds":5}]"#)
                .contains("tolerationSeconds")
        );
        assert!(bad(r#"[{"key":"bad key"}]"#).contains("label key"));
        assert!(parse_node_selector("novalue").is_err());
        assert!(parse_node_selector("a=1,a=2").is_err());
        assert!(parse_node_selector("Bad_Prefix.io/x=1").is_err());
        assert_eq!(
            parse_node_selector(" kwok.x-k8s.io/node=fake , type=kwok ")
                .unwrap()
                .0,
            BTreeMap::from([
                ("kwok.x-k8s.io/node".into(), "fake".into()),
                ("type".into(), "kwok".into()),
            ])
        );
        assert_eq!(parse_tolerations("").unwrap(), Tolerations::default());
    }
}
