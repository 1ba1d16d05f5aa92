//! The AWS wiring under `packaging/aws/` against the code and against the tools: the hosts'
//! IAM policy grants exactly the SDK calls `src/` makes, every policy is a template Terraform
//! can fill and that `parliament` finds nothing wrong with once filled, and the Terraform
//! module is self-contained, validates its variables, and has the structure drover relies
//! on (the userdata of each mode, the hooks, the tag-scoped permissions, the queue only Auto
//! Scaling may write to, the alarm on the queue's oldest message).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Map, Value};

const SETUP_HINT: &str =
    "run scripts/testbed-setup.sh base (it installs python-hcl2 and parliament in .testbed/venv)";

/// The placeholders of `userdata/asg-sqs.yaml`, all passed by the module.
const USERDATA_VARS: [&str; 8] = [
    "rancher_url",
    "rancher_project_id",
    "rancher_access_key",
    "rancher_secret_key_parameter",
    "pagerduty_key_parameter",
    "lifecycle_queue_url",
    "role",
    "env",
];

/// The userdata of each mode, by the file's name in the module's `userdata/` and in the
/// repository's `cloud-init/`.
const USERDATA_BY_MODE: [(&str, &str); 3] = [
    ("queue", "asg-sqs.yaml"),
    ("imds", "asg-imds.yaml"),
    ("warm_pool", "asg-warm-pool.yaml"),
];

/// The module's permission and resource policy templates (the trust policy is checked on
/// its own: parliament reads only policies with a Resource).
const POLICIES: [&str; 3] = [
    "iam-policy.json",
    "policies/lifecycle-notification.json",
    "policies/lifecycle-queue.json",
];

/// The trust policy template of both roles.
const TRUST_POLICY: &str = "policies/trust.json";

/// A value for every placeholder of the policy templates, as an operator would fill them
/// (the examples of packaging/aws/README.md).
const SAMPLE_VALUES: [(&str, &str); 12] = [
    ("partition", "aws"),
    ("region", "us-east-1"),
    ("account_id", "123456789012"),
    ("group_tag_key", "drover:environment"),
    ("group_tag_value", "prod"),
    (
        "queue_arn",
        "arn:aws:sqs:us-east-1:123456789012:rancher-hosts-lifecycle",
    ),
    (
        "secret_parameter_arn_prefix",
        "arn:aws:ssm:us-east-1:123456789012:parameter/drover/prod/",
    ),
    (
        "secret_reference_arn_prefix",
        "arn:aws:ssm:us-east-1:123456789012:parameter/aws/reference/secretsmanager/drover/prod/",
    ),
    (
        "secret_arn_prefix",
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:drover/prod/",
    ),
    ("kms_key_arn", "arn:aws:kms:us-east-1:123456789012:key/*"),
    (
        "sender_role_arn",
        "arn:aws:iam::123456789012:role/rancher-hosts-lifecycle-20261202",
    ),
    ("service", "autoscaling.amazonaws.com"),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn aws_dir() -> PathBuf {
    root().join("packaging/aws")
}

/// The module: everything it reads is in here.
fn terraform_dir() -> PathBuf {
    aws_dir().join("terraform")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn set_list(set: &BTreeSet<String>) -> String {
    if set.is_empty() {
        "(none)".into()
    } else {
        set.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

fn strings(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------
// The SDK calls in src/
// ---------------------------------------------------------------------------------------

/// The IAM service prefix of each AWS SDK crate drover may use.
fn iam_prefix(sdk_crate: &str) -> &'static str {
    match sdk_crate {
        "aws_sdk_autoscaling" => "autoscaling",
        "aws_sdk_sqs" => "sqs",
        "aws_sdk_ssm" => "ssm",
        other => panic!(
            "{other} is used in src/ but this test does not know its IAM prefix: add it to \
             iam_prefix() and its calls to packaging/aws/iam-policy.json"
        ),
    }
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `aws_sdk_*` crate the source names.
fn sdk_crates(source: &str) -> BTreeSet<String> {
    source
        .match_indices("aws_sdk_")
        .filter(|(at, _)| !source[..*at].ends_with(is_ident))
        .map(|(at, _)| {
            source[at..]
                .chars()
                .take_while(|&c| is_ident(c))
                .collect::<String>()
        })
        .collect()
}

/// The `x` of every `.client.x(` (whitespace and line breaks allowed before `.x`).
fn client_calls(source: &str) -> BTreeSet<String> {
    let mut calls = BTreeSet::new();
    for (at, m) in source.match_indices(".client") {
        let rest = &source[at + m.len()..];
        if rest.starts_with(is_ident) {
            continue; // `.client_id`, `.clients`
        }
        let Some(rest) = rest.trim_start().strip_prefix('.') else {
            continue;
        };
        let name: String = rest.chars().take_while(|&c| is_ident(c)).collect();
        if !name.is_empty() && rest[name.len()..].trim_start().starts_with('(') {
            calls.insert(name);
        }
    }
    calls
}

/// `describe_auto_scaling_instances` → `DescribeAutoScalingInstances`.
fn pascal_case(snake: &str) -> String {
    snake
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// Actions a call needs that the service makes on drover's behalf: `GetParameter` with
/// decryption has SSM call KMS (for a SecureString) or Secrets Manager (for a reference),
/// both authorized as the caller.
const IMPLIED: [(&str, &[&str]); 1] = [(
    "ssm:GetParameter",
    &["kms:Decrypt", "secretsmanager:GetSecretValue"],
)];

/// `service:Operation` for every SDK call in src/, by IAM prefix.
fn actions_in_code() -> BTreeMap<&'static str, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    files.sort();
    let mut by_service: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let source = read(&file);
        let crates = sdk_crates(&source);
        if crates.is_empty() {
            continue; // no AWS SDK here: a `.client` is some other client (Rancher's)
        }
        let calls = client_calls(&source);
        if calls.is_empty() {
            continue;
        }
        assert_eq!(
            crates.len(),
            1,
            "{} calls `.client.<op>()` and names several SDK crates ({}): this test cannot \
             tell which service each call goes to; keep one SDK client per module",
            file.display(),
            set_list(&crates)
        );
        let sdk = crates.first().expect("one crate");
        let prefix = iam_prefix(sdk);
        for call in calls {
            by_service
                .entry(prefix)
                .or_default()
                .insert(format!("{prefix}:{}", pascal_case(&call)));
        }
    }
    by_service
}

// ---------------------------------------------------------------------------------------
// The policy templates
// ---------------------------------------------------------------------------------------

/// The `x` of every `${x}`, in order; panics on a placeholder that is not an identifier or
/// on a template directive (`%{`), which the policy files must not hold.
fn placeholders(text: &str, file: &str) -> Vec<String> {
    assert!(
        !text.contains("%{"),
        "{file}: template directives (%{{) are not allowed"
    );
    let mut found = Vec::new();
    for (at, _) in text.match_indices("${") {
        if text[..at].ends_with('$') {
            continue; // `$${`: an escaped, literal `${`
        }
        let rest = &text[at + 2..];
        let end = rest
            .find('}')
            .unwrap_or_else(|| panic!("{file}: unclosed ${{ at byte {at}"));
        let name = &rest[..end];
        assert!(
            !name.is_empty()
                && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(is_ident),
            "{file}: `${{{name}}}` is not a plain `${{identifier}}` placeholder"
        );
        found.push(name.to_string());
    }
    found
}

/// Every string (keys too) in a JSON value.
fn json_strings<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|v| json_strings(v, out)),
        Value::Object(map) => {
            for (k, v) in map {
                out.push(k);
                json_strings(v, out);
            }
        }
        _ => {}
    }
}

/// A policy template: its JSON (placeholders live inside strings, so it parses as it is)
/// and its placeholders.
struct Policy {
    file: &'static str,
    json: Value,
    placeholders: BTreeSet<String>,
}

impl Policy {
    fn load(file: &'static str) -> Policy {
        let text = read(&terraform_dir().join(file));
        let json: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: not JSON: {e}"));
        let in_text = placeholders(&text, file);
        let mut strings = Vec::new();
        json_strings(&json, &mut strings);
        let in_strings: usize = strings.iter().map(|s| placeholders(s, file).len()).sum();
        assert_eq!(
            in_text.len(),
            in_strings,
            "{file}: every placeholder must sit inside a JSON string"
        );
        Policy {
            file,
            json,
            placeholders: in_text.into_iter().collect(),
        }
    }

    fn statements(&self) -> &Vec<Value> {
        assert_eq!(
            self.json["Version"], "2012-10-17",
            "{}: policy language version",
            self.file
        );
        self.json["Statement"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: Statement is not a list", self.file))
    }

    /// Every allowed action.
    fn actions(&self) -> BTreeSet<String> {
        let mut actions = BTreeSet::new();
        for st in self.statements() {
            assert_eq!(st["Effect"], "Allow", "{}: {st}", self.file);
            for action in string_or_list(&st["Action"]) {
                actions.insert(action.to_string());
            }
        }
        actions
    }
}

fn string_or_list(value: &Value) -> Vec<&str> {
    match value {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().expect("a string in the list"))
            .collect(),
        other => panic!("expected a string or a list of strings, got {other}"),
    }
}

#[test]
fn iam_policy_lists_exactly_the_calls_the_code_makes() {
    let by_service = actions_in_code();
    // A scan that found nothing would make the comparison below meaningless.
    for service in ["autoscaling", "sqs", "ssm"] {
        assert!(
            by_service.get(service).is_some_and(|a| !a.is_empty()),
            "the scan of src/ found no {service} call (found: {by_service:?}): the scan is broken"
        );
    }
    let mut in_code: BTreeSet<String> = by_service.values().flatten().cloned().collect();
    for (call, implied) in IMPLIED {
        if in_code.contains(call) {
            in_code.extend(implied.iter().map(|a| a.to_string()));
        }
    }
    let in_policy = Policy::load("iam-policy.json").actions();
    let missing: BTreeSet<String> = in_code.difference(&in_policy).cloned().collect();
    let extra: BTreeSet<String> = in_policy.difference(&in_code).cloned().collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "packaging/aws/iam-policy.json must grant exactly the calls src/ makes\n  \
         in src/:   {}\n  in policy: {}\n  missing from the policy: {}\n  \
         extra in the policy (not called by drover): {}",
        set_list(&in_code),
        set_list(&in_policy),
        set_list(&missing),
        set_list(&extra)
    );
}

