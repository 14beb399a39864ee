//! The SAM template's invariants (`template.yaml` at the workspace root).
//!
//! `cfn-lint` and `sam validate --lint` check the template's schema; they do not know what ClickPacer needs, and
//! they miss a misspelled runtime or `FunctionResponseTypes` value. Each check here returns the problems it finds
//! as text, so the tests can show both that the real template is clean and, on deliberately broken copies of it,
//! that every check catches what it is meant to catch.
//!
//! CloudFormation's short-form tags (`!Ref`, `!GetAtt`, `!Sub`, `!If`) parse as tagged values; the long forms
//! (`Ref:`, `Fn::GetAtt:`) are understood too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clickpacer::aws::dynamodb::{GSI_BY_CAMPAIGN, GSI_BY_PARTNER, GSI_FAILURES, TTL_ATTRIBUTE};
use clickpacer::config::{FunctionKind, vars};
use clickpacer::domain::access::ADMIN_GROUP;
use serde_norway::value::{Tag, TaggedValue};
use serde_norway::{Mapping, Value};

/// Which `Config` each function of the template loads: its logical ID mapped explicitly, so a function added to
/// the template without an entry here fails [`check_environment`].
const FUNCTIONS: [(&str, FunctionKind); 5] = [
    ("SlicerFunction", FunctionKind::Slicer),
    ("PacerFunction", FunctionKind::Pacer),
    ("BridgeFunction", FunctionKind::Bridge),
    ("ApiFunction", FunctionKind::Api),
    ("MigrateFunction", FunctionKind::Migrate),
];

/// Variables a function may have beyond its required ones: those `Config` reads with a default.
const OPTIONAL_VARS: [&str; 1] = [vars::DATABASE_POOL_SIZE];

/// Actions that have no resource-level permissions in IAM, so `Resource: "*"` is the only way to grant them.
/// A statement with `Resource: "*"` passes only when every one of its actions is listed here.
const UNSCOPABLE_ACTIONS: [&str; 8] = [
    "cloudwatch:PutMetricData",   // metrics are addressed by namespace, not by ARN
    "xray:PutTraceSegments",      // X-Ray has no resource ARNs for segments
    "xray:PutTelemetryRecords",   // idem
    "ec2:CreateNetworkInterface", // Lambda's VPC ENIs (also granted by AWSLambdaVPCAccessExecutionRole)
    "ec2:DescribeNetworkInterfaces",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
];

/// SAM policy templates known to scope their grants to the resource passed as argument (checked against SAM's
/// policy_templates.json). `CloudWatchPutMetricPolicy` grants only `cloudwatch:PutMetricData` (unscopable).
/// Another template must be read and added here before use.
const SCOPED_POLICY_TEMPLATES: [&str; 12] = [
    "SQSSendMessagePolicy",
    "SQSPollerPolicy",
    "DynamoDBReadPolicy",
    "DynamoDBWritePolicy",
    "DynamoDBCrudPolicy",
    "S3ReadPolicy",
    "S3WritePolicy",
    "S3CrudPolicy",
    "AWSSecretsManagerGetSecretValuePolicy",
    "LambdaInvokePolicy",
    "SNSPublishMessagePolicy",
    "CloudWatchPutMetricPolicy",
];

/// AWS managed policies a function may list by name in `Policies` (SAM adds these two by itself anyway).
const ALLOWED_MANAGED_POLICIES: [&str; 2] = ["AWSLambdaBasicExecutionRole", "AWSLambdaVPCAccessExecutionRole"];

/// AWS's recommendation for an SQS event source: visibility timeout at least six times the function timeout.
const VISIBILITY_PER_TIMEOUT: u64 = 6;
/// Fewest receives before a message is dead-lettered: fewer would dead-letter clicks on transient errors.
const MIN_MAX_RECEIVE_COUNT: u64 = 5;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn load() -> Value {
    let path = workspace_root().join("template.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

// ───────────────────────────────────────────── reading the template ─────────────────────────────────────────

/// `value[k1][k2]...`, `None` when a key is missing or a value on the way is not a mapping.
fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.as_mapping()?.get(*key))
}

fn resources(t: &Value) -> &Mapping {
    at(t, &["Resources"]).and_then(Value::as_mapping).expect("the template has Resources")
}

fn resource<'a>(t: &'a Value, id: &str) -> Option<&'a Value> {
    resources(t).get(id)
}

fn resource_type(resource: &Value) -> &str {
    at(resource, &["Type"]).and_then(Value::as_str).unwrap_or_default()
}

/// Logical IDs of the resources of one type, sorted.
fn of_type<'a>(t: &'a Value, kind: &str) -> Vec<(&'a str, &'a Value)> {
    resources(t)
        .iter()
        .filter(|(_, r)| resource_type(r) == kind)
        .map(|(id, r)| (id.as_str().expect("logical IDs are strings"), r))
        .collect()
}

fn functions(t: &Value) -> Vec<(&str, &Value)> {
    of_type(t, "AWS::Serverless::Function")
}

/// A function property, falling back to `Globals.Function` as SAM does for scalars and lists.
fn function_property<'a>(t: &'a Value, function: &'a Value, key: &str) -> Option<&'a Value> {
    at(function, &["Properties", key]).or_else(|| at(t, &["Globals", "Function", key]))
}

