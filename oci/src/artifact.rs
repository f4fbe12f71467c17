//! What a Wasm binary is, and the shapes of the artifacts that carry one.

use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Config media type of the CNCF wasm artifact (what wa8s pushes).
pub const WASM_CONFIG_V0: &str = "application/vnd.wasm.config.v0+json";
/// Layer media type of the CNCF wasm artifact.
pub const WASM_LAYER: &str = "application/wasm";
/// Config media type of the older wasm artifact format (read only).
pub const WASM_CONFIG_V1: &str = "application/vnd.wasm.config.v1+json";
/// Layer media type of the older wasm artifact format (read only).
pub const WASM_LAYER_V1: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest and list (layered images from older tooling).
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Layer media types of file-system images whose `.wasm` sits in a tar.
const TAR_LAYERS: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];

/// What a binary is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A component (WASI 0.2, `os: wasip2`).
    Component,
    /// A core module (WASI preview1, `os: wasip1`).
    Module,
}

impl Kind {
    /// The `os` the CNCF config records.
    pub fn os(self) -> &'static str {
        match self {
            Kind::Component => "wasip2",
            Kind::Module => "wasip1",
        }
    }
}

/// A Wasm binary's identity and interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WasmInfo {
    pub kind: Kind,
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
    pub size: u64,
    /// Top-level imports (`wasi:http/types@0.2.0`, or `module::name` for core modules).
    pub imports: Vec<String>,
    /// Top-level exports.
    pub exports: Vec<String>,
}

/// Reads a binary's kind, imports and exports without compiling it.
pub fn inspect(bytes: &[u8]) -> Result<WasmInfo, Error> {
    inspect_with_digest(bytes, crate::hash_blob(bytes))
}

/// [`inspect`] for bytes whose digest is already known (verified on download), which saves
/// hashing a large component a second time.
pub(crate) fn inspect_with_digest(bytes: &[u8], digest: String) -> Result<WasmInfo, Error> {
    let mut inspector = Inspector::default();
    inspector.feed(bytes)?;
    inspector.finish(digest)
}

/// [`inspect`] for a binary that arrives in pieces (a download): fed each piece as it comes,
/// it keeps only the import and export sections, so a component of any size is inspected
/// without being held in memory, and bytes that are not WebAssembly are refused at the
/// first piece.
///
/// It walks the binary's own top-level sections and skips the rest unread: nested modules
/// and components, code, data and custom sections are Wasmtime's to validate when it
/// compiles the binary. Section ids no binary format defines are refused, and so are
/// interface sections over [`MAX_INTERFACE_SECTION`] bytes (they are the only bytes held).
/// After an error it refuses everything, so a caller cannot go on past bad bytes.
#[derive(Debug, Default)]
pub struct Inspector {
    failed: bool,
    /// The 8-byte preamble (magic, version, layer) while it is incomplete.
    preamble: Vec<u8>,
    kind: Option<Kind>,
    /// Bytes consumed so far: the offset of the next one.
    offset: u64,
    at: At,
    imports: Vec<String>,
    exports: Vec<String>,
}

#[derive(Debug, Default)]
enum At {
    /// Between sections (or in the preamble, while `kind` is unset).
    #[default]
    Boundary,
    /// In a section's size (an unsigned LEB128, at most 5 bytes).
    Size {
        id: u8,
        start: u64,
        value: u64,
        shift: u32,
    },
    /// In a section this inspector reads: its contents so far.
    Keep {
        id: u8,
        start: u64,
        size: u64,
        contents: Vec<u8>,
    },
    /// In a section this inspector skips: bytes left of it.
    Skip { start: u64, size: u64, left: u64 },
}

