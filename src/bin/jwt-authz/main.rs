//! `jwt-authz`: the native companion of the filter, for use before deploying it.
//!
//! `jwt-authz check FILE` validates a plugin configuration, given as the JSON the filter receives or
//! as a WasmPlugin manifest (its `spec.pluginConfig`), with the same `Config::parse` the filter runs
//! in `on_configure`: what passes here starts in Envoy, and an error names the same field path.
//! `jwt-authz convert FILE...` turns Istio RequestAuthentication and AuthorizationPolicy
//! resources into the equivalent plugin configuration.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod convert;
mod documents;
mod legacy;
mod manifest;
mod scope;

use documents::Document;
use jwt_authz::config::Config;
use jwt_authz::keys::KeySource;
use serde_json::Value;
use std::process::ExitCode;

const USAGE: &str = "\
usage:
  jwt-authz check FILE...     validate a plugin configuration (JSON), or every WasmPlugin and
                              TrafficExtension in YAML files (the fields Istio reads and their
                              pluginConfig), reporting every error and warning with its field path;
                              warns when Istio's own RequestAuthentication or AuthorizationPolicy
                              is among the files; FILE may be - for standard input
  jwt-authz convert [--alongside-istio] [--namespace NS --labels K=V,...] [--root-namespace NS] FILE...
                              print the plugin configuration equivalent to the Istio
                              RequestAuthentication and AuthorizationPolicy resources in the files;
                              with --namespace, only those Istio applies to that workload (the root
                              namespace, istio-system by default, holds the mesh-wide ones); without
                              it, every resource must apply to the same workloads. With
                              --alongside-istio, for the migration's first step while Istio's
                              policies stay in place: the token is kept for them
                              (forwardOriginalToken: true) and every ALLOW and DENY policy is a dry
                              run (decisions logged and counted, not enforced)

  jwt-authz --version         print the version

Exit status: 0 when valid (or converted; warnings are printed and pass), 1 on an invalid or
unconvertible input, 2 on usage errors.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.split_first() {
        Some((command, files)) if command == "check" && !files.is_empty() => check(files),
        Some((command, rest)) if command == "convert" => match convert_arguments(rest) {
            Ok((files, target, root, alongside)) if !files.is_empty() => {
                convert(&files, target.as_ref(), &root, alongside)
            }
            Ok(_) => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
            Err(why) => {
                eprintln!("error: {why}\n{USAGE}");
                return ExitCode::from(2);
            }
        },
        Some((command, _)) if ["-h", "--help", "help"].contains(&command.as_str()) => {
            out(USAGE);
            return ExitCode::SUCCESS;
        }
        Some((command, [])) if ["-V", "--version", "version"].contains(&command.as_str()) => {
            out(&format!("jwt-authz {}", env!("CARGO_PKG_VERSION")));
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(errors) => {
            for error in errors {
                eprintln!("error: {error}");
            }
            ExitCode::from(1)
        }
    }
}

/// Writes a line to standard output. A reader that went away (`jwt-authz convert … | head`) ends
/// the output quietly: `println!` would panic on the broken pipe.
fn out(text: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{text}").and_then(|()| stdout.flush()).is_err() {
        std::process::exit(0);
    }
}

/// One plugin configuration found in a file, and how to name its fields in messages.
struct Candidate {
    /// What the filter would receive, as JSON bytes.
    json: Vec<u8>,
    /// `FILE` or `FILE: WasmPlugin ns/name`.
    origin: String,
    /// Prefix of field paths (`spec.pluginConfig`), empty for a bare configuration.
    field_prefix: &'static str,
}

/// What `check` prints: every error and warning of every file, each with its field path.
#[derive(Default)]
struct Report {
    errors: Vec<String>,
    warnings: Vec<String>,
}

impl Report {
    fn add(&mut self, origin: &str, separator: &str, finding: manifest::Finding) {
        let line = match finding.field.as_str() {
            "" => format!("{origin}: {}", finding.message),
            field => format!("{origin}{separator}{field}: {}", finding.message),
        };
        match finding.severity {
            manifest::Severity::Error => self.errors.push(line),
            manifest::Severity::Warning => self.warnings.push(line),
        }
    }
}