/// A template filled with SAMPLE_VALUES; panics on a placeholder without one.
fn render(text: &str, file: &str) -> String {
    let mut out = text.to_string();
    for (name, value) in SAMPLE_VALUES {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    assert!(
        !out.contains("${"),
        "{file}: a placeholder has no sample value in SAMPLE_VALUES: {out}"
    );
    out
}

/// A policy template, filled and parsed.
fn rendered(file: &str) -> Value {
    let text = render(&read(&terraform_dir().join(file)), file);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}, filled: not JSON: {e}"))
}

fn statement_list(policy: &Value, file: &str) -> Vec<Value> {
    policy["Statement"]
        .as_array()
        .unwrap_or_else(|| panic!("{file}: Statement is not a list"))
        .clone()
}

#[test]
fn policies_are_well_formed_and_scoped() {
    for file in POLICIES.into_iter().chain([TRUST_POLICY]) {
        let policy = Policy::load(file);
        let mut sids = BTreeSet::new();
        for st in policy.statements() {
            // IAM accepts only ASCII letters and digits in a Sid.
            let sid = st["Sid"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: a statement without a Sid: {st}"));
            assert!(
                !sid.is_empty() && sid.chars().all(|c| c.is_ascii_alphanumeric()),
                "{file}: Sid {sid:?} must be letters and digits"
            );
            assert!(sids.insert(sid), "{file}: Sid {sid} twice");
            if st["Effect"] == "Deny" {
                continue; // a wide Deny (sqs:* over plain HTTP) only takes away
            }
            assert_eq!(st["Effect"], "Allow", "{file}: {sid}");
            let actions = string_or_list(&st["Action"]);
            for action in &actions {
                assert!(
                    !action.contains('*') && action.contains(':'),
                    "{file}: {sid}: no wildcard actions ({action})"
                );
            }
            // "*" only where AWS offers no resource-level permission (the Describe calls).
            if let Some(resource) = st.get("Resource") {
                if string_or_list(resource).contains(&"*") {
                    assert!(
                        actions.iter().all(|a| a.contains(":Describe")),
                        "{file}: {sid} grants {actions:?} on every resource"
                    );
                }
            }
            // An Allow open to every principal would make a resource policy public.
            assert_ne!(
                st.get("Principal"),
                Some(&Value::from("*")),
                "{file}: {sid}"
            );
        }
    }

    let drover = Policy::load("iam-policy.json");
    assert!(
        drover.placeholders.contains("queue_arn"),
        "iam-policy.json: SQS calls should be scoped to ${{queue_arn}}"
    );
    // The secrets: parameters under one prefix, decryption only through one service and for
    // those secrets, never with any key of any account.
    for st in drover.statements() {
        let actions = string_or_list(&st["Action"]);
        let sid = st["Sid"].as_str().unwrap_or_default();
        if actions.contains(&"kms:Decrypt") {
            assert!(
                st["Condition"]["StringEquals"]["kms:ViaService"].is_string(),
                "{sid}: kms:Decrypt only through one service"
            );
            assert_eq!(st["Resource"], "${kms_key_arn}", "{sid}");
        }
        if actions.contains(&"secretsmanager:GetSecretValue") {
            assert!(
                sid.starts_with("Optionally"),
                "{sid}: Secrets Manager is optional"
            );
        }
        if actions == ["ssm:GetParameter"] {
            assert_eq!(st["Resource"], "${secret_parameter_arn_prefix}*", "{sid}");
        }
    }
}

/// The hosts may complete lifecycle actions of the environment's groups, found by their
/// tag: a name prefix (`prod`) also matched other groups (`prod-eu-…`).
#[test]
fn lifecycle_actions_are_scoped_by_the_group_tag() {
    let drover = Policy::load("iam-policy.json");
    assert!(
        !drover
            .placeholders
            .iter()
            .any(|p| p.contains("prefix") && p.contains("group")),
        "iam-policy.json: groups are scoped by their tag, not by a name prefix: {}",
        set_list(&drover.placeholders)
    );
    let mut scoped = 0;
    for st in drover.statements() {
        let actions = string_or_list(&st["Action"]);
        if !actions.iter().any(|a| {
            *a == "autoscaling:CompleteLifecycleAction"
                || *a == "autoscaling:RecordLifecycleActionHeartbeat"
        }) {
            continue;
        }
        let sid = st["Sid"].as_str().unwrap_or_default();
        let resource = st["Resource"].as_str().unwrap_or_default();
        assert!(
            resource.ends_with(":autoScalingGroup:*:autoScalingGroupName/*"),
            "{sid}: every group name, narrowed by the tag: {resource}"
        );
        let condition = st["Condition"]["StringEquals"]
            .as_object()
            .unwrap_or_else(|| panic!("{sid}: no StringEquals condition: {st}"));
        assert_eq!(
            condition.get("autoscaling:ResourceTag/${group_tag_key}"),
            Some(&Value::from("${group_tag_value}")),
            "{sid}: {st}"
        );
        scoped += 1;
    }
    assert_eq!(scoped, 1, "one statement grants the lifecycle actions");

    // The module fills the tag from its variables and puts it on the group it builds.
    let tf = Terraform::load();
    let vars = tf.local("drover_policy_vars");
    assert_eq!(vars["group_tag_key"], "${var.group_tag_key}");
    assert_eq!(vars["group_tag_value"], "${local.group_tag_value}");
    let tags = tf.local("instance_tags");
    let tags = tags.as_str().unwrap_or_default();
    assert!(
        tags.contains("(var.group_tag_key) = local.group_tag_value"),
        "the group carries its tag: local.instance_tags = {tags}"
    );
    let group = tf.resource("aws_autoscaling_group.host");
    let tag = dynamic_block(group, "tag");
    assert_eq!(text(tag, "for_each"), "${local.instance_tags}");
}

/// `.testbed/venv/bin/<tool>`, or a panic saying how to get it.
fn venv_tool(tool: &str) -> PathBuf {
    let path = root().join(".testbed/venv/bin").join(tool);
    assert!(path.exists(), "{} is missing: {SETUP_HINT}", path.display());
    path
}

/// What parliament says about these policy files (nothing, for good ones).
fn parliament(files: &[PathBuf]) -> (bool, String) {
    let list: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    // stdin closed: parliament reads a policy from stdin when it is not a terminal.
    let out = Command::new(venv_tool("parliament"))
        .arg("--files")
        .arg(list.join(","))
        .stdin(Stdio::null())
        .output()
        .expect("parliament runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// The hosts' statements that mode and secrets store give, as the module selects them.
fn selected_statements(tf: &Terraform, mode: &str, store: &str) -> BTreeSet<String> {
    let groups = tf.local("drover_statements");
    let list = |key: &str| -> BTreeSet<String> {
        groups[key]
            .as_array()
            .unwrap_or_else(|| panic!("local.drover_statements.{key} is not a list"))
            .iter()
            .map(|v| v.as_str().expect("a Sid").to_string())
            .collect()
    };
    let mut sids = list("always");
    if mode == "queue" {
        sids.extend(list("queue"));
    }
    sids.extend(list(store));
    sids
}

/// Every permission and resource policy the module can attach, filled as Terraform would:
/// parliament must find nothing, in the whole drover policy and in each selection of it.
#[test]
fn parliament_finds_nothing_in_the_filled_policies() {
    // A parliament that reports nothing on anything would make this test meaningless.
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}"#,
    )
    .expect("write");
    let (ok, said) = parliament(&[bad]);
    assert!(
        !ok && !said.trim().is_empty(),
        "parliament said nothing on a bad policy"
    );

    let mut files = Vec::new();
    for file in POLICIES {
        let path = dir.path().join(file.replace('/', "-"));
        let policy = rendered(file);
        std::fs::write(&path, serde_json::to_string_pretty(&policy).expect("JSON")).expect("write");
        files.push(path);
    }
    let tf = Terraform::load();
    // The module fills ${kms_key_arn} with the operator's key or with a key pattern of the
    // account and region, as the sample does: never "*", which parliament calls out.
    let kms = tf.local("drover_policy_vars")["kms_key_arn"].clone();
    assert_eq!(
        kms,
        "${var.secrets_kms_key_arn != \"\" ? var.secrets_kms_key_arn : \"${local.arn_head}:kms:${local.region}:${local.account}:key/*\"}",
        "local.drover_policy_vars.kms_key_arn"
    );
    let drover = rendered("iam-policy.json");
    for (mode, _) in USERDATA_BY_MODE {
        for store in secrets_stores(&tf) {
            let sids = selected_statements(&tf, mode, &store);
            let mut policy = drover.clone();
            let kept: Vec<Value> = statement_list(&drover, "iam-policy.json")
                .into_iter()
                .filter(|st| sids.contains(st["Sid"].as_str().unwrap_or_default()))
                .collect();
            assert_eq!(
                kept.len(),
                sids.len(),
                "{mode}/{store}: {}",
                set_list(&sids)
            );
            policy["Statement"] = Value::Array(kept);
            let path = dir.path().join(format!("drover-{mode}-{store}.json"));
            std::fs::write(&path, serde_json::to_string_pretty(&policy).expect("JSON"))
                .expect("write");
            files.push(path);
        }
    }
    let (ok, said) = parliament(&files);
    assert!(
        ok && said.trim().is_empty(),
        "parliament on the filled policies ({} files):\n{said}",
        files.len()
    );
}

/// The values of `secrets_store`, from its validation.
fn secrets_stores(tf: &Terraform) -> Vec<String> {
    let condition = text(validation(tf.variable("secrets_store")), "condition").to_string();
    quoted_words(&condition)
}

/// Every `"word"` in an expression.
fn quoted_words(expr: &str) -> Vec<String> {
    expr.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// Only the statements in use: each statement of the policy belongs to one need (always,
/// the queue, one secrets store), and the module keeps the ones its mode and store need.
#[test]
fn the_hosts_get_only_the_statements_in_use() {
    let tf = Terraform::load();
    let drover = Policy::load("iam-policy.json");
    let groups = tf.local("drover_statements");
    let groups = groups
        .as_object()
        .expect("local.drover_statements is an object");
    let stores = secrets_stores(&tf);
    assert_eq!(
        stores,
        ["ssm", "secrets_manager", "none"],
        "secrets_store's values"
    );
    let keys: BTreeSet<String> = groups.keys().cloned().collect();
    let expected: BTreeSet<String> = ["always", "queue"]
        .into_iter()
        .map(str::to_string)
        .chain(stores.iter().cloned())
        .collect();
    assert_eq!(keys, expected, "local.drover_statements: one list per need");
    assert_eq!(groups["none"], Value::Array(vec![]), "secrets_store = none");

    // Each statement in exactly one list, and each list's statements about its need.
    let mut seen = BTreeMap::new();
    for (need, sids) in groups {
        for sid in sids.as_array().expect("a list") {
            let sid = sid.as_str().expect("a Sid").to_string();
            if let Some(other) = seen.insert(sid.clone(), need.clone()) {
                panic!("{sid} is in both {other} and {need}");
            }
        }
    }
    for st in drover.statements() {
        let sid = st["Sid"].as_str().expect("Sid");
        let need = seen.remove(sid).unwrap_or_else(|| {
            panic!("{sid} of iam-policy.json is in no list of local.drover_statements")
        });
        let resources = st["Resource"].to_string();
        let conditions = st["Condition"].to_string();
        let about = |needle: &str| resources.contains(needle) || conditions.contains(needle);
        let expected_need = if about("queue_arn") {
            "queue"
        } else if about("secret_arn_prefix") || about("secret_reference_arn_prefix") {
            "secrets_manager"
        } else if about("secret_parameter_arn_prefix") {
            "ssm"
        } else {
            "always"
        };
        assert_eq!(need, expected_need, "{sid} ({resources})");
    }
    assert!(
        seen.is_empty(),
        "listed but not in iam-policy.json: {seen:?}"
    );

    // The selection itself.
    assert_eq!(tf.local("uses_queue"), "${var.mode == \"queue\"}");
    let sids = tf.local("drover_sids");
    let sids = sids.as_str().unwrap_or_default();
    for part in [
        "local.drover_statements.always",
        "local.uses_queue ? local.drover_statements.queue : []",
        "local.drover_statements[var.secrets_store]",
    ] {
        assert!(sids.contains(part), "local.drover_sids = {sids}: no {part}");
    }
    let kept = tf.local("drover_policy");
    let kept = kept.as_str().unwrap_or_default();
    assert!(
        kept.contains("if contains(local.drover_sids, s.Sid)"),
        "local.drover_policy keeps the selected statements only: {kept}"
    );
    assert_eq!(
        text(tf.resource("aws_iam_role_policy.drover"), "policy"),
        "${jsonencode(local.drover_policy)}"
    );

    // What each selection lets drover do.
    let actions_of = |sids: &BTreeSet<String>| -> BTreeSet<String> {
        drover
            .statements()
            .iter()
            .filter(|st| sids.contains(st["Sid"].as_str().unwrap_or_default()))
            .flat_map(|st| {
                string_or_list(&st["Action"])
                    .into_iter()
                    .map(str::to_string)
            })
            .collect()
    };
    let imds_none = actions_of(&selected_statements(&tf, "imds", "none"));
    assert!(
        imds_none.iter().all(|a| a.starts_with("autoscaling:")),
        "no queue, no secrets: Auto Scaling only, got {}",
        set_list(&imds_none)
    );
    let queue_ssm = actions_of(&selected_statements(&tf, "queue", "ssm"));
    for a in ["sqs:ReceiveMessage", "ssm:GetParameter", "kms:Decrypt"] {
        assert!(queue_ssm.contains(a), "queue and ssm: {a} missing");
    }
    assert!(!queue_ssm.contains("secretsmanager:GetSecretValue"));
    let pool_sm = actions_of(&selected_statements(&tf, "warm_pool", "secrets_manager"));
    assert!(pool_sm.contains("secretsmanager:GetSecretValue"));
    assert!(pool_sm.contains("autoscaling:DescribeWarmPool"));
    assert!(
        !pool_sm.iter().any(|a| a.starts_with("sqs:")),
        "no queue in a warm pool"
    );
}

#[test]
fn the_repositorys_policy_is_the_modules() {
    let module = read(&terraform_dir().join("iam-policy.json"));
    let copy = read(&aws_dir().join("iam-policy.json"));
    assert!(
        module == copy,
        "packaging/aws/iam-policy.json (for the AWS CLI) differs from the module's \
         packaging/aws/terraform/iam-policy.json: copy the module's over it"
    );
    // The README's AWS CLI recipe fills every placeholder.
    let readme = read(&aws_dir().join("README.md"));
    for name in Policy::load("iam-policy.json").placeholders {
        assert!(
            readme.contains(&format!("-e 's|${{{name}}}|")),
            "packaging/aws/README.md: the sed recipe does not fill ${{{name}}}"
        );
    }
}

#[test]
fn the_modules_userdata_is_the_cloud_init_examples() {
    for (mode, file) in USERDATA_BY_MODE {
        let module = read(&terraform_dir().join("userdata").join(file));
        let example = read(&root().join("cloud-init").join(file));
        assert!(
            module == example,
            "mode {mode}: packaging/aws/terraform/userdata/{file} differs from cloud-init/{file} \
             (tested there with cloud-init schema and drover): copy cloud-init/{file} over it"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The Terraform module
// ---------------------------------------------------------------------------------------

/// Parses every .tf of the module with python-hcl2 and prints one JSON document. Output
/// shapes differ between python-hcl2 versions (8.x quotes string literals and block labels
/// and adds `__is_block__`/`__comments__`): this normalizes them to the older, plain form.
const HCL_TO_JSON: &str = r#"
import glob, json, os, sys
try:
    import hcl2
except ImportError as e:
    sys.stderr.write("python-hcl2 is not installed: %s\n" % e)
    sys.exit(3)

def unquote(s):
    if len(s) >= 2 and s[0] == '"' and s[-1] == '"':
        try:
            return json.loads(s)
        except ValueError:
            return s[1:-1]
    return s

def norm(v):
    if isinstance(v, dict):
        return {unquote(k): norm(x) for k, x in v.items()
                if not (k.startswith("__") and k.endswith("__"))}
    if isinstance(v, list):
        return [norm(x) for x in v]
    if isinstance(v, str):
        return unquote(v)
    return v

out = {}
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.tf"))):
    with open(path) as f:
        doc = norm(hcl2.load(f))
    for key, blocks in doc.items():
        out.setdefault(key, []).extend(blocks)
json.dump(out, sys.stdout)
"#;

/// The module, parsed: resources by `type.name`, the merged locals, variables and outputs
/// by name, the `terraform` blocks.
struct Terraform {
    resources: BTreeMap<String, Map<String, Value>>,
    locals: Map<String, Value>,
    variables: BTreeMap<String, Map<String, Value>>,
    outputs: BTreeMap<String, Map<String, Value>>,
    settings: Vec<Value>,
}

/// `{"name": body}` blocks of one kind (variable, output), by name.
fn named_blocks(doc: &Value, kind: &str) -> BTreeMap<String, Map<String, Value>> {
    let mut out = BTreeMap::new();
    for block in doc[kind].as_array().map(Vec::as_slice).unwrap_or_default() {
        for (name, body) in block.as_object().expect("named block") {
            let body = body.as_object().expect("block body").clone();
            assert!(
                out.insert(name.clone(), body).is_none(),
                "{kind} {name} twice"
            );
        }
    }
    out
}

impl Terraform {
    fn load() -> Terraform {
        let python = venv_tool("python");
        let out = Command::new(&python)
            .arg("-c")
            .arg(HCL_TO_JSON)
            .arg(terraform_dir())
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}: {SETUP_HINT}", python.display()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() != Some(3),
            "{}; {SETUP_HINT}",
            stderr.trim()
        );
        assert!(
            out.status.success(),
            "hcl2 could not parse the module:\n{stderr}"
        );
        let doc: Value = serde_json::from_slice(&out.stdout).expect("the parser's JSON");

        let mut resources = BTreeMap::new();
        for block in doc["resource"].as_array().expect("resources") {
            for (kind, named) in block.as_object().expect("resource block") {
                for (name, body) in named.as_object().expect("named resource") {
                    let body = body.as_object().expect("resource body").clone();
                    resources.insert(format!("{kind}.{name}"), body);
                }
            }
        }
        let mut locals = Map::new();
        for block in doc["locals"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            for (k, v) in block.as_object().expect("locals block") {
                assert!(
                    locals.insert(k.clone(), v.clone()).is_none(),
                    "local.{k} twice"
                );
            }
        }
        Terraform {
            resources,
            locals,
            variables: named_blocks(&doc, "variable"),
            outputs: named_blocks(&doc, "output"),
            settings: doc["terraform"].as_array().cloned().unwrap_or_default(),
        }
    }

    fn resource(&self, address: &str) -> &Map<String, Value> {
        self.resources.get(address).unwrap_or_else(|| {
            panic!(
                "no resource {address} in the module (there are: {})",
                self.resources
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    /// The resources of one type.
    fn of_type<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Map<String, Value>> + 'a {
        self.resources
            .iter()
            .filter(move |(address, _)| address.split('.').next() == Some(kind))
            .map(|(_, body)| body)
    }

    fn local(&self, name: &str) -> Value {
        self.locals
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("no local.{name} in the module"))
    }

    /// The keys of `local.<name>`, an object.
    fn local_keys(&self, name: &str) -> BTreeSet<String> {
        self.locals
            .get(name)
            .and_then(Value::as_object)
            .unwrap_or_else(|| panic!("local.{name} is not an object in the module"))
            .keys()
            .cloned()
            .collect()
    }

    fn variable(&self, name: &str) -> &Map<String, Value> {
        self.variables
            .get(name)
            .unwrap_or_else(|| panic!("no variable {name} in the module"))
    }
}

/// An attribute as text (expressions come as `${...}` strings).
fn text<'a>(body: &'a Map<String, Value>, key: &str) -> &'a str {
    body.get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string attribute {key} in {body:?}"))
}

/// A nested block (python-hcl2 gives a list of bodies).
fn block<'a>(body: &'a Map<String, Value>, key: &str) -> &'a Map<String, Value> {
    let value = body
        .get(key)
        .unwrap_or_else(|| panic!("no {key} block in {body:?}"));
    match value {
        Value::Array(items) => items.first().and_then(Value::as_object),
        Value::Object(map) => Some(map),
        _ => None,
    }
    .unwrap_or_else(|| panic!("{key} is not a block: {value}"))
}

/// A `dynamic "<name>"` block: its `for_each` and its `content`.
fn dynamic_block<'a>(body: &'a Map<String, Value>, name: &str) -> &'a Map<String, Value> {
    body.get("dynamic")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| d.get(name).and_then(Value::as_object))
        .next()
        .unwrap_or_else(|| panic!("no dynamic \"{name}\" block in {body:?}"))
}