/// Largest import or export section an [`Inspector`] holds. Real ones are kilobytes; the
/// bound keeps a crafted binary from making inspection buffer the whole download.
pub const MAX_INTERFACE_SECTION: u64 = 16 << 20;
/// A preamble is magic (4 bytes), version (2) and layer (2).
const PREAMBLE: usize = 8;
/// Top-level section ids, and the ones that hold the binary's interface.
const COMPONENT_LAST_SECTION: u8 = 12;
const COMPONENT_IMPORTS: u8 = 10;
const COMPONENT_EXPORTS: u8 = 11;
const MODULE_LAST_SECTION: u8 = 13;
const MODULE_IMPORTS: u8 = 2;
const MODULE_EXPORTS: u8 = 7;

impl Inspector {
    /// Takes the next piece of the binary.
    pub fn feed(&mut self, piece: &[u8]) -> Result<(), Error> {
        if self.failed {
            return Err(Error::NotWasm("the binary was already refused".into()));
        }
        let fed = self.feed_all(piece);
        self.failed = fed.is_err();
        fed
    }

    fn feed_all(&mut self, mut piece: &[u8]) -> Result<(), Error> {
        while !piece.is_empty() {
            let used = match self.kind {
                None => self.feed_preamble(piece)?,
                Some(kind) => self.feed_sections(kind, piece)?,
            };
            piece = &piece[used..];
            self.offset += used as u64;
        }
        Ok(())
    }

    fn feed_preamble(&mut self, piece: &[u8]) -> Result<usize, Error> {
        let used = (PREAMBLE - self.preamble.len()).min(piece.len());
        self.preamble.extend_from_slice(&piece[..used]);
        // Refused as soon as the magic is wrong, not after the whole download.
        let magic = &b"\0asm"[..self.preamble.len().min(4)];
        if !self.preamble.starts_with(magic) {
            return Err(Error::NotWasm(describe_start(&self.preamble)));
        }
        if self.preamble.len() == PREAMBLE {
            self.kind = Some(if wasmparser::Parser::is_component(&self.preamble) {
                Kind::Component
            } else if wasmparser::Parser::is_core_wasm(&self.preamble) {
                Kind::Module
            } else {
                let version: Vec<String> = self.preamble[4..]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                return Err(Error::NotWasm(format!(
                    "version {} is neither a core module (01 00 00 00) nor a component (0d 00 01 00)",
                    version.join(" ")
                )));
            });
        }
        Ok(used)
    }

    /// Consumes what it can of `piece` in the section state; returns how many bytes.
    fn feed_sections(&mut self, kind: Kind, piece: &[u8]) -> Result<usize, Error> {
        let offset = self.offset;
        match &mut self.at {
            At::Boundary => {
                let id = piece[0];
                let last = match kind {
                    Kind::Component => COMPONENT_LAST_SECTION,
                    Kind::Module => MODULE_LAST_SECTION,
                };
                if id > last {
                    return Err(malformed(format!(
                        "unknown section id {id} at offset {offset}"
                    )));
                }
                self.at = At::Size {
                    id,
                    start: offset,
                    value: 0,
                    shift: 0,
                };
                Ok(1)
            }
            At::Size {
                id,
                start,
                value,
                shift,
            } => {
                let byte = piece[0];
                *value |= u64::from(byte & 0x7f) << *shift;
                *shift += 7;
                if byte & 0x80 != 0 {
                    if *shift >= 35 {
                        return Err(malformed(format!(
                            "the size of the section at offset {start} is not a 32-bit LEB128"
                        )));
                    }
                    return Ok(1);
                }
                let size = u32::try_from(*value).map_err(|_| {
                    malformed(format!(
                        "the size of the section at offset {start} is not a 32-bit LEB128"
                    ))
                })?;
                let (id, start, size) = (*id, *start, u64::from(size));
                let keep = match kind {
                    Kind::Component => matches!(id, COMPONENT_IMPORTS | COMPONENT_EXPORTS),
                    Kind::Module => matches!(id, MODULE_IMPORTS | MODULE_EXPORTS),
                };
                if keep && size > MAX_INTERFACE_SECTION {
                    return Err(malformed(format!(
                        "the section at offset {start} declares {size} bytes of imports or exports, over the {MAX_INTERFACE_SECTION}-byte limit"
                    )));
                }
                self.at = if keep {
                    // Grown as bytes arrive: the size is only what the binary claims.
                    At::Keep {
                        id,
                        start,
                        size,
                        contents: Vec::new(),
                    }
                } else {
                    At::Skip {
                        start,
                        size,
                        left: size,
                    }
                };
                if size == 0 {
                    self.end_section(kind, offset + 1)?;
                }
                Ok(1)
            }
            At::Skip { left, .. } => {
                let used = (*left).min(piece.len() as u64);
                *left -= used;
                if *left == 0 {
                    self.end_section(kind, offset + used)?;
                }
                Ok(used as usize)
            }
            At::Keep { size, contents, .. } => {
                let used = (*size - contents.len() as u64).min(piece.len() as u64) as usize;
                contents.extend_from_slice(&piece[..used]);
                if contents.len() as u64 == *size {
                    self.end_section(kind, offset + used as u64)?;
                }
                Ok(used)
            }
        }
    }