/// A mapping property merged as SAM merges maps: global keys, overridden by the function's.
fn merged_map(t: &Value, function: &Value, path: &[&str]) -> BTreeMap<String, Value> {
    let mut merged = BTreeMap::new();
    let global = [&["Globals", "Function"][..], path].concat();
    let local = [&["Properties"][..], path].concat();
    for source in [at(t, &global), at(function, &local)] {
        for (k, v) in source.and_then(Value::as_mapping).into_iter().flatten() {
            merged.insert(k.as_str().unwrap_or_default().to_owned(), v.clone());
        }
    }
    merged
}

fn tagged<'a>(value: &'a Value, name: &str) -> Option<&'a Value> {
    match value {
        Value::Tagged(t) if t.tag == name => Some(&t.value),
        Value::Mapping(m) if m.len() == 1 => m.get(format!("Fn::{name}").as_str()).or_else(|| m.get(name)),
        _ => None,
    }
}

/// The logical ID in `!Ref X` or `{Ref: X}`.
fn ref_target(value: &Value) -> Option<&str> {
    tagged(value, "Ref")?.as_str()
}

/// `(X, attribute)` from `!GetAtt X.Attr`, `!GetAtt [X, Attr]` or `{Fn::GetAtt: [X, Attr]}`.
fn get_att(value: &Value) -> Option<(&str, &str)> {
    match tagged(value, "GetAtt")? {
        Value::String(s) => s.split_once('.'),
        Value::Sequence(parts) if parts.len() == 2 => Some((parts[0].as_str()?, parts[1].as_str()?)),
        _ => None,
    }
}

/// The queue a value names: `!GetAtt Q.Arn`, `!GetAtt Q.QueueName` or `!Ref Q` (its URL).
fn queue_named(t: &Value, value: &Value) -> Option<String> {
    let id = get_att(value).map(|(id, _)| id).or_else(|| ref_target(value))?;
    (resource(t, id).map(resource_type) == Some("AWS::SQS::Queue")).then(|| id.to_owned())
}

fn number(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| value.as_str()?.trim().parse().ok())
}

fn strings(value: &Value) -> Vec<&Value> {
    match value {
        Value::Sequence(items) => items.iter().collect(),
        other => vec![other],
    }
}

/// A variable's value is blank when CloudFormation would render it empty (in any branch of an `!If`).
fn is_blank(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        _ if ref_target(value) == Some("AWS::NoValue") => true,
        _ => match tagged(value, "If").and_then(Value::as_sequence) {
            Some(branches) if branches.len() == 3 => is_blank(&branches[1]) || is_blank(&branches[2]),
            _ => false,
        },
    }
}

/// The bridge: the function whose build binary is `bridge`.
fn bridge(t: &Value) -> Option<(&str, &Value)> {
    functions(t).into_iter().find(|(_, f)| at(f, &["Metadata", "BuildProperties", "Binary"]) == Some(&"bridge".into()))
}

fn events(function: &Value) -> Vec<(&str, &Value)> {
    at(function, &["Properties", "Events"])
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .map(|(name, event)| (name.as_str().unwrap_or_default(), event))
        .collect()
}

fn sqs_events(function: &Value) -> Vec<(&str, &Value)> {
    events(function).into_iter().filter(|(_, e)| at(e, &["Type"]) == Some(&"SQS".into())).collect()
}

// ───────────────────────────────────────────── the checks ───────────────────────────────────────────────────

/// Every function: provided.al2023, arm64, `bootstrap`, built by cargo-lambda from an existing workspace binary,
/// logging JSON; and every function crate of the workspace is deployed.
fn check_functions(t: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut deployed = BTreeSet::new();
    for (id, f) in functions(t) {
        let mut expect = |what: &str, found: Option<&Value>, wanted: Value| {
            if found != Some(&wanted) {
                problems.push(format!("{id}: {what} is {found:?}, expected {wanted:?}"));
            }
        };
        expect("Runtime", function_property(t, f, "Runtime"), "provided.al2023".into());
        expect("Architectures", function_property(t, f, "Architectures"), Value::Sequence(vec!["arm64".into()]));
        expect("Handler", function_property(t, f, "Handler"), "bootstrap".into());
        expect("Metadata.BuildMethod", at(f, &["Metadata", "BuildMethod"]), "rust-cargolambda".into());
        let log_format = merged_map(t, f, &["LoggingConfig"]).remove("LogFormat");
        expect("LoggingConfig.LogFormat", log_format.as_ref(), "JSON".into());

        let Some(binary) = at(f, &["Metadata", "BuildProperties", "Binary"]).and_then(Value::as_str) else {
            problems.push(format!("{id}: Metadata.BuildProperties.Binary is missing"));
            continue;
        };
        deployed.insert(binary.to_owned());
        let code_uri = at(f, &["Properties", "CodeUri"]).and_then(Value::as_str);
        if code_uri.map(|u| u.trim_end_matches('/')) != Some(&format!("functions/{binary}")) {
            problems.push(format!("{id}: CodeUri is {code_uri:?}, expected \"functions/{binary}\""));
        }
        let crate_dir = workspace_root().join("functions").join(binary);
        match std::fs::read_to_string(crate_dir.join("Cargo.toml")) {
            Err(e) => problems.push(format!("{id}: functions/{binary}/Cargo.toml: {e}")),
            Ok(manifest) if package_name(&manifest).as_deref() != Some(binary) => problems.push(format!(
                "{id}: functions/{binary}/Cargo.toml names package {:?}, not the binary {binary:?}",
                package_name(&manifest)
            )),
            Ok(_) if !crate_dir.join("src/main.rs").is_file() => {
                problems.push(format!("{id}: functions/{binary}/src/main.rs is missing (not a binary crate)"))
            }
            Ok(_) => {}
        }
    }
    let crates = std::fs::read_dir(workspace_root().join("functions"))
        .expect("functions/ exists")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned());
    for name in crates {
        if !deployed.contains(&name) {
            problems.push(format!("functions/{name} is not deployed by any function of the template"));
        }
    }
    problems
}