/// The (first) validation block of a variable.
fn validation(variable: &Map<String, Value>) -> &Map<String, Value> {
    block(variable, "validation")
}

/// The number right after `key` in an expression (`maxReceiveCount = 5`,
/// `"maxReceiveCount": 5`).
fn number_after(expr: &str, key: &str) -> Option<u64> {
    let at = expr.find(key)? + key.len();
    let digits: String = expr[at..]
        .trim_start_matches(|c: char| {
            c == '"' || c == '\'' || c == ':' || c == '=' || c.is_whitespace()
        })
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The first argument of every `<function>("...")` in an expression: the paths of
/// templatefile(), file() and their kin.
fn path_arguments(expr: &str, function: &str) -> Vec<String> {
    let needle = format!("{function}(\"");
    expr.match_indices(&needle)
        .filter(|(at, _)| !expr[..*at].ends_with(is_ident))
        .map(|(at, m)| {
            let rest = &expr[at + m.len()..];
            let end = rest
                .find('"')
                .unwrap_or_else(|| panic!("unclosed path in {expr}"));
            rest[..end].to_string()
        })
        .collect()
}

/// Every string in a parsed block, recursively.
fn all_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| all_strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| all_strings(v, out)),
        _ => {}
    }
}

/// Every file of the module, relative to it.
fn module_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, base, out);
            } else {
                out.push(
                    path.strip_prefix(base)
                        .expect("under the module")
                        .to_path_buf(),
                );
            }
        }
    }
    let mut out = Vec::new();
    walk(&terraform_dir(), &terraform_dir(), &mut out);
    out.sort();
    out
}

