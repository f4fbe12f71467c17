//! Adding the wa8s runtime to containerd's configuration, and taking it out again.
//!
//! Three layouts exist on real nodes:
//! - a plain `config.toml`, version 2 (containerd 1.6/1.7, and files containerd 2.x migrates)
//!   or version 3 (containerd 2.x): the runtime table goes into the file itself, edited with
//!   `toml_edit` so comments, order and formatting of everything else are kept;
//! - a `config.toml` whose `imports` include a `conf.d/*.toml` glob: the runtime goes into a
//!   drop-in file of its own and the main file is not touched;
//! - k3s, which renders its config from a Go template (`config.toml.tmpl` or
//!   `config-v3.toml.tmpl`): the runtime goes into a marked block of that template.
//!
//! Guarantees: a file that does not parse (or has an unsupported version) is refused with the
//! reason and left untouched; applying twice changes nothing the second time; removing after
//! adding gives back the original bytes (see [`remove_runtime`] for when others edited the
//! file in between).

use std::path::{Path, PathBuf};

use toml_edit::{Array, DocumentMut, Item, Table, Value};
use wa8s_api::contract::{POD_ANNOTATIONS, RUNTIME_HANDLER, RUNTIME_TYPE};

/// Why a configuration could not be changed. The file is left as it was in every case.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: not valid TOML, left untouched: {reason}")]
    Parse { path: String, reason: String },
    #[error(
        "{path}: containerd config version {version} is not supported (only 2 and 3); left untouched"
    )]
    Version { path: String, version: i64 },
    #[error("{path}: {key} is not a table, so the runtime cannot be added there; left untouched")]
    NotATable { path: String, key: String },
}

/// The runtime containerd gets: handler name, shim type and the pod annotations it passes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    pub handler: String,
    pub runtime_type: String,
    pub pod_annotations: Vec<String>,
    /// `options.SystemdCgroup`, copied from the node's runc runtime so both runtimes agree on
    /// the cgroup driver (containerd hands the options to the shim; the kubelet's driver
    /// decides the `cgroupsPath` form the shim gets). `None`: not set. [`add_runtime`] reads it
    /// from the file it edits; a drop-in gets it from [`runc_systemd_cgroup`] of the main file.
    pub systemd_cgroup: Option<bool>,
    /// `runtime_path`: the shim's absolute path, for a shim outside containerd's `PATH` (a
    /// node whose `/usr/local/bin` is read-only: Talos, Bottlerocket, COS). `None`: found
    /// on the `PATH` by its name, as containerd does by default.
    pub runtime_path: Option<String>,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            handler: RUNTIME_HANDLER.to_owned(),
            runtime_type: RUNTIME_TYPE.to_owned(),
            pod_annotations: POD_ANNOTATIONS.iter().map(|a| (*a).to_owned()).collect(),
            systemd_cgroup: None,
            runtime_path: None,
        }
    }
}

/// The outcome of an edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Already as wanted: nothing to write (and no containerd restart needed).
    Unchanged,
    /// The new text to write.
    Write(String),
}

/// The CRI plugin's runtimes table for a config version.
fn runtimes_path(version: i64) -> [&'static str; 4] {
    match version {
        2 => [
            "plugins",
            "io.containerd.grpc.v1.cri",
            "containerd",
            "runtimes",
        ],
        _ => [
            "plugins",
            "io.containerd.cri.v1.runtime",
            "containerd",
            "runtimes",
        ],
    }
}

fn parse(text: &str, path: &str) -> Result<(DocumentMut, i64), Error> {
    let doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| Error::Parse {
            path: path.to_owned(),
            reason: e.to_string().trim().to_owned(),
        })?;
    // containerd reads a file without `version` as version 1 (containerd 1.4 and older).
    let version = doc.get("version").and_then(Item::as_integer).unwrap_or(1);
    if version != 2 && version != 3 {
        return Err(Error::Version {
            path: path.to_owned(),
            version,
        });
    }
    Ok((doc, version))
}

/// The configuration's version (2 or 3), or why it cannot be edited.
pub fn version(text: &str, path: &str) -> Result<i64, Error> {
    parse(text, path).map(|(_, v)| v)
}