/// `name = "..."` of the `[package]` table (the workspace has no TOML parser; manifests here are plain).
fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package
            && let Some((key, value)) = line.split_once('=')
            && key.trim() == "name"
        {
            return Some(value.trim().trim_matches('"').to_owned());
        }
    }
    None
}

/// The bridge's queue keeps a batch invisible for at least six bridge timeouts (Globals resolved).
fn check_visibility_timeout(t: &Value) -> Vec<String> {
    let Some((id, bridge)) = bridge(t) else { return vec!["no function builds the bridge binary".into()] };
    let Some(timeout) = function_property(t, bridge, "Timeout").and_then(number) else {
        return vec![format!("{id}: Timeout must be a literal number (here or in Globals)")];
    };
    let sources = sqs_events(bridge);
    if sources.is_empty() {
        return vec![format!("{id}: has no SQS event source")];
    }
    let mut problems = Vec::new();
    for (event, e) in sources {
        let Some(queue) = at(e, &["Properties", "Queue"]).and_then(|q| queue_named(t, q)) else {
            problems.push(format!("{id}.{event}: Queue is not a queue of this template"));
            continue;
        };
        let visibility = resource(t, &queue).and_then(|q| at(q, &["Properties", "VisibilityTimeout"]));
        match visibility.and_then(number) {
            None => problems.push(format!("{queue}: VisibilityTimeout must be a literal number")),
            Some(v) if v < VISIBILITY_PER_TIMEOUT * timeout => problems.push(format!(
                "{queue}: VisibilityTimeout {v} s is less than {VISIBILITY_PER_TIMEOUT} x the bridge's Timeout ({timeout} s)"
            )),
            Some(_) => {}
        }
    }
    problems
}

/// Queues that carry work (a function's event source, or a queue a function sends to) redrive to an existing
/// dead-letter queue after at least [`MIN_MAX_RECEIVE_COUNT`] receives. Dead-letter queues (redrive targets, the
/// scheduler's and the async invocations' failure destinations) exist and are terminal. No queue is neither.
fn check_dead_letters(t: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut work = BTreeSet::new();
    let mut dead = BTreeSet::new();
    let mut sends = Vec::new();
    for (id, f) in functions(t) {
        for (event, e) in events(f) {
            let props = at(e, &["Properties"]);
            if let Some(queue) = props.and_then(|p| at(p, &["Queue"])) {
                match queue_named(t, queue) {
                    Some(q) => work.insert(q),
                    None => {
                        problems.push(format!("{id}.{event}: event source queue is not a queue of this template"));
                        false
                    }
                };
            }
            if let Some(arn) = props.and_then(|p| at(p, &["DeadLetterConfig", "Arn"])) {
                dead.extend(queue_named(t, arn));
            }
        }
        for policy in at(f, &["Properties", "Policies"]).and_then(Value::as_sequence).into_iter().flatten() {
            if let Some(name) = at(policy, &["SQSSendMessagePolicy", "QueueName"]) {
                match queue_named(t, name) {
                    Some(q) => sends.push(q),
                    None => problems.push(format!("{id}: SQSSendMessagePolicy names a queue outside this template")),
                };
            }
        }
        for outcome in ["OnFailure", "OnSuccess"] {
            let destination = at(f, &["Properties", "EventInvokeConfig", "DestinationConfig", outcome, "Destination"]);
            dead.extend(destination.and_then(|d| queue_named(t, d)));
        }
        if let Some(target) = at(f, &["Properties", "DeadLetterQueue", "TargetArn"]) {
            dead.extend(queue_named(t, target));
        }
    }
    // Sending straight to another queue's dead-letter queue (a malformed message, a dead click) is dead-lettering,
    // not work; any other queue a function sends to carries work.
    let redrive_targets: BTreeSet<_> = of_type(t, "AWS::SQS::Queue")
        .into_iter()
        .filter_map(|(_, q)| at(q, &["Properties", "RedrivePolicy", "deadLetterTargetArn"]))
        .filter_map(|arn| queue_named(t, arn))
        .collect();
    for queue in sends {
        if redrive_targets.contains(&queue) {
            dead.insert(queue);
        } else {
            work.insert(queue);
        }
    }
    if work.is_empty() {
        problems.push("no function consumes or sends to a queue".into());
    }
    for queue in &work {
        let redrive = resource(t, queue).and_then(|q| at(q, &["Properties", "RedrivePolicy"]));
        let Some(redrive) = redrive else {
            problems.push(format!("{queue}: carries work but has no RedrivePolicy"));
            continue;
        };
        match at(redrive, &["maxReceiveCount"]).and_then(number) {
            Some(n) if n >= MIN_MAX_RECEIVE_COUNT => {}
            other => problems.push(format!("{queue}: maxReceiveCount {other:?} is below {MIN_MAX_RECEIVE_COUNT}")),
        }
        match at(redrive, &["deadLetterTargetArn"]).and_then(|arn| queue_named(t, arn)) {
            Some(dlq) if &dlq == queue => problems.push(format!("{queue}: dead-letters into itself")),
            Some(dlq) => {
                dead.insert(dlq);
            }
            None => problems.push(format!("{queue}: deadLetterTargetArn is not a queue of this template")),
        }
    }
    for queue in &dead {
        if work.contains(queue) {
            problems.push(format!("{queue}: is both a work queue and a dead-letter queue"));
        }
        let retention = resource(t, queue).and_then(|q| at(q, &["Properties", "MessageRetentionPeriod"]));
        if retention.and_then(number) != Some(1_209_600) {
            problems.push(format!("{queue}: a dead-letter queue keeps messages the full 14 days (1209600 s)"));
        }
    }
    for (queue, _) in of_type(t, "AWS::SQS::Queue") {
        if !work.contains(queue) && !dead.contains(queue) {
            problems.push(format!("{queue}: neither carries work nor receives dead letters"));
        }
    }
    problems
}

