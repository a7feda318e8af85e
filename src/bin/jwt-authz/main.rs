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
mod scope;

use documents::Document;
use jwt_authz::config::Config;
use jwt_authz::keys::KeySource;
use serde_json::Value;
use std::process::ExitCode;

const USAGE: &str = "\
usage:
  jwt-authz check FILE        validate a plugin configuration (JSON), or the pluginConfig of every
                              WasmPlugin in a YAML file; FILE may be - for standard input
  jwt-authz convert [--namespace NS --labels K=V,...] [--root-namespace NS] FILE...
                              print the plugin configuration equivalent to the Istio
                              RequestAuthentication and AuthorizationPolicy resources in the files;
                              with --namespace, only those Istio applies to that workload (the root
                              namespace, istio-system by default, holds the mesh-wide ones); without
                              it, every resource must apply to the same workloads

  jwt-authz --version         print the version

Exit status: 0 when valid (or converted), 1 on an invalid or unconvertible input, 2 on usage errors.";

const WASM_PLUGIN_API: &str = "extensions.istio.io/v1alpha1";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.split_first() {
        Some((command, [file])) if command == "check" => check(file),
        Some((command, rest)) if command == "convert" => match convert_arguments(rest) {
            Ok((files, target, root)) if !files.is_empty() => convert(&files, target.as_ref(), &root),
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

fn check(file: &str) -> Result<(), Vec<String>> {
    let text = documents::read_text(file).map_err(|e| vec![e.0])?;
    let mut errors = Vec::new();
    let candidates = if documents::looks_like_json(&text) {
        // The bytes as given: exactly what Envoy would hand the filter.
        vec![Candidate { json: text.into_bytes(), origin: file.to_string(), field_prefix: "" }]
    } else {
        let docs = documents::parse(file, &text).map_err(|e| vec![e.0])?;
        candidates_from_yaml(file, &docs, &mut errors)?
    };
    for candidate in candidates {
        match Config::parse(&candidate.json) {
            Ok(config) => out(&format!("{}: ok\n{}", candidate.origin, summary(&config))),
            Err(err) => {
                let field = match (candidate.field_prefix, err.field.as_str()) {
                    (prefix, "") => prefix.to_string(),
                    ("", field) => field.to_string(),
                    (prefix, field) => format!("{prefix}.{field}"),
                };
                // `FILE: field: reason` for a bare configuration, `FILE: WasmPlugin ns/name field: reason`.
                let separator = if candidate.field_prefix.is_empty() { ": " } else { " " };
                let location = if field.is_empty() { ":".to_string() } else { format!("{separator}{field}:") };
                errors.push(format!("{}{location} {}", candidate.origin, err.reason));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The WasmPlugins of a YAML file (checking the fields Istio reads besides pluginConfig), or the
/// file itself when it is a bare plugin configuration written in YAML.
fn candidates_from_yaml(
    file: &str,
    docs: &[Document],
    errors: &mut Vec<String>,
) -> Result<Vec<Candidate>, Vec<String>> {
    let plugins: Vec<&Document> = docs.iter().filter(|d| d.kind() == Some("WasmPlugin")).collect();
    if plugins.is_empty() {
        return match docs {
            [single] if single.kind().is_none() => Ok(vec![Candidate {
                json: serde_json::to_vec(&single.value).map_err(|e| vec![format!("{file}: {e}")])?,
                origin: file.to_string(),
                field_prefix: "",
            }]),
            _ => Err(vec![format!("{file}: no WasmPlugin found (and not a bare plugin configuration)")]),
        };
    }
    let mut candidates = Vec::new();
    for plugin in plugins {
        let origin = format!("{file}: {}", plugin.describe());
        errors.extend(wasm_plugin_problems(&plugin.value).into_iter().map(|p| format!("{origin} {p}")));
        match plugin.value.get("spec").and_then(|spec| spec.get("pluginConfig")) {
            Some(config @ Value::Object(_)) => candidates.push(Candidate {
                json: serde_json::to_vec(config).map_err(|e| vec![format!("{origin}: {e}")])?,
                origin,
                field_prefix: "spec.pluginConfig",
            }),
            Some(_) => errors.push(format!("{origin} spec.pluginConfig: must be a mapping")),
            None => {
                errors.push(format!("{origin} spec.pluginConfig: missing (the filter refuses to start without one)"))
            }
        }
    }
    Ok(candidates)
}

/// What Istio would refuse, or what would deploy the filter in a way that defeats it.
fn wasm_plugin_problems(plugin: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let api = plugin.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    if api != WASM_PLUGIN_API {
        problems.push(format!("apiVersion: {api:?}, expected {WASM_PLUGIN_API}"));
    }
    let spec = plugin.get("spec");
    let text = |field: &str| spec.and_then(|s| s.get(field)).and_then(Value::as_str);
    match text("url") {
        Some(url) if ["oci://", "https://", "http://", "file://"].iter().any(|s| url.starts_with(s)) => {}
        Some(url) => problems.push(format!("spec.url: {url:?} is not an oci://, https://, http:// or file:// URL")),
        None => problems.push("spec.url: missing".to_string()),
    }
    if let Some(sha) = text("sha256") {
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            problems.push(format!("spec.sha256: {sha:?} is not 64 hex digits (no sha256: prefix)"));
        }
    }
    let allowed: [(&str, &[&str]); 3] = [
        ("phase", &["UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS"]),
        ("imagePullPolicy", &["UNSPECIFIED_POLICY", "IfNotPresent", "Always"]),
        ("failStrategy", &["FAIL_CLOSE", "FAIL_OPEN"]),
    ];
    for (field, values) in allowed {
        if let Some(value) = text(field) {
            if !values.contains(&value) {
                problems.push(format!("spec.{field}: {value:?}, expected one of {}", values.join(", ")));
            }
        }
    }
    if text("failStrategy") == Some("FAIL_OPEN") {
        problems.push(
            "spec.failStrategy: FAIL_OPEN lets every request through when the filter cannot load; use FAIL_CLOSE"
                .to_string(),
        );
    }
    problems
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

/// `convert`'s options and files: `(files, target workload, root namespace)`.
fn convert_arguments(args: &[String]) -> Result<(Vec<String>, Option<scope::Workload>, String), String> {
    let mut files = Vec::new();
    let (mut namespace, mut labels, mut root) = (None, None, "istio-system".to_string());
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().cloned().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--namespace" => namespace = Some(value("--namespace")?),
            "--labels" => labels = Some(scope::Workload::parse_labels(&value("--labels")?)?),
            "--root-namespace" => root = value("--root-namespace")?,
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
    Ok((files, target, root))
}

fn convert(files: &[String], target: Option<&scope::Workload>, root_namespace: &str) -> Result<(), Vec<String>> {
    let mut docs = Vec::new();
    for file in files {
        let text = documents::read_text(file).map_err(|e| vec![e.0])?;
        docs.extend(documents::parse(file, &text).map_err(|e| vec![e.0])?);
    }
    let converted = convert::convert(&docs, target, root_namespace).map_err(|e| vec![e])?;
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