/// Self-contained: every file the module reads is under `${path.module}/` and exists there,
/// nothing climbs out (`../`), no symlink points elsewhere, nothing depends on where
/// Terraform runs (`path.cwd`, `path.root`).
#[test]
fn the_module_reads_nothing_outside_its_folder() {
    let files = module_files();
    for file in &files {
        let path = terraform_dir().join(file);
        let meta = std::fs::symlink_metadata(&path).expect("metadata");
        assert!(
            !meta.file_type().is_symlink(),
            "{}: a symlink",
            file.display()
        );
        let body = read(&path);
        for outside in ["../", "path.cwd", "path.root"] {
            assert!(
                !body.contains(outside),
                "packaging/aws/terraform/{} mentions {outside}: the module must stand alone",
                file.display()
            );
        }
    }

    let tf = Terraform::load();
    let userdata_files = tf.local("userdata_files");
    let userdata_files: Vec<String> = userdata_files
        .as_object()
        .expect("local.userdata_files is an object")
        .values()
        .map(|v| v.as_str().expect("a file name").to_string())
        .collect();
    let mut expressions = Vec::new();
    for body in tf.resources.values() {
        all_strings(&Value::Object(body.clone()), &mut expressions);
    }
    all_strings(&Value::Object(tf.locals.clone()), &mut expressions);
    let mut read_files = BTreeSet::new();
    for expr in &expressions {
        for function in [
            "templatefile",
            "file",
            "filebase64",
            "fileexists",
            "fileset",
        ] {
            for arg in path_arguments(expr, function) {
                let rel = arg.strip_prefix("${path.module}/").unwrap_or_else(|| {
                    panic!("{function}(\"{arg}\"): paths start with ${{path.module}}/")
                });
                let candidates: Vec<String> = if rel.contains("${local.userdata_files[var.mode]}") {
                    userdata_files
                        .iter()
                        .map(|f| rel.replace("${local.userdata_files[var.mode]}", f))
                        .collect()
                } else {
                    vec![rel.to_string()]
                };
                for rel in candidates {
                    assert!(
                        !rel.contains("${"),
                        "{function}(\"{arg}\"): a path Terraform computes otherwise"
                    );
                    assert!(
                        files.contains(&PathBuf::from(&rel)),
                        "{function}(\"{arg}\"): {rel} is not in the module"
                    );
                    read_files.insert(rel);
                }
            }
        }
    }
    // The scan saw what the module reads.
    let mut expected: BTreeSet<String> = POLICIES.iter().map(|s| s.to_string()).collect();
    expected.insert(TRUST_POLICY.to_string());
    expected.extend(
        USERDATA_BY_MODE
            .iter()
            .map(|(_, f)| format!("userdata/{f}")),
    );
    assert_eq!(read_files, expected, "the files the module reads");
}