/// SQS event sources report partial batch failures (spelled exactly: a typo silently retries whole batches) and
/// bound their concurrency.
fn check_batch_item_failures(t: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if bridge(t).is_none_or(|(_, b)| sqs_events(b).is_empty()) {
        problems.push("the bridge has no SQS event source".into());
    }
    for (id, f) in functions(t) {
        for (event, e) in sqs_events(f) {
            let types = at(e, &["Properties", "FunctionResponseTypes"]);
            if types != Some(&Value::Sequence(vec!["ReportBatchItemFailures".into()])) {
                problems.push(format!(
                    "{id}.{event}: FunctionResponseTypes is {types:?}, expected [ReportBatchItemFailures]"
                ));
            }
            if at(e, &["Properties", "ScalingConfig", "MaximumConcurrency"]).is_none() {
                problems.push(format!("{id}.{event}: ScalingConfig.MaximumConcurrency is not set"));
            }
        }
    }
    problems
}

/// No statement anywhere allows `*` or `service:*`, `NotAction`, `NotResource`, a public principal, or
/// `Resource: "*"` for actions that can be scoped. Deny statements may use wildcards: they only take away (the
/// buckets' deny-unencrypted-transport statements deny `s3:*`). SAM policy templates must be known to scope their
/// grants and get no `*` argument; managed policies by name only from [`ALLOWED_MANAGED_POLICIES`].
fn check_iam(t: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    walk(t, "", &mut |path, value| {
        let Some(statements) = value.as_mapping().and_then(|m| m.get("Statement")) else { return };
        for (i, statement) in strings(statements).into_iter().enumerate() {
            check_statement(&format!("{path}.Statement[{i}]"), statement, &mut problems);
        }
    });
    for (id, f) in functions(t) {
        for policy in at(f, &["Properties", "Policies"]).map(strings).into_iter().flatten() {
            match policy {
                Value::String(name) => {
                    let short = name.rsplit('/').next().unwrap_or(name);
                    if !ALLOWED_MANAGED_POLICIES.contains(&short) {
                        problems.push(format!("{id}: managed policy {name} is not allowed (grant named resources)"));
                    }
                }
                Value::Mapping(m) if m.contains_key("Statement") => {}
                Value::Mapping(m) => {
                    for (template, args) in m {
                        let template = template.as_str().unwrap_or_default();
                        if !SCOPED_POLICY_TEMPLATES.contains(&template) {
                            problems.push(format!("{id}: policy template {template} is not known to be scoped"));
                        }
                        for (arg, v) in args.as_mapping().into_iter().flatten() {
                            if v.as_str().is_some_and(|s| s.contains('*')) {
                                problems.push(format!("{id}: {template}.{arg:?} is a wildcard"));
                            }
                        }
                    }
                }
                other => problems.push(format!("{id}: unexpected policy {other:?}")),
            }
        }
    }
    problems
}

fn check_statement(path: &str, statement: &Value, problems: &mut Vec<String>) {
    let deny = at(statement, &["Effect"]) == Some(&"Deny".into());
    if deny {
        return;
    }
    for key in ["NotAction", "NotResource", "NotPrincipal"] {
        if at(statement, &[key]).is_some() {
            problems.push(format!("{path}: Allow with {key} grants everything else"));
        }
    }
    let principal = at(statement, &["Principal"]);
    if principal == Some(&"*".into()) || principal.and_then(|p| at(p, &["AWS"])) == Some(&"*".into()) {
        problems.push(format!("{path}: allows a public principal"));
    }
    let actions: Vec<&str> =
        at(statement, &["Action"]).map(strings).into_iter().flatten().filter_map(Value::as_str).collect();
    if actions.is_empty() {
        problems.push(format!("{path}: has no literal Action"));
    }
    for action in &actions {
        if *action == "*" || action.ends_with(":*") {
            problems.push(format!("{path}: Action {action} is a wildcard"));
        }
    }
    let unscoped = at(statement, &["Resource"]).map(strings).into_iter().flatten().any(is_unscoped_resource);
    if unscoped && !actions.iter().all(|a| UNSCOPABLE_ACTIONS.contains(a)) {
        problems.push(format!("{path}: Resource \"*\" for {actions:?}, which can name their resources"));
    }
}

/// `*`, or an ARN (plain or in `!Sub`) whose resource part is only `*` (`arn:aws:s3:::*`, `arn:aws:sqs:*:*:*`).
fn is_unscoped_resource(resource: &Value) -> bool {
    let Some(text) = resource.as_str().or_else(|| tagged(resource, "Sub").and_then(Value::as_str)) else {
        return false;
    };
    // `${AWS::Partition}` holds colons of its own: replace each `${...}` with a placeholder before splitting.
    let mut plain = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        plain.push_str(&rest[..start]);
        plain.push('_');
        rest = rest[start..].find('}').map_or("", |end| &rest[start + end + 1..]);
    }
    plain.push_str(rest);
    plain == "*" || (plain.starts_with("arn:") && plain.splitn(6, ':').nth(5).is_some_and(|r| r == "*"))
}