    /// A section ended at `end`: reads it if it was kept, and returns to a boundary.
    fn end_section(&mut self, kind: Kind, end: u64) -> Result<(), Error> {
        let At::Keep { id, contents, .. } = std::mem::take(&mut self.at) else {
            return Ok(());
        };
        let reader = wasmparser::BinaryReader::new(&contents, end - contents.len() as u64);
        let bad = |e: wasmparser::BinaryReaderError| malformed(e.to_string());
        match (kind, id) {
            (Kind::Component, COMPONENT_IMPORTS) => {
                for i in wasmparser::ComponentImportSectionReader::new(reader).map_err(bad)? {
                    self.imports.push(i.map_err(bad)?.name.name.to_owned());
                }
            }
            (Kind::Component, _) => {
                for e in wasmparser::ComponentExportSectionReader::new(reader).map_err(bad)? {
                    self.exports.push(e.map_err(bad)?.name.name.to_owned());
                }
            }
            (Kind::Module, MODULE_IMPORTS) => {
                for i in wasmparser::ImportSectionReader::new(reader)
                    .map_err(bad)?
                    .into_imports()
                {
                    let i = i.map_err(bad)?;
                    self.imports.push(format!("{}::{}", i.module, i.name));
                }
            }
            (Kind::Module, _) => {
                for e in wasmparser::ExportSectionReader::new(reader).map_err(bad)? {
                    self.exports.push(e.map_err(bad)?.name.to_owned());
                }
            }
        }
        Ok(())
    }

    /// The binary ended: what it is, named by `digest` (which the caller verified).
    pub fn finish(self, digest: String) -> Result<WasmInfo, Error> {
        if self.failed {
            return Err(Error::NotWasm("the binary was already refused".into()));
        }
        let Some(kind) = self.kind else {
            return Err(Error::NotWasm(if self.preamble.is_empty() {
                "it is empty".into()
            } else {
                format!(
                    "it ends after {} bytes, inside the 8-byte preamble",
                    self.preamble.len()
                )
            }));
        };
        let end = self.offset;
        match self.at {
            At::Boundary => Ok(WasmInfo {
                kind,
                digest,
                size: end,
                imports: self.imports,
                exports: self.exports,
            }),
            At::Size { start, .. } => Err(malformed(format!(
                "it ends at offset {end}, inside the size of the section at offset {start}"
            ))),
            At::Keep { start, size, .. } | At::Skip { start, size, .. } => Err(malformed(format!(
                "the section at offset {start} declares {size} bytes, but the binary ends at offset {end}"
            ))),
        }
    }
}

fn malformed(reason: String) -> Error {
    Error::NotWasm(format!("malformed binary: {reason}"))
}

fn describe_start(bytes: &[u8]) -> String {
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!(
        "it starts with {} instead of the \\0asm magic",
        head.join(" ")
    )
}

/// The CNCF wasm config (`application/vnd.wasm.config.v0+json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WasmConfig {
    pub created: String,
    pub architecture: String,
    pub os: String,
    pub layer_digests: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<ComponentConfig>,
}