/// Every variable is described, typed and validated, with a message that names it.
#[test]
fn every_variable_is_validated() {
    let tf = Terraform::load();
    assert!(
        tf.variables.len() >= 20,
        "the scan found {} variables",
        tf.variables.len()
    );
    for (name, body) in &tf.variables {
        assert!(
            body.get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| d.len() > 10),
            "variable {name}: no description"
        );
        assert!(body.contains_key("type"), "variable {name}: no type");
        let checks = body
            .get("validation")
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("variable {name}: no validation block"));
        assert!(!checks.is_empty(), "variable {name}: no validation block");
        for check in checks {
            let check = check.as_object().expect("validation block");
            let condition = text(check, "condition");
            assert!(
                condition.contains(&format!("var.{name}")),
                "variable {name}: its validation does not look at it: {condition}"
            );
            let message = text(check, "error_message");
            assert!(
                message.starts_with(name.as_str()) && message.ends_with('.'),
                "variable {name}: the error message should start with the variable's name and \
                 end with a full stop: {message:?}"
            );
        }
    }
    // The README documents each of them, and each output.
    let readme = read(&terraform_dir().join("README.md"));
    for name in tf.variables.keys().chain(tf.outputs.keys()) {
        assert!(
            readme.contains(&format!("`{name}`")),
            "packaging/aws/terraform/README.md does not name `{name}`"
        );
    }
    for (name, body) in &tf.outputs {
        assert!(
            body.contains_key("description"),
            "output {name}: no description"
        );
    }
}