fn check(files: &[String]) -> Result<(), Vec<String>> {
    let mut report = Report::default();
    let mut candidates = Vec::new();
    let mut istio_policies = Vec::new();
    let mut manifests = 0;
    for file in files {
        let text = documents::read_text(file).map_err(|e| vec![e.0])?;
        if documents::looks_like_json(&text) {
            // The bytes as given: exactly what Envoy would hand the filter.
            candidates.push(Candidate { json: text.into_bytes(), origin: file.to_string(), field_prefix: "" });
            continue;
        }
        let docs = documents::parse(file, &text).map_err(|e| vec![e.0])?;
        istio_policies.extend(
            docs.iter()
                .filter(|d| matches!(d.kind(), Some("RequestAuthentication" | "AuthorizationPolicy")))
                .map(|d| format!("{file}: {}", d.describe())),
        );
        let found = docs.iter().filter(|d| d.kind().and_then(manifest::Kind::of).is_some()).count();
        manifests += found;
        let before = candidates.len();
        candidates.extend(candidates_from_yaml(file, &docs, &mut report)?);
        let istio_only = docs.iter().all(|d| matches!(d.kind(), Some("RequestAuthentication" | "AuthorizationPolicy")));
        if found == 0 && candidates.len() == before && !istio_only {
            report.warnings.push(format!(
                "{file}: no WasmPlugin, TrafficExtension or plugin configuration in it: nothing checked"
            ));
        }
    }
    if candidates.is_empty() && manifests == 0 {
        return Err(vec![format!(
            "{}: no WasmPlugin or TrafficExtension found (and not a bare plugin configuration)",
            files.join(", ")
        )]);
    }
    let mut strips_token = false;
    for candidate in &candidates {
        let separator = if candidate.field_prefix.is_empty() { ": " } else { " " };
        if let Ok(value) = serde_json::from_slice::<Value>(&candidate.json) {
            for finding in manifest::config_warnings(&value, candidate.field_prefix) {
                report.add(&candidate.origin, separator, finding);
            }
            let rules = value.get("jwtRules").and_then(Value::as_array).into_iter().flatten();
            strips_token |=
                rules.clone().any(|rule| rule.get("forwardOriginalToken").and_then(Value::as_bool) != Some(true));
        }
        match Config::parse_all(&candidate.json) {
            Ok(config) => out(&format!("{}: ok\n{}", candidate.origin, summary(&config))),
            Err(errors) => {
                for err in errors {
                    let field = match (candidate.field_prefix, err.field.as_str()) {
                        (prefix, "") => prefix.to_string(),
                        ("", field) => field.to_string(),
                        (prefix, field) => format!("{prefix}.{field}"),
                    };
                    let finding = manifest::Finding { severity: manifest::Severity::Error, field, message: err.reason };
                    // `FILE: field: reason` for a bare configuration, `FILE: WasmPlugin ns/name field: reason`.
                    report.add(&candidate.origin, separator, finding);
                }
            }
        }
    }
    // Istio's own JWT policies beside the plugin: the migration's middle step, and a trap.
    for policy in &istio_policies {
        report.warnings.push(match strips_token {
            true => format!(
                "{policy}: still in place beside jwt-authz, which runs first (phase AUTHN) and removes the token \
                 (forwardOriginalToken is not true): Istio's policies then see no token and answer 403. Keep the \
                 token while both run (convert --alongside-istio), or remove Istio's policies (docs/migration.md)"
            ),
            false => format!(
                "{policy}: still in place beside jwt-authz: both enforce (the token is kept). Remove Istio's once \
                 jwt-authz's decisions agree (docs/migration.md)"
            ),
        });
    }
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    if report.errors.is_empty() {
        Ok(())
    } else {
        Err(report.errors)
    }
}

/// The WasmPlugins and TrafficExtensions of a YAML file (checking the fields Istio reads besides
/// the plugin configuration), or the file itself when it is a bare plugin configuration in YAML.
fn candidates_from_yaml(file: &str, docs: &[Document], report: &mut Report) -> Result<Vec<Candidate>, Vec<String>> {
    let plugins: Vec<(manifest::Kind, &Document)> =
        docs.iter().filter_map(|d| d.kind().and_then(manifest::Kind::of).map(|kind| (kind, d))).collect();
    if plugins.is_empty() {
        return match docs {
            [single] if single.kind().is_none() => Ok(vec![Candidate {
                json: serde_json::to_vec(&single.value).map_err(|e| vec![format!("{file}: {e}")])?,
                origin: file.to_string(),
                field_prefix: "",
            }]),
            _ => Ok(Vec::new()),
        };
    }
    let mut candidates = Vec::new();
    for (kind, plugin) in plugins {
        let origin = format!("{file}: {}", plugin.describe());
        let (findings, config) = manifest::check(kind, &plugin.value);
        for finding in findings {
            report.add(&origin, " ", finding);
        }
        if let Some(config) = config {
            candidates.push(Candidate {
                json: serde_json::to_vec(config).map_err(|e| vec![format!("{origin}: {e}")])?,
                origin,
                field_prefix: kind.plugin_config_field(),
            });
        }
    }
    Ok(candidates)
}