/// The `component` part of [`WasmConfig`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ComponentConfig {
    pub exports: Vec<String>,
    pub imports: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl WasmConfig {
    /// The config wa8s pushes for a binary.
    pub fn for_binary(info: &WasmInfo) -> Self {
        let created = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into());
        WasmConfig {
            created,
            architecture: "wasm".into(),
            os: info.kind.os().into(),
            layer_digests: vec![info.digest.clone()],
            component: (info.kind == Kind::Component).then(|| ComponentConfig {
                exports: info.exports.clone(),
                imports: info.imports.clone(),
                target: target_world(&info.exports, &info.imports),
            }),
        }
    }
}

/// The standard world a component targets, when its exports name one and every import
/// belongs to it: `wasi:http/proxy@V` or `wasi:cli/command@V`. `None` otherwise, rather than a
/// guess (a handler that also imports, say, wasi:filesystem does not fit the proxy world).
pub fn target_world(exports: &[String], imports: &[String]) -> Option<String> {
    const PROXY: &[&str] = &[
        "wasi:http/types",
        "wasi:http/outgoing-handler",
        "wasi:io/error",
        "wasi:io/poll",
        "wasi:io/streams",
        "wasi:cli/stdin",
        "wasi:cli/stdout",
        "wasi:cli/stderr",
        "wasi:clocks/monotonic-clock",
        "wasi:clocks/wall-clock",
        "wasi:random/random",
    ];
    const COMMAND_PACKAGES: &[&str] = &[
        "wasi:cli/",
        "wasi:clocks/",
        "wasi:filesystem/",
        "wasi:io/",
        "wasi:random/",
        "wasi:sockets/",
    ];
    let unversioned = |name: &str| name.split('@').next().unwrap_or(name).to_owned();
    let version_of = |name: &str| name.split_once('@').map(|(_, v)| v.to_owned());
    let export = |interface: &str| exports.iter().find(|e| unversioned(e) == interface);
    if let Some(handler) = export("wasi:http/incoming-handler") {
        let fits = imports
            .iter()
            .all(|i| PROXY.contains(&unversioned(i).as_str()));
        return fits.then(|| match version_of(handler) {
            Some(v) => format!("wasi:http/proxy@{v}"),
            None => "wasi:http/proxy".to_owned(),
        });
    }
    if let Some(run) = export("wasi:cli/run") {
        let fits = imports
            .iter()
            .all(|i| COMMAND_PACKAGES.iter().any(|p| i.starts_with(p)));
        return fits.then(|| match version_of(run) {
            Some(v) => format!("wasi:cli/command@{v}"),
            None => "wasi:cli/command".to_owned(),
        });
    }
    None
}

/// How the Wasm binary is carried in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Carrier {
    /// The layer's bytes are the binary (CNCF or older wasm artifact, or a wasm layer in an
    /// image).
    WasmLayer { index: usize },
    /// The binary is a `.wasm` file inside these tar layers (a "layered" image).
    TarLayers { indexes: Vec<usize> },
}

/// A manifest's config and layer media types: all [`carrier`] needs.
#[derive(Debug)]
pub struct ManifestShape<'a> {
    pub config_media_type: &'a str,
    pub layer_media_types: Vec<&'a str>,
}

