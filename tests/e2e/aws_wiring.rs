//! The AWS wiring under `packaging/aws/` against the code: the IAM policy grants exactly the
//! SDK calls `src/` makes, the policy files are templates Terraform can fill, and the
//! Terraform example has the structure drover relies on (redrive, termination hook, IMDSv2
//! with instance tags, policies and userdata rendered from the shared files).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Map, Value};

const SETUP_HINT: &str = "run scripts/testbed-setup.sh (it installs python-hcl2 in .testbed/venv)";

/// The placeholders of `cloud-init/asg-sqs.yaml`, all passed by the launch template.
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

/// The IAM policy templates under `packaging/aws/` (one since the secrets' statements moved
/// into drover's own policy).
const POLICIES: [&str; 1] = ["iam-policy.json"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn aws_dir() -> PathBuf {
    root().join("packaging/aws")
}

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
        let text = read(&aws_dir().join(file));
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

#[test]
fn policies_are_well_formed_and_scoped() {
    for file in POLICIES {
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
            let actions = string_or_list(&st["Action"]);
            for action in &actions {
                assert!(
                    !action.contains('*') && action.contains(':'),
                    "{file}: {sid}: no wildcard actions ({action})"
                );
            }
            // "*" only where AWS offers no resource-level permission (the Describe calls),
            // or where conditions scope the call (kms:Decrypt through one service).
            if string_or_list(&st["Resource"]).contains(&"*") {
                assert!(
                    actions.iter().all(|a| a.contains(":Describe"))
                        || st.get("Condition").is_some(),
                    "{file}: {sid} grants {actions:?} on every resource"
                );
            }
        }
    }
    let drover = Policy::load("iam-policy.json");
    assert!(
        drover.placeholders.contains("queue_arn"),
        "iam-policy.json: SQS calls should be scoped to ${{queue_arn}}"
    );
    // The secrets: parameters under one prefix, decryption only through SSM, and Secrets
    // Manager in statements of their own, which an operator who does not use it drops.
    for st in drover.statements() {
        let actions = string_or_list(&st["Action"]);
        let sid = st["Sid"].as_str().unwrap_or_default();
        if actions.contains(&"kms:Decrypt") {
            assert!(
                st["Condition"]["StringEquals"]["kms:ViaService"].is_string(),
                "{sid}: kms:Decrypt only through one service"
            );
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

// ---------------------------------------------------------------------------------------
// The Terraform example
// ---------------------------------------------------------------------------------------

/// Parses every .tf of the example with python-hcl2 and prints one JSON document. Output
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

/// The example, parsed: resources by `type.name`, and the merged locals.
struct Terraform {
    resources: BTreeMap<String, Map<String, Value>>,
    locals: Map<String, Value>,
}

impl Terraform {
    fn load() -> Terraform {
        let python = root().join(".testbed/venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: {SETUP_HINT}",
            python.display()
        );
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
            "hcl2 could not parse the example:\n{stderr}"
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
                locals.insert(k.clone(), v.clone());
            }
        }
        Terraform { resources, locals }
    }

    fn resource(&self, address: &str) -> &Map<String, Value> {
        self.resources.get(address).unwrap_or_else(|| {
            panic!(
                "no resource {address} in the example (there are: {})",
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

    /// The keys of `local.<name>`, an object.
    fn local_keys(&self, name: &str) -> BTreeSet<String> {
        self.locals
            .get(name)
            .and_then(Value::as_object)
            .unwrap_or_else(|| panic!("local.{name} is not an object in the example"))
            .keys()
            .cloned()
            .collect()
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

/// The `name` of the `local.name` passed to `templatefile("<...>/<file>", local.name)`.
fn templatefile_vars(expr: &str, file: &str) -> String {
    assert!(
        expr.contains("templatefile("),
        "expected templatefile() of {file}, got {expr}"
    );
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
fn terraform_example_parses() {
    let tf = Terraform::load();

    // The lifecycle queue: dead-letter queue after five receives, encrypted.
    let queue = tf.resource("aws_sqs_queue.lifecycle");
    let redrive = text(queue, "redrive_policy");
    assert_eq!(
        number_after(redrive, "maxReceiveCount"),
        Some(5),
        "redrive policy: {redrive}"
    );
    assert!(
        redrive.contains("aws_sqs_queue.lifecycle_dlq.arn"),
        "{redrive}"
    );
    for q in ["aws_sqs_queue.lifecycle", "aws_sqs_queue.lifecycle_dlq"] {
        assert_eq!(
            tf.resource(q).get("sqs_managed_sse_enabled"),
            Some(&Value::Bool(true)),
            "{q}: SSE"
        );
    }

    // The termination hook publishes to the queue through the notification role.
    let hooks: Vec<_> = tf.of_type("aws_autoscaling_lifecycle_hook").collect();
    assert_eq!(hooks.len(), 1, "one lifecycle hook");
    let hook = hooks[0];
    assert_eq!(
        text(hook, "lifecycle_transition"),
        "autoscaling:EC2_INSTANCE_TERMINATING"
    );
    assert!(
        text(hook, "notification_target_arn").contains("aws_sqs_queue.lifecycle.arn"),
        "{hook:?}"
    );
    let role_arn = text(hook, "role_arn");
    let role_ref = role_arn
        .trim_start_matches("${")
        .trim_end_matches('}')
        .trim_end_matches(".arn");
    let notification_role = tf.resource(role_ref);
    assert!(
        text(notification_role, "assume_role_policy").contains("autoscaling.amazonaws.com"),
        "{role_ref} must trust Auto Scaling"
    );
    assert_eq!(text(hook, "default_result"), "CONTINUE");
    assert!(hook.contains_key("heartbeat_timeout"), "{hook:?}");

    // IMDSv2 only, instance tags readable, a hop limit set from a variable (1 by default).
    let templates: Vec<_> = tf.of_type("aws_launch_template").collect();
    assert_eq!(templates.len(), 1, "one launch template");
    let lt = templates[0];
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

    // The userdata is the shared cloud-init file, with every placeholder it has.
    let user_data = text(lt, "user_data");
    assert!(
        user_data.contains("base64encode(templatefile("),
        "user_data: {user_data}"
    );
    let userdata_vars = templatefile_vars(user_data, "../../../cloud-init/asg-sqs.yaml");
    let expected: BTreeSet<String> = USERDATA_VARS.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        tf.local_keys(&userdata_vars),
        expected,
        "local.{userdata_vars}"
    );
    // The file is written separately; when it is there, Terraform must pass all it uses.
    let cloud_init = root().join("cloud-init/asg-sqs.yaml");
    if cloud_init.exists() {
        let used: BTreeSet<String> = placeholders_lenient(&read(&cloud_init));
        let missing: BTreeSet<String> = used.difference(&expected).cloned().collect();
        assert!(
            missing.is_empty(),
            "cloud-init/asg-sqs.yaml uses placeholders the launch template does not pass: {}",
            set_list(&missing)
        );
    }

    // The policies come from the shared JSON files, never from a copy.
    let policies: Vec<String> = tf
        .of_type("aws_iam_role_policy")
        .map(|p| text(p, "policy").to_string())
        .collect();
    for file in POLICIES {
        let needle = format!("\"${{path.module}}/../{file}\"");
        assert!(
            policies
                .iter()
                .any(|p| p.contains("templatefile(") && p.contains(&needle)),
            "no aws_iam_role_policy renders {file} with templatefile(): {policies:#?}"
        );
    }

    // The group uses the launch template, and the hook is on that group.
    let groups: Vec<_> = tf.of_type("aws_autoscaling_group").collect();
    assert_eq!(groups.len(), 1, "one group");
    assert!(
        text(block(groups[0], "launch_template"), "id").contains("aws_launch_template."),
        "the group launches from the launch template"
    );
    assert!(
        text(hook, "autoscaling_group_name").contains("aws_autoscaling_group."),
        "{hook:?}"
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

/// The `policy` expression of the aws_iam_role_policy that renders `file`.
fn policy_expr(tf: &Terraform, file: &str) -> String {
    tf.of_type("aws_iam_role_policy")
        .map(|p| text(p, "policy").to_string())
        .find(|p| p.contains(&format!("/../{file}\"")))
        .unwrap_or_else(|| panic!("no aws_iam_role_policy renders {file}"))
}

#[test]
fn terraform_passes_every_policy_placeholder() {
    let tf = Terraform::load();
    for file in POLICIES {
        let policy = Policy::load(file);
        let expr = policy_expr(&tf, file);
        let vars = templatefile_vars(&expr, &format!("../{file}"));
        let passed = tf.local_keys(&vars);
        let missing: BTreeSet<String> = policy.placeholders.difference(&passed).cloned().collect();
        assert!(
            missing.is_empty(),
            "{file} has placeholders that local.{vars} does not pass (templatefile() would \
             fail): {}\n  placeholders: {}\n  passed: {}",
            set_list(&missing),
            set_list(&policy.placeholders),
            set_list(&passed)
        );
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
        eprintln!("terraform is not on PATH: formatting not checked");
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
    use std::process::Stdio;
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

/// Renders the templates as Terraform will, with exactly the variables the example passes:
/// templatefile() fails on a missing one, and a rendered policy must still be JSON.
#[test]
fn terraform_renders_the_templates() {
    let Some(terraform) = terraform() else {
        eprintln!("terraform is not on PATH: rendering not checked");
        return;
    };
    let tf = Terraform::load();
    for file in POLICIES {
        let policy = Policy::load(file);
        let expr = policy_expr(&tf, file);
        let vars = tf.local_keys(&templatefile_vars(&expr, &format!("../{file}")));
        let render = format!(
            "jsonencode(jsondecode({}))",
            templatefile_expr(&aws_dir().join(file), &vars)
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
    // The userdata is written separately; once it is there, it must render with what the
    // launch template passes.
    let cloud_init = root().join("cloud-init/asg-sqs.yaml");
    if cloud_init.exists() {
        let vars: BTreeSet<String> = USERDATA_VARS.iter().map(|s| s.to_string()).collect();
        if let Err(e) = terraform_eval(&terraform, &templatefile_expr(&cloud_init, &vars)) {
            panic!(
                "terraform could not render cloud-init/asg-sqs.yaml with {}:\n{e}",
                set_list(&vars)
            );
        }
    }
}