fn walk(value: &Value, path: &str, visit: &mut dyn FnMut(&str, &Value)) {
    visit(path, value);
    match value {
        Value::Mapping(m) => {
            for (k, v) in m {
                walk(v, &format!("{path}.{}", k.as_str().unwrap_or("?")), visit);
            }
        }
        Value::Sequence(items) => {
            for (i, v) in items.iter().enumerate() {
                walk(v, &format!("{path}[{i}]"), visit);
            }
        }
        Value::Tagged(t) => walk(&t.value, path, visit),
        _ => {}
    }
}

/// Every function has, Globals merged, the variables its `Config` requires (non-blank), and no variable its
/// `Config` does not read; the queue and table variables name this template's click queue and event table.
fn check_environment(t: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mapped: BTreeMap<&str, FunctionKind> = FUNCTIONS.into_iter().collect();
    let in_template: BTreeSet<&str> = functions(t).into_iter().map(|(id, _)| id).collect();
    for id in in_template.iter().filter(|id| !mapped.contains_key(*id)) {
        problems.push(format!("{id}: not mapped to a FunctionKind in this test"));
    }
    let click_queue = bridge(t)
        .and_then(|(_, b)| sqs_events(b).first().and_then(|(_, e)| at(e, &["Properties", "Queue"])).cloned())
        .and_then(|q| queue_named(t, &q));
    let tables = of_type(t, "AWS::DynamoDB::Table");
    for (id, kind) in &mapped {
        let Some(function) = resource(t, id).filter(|f| resource_type(f) == "AWS::Serverless::Function") else {
            problems.push(format!("{id}: mapped to {kind:?} but not a function of the template"));
            continue;
        };
        let env = merged_map(t, function, &["Environment", "Variables"]);
        for name in kind.required_vars() {
            match env.get(*name) {
                None => problems.push(format!("{id} ({kind:?}): {name} is not set")),
                Some(v) if is_blank(v) => problems.push(format!("{id} ({kind:?}): {name} can be blank")),
                Some(_) => {}
            }
        }
        for name in env.keys() {
            if !kind.required_vars().contains(&name.as_str()) && !OPTIONAL_VARS.contains(&name.as_str()) {
                problems
                    .push(format!("{id} ({kind:?}): sets {name}, which it neither requires nor reads with a default"));
            }
        }
        if let Some(v) = env.get(vars::CLICK_QUEUE_URL)
            && (ref_target(v).is_none() || ref_target(v) != click_queue.as_deref())
        {
            problems.push(format!("{id}: CLICK_QUEUE_URL is {v:?}, not !Ref of the bridge's queue {click_queue:?}"));
        }
        if let Some(v) = env.get(vars::EVENTS_TABLE)
            && !tables.iter().any(|(table, _)| ref_target(v) == Some(table))
        {
            problems.push(format!("{id}: EVENTS_TABLE is {v:?}, not !Ref of the event table"));
        }
    }
    problems
}

/// The event table is declared as `DynamoEventLog::create_table` creates it locally.
fn check_events_table(t: &Value) -> Vec<String> {
    let tables = of_type(t, "AWS::DynamoDB::Table");
    let [(id, table)] = tables.as_slice() else {
        return vec![format!("expected one DynamoDB table, found {}", tables.len())];
    };
    let props = at(table, &["Properties"]).cloned().unwrap_or_default();
    let mut problems = Vec::new();
    let key_schema = |schema: Option<&Value>| -> Vec<(String, String)> {
        schema
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .map(|k| {
                let s = |f: &str| at(k, &[f]).and_then(Value::as_str).unwrap_or_default().to_owned();
                (s("AttributeName"), s("KeyType"))
            })
            .collect()
    };
    let keys = |hash: &str| vec![(hash.to_owned(), "HASH".to_owned()), ("sk".to_owned(), "RANGE".to_owned())];

    if key_schema(at(&props, &["KeySchema"])) != keys("pk") {
        problems.push(format!("{id}: KeySchema is not (pk HASH, sk RANGE)"));
    }
    if at(&props, &["BillingMode"]) != Some(&"PAY_PER_REQUEST".into()) {
        problems.push(format!("{id}: BillingMode is not PAY_PER_REQUEST"));
    }
    let attributes: BTreeMap<String, String> = at(&props, &["AttributeDefinitions"])
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .map(|a| {
            let s = |f: &str| at(a, &[f]).and_then(Value::as_str).unwrap_or_default().to_owned();
            (s("AttributeName"), s("AttributeType"))
        })
        .collect();
    let expected_attributes: BTreeMap<String, String> = ["pk", "sk", "campaign_hour", "partner_hour", "failure_day"]
        .into_iter()
        .map(|a| (a.to_owned(), "S".to_owned()))
        .collect();
    if attributes != expected_attributes {
        problems.push(format!("{id}: AttributeDefinitions {attributes:?}, expected {expected_attributes:?}"));
    }

    let expected: BTreeMap<&str, &str> =
        [(GSI_BY_CAMPAIGN, "campaign_hour"), (GSI_BY_PARTNER, "partner_hour"), (GSI_FAILURES, "failure_day")].into();
    let indexes = at(&props, &["GlobalSecondaryIndexes"]).and_then(Value::as_sequence).cloned().unwrap_or_default();
    let names: BTreeSet<&str> = indexes.iter().filter_map(|i| at(i, &["IndexName"])?.as_str()).collect();
    if names != expected.keys().copied().collect() {
        problems.push(format!("{id}: GSIs {names:?}, expected {:?}", expected.keys()));
    }
    for index in &indexes {
        let name = at(index, &["IndexName"]).and_then(Value::as_str).unwrap_or_default();
        if let Some(hash) = expected.get(name)
            && key_schema(at(index, &["KeySchema"])) != keys(hash)
        {
            problems.push(format!("{id}: GSI {name} is not ({hash} HASH, sk RANGE)"));
        }
        if at(index, &["Projection", "ProjectionType"]) != Some(&"ALL".into()) {
            problems.push(format!("{id}: GSI {name} does not project ALL"));
        }
    }
    let ttl = at(&props, &["TimeToLiveSpecification"]);
    if ttl.and_then(|s| at(s, &["AttributeName"])) != Some(&TTL_ATTRIBUTE.into())
        || ttl.and_then(|s| at(s, &["Enabled"])) != Some(&Value::Bool(true))
    {
        problems.push(format!("{id}: TTL is not enabled on {TTL_ATTRIBUTE}"));
    }
    problems
}