/// Decides where the binary is, or says precisely why this is not a Wasm artifact.
pub fn carrier(shape: &ManifestShape<'_>) -> Result<Carrier, String> {
    let layers = &shape.layer_media_types;
    let wasm: Vec<usize> = layers
        .iter()
        .enumerate()
        .filter(|(_, m)| **m == WASM_LAYER || **m == WASM_LAYER_V1)
        .map(|(i, _)| i)
        .collect();
    match shape.config_media_type {
        WASM_CONFIG_V0 | WASM_CONFIG_V1 => match (layers.len(), wasm.as_slice()) {
            (0, _) => Err("the manifest has no layers; a wasm artifact has exactly one".into()),
            (1, [i]) => Ok(Carrier::WasmLayer { index: *i }),
            (1, _) => Err(format!(
                "the only layer has media type {:?}; a wasm artifact's layer is {WASM_LAYER:?}",
                layers[0]
            )),
            (n, _) => Err(format!(
                "the manifest has {n} layers; a wasm artifact has exactly one"
            )),
        },
        _ => {
            if let [i] = wasm.as_slice() {
                return Ok(Carrier::WasmLayer { index: *i });
            }
            if wasm.len() > 1 {
                return Err(format!(
                    "the image has {} wasm layers; expected one",
                    wasm.len()
                ));
            }
            let tars: Vec<usize> = layers
                .iter()
                .enumerate()
                .filter(|(_, m)| TAR_LAYERS.contains(m))
                .map(|(i, _)| i)
                .collect();
            if tars.is_empty() {
                Err(format!(
                    "no wasm layer and no file-system layer (config {:?}, layers {:?})",
                    shape.config_media_type, layers
                ))
            } else {
                Ok(Carrier::TarLayers { indexes: tars })
            }
        }
    }
}

/// Finds the `.wasm` file in a layered image's tar layers (later layers win, as in a rootfs).
/// `entrypoint` (from the image config) picks among several; otherwise there must be one.
/// At most one file's bytes are held at a time, and no file over `max_bytes` is read.
pub fn wasm_from_tars(
    layers: &[(Vec<u8>, bool)],
    entrypoint: Option<&str>,
    max_bytes: u64,
) -> Result<Vec<u8>, String> {
    let want = entrypoint.map(|e| e.trim_start_matches("./").trim_start_matches('/'));
    // Every .wasm path seen (for the error that names them), and the bytes of the one that
    // would be chosen so far: the entrypoint's, else the latest.
    let mut names: Vec<String> = Vec::new();
    let mut chosen: Option<(String, Vec<u8>)> = None;
    for (bytes, gzipped) in layers {
        let reader: Box<dyn Read> = if *gzipped {
            Box::new(flate2::read::GzDecoder::new(bytes.as_slice()))
        } else {
            Box::new(bytes.as_slice())
        };
        let mut archive = tar::Archive::new(reader);
        let entries = archive
            .entries()
            .map_err(|e| format!("unreadable tar layer: {e}"))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| format!("unreadable tar layer: {e}"))?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let path = entry
                .path()
                .map_err(|e| format!("unreadable tar entry: {e}"))?
                .to_string_lossy()
                .trim_start_matches("./")
                .trim_start_matches('/')
                .to_owned();
            if !path.ends_with(".wasm") {
                continue;
            }
            if !names.contains(&path) {
                names.push(path.clone());
            }
            // The entrypoint's file, once seen, is only replaced by a later copy of itself.
            let holding_entrypoint = chosen
                .as_ref()
                .is_some_and(|(p, _)| want == Some(p.as_str()));
            if holding_entrypoint && want != Some(path.as_str()) {
                continue;
            }
            if entry.size() > max_bytes {
                return Err(format!(
                    "{path} is {} bytes, over the {max_bytes}-byte limit",
                    entry.size()
                ));
            }
            let mut content = Vec::with_capacity(entry.size() as usize);
            // take(): the header's size is the tar's word; a gzip stream may say otherwise.
            (&mut entry)
                .take(max_bytes + 1)
                .read_to_end(&mut content)
                .map_err(|e| format!("unreadable tar entry {path}: {e}"))?;
            if content.len() as u64 > max_bytes {
                return Err(format!("{path} is over the {max_bytes}-byte limit"));
            }
            chosen = Some((path, content));
        }
    }
    // The entrypoint's file, else the image's only binary (whatever the entrypoint says).
    let is_entrypoint = matches!((&chosen, want), (Some((p, _)), Some(w)) if p == w);
    match (names.len(), chosen) {
        (_, Some((_, bytes))) if is_entrypoint => Ok(bytes),
        (0, _) => Err("the image's layers hold no .wasm file".into()),
        (1, Some((_, bytes))) => Ok(bytes),
        _ => Err(format!(
            "the image holds several .wasm files ({}) and its entrypoint names none of them",
            names.join(", ")
        )),
    }
}