/// Whether `version` (major, minor, patch) meets one Terraform version constraint.
fn meets(constraint: &str, version: [u64; 3]) -> bool {
    constraint.split(',').all(|part| {
        let part = part.trim();
        let (op, rest) = ["~>", ">=", "<=", "!=", ">", "<", "="]
            .iter()
            .find_map(|op| part.strip_prefix(op).map(|r| (*op, r.trim())))
            .unwrap_or(("=", part));
        let given: Vec<u64> = rest
            .split('.')
            .map(|n| {
                n.parse()
                    .unwrap_or_else(|_| panic!("version {rest:?} in {constraint:?}"))
            })
            .collect();
        let mut bound = [0u64; 3];
        bound[..given.len()].copy_from_slice(&given);
        match op {
            ">=" => version >= bound,
            ">" => version > bound,
            "<=" => version <= bound,
            "<" => version < bound,
            "!=" => version != bound,
            "=" => version == bound,
            // ~> 5.0: >= 5.0, < 6; ~> 5.1.2: >= 5.1.2, < 5.2.
            _ => {
                let mut upper = bound;
                let level = given.len().saturating_sub(2);
                upper[level] += 1;
                for v in upper.iter_mut().skip(level + 1) {
                    *v = 0;
                }
                version >= bound && version < upper
            }
        }
    })
}

#[test]
fn the_provider_constraint_admits_aws_5_and_6() {
    // The evaluator itself, on the constraint the module had before.
    assert!(meets("~> 5.0", [5, 100, 0]) && !meets("~> 5.0", [6, 0, 0]));
    let tf = Terraform::load();
    let providers: Vec<Value> = tf
        .settings
        .iter()
        .filter_map(|t| t.get("required_providers"))
        .flat_map(|p| p.as_array().cloned().unwrap_or_default())
        .filter_map(|p| p.get("aws").cloned())
        .collect();
    assert_eq!(providers.len(), 1, "one aws provider requirement");
    let aws = &providers[0];
    assert_eq!(aws["source"], "hashicorp/aws");
    let constraint = aws["version"].as_str().expect("a version constraint");
    for version in [[5, 0, 0], [5, 100, 0], [6, 0, 0], [6, 25, 0]] {
        assert!(
            meets(constraint, version),
            "{constraint:?} refuses {version:?}"
        );
    }
    assert!(
        !meets(constraint, [4, 67, 0]),
        "{constraint:?}: 5 is the oldest written for"
    );
    // No provider block: the caller's provider, so the module works with count and for_each.
    let text = read(&terraform_dir().join("versions.tf")) + &read(&terraform_dir().join("main.tf"));
    assert!(
        !text.contains("provider \"aws\""),
        "the module configures no provider"
    );
}

/// The `name` of the `local.name` passed to `templatefile("<...>/<file>", local.name)`.
fn templatefile_vars(expr: &str, file: &str) -> String {
    let needle = format!("/{file}\"");
    let at = expr
        .find(&needle)
        .unwrap_or_else(|| panic!("expected templatefile() of {file}, got {expr}"));
    let rest = expr[at + needle.len()..].trim_start();
    let rest = rest
        .strip_prefix(',')
        .map(str::trim_start)
        .and_then(|r| r.strip_prefix("local."))
        .unwrap_or_else(|| {
            panic!("the variables for {file} should be one local map (local.<name>), got {expr}")
        });
    rest.chars().take_while(|&c| is_ident(c)).collect()
}

#[test]
fn the_queue_its_dead_letter_queue_and_their_alarms() {
    let tf = Terraform::load();

    // The lifecycle queue (queue mode only): dead-letter queue after five receives, encrypted.
    let queue = tf.resource("aws_sqs_queue.lifecycle");
    let redrive = text(queue, "redrive_policy");
    assert_eq!(
        number_after(redrive, "maxReceiveCount"),
        Some(5),
        "redrive policy: {redrive}"
    );
    assert!(
        redrive.contains("aws_sqs_queue.lifecycle_dlq[0].arn"),
        "{redrive}"
    );
    for q in ["aws_sqs_queue.lifecycle", "aws_sqs_queue.lifecycle_dlq"] {
        let body = tf.resource(q);
        assert_eq!(
            body.get("sqs_managed_sse_enabled"),
            Some(&Value::Bool(true)),
            "{q}: SSE"
        );
        assert_eq!(text(body, "count"), "${local.uses_queue ? 1 : 0}", "{q}");
    }

    // An alarm on the age of the oldest message, and one on the dead-letter queue.
    let alarm_on = |metric: &str| -> &Map<String, Value> {
        tf.of_type("aws_cloudwatch_metric_alarm")
            .find(|a| a.get("metric_name") == Some(&Value::from(metric)))
            .unwrap_or_else(|| panic!("no alarm on {metric}"))
    };
    let oldest = alarm_on("ApproximateAgeOfOldestMessage");
    assert_eq!(text(oldest, "namespace"), "AWS/SQS");
    assert!(
        oldest["dimensions"]
            .to_string()
            .contains("aws_sqs_queue.lifecycle[0].name"),
        "the oldest-message alarm watches the lifecycle queue: {oldest:?}"
    );
    assert_eq!(
        text(oldest, "threshold"),
        "${var.oldest_message_alarm_seconds}"
    );
    assert_eq!(text(oldest, "comparison_operator"), "GreaterThanThreshold");
    assert!(text(oldest, "alarm_actions").contains("local.alarm_actions"));
    let dlq = alarm_on("ApproximateNumberOfMessagesVisible");
    assert!(dlq["dimensions"]
        .to_string()
        .contains("aws_sqs_queue.lifecycle_dlq[0].name"));
    assert!(text(dlq, "alarm_actions").contains("local.alarm_actions"));

    // Resources that became conditional keep their state.
    let moved = std::fs::read_to_string(terraform_dir().join("main.tf")).expect("main.tf");
    for address in [
        "aws_sqs_queue.lifecycle",
        "aws_sqs_queue.lifecycle_dlq",
        "aws_iam_role.lifecycle_notification",
        "aws_iam_role_policy.lifecycle_notification",
        "aws_sqs_queue_policy.lifecycle",
    ] {
        assert!(
            moved.contains(&format!("from = {address}\n  to   = {address}[0]")),
            "no moved block for {address}"
        );
    }
}