/// The drop-in directory the configuration imports (`imports = [".../conf.d/*.toml"]`), if
/// any: the runtime then belongs in a file there.
pub fn drop_in_dir(text: &str, path: &str) -> Result<Option<PathBuf>, Error> {
    let (doc, _) = parse(text, path)?;
    Ok(doc
        .get("imports")
        .and_then(Item::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|i| i.strip_suffix("/*.toml").map(PathBuf::from)))
}

/// The runc runtime's `options.SystemdCgroup` in a configuration, if it sets one.
pub fn runc_systemd_cgroup(text: &str, path: &str) -> Result<Option<bool>, Error> {
    let (doc, version) = parse(text, path)?;
    Ok(systemd_cgroup_of(&doc, version, "runc"))
}

fn systemd_cgroup_of(doc: &DocumentMut, version: i64, handler: &str) -> Option<bool> {
    let mut item = doc.as_item();
    for part in runtimes_path(version) {
        item = item.get(part)?;
    }
    item.get(handler)?
        .get("options")?
        .get("SystemdCgroup")?
        .as_bool()
}

/// The table at `parts`, made (header-less) where missing; with its dotted key.
fn table_at<'d>(
    doc: &'d mut DocumentMut,
    parts: &[&str],
    path: &str,
) -> Result<(&'d mut Table, String), Error> {
    let mut table = doc.as_table_mut();
    let mut key = String::new();
    for part in parts {
        key = if key.is_empty() {
            (*part).to_owned()
        } else {
            format!("{key}.{part}")
        };
        let item = table.entry(part).or_insert_with(|| {
            let mut t = Table::new();
            // Intermediate tables print no header of their own.
            t.set_implicit(true);
            Item::Table(t)
        });
        table = item.as_table_mut().ok_or_else(|| Error::NotATable {
            path: path.to_owned(),
            key: key.clone(),
        })?;
    }
    Ok((table, key))
}

/// The CRI plugin's registry table for a config version (where `config_path` lives).
fn registry_path(version: i64) -> [&'static str; 3] {
    match version {
        2 => ["plugins", "io.containerd.grpc.v1.cri", "registry"],
        _ => ["plugins", "io.containerd.cri.v1.images", "registry"],
    }
}

/// Where a configuration has containerd's CRI read registry hosts (`hosts.toml`) from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostsDir {
    /// `config_path` names a directory (the first of a `:`-separated list).
    Set(PathBuf),
    /// Not set: containerd's CRI reads no hosts directory until it is.
    Unset,
    /// Not set, and the deprecated `registry.mirrors` / `registry.configs` are: containerd
    /// refuses `config_path` next to them, so it cannot be added.
    Legacy,
}

/// The registry hosts directory a configuration sets.
pub fn hosts_dir(text: &str, path: &str) -> Result<HostsDir, Error> {
    let (doc, version) = parse(text, path)?;
    let mut item = doc.as_item();
    for part in registry_path(version) {
        match item.get(part) {
            Some(i) => item = i,
            None => return Ok(HostsDir::Unset),
        }
    }
    let set = item
        .get("config_path")
        .and_then(Item::as_str)
        .and_then(|p| p.split(':').find(|d| !d.is_empty()));
    if let Some(dir) = set {
        return Ok(HostsDir::Set(PathBuf::from(dir)));
    }
    let non_empty = |key: &str| {
        item.get(key)
            .and_then(Item::as_table_like)
            .is_some_and(|t| !t.is_empty())
    };
    Ok(if non_empty("mirrors") || non_empty("configs") {
        HostsDir::Legacy
    } else {
        HostsDir::Unset
    })
}

/// Sets the registry hosts directory (`config_path`) in a configuration that sets none;
/// uninstall's byte-exact restore takes it out again with the runtime.
pub fn set_hosts_dir(text: &str, path: &str, dir: &Path) -> Result<Change, Error> {
    let (mut doc, version) = parse(text, path)?;
    let (table, _) = table_at(&mut doc, &registry_path(version), path)?;
    let wanted = dir.to_string_lossy();
    if table.get("config_path").and_then(Item::as_str) == Some(&*wanted) {
        return Ok(Change::Unchanged);
    }
    table.insert("config_path", toml_edit::value(wanted.as_ref()));
    Ok(Change::Write(doc.to_string()))
}