/// Whether an image index entry is a Wasm platform.
pub fn is_wasm_platform(os: &str, architecture: &str) -> bool {
    matches!(os, "wasip1" | "wasip2" | "wasi") || architecture == "wasm"
}

#[cfg(test)]
mod tests {
    use super::{Inspector, Kind, WasmInfo};
    use wa8s_test_components as guests;

    fn fed_in_pieces(bytes: &[u8], piece: usize) -> Result<WasmInfo, crate::Error> {
        let mut inspector = Inspector::default();
        for p in bytes.chunks(piece) {
            inspector.feed(p)?;
        }
        inspector.finish(crate::sha256_digest(bytes))
    }

    /// The interface as wasmparser's whole-binary parser reads it (depth 1 only).
    fn parsed_whole(bytes: &[u8]) -> (Vec<String>, Vec<String>) {
        use wasmparser::Payload;
        let (mut imports, mut exports, mut depth) = (Vec::new(), Vec::new(), 0);
        for payload in wasmparser::Parser::new(0).parse_all(bytes) {
            match payload.expect("test binaries parse") {
                Payload::Version { .. } => depth += 1,
                Payload::End(_) => depth -= 1,
                Payload::ComponentImportSection(r) if depth == 1 => imports.extend(
                    r.into_iter()
                        .map(|i| i.expect("import").name.name.to_owned()),
                ),
                Payload::ComponentExportSection(r) if depth == 1 => exports.extend(
                    r.into_iter()
                        .map(|e| e.expect("export").name.name.to_owned()),
                ),
                Payload::ImportSection(r) if depth == 1 => imports.extend(
                    r.into_imports()
                        .map(|i| i.expect("import"))
                        .map(|i| format!("{}::{}", i.module, i.name)),
                ),
                Payload::ExportSection(r) if depth == 1 => {
                    exports.extend(r.into_iter().map(|e| e.expect("export").name.to_owned()))
                }
                _ => {}
            }
        }
        (imports, exports)
    }

    #[test]
    fn an_inspector_fed_in_any_pieces_reads_what_the_whole_binary_parser_reads() {
        let binaries = [
            (guests::HTTP_COMPONENT, Kind::Component),
            (guests::HELLO_COMPONENT, Kind::Component),
            (guests::HELLO_CORE, Kind::Module),
        ];
        for (bytes, kind) in binaries {
            let (imports, exports) = parsed_whole(bytes);
            assert!(!exports.is_empty());
            for piece in [1, 3, 8, 4096, bytes.len()] {
                let info = fed_in_pieces(bytes, piece).expect("inspects");
                assert_eq!(info.kind, kind);
                assert_eq!(info.size, bytes.len() as u64);
                assert_eq!(
                    (&info.imports, &info.exports),
                    (&imports, &exports),
                    "{piece}"
                );
            }
        }
    }

    #[test]
    fn bytes_that_are_not_wasm_are_refused_at_the_first_piece() {
        let mut inspector = Inspector::default();
        let err = inspector.feed(b"{\"not\": \"wasm\"}").expect_err("refused");
        assert!(err.to_string().contains("it starts with 7b"), "{err}");
        let mut inspector = Inspector::default();
        let err = inspector.feed(b"\0asm\x02\0\0\0").expect_err("refused");
        assert!(err.to_string().contains("version 02 00 00 00"), "{err}");
        let err = Inspector::default()
            .finish(String::new())
            .expect_err("empty");
        assert!(err.to_string().contains("it is empty"), "{err}");
    }