/// Only Auto Scaling's notification role may send to the queue: an Allow for it, a Deny
/// for every other principal (an explicit Deny beats any identity policy of the account),
/// and the module passes the role the hook publishes as.
#[test]
fn only_auto_scalings_role_may_send_to_the_queue() {
    let policy = rendered("policies/lifecycle-queue.json");
    let role = SAMPLE_VALUES
        .iter()
        .find(|(k, _)| *k == "sender_role_arn")
        .map(|(_, v)| *v)
        .expect("sample role");
    let statements = statement_list(&policy, "lifecycle-queue.json");
    let sends = |st: &Value| {
        string_or_list(&st["Action"])
            .iter()
            .any(|a| *a == "sqs:SendMessage" || *a == "sqs:*")
    };
    let allows: Vec<&Value> = statements
        .iter()
        .filter(|st| st["Effect"] == "Allow")
        .collect();
    assert_eq!(allows.len(), 1, "one Allow: {statements:?}");
    assert_eq!(allows[0]["Principal"], serde_json::json!({ "AWS": role }));
    assert_eq!(string_or_list(&allows[0]["Action"]), ["sqs:SendMessage"]);
    let deny_others = statements
        .iter()
        .find(|st| {
            st["Effect"] == "Deny" && sends(st) && st["Condition"]["ArnNotEquals"].is_object()
        })
        .unwrap_or_else(|| panic!("no Deny of SendMessage to other principals: {statements:?}"));
    assert_eq!(deny_others["Principal"], "*");
    assert_eq!(
        deny_others["Condition"]["ArnNotEquals"]["aws:PrincipalArn"],
        role
    );
    assert!(
        statements.iter().any(|st| st["Effect"] == "Deny"
            && st["Condition"]["Bool"]["aws:SecureTransport"] == "false"),
        "plain HTTP refused"
    );

    let tf = Terraform::load();
    let queue_policy = text(tf.resource("aws_sqs_queue_policy.lifecycle"), "policy");
    assert!(
        queue_policy.contains("sender_role_arn = aws_iam_role.lifecycle_notification[0].arn"),
        "the queue policy names the notification role: {queue_policy}"
    );
    // That role is Auto Scaling's, and the hook publishes as it.
    let role = tf.resource("aws_iam_role.lifecycle_notification");
    let trust = text(role, "assume_role_policy");
    assert!(
        trust.contains("/policies/trust.json")
            && trust.contains("service = \"autoscaling.amazonaws.com\""),
        "{trust}"
    );
    let hook = tf.resource("aws_autoscaling_lifecycle_hook.drain");
    assert!(
        text(hook, "role_arn").contains("aws_iam_role.lifecycle_notification[0].arn"),
        "{hook:?}"
    );
    assert!(
        text(hook, "notification_target_arn").contains("aws_sqs_queue.lifecycle[0].arn"),
        "{hook:?}"
    );
    assert!(
        hook["depends_on"]
            .to_string()
            .contains("aws_sqs_queue_policy.lifecycle"),
        "the hook's test message needs the queue policy: {hook:?}"
    );
    // The trust policy: the one service, assuming the role, nothing else.
    let trust = Policy::load(TRUST_POLICY);
    for st in trust.statements() {
        assert_eq!(
            st["Principal"],
            serde_json::json!({ "Service": "${service}" })
        );
        assert_eq!(st["Action"], "sts:AssumeRole");
    }
    let host = text(tf.resource("aws_iam_role.host"), "assume_role_policy");
    assert!(host.contains("service = \"ec2.amazonaws.com\""), "{host}");
}

/// The userdata follows the mode; the warm pool's is never the queue's.
#[test]
fn the_userdata_follows_the_mode() {
    let tf = Terraform::load();
    let modes = quoted_words(text(validation(tf.variable("mode")), "condition"));
    let expected: Vec<String> = USERDATA_BY_MODE
        .iter()
        .map(|(m, _)| m.to_string())
        .collect();
    assert_eq!(modes, expected, "mode's values");
    let files = tf.local("userdata_files");
    for (mode, file) in USERDATA_BY_MODE {
        assert_eq!(files[mode], file, "local.userdata_files.{mode}");
    }
    let user_data = tf.local("user_data");
    let user_data = user_data.as_str().unwrap_or_default();
    assert!(
        user_data.contains("templatefile(\"${path.module}/userdata/${local.userdata_files[var.mode]}\", local.userdata_vars)"),
        "local.user_data renders the mode's file: {user_data}"
    );
    assert!(
        user_data.contains("var.user_data != \"\" ? var.user_data"),
        "{user_data}"
    );
    let lt = tf.resource("aws_launch_template.host");
    assert_eq!(text(lt, "user_data"), "${base64encode(local.user_data)}");

    // The warm pool's file watches IMDS; the queue's watches the queue.
    let warm = read(&terraform_dir().join("userdata/asg-warm-pool.yaml"));
    let sqs = read(&terraform_dir().join("userdata/asg-sqs.yaml"));
    let config_lines = |yaml: &str| -> Vec<String> {
        yaml.lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    assert!(config_lines(&sqs)
        .iter()
        .any(|l| l.starts_with("queue_url = ")));
    assert!(
        !config_lines(&warm)
            .iter()
            .any(|l| l.starts_with("queue_url")),
        "asg-warm-pool.yaml sets no queue"
    );
    assert!(
        config_lines(&warm)
            .iter()
            .any(|l| l.starts_with("imds_poll = ")),
        "asg-warm-pool.yaml watches IMDS"
    );

    // Every placeholder of every file is passed; the queue's file uses them all.
    let passed = tf.local_keys("userdata_vars");
    assert_eq!(passed, strings(&USERDATA_VARS), "local.userdata_vars");
    for (mode, file) in USERDATA_BY_MODE {
        let used = placeholders_lenient(&read(&terraform_dir().join("userdata").join(file)));
        let missing: BTreeSet<String> = used.difference(&passed).cloned().collect();
        assert!(
            missing.is_empty(),
            "{file} ({mode}) needs {}",
            set_list(&missing)
        );
        if mode == "queue" {
            assert_eq!(used, passed, "{file} uses every placeholder");
        }
    }

    // A warm pool only in its mode, and the mode's warm pool even when warm_pool is null.
    let group = tf.resource("aws_autoscaling_group.host");
    let pool = dynamic_block(group, "warm_pool");
    assert!(
        text(pool, "for_each").starts_with("${var.mode == \"warm_pool\" ?"),
        "{pool:?}"
    );
    let preconditions = block(group, "lifecycle")["precondition"].to_string();
    assert!(
        preconditions.contains("var.warm_pool == null || var.mode == \\\"warm_pool\\\""),
        "a warm pool with another mode fails the plan: {preconditions}"
    );
}

#[test]
fn the_hooks_the_launch_template_and_the_options() {
    let tf = Terraform::load();

    // The termination hook, on the group.
    let hooks: Vec<_> = tf.of_type("aws_autoscaling_lifecycle_hook").collect();
    assert_eq!(hooks.len(), 1, "one lifecycle hook resource");
    let hook = hooks[0];
    assert_eq!(
        text(hook, "lifecycle_transition"),
        "autoscaling:EC2_INSTANCE_TERMINATING"
    );
    assert_eq!(text(hook, "default_result"), "CONTINUE");
    assert_eq!(text(hook, "heartbeat_timeout"), "${var.heartbeat_timeout}");
    assert!(
        text(hook, "autoscaling_group_name").contains("aws_autoscaling_group.host"),
        "{hook:?}"
    );

    // The launching hook, on the group from its creation.
    let group = tf.resource("aws_autoscaling_group.host");
    let launch = dynamic_block(group, "initial_lifecycle_hook");
    assert_eq!(
        text(launch, "for_each"),
        "${var.launch_hook == null ? [] : [var.launch_hook]}"
    );
    let content = block(launch, "content");
    assert_eq!(
        text(content, "lifecycle_transition"),
        "autoscaling:EC2_INSTANCE_LAUNCHING"
    );
    assert_eq!(
        tf.variable("launch_hook").get("default"),
        Some(&serde_json::json!({})),
        "the launching hook is on by default"
    );
    // ABANDON by default: an instance whose drover never answers is replaced.
    assert!(text(tf.variable("launch_hook"), "type")
        .contains("default_result = optional(string, \"ABANDON\")"));

    // IMDSv2 only, instance tags readable, a hop limit set from a variable (1 by default).
    let lt = tf.resource("aws_launch_template.host");
    let md = block(lt, "metadata_options");
    assert_eq!(text(md, "http_endpoint"), "enabled");
    assert_eq!(text(md, "http_tokens"), "required");
    assert_eq!(text(md, "instance_metadata_tags"), "enabled");
    assert_eq!(
        md.get("http_put_response_hop_limit")
            .and_then(Value::as_str),
        Some("${var.imds_hop_limit}")
    );
    assert!(
        text(block(lt, "iam_instance_profile"), "arn").contains("aws_iam_instance_profile."),
        "the launch template uses the instance profile"
    );
    assert!(
        text(block(group, "launch_template"), "id").contains("aws_launch_template."),
        "the group launches from the launch template"
    );
    assert!(
        group["depends_on"]
            .to_string()
            .contains("aws_iam_role_policy.drover"),
        "hosts boot once their policy is there"
    );

    // Instance refresh, when asked for.
    let refresh = dynamic_block(group, "instance_refresh");
    assert_eq!(
        text(refresh, "for_each"),
        "${var.instance_refresh == null ? [] : [var.instance_refresh]}"
    );
    assert_eq!(text(block(refresh, "content"), "strategy"), "Rolling");
    assert_eq!(
        tf.variable("instance_refresh").get("default"),
        Some(&Value::Null)
    );

    // SSM access to the hosts, when asked for.
    let ssm = tf
        .of_type("aws_iam_role_policy_attachment")
        .find(|a| text(a, "policy_arn").ends_with(":iam::aws:policy/AmazonSSMManagedInstanceCore"))
        .expect("an AmazonSSMManagedInstanceCore attachment");
    assert_eq!(text(ssm, "count"), "${var.ssm_access ? 1 : 0}");
    assert_eq!(text(ssm, "role"), "${aws_iam_role.host.name}");
    assert_eq!(
        tf.variable("ssm_access").get("default"),
        Some(&Value::Bool(false))
    );
}

/// `${identifier}` placeholders in a template that may also hold other expressions,
/// escapes (`$${`) and directives: only the plain ones are returned.
fn placeholders_lenient(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices("${") {
        if text[..at].ends_with('$') {
            continue;
        }
        let rest = &text[at + 2..];
        if let Some(end) = rest.find('}') {
            let name = rest[..end].trim();
            if !name.is_empty()
                && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(is_ident)
            {
                found.insert(name.to_string());
            }
        }
    }
    found
}

/// Each policy template, and the variables the module fills it with.
fn policy_templates(tf: &Terraform) -> Vec<(&'static str, BTreeSet<String>)> {
    let drover = tf.local("drover_policy_all");
    let drover = drover.as_str().unwrap_or_default();
    let vars = templatefile_vars(drover, "iam-policy.json");
    let mut out = vec![("iam-policy.json", tf.local_keys(&vars))];
    // The others take an inline object: its keys, `{a = ..., b = ...}`.
    let inline =
        |address: &str, attribute: &str, file: &'static str| -> (&'static str, BTreeSet<String>) {
            let expr = text(tf.resource(address), attribute);
            let needle = format!("/{file}\", {{");
            let at = expr.find(&needle).unwrap_or_else(|| {
                panic!("{address}.{attribute}: templatefile() of {file} with an object: {expr}")
            });
            let object = &expr[at + needle.len()..];
            let object = &object[..object.find('}').expect("object end")];
            let keys = object
                .split(',')
                .filter_map(|kv| kv.split('=').next())
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty())
                .collect();
            (file, keys)
        };
    out.push(inline(
        "aws_iam_role_policy.lifecycle_notification",
        "policy",
        "policies/lifecycle-notification.json",
    ));
    out.push(inline(
        "aws_sqs_queue_policy.lifecycle",
        "policy",
        "policies/lifecycle-queue.json",
    ));
    out.push(inline(
        "aws_iam_role.host",
        "assume_role_policy",
        TRUST_POLICY,
    ));
    out
}