/// The HTTP API's routes are behind the Cognito JWT authorizer: tokens of this stack's user pool (issuer) for the
/// dashboard's client (audience); and the group the API lets change things exists in that pool.
fn check_authorizer(t: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let auth = at(t, &["Resources", "HttpApi", "Properties", "Auth"]);
    let default = auth.and_then(|a| at(a, &["DefaultAuthorizer"])).and_then(Value::as_str).unwrap_or_default();
    let jwt = auth.and_then(|a| at(a, &["Authorizers", default, "JwtConfiguration"]));
    if default.is_empty() || jwt.is_none() {
        problems.push("HttpApi: no default JWT authorizer".to_owned());
    }
    let issuer = jwt.and_then(|j| at(j, &["issuer"])).and_then(|i| tagged(i, "Sub")).and_then(Value::as_str);
    if !issuer.is_some_and(|i| i.starts_with("https://cognito-idp.") && i.ends_with("/${UserPool}")) {
        problems.push(format!("HttpApi: the authorizer's issuer is not this stack's user pool: {issuer:?}"));
    }
    let audience = jwt.and_then(|j| at(j, &["audience"])).map(strings).unwrap_or_default();
    if audience.len() != 1 || ref_target(audience[0]) != Some("UserPoolClient") {
        problems.push("HttpApi: the authorizer's audience is not exactly the dashboard's UserPoolClient".to_owned());
    }
    let admins = of_type(t, "AWS::Cognito::UserPoolGroup").into_iter().any(|(_, g)| {
        at(g, &["Properties", "GroupName"]).and_then(Value::as_str) == Some(ADMIN_GROUP)
            && at(g, &["Properties", "UserPoolId"]).and_then(ref_target) == Some("UserPool")
    });
    if !admins {
        problems.push(format!("no Cognito group {ADMIN_GROUP:?} in the UserPool: nobody could change anything"));
    }
    problems
}

// ───────────────────────────────────────────── tests on the real template ───────────────────────────────────

fn assert_clean(check: fn(&Value) -> Vec<String>) {
    let problems = check(&load());
    assert!(problems.is_empty(), "template.yaml:\n  {}", problems.join("\n  "));
}

#[test]
fn every_function_is_an_arm64_cargo_lambda_build_of_a_workspace_binary() {
    assert_clean(check_functions);
}

#[test]
fn click_queue_visibility_timeout_is_at_least_six_bridge_timeouts() {
    assert_clean(check_visibility_timeout);
}

#[test]
fn work_queues_redrive_to_dead_letter_queues() {
    assert_clean(check_dead_letters);
}

#[test]
fn bridge_reports_batch_item_failures() {
    assert_clean(check_batch_item_failures);
}

#[test]
fn no_wildcard_grants() {
    assert_clean(check_iam);
}

#[test]
fn every_function_gets_exactly_the_variables_its_config_reads() {
    assert_clean(check_environment);
}

#[test]
fn events_table_matches_the_dynamodb_adapter() {
    assert_clean(check_events_table);
}

#[test]
fn the_api_is_behind_the_user_pools_jwt_authorizer_with_an_admin_group() {
    assert_clean(check_authorizer);
}

#[test]
fn authorizer_check_catches_another_issuer_or_audience_and_a_missing_group() {
    caught(check_authorizer, "issuer", |t| {
        let path = ["Resources", "HttpApi", "Properties", "Auth", "Authorizers", "CognitoJwt", "JwtConfiguration"];
        *slot(t, &[&path[..], &["issuer"]].concat()) = tag("Sub", "https://accounts.example.com/");
    });
    caught(check_authorizer, "audience", |t| {
        let path = ["Resources", "HttpApi", "Properties", "Auth", "Authorizers", "CognitoJwt", "JwtConfiguration"];
        *slot(t, &[&path[..], &["audience"]].concat()) = Value::Sequence(vec!["some-other-client".into()]);
    });
    caught(check_authorizer, "no Cognito group", |t| remove(t, &["Resources", "AdminGroup"]));
}

/// The bridge flushes its event outbox at the end of every invocation; one whose flush failed leaves events
/// behind, and with no more clicks nothing would invoke it again: a schedule must.
#[test]
fn the_bridge_flushes_its_event_outbox_on_a_schedule() {
    let t = load();
    let events = at(&t, &["Resources", "BridgeFunction", "Properties", "Events"]).and_then(Value::as_mapping);
    let scheduled = events.into_iter().flatten().any(|(_, e)| {
        at(e, &["Type"]).and_then(Value::as_str) == Some("ScheduleV2")
            && at(e, &["Properties", "ScheduleExpression"]).and_then(Value::as_str) == Some("rate(1 minute)")
    });
    assert!(scheduled, "BridgeFunction has no ScheduleV2 event at rate(1 minute)");
}