    #[test]
    fn a_truncated_or_misframed_binary_is_a_clear_error() {
        let bytes = guests::HTTP_COMPONENT;
        let err = fed_in_pieces(&bytes[..bytes.len() - 1], 4096).expect_err("truncated");
        assert!(
            err.to_string().contains("but the binary ends at offset"),
            "{err}"
        );
        let err = fed_in_pieces(&bytes[..5], 4096).expect_err("truncated preamble");
        assert!(
            err.to_string().contains("inside the 8-byte preamble"),
            "{err}"
        );
        // A section size of six LEB128 bytes.
        let mut bad = guests::HELLO_CORE[..8].to_vec();
        bad.extend([0, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        let err = fed_in_pieces(&bad, 2).expect_err("bad size");
        assert!(err.to_string().contains("not a 32-bit LEB128"), "{err}");
        // A section id no binary has.
        let mut bad = guests::HELLO_CORE[..8].to_vec();
        bad.extend([0x7f, 0]);
        let err = fed_in_pieces(&bad, 9).expect_err("bad id");
        assert!(
            err.to_string()
                .contains("unknown section id 127 at offset 8"),
            "{err}"
        );
        // After an error, nothing more is taken.
        let mut inspector = Inspector::default();
        assert!(inspector.feed(&bad).is_err());
        let err = inspector.feed(b"\0asm").expect_err("fused");
        assert!(err.to_string().contains("already refused"), "{err}");
    }

    #[test]
    fn empty_sections_are_skipped_and_an_oversized_interface_section_is_refused() {
        let preamble = &guests::HELLO_CORE[..8];
        // An empty custom section, then an export section holding zero exports.
        let mut empty = preamble.to_vec();
        empty.extend([0, 0, 7, 1, 0]);
        let info = fed_in_pieces(&empty, 1).expect("inspects");
        assert!(info.imports.is_empty() && info.exports.is_empty());
        // An import section claiming 16 MiB + 1: refused from its header, before any buffering.
        let mut huge = preamble.to_vec();
        huge.extend([2, 0x81, 0x80, 0x80, 0x08]);
        let mut inspector = Inspector::default();
        let err = inspector.feed(&huge).expect_err("refused");
        assert!(
            err.to_string().contains("over the 16777216-byte limit"),
            "{err}"
        );
        // The same size in a custom section is only skipped.
        huge[8] = 0;
        let mut inspector = Inspector::default();
        inspector.feed(&huge).expect("skipped, not held");
    }

    fn tar(files: &[(&str, &[u8])]) -> (Vec<u8>, bool) {
        let mut b = tar::Builder::new(Vec::new());
        for (path, bytes) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, path, *bytes).expect("tar entry");
        }
        (b.into_inner().expect("tar"), false)
    }

    #[test]
    fn the_binary_in_tar_layers_is_the_entrypoints_or_the_only_one_and_later_layers_win() {
        use super::wasm_from_tars;
        let one = [
            tar(&[("app.wasm", b"v1"), ("readme.txt", b"x")]),
            tar(&[("app.wasm", b"v2")]),
        ];
        assert_eq!(wasm_from_tars(&one, None, 10).as_deref(), Ok(&b"v2"[..]));
        // The entrypoint names one of two; one that names neither is an error listing both.
        let two = [tar(&[("a.wasm", b"a"), ("b.wasm", b"b")])];
        assert_eq!(
            wasm_from_tars(&two, Some("/b.wasm"), 10).as_deref(),
            Ok(&b"b"[..])
        );
        assert_eq!(
            wasm_from_tars(&two, Some("./a.wasm"), 10).as_deref(),
            Ok(&b"a"[..])
        );
        let err = wasm_from_tars(&two, Some("c.wasm"), 10)
            .err()
            .unwrap_or_default();
        assert!(err.contains("a.wasm, b.wasm"), "{err}");
        // An entrypoint that is not there still finds the image's only binary.
        assert_eq!(
            wasm_from_tars(&one, Some("other.wasm"), 10).as_deref(),
            Ok(&b"v2"[..])
        );
        // Over the limit: refused by the header's size, before reading.
        let big = [tar(&[("big.wasm", &[0u8; 11])])];
        let err = wasm_from_tars(&big, None, 10).err().unwrap_or_default();
        assert!(err.contains("over the 10-byte limit"), "{err}");
        assert!(wasm_from_tars(&[tar(&[("x.txt", b"x")])], None, 10).is_err());
    }