/// The registry table setting `config_path` alone, as TOML for a configuration of `version`
/// (for a drop-in).
pub fn hosts_dir_table(version: i64, dir: &Path) -> String {
    let [plugins, cri, registry] = registry_path(version);
    format!(
        "[{plugins}.\"{cri}\".{registry}]\n  config_path = {:?}\n",
        dir.to_string_lossy()
    )
}

/// The runtime's table alone, as TOML for a configuration of `version`.
pub fn runtime_table(version: i64, runtime: &Runtime) -> String {
    let [plugins, cri, containerd, runtimes] = runtimes_path(version);
    let annotations: Vec<String> = runtime
        .pod_annotations
        .iter()
        .map(|a| format!("{a:?}"))
        .collect();
    let mut table = format!(
        "[{plugins}.\"{cri}\".{containerd}.{runtimes}.{handler}]\n  runtime_type = {rt:?}\n  pod_annotations = [{ann}]\n",
        handler = runtime.handler,
        rt = runtime.runtime_type,
        ann = annotations.join(", "),
    );
    if let Some(path) = &runtime.runtime_path {
        table.push_str(&format!("  runtime_path = {path:?}\n"));
    }
    if let Some(systemd) = runtime.systemd_cgroup {
        table.push_str(&format!(
            "[{plugins}.\"{cri}\".{containerd}.{runtimes}.{handler}.options]\n  SystemdCgroup = {systemd}\n",
            handler = runtime.handler,
        ));
    }
    table
}

/// A drop-in file holding only the runtime, for a configuration of `version`.
pub fn drop_in(version: i64, runtime: &Runtime) -> String {
    format!(
        "# The wa8s runtime, written by the wa8s node installer (removed on uninstall).\nversion = {version}\n\n{}",
        runtime_table(version, runtime)
    )
}

/// Adds the runtime to a `config.toml` (or brings an existing entry up to date).
pub fn add_runtime(text: &str, path: &str, runtime: &Runtime) -> Result<Change, Error> {
    let (mut doc, version) = parse(text, path)?;
    let systemd_cgroup = systemd_cgroup_of(&doc, version, "runc").or(runtime.systemd_cgroup);
    let (table, key) = table_at(&mut doc, &runtimes_path(version), path)?;
    let entry = table
        .entry(&runtime.handler)
        .or_insert_with(|| Item::Table(Table::new()));
    let entry = entry.as_table_mut().ok_or_else(|| Error::NotATable {
        path: path.to_owned(),
        key: format!("{key}.{}", runtime.handler),
    })?;
    let annotations: Array = runtime.pod_annotations.iter().map(String::as_str).collect();
    let current_type = entry.get("runtime_type").and_then(Item::as_str);
    let current_annotations: Option<Vec<&str>> = entry
        .get("pod_annotations")
        .and_then(Item::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect());
    let wanted: Vec<&str> = runtime.pod_annotations.iter().map(String::as_str).collect();
    let current_systemd = entry
        .get("options")
        .and_then(|o| o.get("SystemdCgroup"))
        .and_then(Item::as_bool);
    let current_path = entry.get("runtime_path").and_then(Item::as_str);
    if current_type == Some(runtime.runtime_type.as_str())
        && current_annotations.as_deref() == Some(wanted.as_slice())
        && current_path == runtime.runtime_path.as_deref()
        && (systemd_cgroup.is_none() || current_systemd == systemd_cgroup)
    {
        return Ok(Change::Unchanged);
    }
    entry.insert("runtime_type", toml_edit::value(&runtime.runtime_type));
    entry.insert("pod_annotations", toml_edit::value(annotations));
    match &runtime.runtime_path {
        Some(p) => {
            entry.insert("runtime_path", toml_edit::value(p));
        }
        None => {
            entry.remove("runtime_path");
        }
    }
    if let Some(systemd) = systemd_cgroup {
        let options = entry
            .entry("options")
            .or_insert_with(|| Item::Table(Table::new()));
        let options = options.as_table_mut().ok_or_else(|| Error::NotATable {
            path: path.to_owned(),
            key: format!("{key}.{}.options", runtime.handler),
        })?;
        options.insert("SystemdCgroup", toml_edit::value(systemd));
    }
    Ok(Change::Write(doc.to_string()))
}