// ───────────────────────────────────────────── each check catches a broken template ─────────────────────────

fn tag(name: &str, value: impl Into<Value>) -> Value {
    Value::Tagged(Box::new(TaggedValue { tag: Tag::new(name), value: value.into() }))
}

/// The value at `path`, created as an empty mapping where missing.
fn slot<'a>(value: &'a mut Value, path: &[&str]) -> &'a mut Value {
    path.iter().fold(value, |v, key| {
        let map = v.as_mapping_mut().unwrap_or_else(|| panic!("{key}: parent is not a mapping"));
        map.entry((*key).into()).or_insert_with(|| Value::Mapping(Mapping::new()))
    })
}

fn remove(value: &mut Value, path: &[&str]) {
    let (last, parent) = path.split_last().expect("a path");
    slot(value, parent).as_mapping_mut().expect("a mapping").remove(*last).unwrap_or_else(|| panic!("{path:?}"));
}

fn add_statement(t: &mut Value, function: &str, statement: &str) {
    let statement: Value = serde_norway::from_str(statement).expect("statement YAML");
    let policies = slot(t, &["Resources", function, "Properties", "Policies"]);
    policies
        .as_sequence_mut()
        .expect("Policies is a list")
        .push(serde_norway::from_str::<Value>("Statement: []").unwrap());
    let last = policies.as_sequence_mut().unwrap().last_mut().unwrap();
    slot(last, &["Statement"]).as_sequence_mut().unwrap().push(statement);
}

/// Breaks a fresh copy of the template with `edit` and asserts that `check` reports a problem containing `needle`.
fn caught(check: fn(&Value) -> Vec<String>, needle: &str, edit: impl FnOnce(&mut Value)) {
    let mut t = load();
    edit(&mut t);
    let problems = check(&t);
    assert!(problems.iter().any(|p| p.contains(needle)), "expected a problem mentioning {needle:?}, got {problems:#?}");
}

#[test]
fn function_check_catches_wrong_runtime_architecture_build_and_binary() {
    caught(check_functions, "Runtime", |t| {
        *slot(t, &["Resources", "PacerFunction", "Properties", "Runtime"]) = "provided.al2".into();
    });
    caught(check_functions, "Runtime", |t| *slot(t, &["Globals", "Function", "Runtime"]) = "provided.al2023 ".into());
    caught(check_functions, "Architectures", |t| {
        *slot(t, &["Resources", "ApiFunction", "Properties", "Architectures"]) = Value::Sequence(vec!["x86_64".into()]);
    });
    caught(check_functions, "BuildMethod", |t| {
        *slot(t, &["Resources", "SlicerFunction", "Metadata", "BuildMethod"]) = "rust-cargo-lambda".into();
    });
    caught(check_functions, "LogFormat", |t| {
        *slot(t, &["Globals", "Function", "LoggingConfig", "LogFormat"]) = "Text".into()
    });
    caught(check_functions, "Cargo.toml", |t| {
        *slot(t, &["Resources", "BridgeFunction", "Metadata", "BuildProperties", "Binary"]) = "bridges".into();
        *slot(t, &["Resources", "BridgeFunction", "Properties", "CodeUri"]) = "functions/bridges".into();
    });
    caught(check_functions, "CodeUri", |t| {
        *slot(t, &["Resources", "BridgeFunction", "Properties", "CodeUri"]) = "functions/api".into();
    });
    caught(check_functions, "functions/migrate is not deployed", |t| remove(t, &["Resources", "MigrateFunction"]));
}

#[test]
fn visibility_check_catches_a_short_visibility_timeout() {
    caught(check_visibility_timeout, "VisibilityTimeout", |t| {
        *slot(t, &["Resources", "BridgeFunction", "Properties", "Timeout"]) = 31.into();
    });
    caught(check_visibility_timeout, "VisibilityTimeout", |t| {
        *slot(t, &["Resources", "ClickQueue", "Properties", "VisibilityTimeout"]) = 179.into();
    });
    // Without its own Timeout the bridge falls back to Globals.
    caught(check_visibility_timeout, "VisibilityTimeout", |t| {
        remove(t, &["Resources", "BridgeFunction", "Properties", "Timeout"]);
        *slot(t, &["Globals", "Function", "Timeout"]) = 45.into();
    });
}

#[test]
fn dead_letter_check_catches_missing_redrive_low_receive_count_and_missing_queue() {
    caught(check_dead_letters, "maxReceiveCount", |t| {
        *slot(t, &["Resources", "ClickQueue", "Properties", "RedrivePolicy", "maxReceiveCount"]) = 4.into();
    });
    caught(check_dead_letters, "no RedrivePolicy", |t| {
        remove(t, &["Resources", "ClickQueue", "Properties", "RedrivePolicy"]);
    });
    caught(check_dead_letters, "deadLetterTargetArn", |t| {
        *slot(t, &["Resources", "ClickQueue", "Properties", "RedrivePolicy", "deadLetterTargetArn"]) =
            tag("GetAtt", "MissingQueue.Arn");
    });
    caught(check_dead_letters, "neither carries work", |t| {
        *slot(t, &["Resources", "StrayQueue"]) = serde_norway::from_str("Type: AWS::SQS::Queue").unwrap();
    });
}