    #[test]
    fn the_target_world_is_named_only_when_exports_and_imports_fit_it() {
        let v = |xs: &[&str]| xs.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            super::target_world(
                &v(&["wasi:http/incoming-handler@0.2.6"]),
                &v(&["wasi:http/types@0.2.6", "wasi:io/streams@0.2.6"])
            )
            .as_deref(),
            Some("wasi:http/proxy@0.2.6")
        );
        assert_eq!(
            super::target_world(
                &v(&["wasi:http/incoming-handler@0.2.6"]),
                &v(&["wasi:filesystem/preopens@0.2.6"])
            ),
            None,
            "a handler reading files does not fit wasi:http/proxy"
        );
        assert_eq!(
            super::target_world(
                &v(&["wasi:cli/run@0.2.0"]),
                &v(&[
                    "wasi:filesystem/preopens@0.2.0",
                    "wasi:cli/environment@0.2.0"
                ])
            )
            .as_deref(),
            Some("wasi:cli/command@0.2.0")
        );
        assert_eq!(
            super::target_world(
                &v(&["wasi:cli/run@0.2.0"]),
                &v(&["wasi:keyvalue/store@0.2.0"])
            ),
            None
        );
        assert_eq!(super::target_world(&v(&["my:pkg/thing"]), &[]), None);
    }

    use super::*;

    fn shape<'a>(config: &'a str, layers: &[&'a str]) -> ManifestShape<'a> {
        ManifestShape {
            config_media_type: config,
            layer_media_types: layers.to_vec(),
        }
    }

    #[test]
    fn a_wasm_artifact_has_exactly_one_wasm_layer() {
        assert_eq!(
            carrier(&shape(WASM_CONFIG_V0, &[WASM_LAYER])),
            Ok(Carrier::WasmLayer { index: 0 })
        );
        assert_eq!(
            carrier(&shape(WASM_CONFIG_V1, &[WASM_LAYER_V1])),
            Ok(Carrier::WasmLayer { index: 0 })
        );
        let none = carrier(&shape(WASM_CONFIG_V0, &[])).expect_err("no layer");
        assert!(none.contains("no layers"), "{none}");
        let two = carrier(&shape(WASM_CONFIG_V0, &[WASM_LAYER, WASM_LAYER])).expect_err("two");
        assert!(two.contains("2 layers"), "{two}");
        let wrong = carrier(&shape(WASM_CONFIG_V0, &["text/plain"])).expect_err("wrong type");
        assert!(wrong.contains("\"text/plain\""), "{wrong}");
    }

    #[test]
    fn an_image_carries_wasm_in_a_wasm_layer_or_in_its_tar_layers() {
        let image = "application/vnd.oci.image.config.v1+json";
        assert_eq!(
            carrier(&shape(
                image,
                &["application/vnd.oci.image.layer.v1.tar+gzip", WASM_LAYER]
            )),
            Ok(Carrier::WasmLayer { index: 1 })
        );
        assert_eq!(
            carrier(&shape(
                image,
                &["application/vnd.oci.image.layer.v1.tar+gzip"]
            )),
            Ok(Carrier::TarLayers { indexes: vec![0] })
        );
        let other = carrier(&shape(image, &["application/x-foo"])).expect_err("nothing");
        assert!(other.contains("no wasm layer"), "{other}");
    }

    #[test]
    fn inspect_reads_a_components_interface_and_refuses_other_bytes() {
        let err = inspect(b"").expect_err("empty");
        assert!(err.to_string().contains("it is empty"), "{err}");
        let err = inspect(b"\x7fELF....").expect_err("elf");
        assert!(err.to_string().contains("7f 45 4c 46"), "{err}");
    }
}