/// What the deployment next to (or instead of) Istio's own policies needs, said in the notes.
/// jwt-authz runs in phase AUTHN, before Istio's jwt_authn and RBAC, and removes the token once
/// verified unless `forwardOriginalToken` is true: with Istio's policies still in place they would
/// then see no token and answer 403.
fn migration_step(converted: &mut convert::Converted, alongside: bool) {
    let Some(config) = converted.config.as_object_mut() else { return };
    if !alongside {
        converted.notes.push(
            "deploy this once Istio's RequestAuthentication and AuthorizationPolicy for these workloads are \
             removed: jwt-authz removes the token as Istio does, so policies of Istio's left in place would see \
             none and answer 403. To run both first, convert with --alongside-istio (docs/migration.md)"
                .to_string(),
        );
        return;
    }
    let mut kept = 0;
    for rule in config.get_mut("jwtRules").and_then(Value::as_array_mut).into_iter().flatten() {
        if let Some(rule) = rule.as_object_mut() {
            if rule.get("forwardOriginalToken").and_then(Value::as_bool) != Some(true) {
                rule.insert("forwardOriginalToken".into(), Value::Bool(true));
                kept += 1;
            }
        }
    }
    let mut dry = 0;
    for policy in config.get_mut("policies").and_then(Value::as_array_mut).into_iter().flatten() {
        if let Some(policy) = policy.as_object_mut() {
            let action = policy.get("action").and_then(Value::as_str).unwrap_or("ALLOW");
            if action != "AUDIT" && policy.get("dryRun").and_then(Value::as_bool) != Some(true) {
                policy.insert("dryRun".into(), Value::Bool(true));
                dry += 1;
            }
        }
    }
    converted.notes.push(format!(
        "--alongside-istio: forwardOriginalToken: true on {kept} jwtRules entr{} (Istio's policies, still in \
         place, need the token) and dryRun: true on {dry} polic{} (their decisions are logged and counted in \
         jwt_authz.dry_run_*, Istio's enforce). jwt-authz still refuses what it refuses before any policy: \
         invalid tokens (as Istio's RequestAuthentication does), paths it cannot normalize (unsafePaths) and \
         tokens over its limits. When the two agree, remove \
         Istio's policies and deploy the configuration converted without --alongside-istio (docs/migration.md)",
        if kept == 1 { "y" } else { "ies" },
        if dry == 1 { "y" } else { "ies" },
    ));
}

fn summary(config: &Config) -> String {
    let mut lines = vec![format!(
        "  {} issuer(s), {} DENY and {} ALLOW policies",
        config.issuers.providers.len(),
        config.policies.deny.len(),
        config.policies.allow.len()
    )];
    for provider in &config.issuers.providers {
        match &provider.keys {
            KeySource::Inline(keys) => lines.push(format!("  {}: {} inline key(s)", provider.issuer, keys.keys.len())),
            KeySource::Remote(remote) => lines.push(format!(
                "  {}: keys from {} through Envoy cluster {} (in Istio: a ServiceEntry or Service for that host and port)",
                provider.issuer, remote.uri, remote.cluster
            )),
        }
    }
    lines.join("\n")
}

/// `convert`'s options and files.
type ConvertArguments = (Vec<String>, Option<scope::Workload>, String, bool);

/// `convert`'s options and files: `(files, target workload, root namespace, alongside Istio)`.
fn convert_arguments(args: &[String]) -> Result<ConvertArguments, String> {
    let mut files = Vec::new();
    let mut alongside = false;
    let (mut namespace, mut labels, mut root) = (None, None, "istio-system".to_string());
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().cloned().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--namespace" => namespace = Some(value("--namespace")?),
            "--labels" => labels = Some(scope::Workload::parse_labels(&value("--labels")?)?),
            "--root-namespace" => root = value("--root-namespace")?,
            "--alongside-istio" => alongside = true,
            _ => files.push(arg.clone()),
        }
    }
    // Both or neither: a namespace alone would read as a workload without labels and skip every
    // selector policy of that namespace, DENY ones included.
    let target = match (namespace, labels) {
        (Some(namespace), Some(labels)) => Some(scope::Workload { namespace, labels }),
        (Some(_), None) => {
            return Err("--namespace needs --labels, the workload's labels (--labels '' for a workload without any)"
                .to_string())
        }
        (None, Some(_)) => return Err("--labels goes with --namespace".to_string()),
        (None, None) => None,
    };
    Ok((files, target, root, alongside))
}

fn convert(
    files: &[String],
    target: Option<&scope::Workload>,
    root_namespace: &str,
    alongside: bool,
) -> Result<(), Vec<String>> {
    let mut docs = Vec::new();
    for file in files {
        let text = documents::read_text(file).map_err(|e| vec![e.0])?;
        docs.extend(documents::parse(file, &text).map_err(|e| vec![e.0])?);
    }
    let mut converted = convert::convert(&docs, target, root_namespace).map_err(|e| vec![e])?;
    migration_step(&mut converted, alongside);
    for note in &converted.notes {
        eprintln!("note: {note}");
    }
    let json = serde_json::to_string_pretty(&converted.config).map_err(|e| vec![e.to_string()])?;
    // The result must be a configuration the filter accepts; say which source field is wrong if not.
    if let Err(err) = Config::parse(json.as_bytes()) {
        return Err(vec![format!("{}: {}", converted.source_of(&err.field), err.reason)]);
    }
    out(&json);
    Ok(())
}