#[test]
fn batch_item_failures_check_catches_a_misspelling() {
    caught(check_batch_item_failures, "FunctionResponseTypes", |t| {
        *slot(
            t,
            &["Resources", "BridgeFunction", "Properties", "Events", "Clicks", "Properties", "FunctionResponseTypes"],
        ) = Value::Sequence(vec!["ReportBatchItemFailure".into()]);
    });
    caught(check_batch_item_failures, "MaximumConcurrency", |t| {
        remove(t, &["Resources", "BridgeFunction", "Properties", "Events", "Clicks", "Properties", "ScalingConfig"]);
    });
}

#[test]
fn iam_check_catches_wildcards() {
    caught(check_iam, "Action * is a wildcard", |t| {
        add_statement(t, "ApiFunction", "{Effect: Allow, Action: '*', Resource: arn:aws:sqs:us-east-1:1:q}");
    });
    caught(check_iam, "Action sqs:* is a wildcard", |t| {
        add_statement(t, "PacerFunction", "{Effect: Allow, Action: ['sqs:*'], Resource: arn:aws:sqs:us-east-1:1:q}");
    });
    caught(check_iam, "Resource \"*\"", |t| {
        add_statement(t, "BridgeFunction", "{Effect: Allow, Action: sqs:SendMessage, Resource: '*'}");
    });
    caught(check_iam, "Resource \"*\"", |t| {
        add_statement(
            t,
            "BridgeFunction",
            "{Effect: Allow, Action: s3:GetObject, Resource: !Sub 'arn:${AWS::Partition}:s3:::*'}",
        );
    });
    caught(check_iam, "NotAction", |t| {
        add_statement(t, "SlicerFunction", "{Effect: Allow, NotAction: iam:*, Resource: arn:aws:s3:::b/*}");
    });
    caught(check_iam, "not known to be scoped", |t| {
        let policies = slot(t, &["Resources", "ApiFunction", "Properties", "Policies"]);
        policies.as_sequence_mut().unwrap().push(serde_norway::from_str("{EC2DescribePolicy: {}}").unwrap());
    });
    caught(check_iam, "is a wildcard", |t| {
        let policies = slot(t, &["Resources", "ApiFunction", "Properties", "Policies"]);
        policies
            .as_sequence_mut()
            .unwrap()
            .push(serde_norway::from_str("{DynamoDBCrudPolicy: {TableName: '*'}}").unwrap());
    });
    caught(check_iam, "managed policy", |t| {
        let policies = slot(t, &["Resources", "ApiFunction", "Properties", "Policies"]);
        policies.as_sequence_mut().unwrap().push("AmazonSQSFullAccess".into());
    });
    // A Resource "*" for an action that cannot be scoped is accepted.
    let mut t = load();
    add_statement(&mut t, "PacerFunction", "{Effect: Allow, Action: cloudwatch:PutMetricData, Resource: '*'}");
    assert_eq!(check_iam(&t), Vec::<String>::new());
}

#[test]
fn environment_check_catches_missing_blank_and_unknown_variables() {
    caught(check_environment, "EVENTS_TABLE is not set", |t| {
        remove(t, &["Resources", "BridgeFunction", "Properties", "Environment", "Variables", "EVENTS_TABLE"]);
    });
    caught(check_environment, "CLICK_QUEUE_URL is not set", |t| {
        remove(t, &["Resources", "PacerFunction", "Properties", "Environment"]);
    });
    caught(check_environment, "DATABASE_URL is not set", |t| {
        remove(t, &["Globals", "Function", "Environment", "Variables", "DATABASE_URL"]);
    });
    caught(check_environment, "DATABASE_URL can be blank", |t| {
        *slot(t, &["Resources", "MigrateFunction", "Properties", "Environment", "Variables", "DATABASE_URL"]) =
            "".into();
    });
    caught(check_environment, "neither requires nor reads", |t| {
        *slot(t, &["Resources", "SlicerFunction", "Properties", "Environment", "Variables", "EVENTS_TABLE"]) =
            tag("Ref", "EventsTable");
    });
    caught(check_environment, "not !Ref of the bridge's queue", |t| {
        *slot(t, &["Resources", "ApiFunction", "Properties", "Environment", "Variables", "CLICK_QUEUE_URL"]) =
            tag("Ref", "ClickDeadLetterQueue");
    });
    caught(check_environment, "not mapped to a FunctionKind", |t| {
        let copy = resource(t, "PacerFunction").unwrap().clone();
        *slot(t, &["Resources", "ReplayFunction"]) = copy;
    });
}

#[test]
fn events_table_check_catches_drift_from_the_adapter() {
    let gsis = ["Resources", "EventsTable", "Properties", "GlobalSecondaryIndexes"];
    caught(check_events_table, "GSIs", |t| {
        let first = &mut slot(t, &gsis).as_sequence_mut().unwrap()[0];
        *slot(first, &["IndexName"]) = "campaign".into();
    });
    caught(check_events_table, "is not (partner_hour HASH", |t| {
        let second = &mut slot(t, &gsis).as_sequence_mut().unwrap()[1];
        let hash = &mut slot(second, &["KeySchema"]).as_sequence_mut().unwrap()[0];
        *slot(hash, &["AttributeName"]) = "partner_id".into();
    });
    caught(check_events_table, "TTL", |t| {
        *slot(t, &["Resources", "EventsTable", "Properties", "TimeToLiveSpecification", "AttributeName"]) =
            "ttl".into();
    });
    caught(check_events_table, "AttributeDefinitions", |t| {
        let attributes = slot(t, &["Resources", "EventsTable", "Properties", "AttributeDefinitions"]);
        attributes.as_sequence_mut().unwrap().pop();
    });
}