#[test]
fn the_module_passes_every_policy_placeholder() {
    let tf = Terraform::load();
    let templates = policy_templates(&tf);
    assert_eq!(templates.len(), POLICIES.len() + 1);
    for (file, passed) in templates {
        let policy = Policy::load(file);
        let missing: BTreeSet<String> = policy.placeholders.difference(&passed).cloned().collect();
        assert!(
            missing.is_empty(),
            "{file} has placeholders the module does not pass (templatefile() would fail): {}\n  \
             placeholders: {}\n  passed: {}",
            set_list(&missing),
            set_list(&policy.placeholders),
            set_list(&passed)
        );
    }
    // Every policy the module attaches comes from one of those templates, so that
    // parliament has seen it: no inline jsonencode() policy.
    for kind in ["aws_iam_role_policy", "aws_sqs_queue_policy"] {
        for body in tf.of_type(kind) {
            let policy = text(body, "policy");
            assert!(
                policy.contains("templatefile(\"${path.module}/policies/")
                    || policy == "${jsonencode(local.drover_policy)}",
                "{kind}: a policy not from the module's templates: {policy}"
            );
        }
    }
    for body in tf.of_type("aws_iam_role") {
        assert!(text(body, "assume_role_policy").contains(TRUST_POLICY));
    }
}

/// `terraform` on PATH, or None (it is optional here: init and validate need the network).
fn terraform() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("terraform"))
        .find(|p| p.is_file())
}

#[test]
fn terraform_fmt_is_clean() {
    let Some(terraform) = terraform() else {
        eprintln!("terraform is not on PATH: `terraform fmt -check` skipped (python-hcl2 still parses every file)");
        return;
    };
    let out = Command::new(&terraform)
        .current_dir(root())
        .args(["fmt", "-check", "-recursive", "packaging/aws/terraform"])
        .output()
        .expect("terraform fmt runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim().is_empty(),
        "terraform fmt -check -recursive packaging/aws/terraform: run `terraform fmt` on:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `terraform console` in an empty directory on one expression; its output.
fn terraform_eval(terraform: &Path, expr: &str) -> Result<String, String> {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("main.tf"), "locals {}\n").expect("main.tf");
    let mut child = Command::new(terraform)
        .current_dir(dir.path())
        .arg("console")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("terraform console starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{expr}\n").as_bytes())
        .expect("console input");
    let out = child.wait_with_output().expect("terraform console runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() && !stdout.trim().is_empty() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// `templatefile("<path>", { k = "test-k", ... })`, every value naming its key.
fn templatefile_expr(path: &Path, vars: &BTreeSet<String>) -> String {
    let object: Vec<String> = vars.iter().map(|k| format!("{k} = \"test-{k}\"")).collect();
    format!(
        "templatefile({:?}, {{ {} }})",
        path.display().to_string(),
        object.join(", ")
    )
}

/// Renders the templates as Terraform will, with exactly the variables the module passes:
/// templatefile() fails on a missing one, and a rendered policy must still be JSON.
#[test]
fn terraform_renders_the_templates() {
    let Some(terraform) = terraform() else {
        eprintln!("terraform is not on PATH: rendering with templatefile() not checked");
        return;
    };
    let tf = Terraform::load();
    for (file, vars) in policy_templates(&tf) {
        let policy = Policy::load(file);
        let render = format!(
            "jsonencode(jsondecode({}))",
            templatefile_expr(&terraform_dir().join(file), &vars)
        );
        let out = terraform_eval(&terraform, &render).unwrap_or_else(|e| {
            panic!(
                "terraform could not render {file} with {}:\n{e}",
                set_list(&vars)
            )
        });
        for k in &policy.placeholders {
            assert!(
                out.contains(&format!("test-{k}")),
                "{file}: ${{{k}}} not rendered: {out}"
            );
        }
    }
    let vars = strings(&USERDATA_VARS);
    for (_, file) in USERDATA_BY_MODE {
        let path = terraform_dir().join("userdata").join(file);
        if let Err(e) = terraform_eval(&terraform, &templatefile_expr(&path, &vars)) {
            panic!(
                "terraform could not render userdata/{file} with {}:\n{e}",
                set_list(&vars)
            );
        }
    }
}