/// Takes the runtime out of a `config.toml` that others may have edited since it was added:
/// only the runtime's own table goes. (When the file is still exactly what the installer
/// wrote, restoring the saved original is the byte-exact way; see [`Installed`].)
pub fn remove_runtime(text: &str, path: &str, handler: &str) -> Result<Change, Error> {
    let (mut doc, version) = parse(text, path)?;
    let mut table = doc.as_table_mut();
    for part in runtimes_path(version) {
        match table.get_mut(part).and_then(Item::as_table_mut) {
            Some(t) => table = t,
            None => return Ok(Change::Unchanged),
        }
    }
    if table.remove(handler).is_none() {
        return Ok(Change::Unchanged);
    }
    Ok(Change::Write(doc.to_string()))
}

const BLOCK_BEGIN: &str = "# BEGIN wa8s runtime (managed by the wa8s node installer)";
const BLOCK_END: &str = "# END wa8s runtime";
/// How a k3s template pulls in k3s's own configuration.
const K3S_BASE: &str = "{{ template \"base\" . }}";

/// Adds the runtime to a k3s containerd template (`None`: there is none yet, so one is made
/// that renders k3s's own configuration first). `version` is the template's config version
/// (3 for `config-v3.toml.tmpl`, 2 for `config.toml.tmpl`).
pub fn add_to_template(text: Option<&str>, version: i64, runtime: &Runtime) -> Change {
    // The table only: the version line is k3s's base template's business.
    let block = format!(
        "{BLOCK_BEGIN}\n{}{BLOCK_END}\n",
        runtime_table(version, runtime)
    );
    match text {
        None => Change::Write(format!("{K3S_BASE}\n\n{block}")),
        Some(t) => {
            let without = strip_block(t);
            let mut out = without.clone();
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push('\n');
            out.push_str(&block);
            if out == t {
                Change::Unchanged
            } else {
                Change::Write(out)
            }
        }
    }
}

/// Takes the runtime's block out of a k3s template. `None` in the change's place means the
/// template is only what the installer made, so the file should be removed.
pub fn remove_from_template(text: &str) -> Option<Change> {
    if !text.contains(BLOCK_BEGIN) {
        return Some(Change::Unchanged);
    }
    let without = strip_block(text);
    let rest = without.trim_end_matches('\n');
    if rest.trim() == K3S_BASE {
        return None;
    }
    Some(Change::Write(without))
}

/// The text without the runtime block and the blank line put before it.
fn strip_block(text: &str) -> String {
    let Some(start) = text.find(BLOCK_BEGIN) else {
        return text.to_owned();
    };
    let end = text[start..]
        .find(BLOCK_END)
        .map(|e| start + e + BLOCK_END.len())
        .unwrap_or(text.len());
    let end = if text[end..].starts_with('\n') {
        end + 1
    } else {
        end
    };
    let mut head = text[..start].to_owned();
    if head.ends_with("\n\n") {
        head.pop();
    }
    head + &text[end..]
}

/// What installing did to one file, kept by the installer so uninstall can undo it exactly.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Installed {
    pub path: PathBuf,
    /// The bytes before (`None`: the installer created the file).
    pub original: Option<String>,
    /// The bytes it wrote.
    pub written: String,
}

impl Installed {
    /// What uninstall writes: the original when the file is still as the installer left it,
    /// else the current text with only the runtime taken out. `None`: remove the file.
    pub fn undo(&self, current: &str, handler: &str) -> Result<Option<String>, Error> {
        if current == self.written {
            return Ok(self.original.clone());
        }
        let path = self.path.display().to_string();
        if is_template(&self.path) {
            return Ok(match remove_from_template(current) {
                None => None,
                Some(Change::Unchanged) => Some(current.to_owned()),
                Some(Change::Write(t)) => Some(t),
            });
        }
        Ok(match remove_runtime(current, &path, handler)? {
            Change::Unchanged => Some(current.to_owned()),
            Change::Write(t) => Some(t),
        })
    }
}

/// Whether `path` is a k3s template rather than a TOML file.
pub fn is_template(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "tmpl")
}
