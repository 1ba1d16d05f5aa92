//! Host labels: the automatic `aws.*` ones drover finds hosts by, the user's, and the
//! `CATTLE_HOST_LABELS` text the agent container gets. A leaf: no I/O, nothing of the crate.

use std::collections::BTreeMap;

/// The label drover puts on every host it registers, and the only way it finds one.
pub const INSTANCE_ID_LABEL: &str = "aws.instance_id";
/// The group label, which the reaper needs beside the instance id.
pub const GROUP_LABEL: &str = "aws.autoscaling_group";
/// The region label: the reaper leaves a host of another region alone.
pub const REGION_LABEL: &str = "aws.region";

/// The labels drover sets on every host, ahead of the user's.
pub const AUTOMATIC_LABELS: &[&str] = &[
    INSTANCE_ID_LABEL,
    "aws.instance_type",
    "aws.availability_zone",
    REGION_LABEL,
    GROUP_LABEL,
    "aws.ami_id",
];

/// A user label the agent could not carry: its key (`None` when the key itself is empty)
/// and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct LabelError {
    pub key: Option<String>,
    pub reason: String,
}

/// Host labels as the user configured them, checked to fit `CATTLE_HOST_LABELS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostLabels(pub BTreeMap<String, String>);

impl HostLabels {
    /// Checks that every label survives `CATTLE_HOST_LABELS`, which is parsed as a query
    /// string, and that none takes the name of an automatic one.
    pub fn new(labels: BTreeMap<String, String>) -> Result<HostLabels, LabelError> {
        for (k, v) in &labels {
            let bad = |reason: String| LabelError {
                key: Some(k.clone()),
                reason,
            };
            if k.trim().is_empty() {
                return Err(LabelError {
                    key: None,
                    reason: "a label has an empty key".into(),
                });
            }
            if v.trim().is_empty() {
                return Err(bad("empty value".into()));
            }
            if AUTOMATIC_LABELS.contains(&k.as_str()) {
                return Err(bad(
                    "drover sets this label itself from instance metadata; choose another name"
                        .into(),
                ));
            }
            for (part, text) in [("key", k), ("value", v)] {
                if let Some(c) = text.chars().find(|c| matches!(c, '&' | '=')) {
                    return Err(bad(format!(
                        "the label's {part} holds {c:?}, which CATTLE_HOST_LABELS cannot carry"
                    )));
                }
            }
        }
        Ok(HostLabels(labels))
    }
}

/// The values of the automatic labels, from instance metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Automatic<'a> {
    pub instance_id: &'a str,
    pub instance_type: &'a str,
    pub availability_zone: &'a str,
    pub region: &'a str,
    /// Outside any group there is no group label.
    pub autoscaling_group: Option<&'a str>,
    pub ami_id: &'a str,
}

/// The labels for `CATTLE_HOST_LABELS`: the automatic ones first (the agent keeps the first
/// of a repeated key), then the user's, as a query string.
pub fn cattle_host_labels(user: &HostLabels, automatic: &Automatic<'_>) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    out.append_pair(INSTANCE_ID_LABEL, automatic.instance_id);
    out.append_pair("aws.instance_type", automatic.instance_type);
    out.append_pair("aws.availability_zone", automatic.availability_zone);
    out.append_pair(REGION_LABEL, automatic.region);
    if let Some(group) = automatic.autoscaling_group.filter(|g| !g.is_empty()) {
        out.append_pair(GROUP_LABEL, group);
    }
    out.append_pair("aws.ami_id", automatic.ami_id);
    for (k, v) in &user.0 {
        if !AUTOMATIC_LABELS.contains(&k.as_str()) {
            out.append_pair(k, v);
        }
    }
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUTOMATIC: Automatic<'static> = Automatic {
        instance_id: "i-0abc",
        instance_type: "m5.large",
        availability_zone: "us-east-1b",
        region: "us-east-1",
        autoscaling_group: Some("crawlers"),
        ami_id: "ami-1",
    };

    #[test]
    fn automatic_labels_come_first_and_user_labels_follow() {
        let user = HostLabels(BTreeMap::from([
            ("role".to_string(), "crawling".to_string()),
            ("note".to_string(), "a b+c%".to_string()),
        ]));
        let text = cattle_host_labels(&user, &AUTOMATIC);
        assert!(text.starts_with("aws.instance_id=i-0abc&"), "{text}");
        let parsed: Vec<(String, String)> = url::form_urlencoded::parse(text.as_bytes())
            .into_owned()
            .collect();
        let get = |k: &str| {
            parsed
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("aws.autoscaling_group"), Some("crawlers"));
        assert_eq!(get("aws.region"), Some("us-east-1"));
        assert_eq!(get("role"), Some("crawling"));
        // Survives the query-string parsing the agent does.
        assert_eq!(get("note"), Some("a b+c%"));
    }

    #[test]
    fn no_group_label_outside_a_group() {
        let outside = Automatic {
            autoscaling_group: None,
            ..AUTOMATIC
        };
        let text = cattle_host_labels(&HostLabels::default(), &outside);
        assert!(!text.contains("aws.autoscaling_group"), "{text}");
    }

    #[test]
    fn labels_the_agent_cannot_carry_are_refused_with_their_key() {
        let refused = |k: &str, v: &str| {
            HostLabels::new(BTreeMap::from([(k.to_string(), v.to_string())])).expect_err("refused")
        };
        assert_eq!(refused("role", "a&b").key.as_deref(), Some("role"));
        assert!(refused("ro=le", "x").reason.contains("'='"));
        assert!(refused("role", " ").reason.contains("empty value"));
        assert_eq!(refused(" ", "x").key, None);
        assert!(refused("aws.instance_id", "i-forged")
            .reason
            .contains("sets this label itself"));
        assert!(HostLabels::new(BTreeMap::from([("role".into(), "web".into())])).is_ok());
    }
}
