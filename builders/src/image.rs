//! Deterministic container images of built programs, for the `local:docker` runner.
//!
//! tg-nix writes each image itself (DESIGN.md decision 3): one tar that holds both a
//! docker-archive (`manifest.json`, which Docker 20.10's `docker load` requires) and an OCI image
//! layout (`oci-layout`, `index.json`) over the same blobs, stored once under `blobs/sha256/`.
//! Layers:
//! - a base layer: the runtime libraries a dynamic program needs and its Nix closure does not
//!   hold (nix:rust programs are linked against the Debian sysroot's glibc, whose interpreter is
//!   `/lib64/ld-linux-x86-64.so.2`), read from the ELF's `PT_INTERP` and `DT_NEEDED` and copied
//!   from the host's identical libraries; plus `/tmp` and an `/etc/nsswitch.conf`;
//! - one layer per store path of the program's closure (`nix-store -qR`), so images of two units
//!   share every unchanged store path;
//! - for a program outside the store (exec:rust), a layer with the program at `/tg-nix/bin/`.
//!
//! Every tar has sorted entries, mtime 0, uid/gid 0 and no user names, and the config has a fixed
//! `created` date, so the image id (the sha256 of the config) is a pure function of the contents
//! and is known before anything is loaded: [`Image::compute`] hashes, [`Image::write_tar`] writes.
//! Loading is the runner's business; this module never talks to Docker.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::BuildError;

/// The `created` date of every image and history entry: the epoch, so it never varies.
pub const CREATED: &str = "1970-01-01T00:00:00Z";
/// Where a program that is not a store path is put in its image.
pub const HOST_PROGRAM_DIR: &str = "/tg-nix/bin";
/// Directories searched, in order, for the libraries a program needs (Debian multiarch first).
pub const HOST_LIB_DIRS: &[&str] =
    &["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"];
/// Name lookups in the container: /etc/hosts first (Docker writes the extra hosts there), then
/// Docker's DNS. Without the file glibc would ask DNS first.
const NSSWITCH: &[u8] = b"hosts: files dns\n";

/// What goes into one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerSource {
    /// A directory tree (a store path), stored at its own absolute path.
    Tree(PathBuf),
    /// Single files: each host file's contents (symlinks followed) at its path in the image, plus
    /// the given empty directories; used for the base layer and host programs.
    Files { files: Vec<(PathBuf, PathBuf)>, dirs: Vec<(PathBuf, u32)>, inline: Vec<(PathBuf, Vec<u8>)> },
}

/// Everything an image is made from. Two equal specs give byte-identical tars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// `tg-nix/<plan>:<unit-hash>`.
    pub tag: String,
    /// The program's path inside the image.
    pub entrypoint: PathBuf,
    pub env: Vec<String>,
    pub layers: Vec<LayerSource>,
}

/// One layer, hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub source: LayerSource,
    /// `sha256:<hex>` of the uncompressed layer tar (its diff id and blob digest).
    pub digest: String,
    pub size: u64,
}

/// An image whose id is known; [`Image::write_tar`] writes it for loading.
#[derive(Debug, Clone)]
pub struct Image {
    pub tag: String,
    /// `sha256:<hex>` of the config: what Docker calls the image id.
    pub id: String,
    pub layers: Vec<Layer>,
    config: Vec<u8>,
}

impl ImageSpec {
    /// The spec for a built program: its closure when it is in the Nix store, the libraries its
    /// ELF header names, and the tag `tg-nix/<plan>:<unit-hash>` (the first 12 characters of the
    /// store path's hash, or of the sha256 of the program for a host program).
    pub fn for_program(program: &Path, plan: &str) -> Result<ImageSpec, BuildError> {
        let io_err = |e: io::Error| BuildError::Io { path: program.display().to_string(), source: e };
        let store_root = store_path_of(program);
        let (unit_hash, mut layers, entrypoint) = match &store_root {
            Some(root) => {
                let hash = root
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.split('-').next())
                    .unwrap_or("")
                    .chars()
                    .take(12)
                    .collect::<String>();
                let closure = closure_of(root)?;
                (hash, closure.into_iter().map(LayerSource::Tree).collect::<Vec<_>>(), program.to_path_buf())
            }
            None => {
                let bytes = std::fs::read(program).map_err(io_err)?;
                let hash: String = hex(&Sha256::digest(&bytes)).chars().take(12).collect();
                let name = program.file_name().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("program"));
                let inside = Path::new(HOST_PROGRAM_DIR).join(name);
                let layer = LayerSource::Files {
                    files: vec![(inside.clone(), program.to_path_buf())],
                    dirs: vec![(PathBuf::from("/tg-nix"), 0o755), (PathBuf::from(HOST_PROGRAM_DIR), 0o755)],
                    inline: Vec::new(),
                };
                (hash, vec![layer], inside)
            }
        };
        let libs = runtime_libs(program, HOST_LIB_DIRS)
            .map_err(|message| BuildError::Image { tag: plan.to_string(), message })?;
        layers.insert(0, base_layer(libs));
        Ok(ImageSpec {
            tag: format!("tg-nix/{}:{unit_hash}", repository_name(plan)),
            entrypoint,
            env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".to_string()],
            layers,
        })
    }
}

/// The base layer: libraries at their host paths, `/tmp`, and name lookup configuration.
pub fn base_layer(libs: Vec<(PathBuf, PathBuf)>) -> LayerSource {
    let mut dirs: BTreeSet<(PathBuf, u32)> = BTreeSet::new();
    dirs.insert((PathBuf::from("/tmp"), 0o1777));
    dirs.insert((PathBuf::from("/etc"), 0o755));
    LayerSource::Files {
        files: libs,
        dirs: dirs.into_iter().collect(),
        inline: vec![(PathBuf::from("/etc/nsswitch.conf"), NSSWITCH.to_vec())],
    }
}

/// `/nix/store/<hash>-<name>` when `path` is inside the Nix store.
pub fn store_path_of(path: &Path) -> Option<PathBuf> {
    let rest = path.strip_prefix("/nix/store").ok()?;
    let first = rest.components().next()?;
    Some(Path::new("/nix/store").join(first.as_os_str()))
}

/// The runtime closure of a store path, sorted (`nix-store -qR`).
fn closure_of(root: &Path) -> Result<Vec<PathBuf>, BuildError> {
    let command = format!("nix-store -qR {}", root.display());
    let out = Command::new("nix-store").arg("-qR").arg(root).output().map_err(|source| BuildError::Spawn {
        group: root.display().to_string(),
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(BuildError::Command {
            group: root.display().to_string(),
            command,
            status: out.status.to_string(),
            stderr_tail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let mut paths: Vec<PathBuf> =
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).map(PathBuf::from).collect();
    paths.sort();
    Ok(paths)
}

/// The libraries `program` needs that are not in the Nix store: its ELF interpreter at its own
/// path, and each `DT_NEEDED` library (recursively) found in `search` and not in a store path the
/// program's RUNPATH names. Returns (path in the image, host file), sorted. A program that is not
/// a dynamic ELF (static, a script) needs nothing.
pub fn runtime_libs(program: &Path, search: &[&str]) -> Result<Vec<(PathBuf, PathBuf)>, String> {
    let mut found: BTreeSet<(PathBuf, PathBuf)> = BTreeSet::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut queue: Vec<PathBuf> = vec![program.to_path_buf()];
    while let Some(file) = queue.pop() {
        let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let Some(dynamic) = read_dynamic(&bytes).map_err(|e| format!("{}: {e}", file.display()))? else {
            continue;
        };
        if let Some(interp) = dynamic.interpreter {
            let path = PathBuf::from(&interp);
            if store_path_of(&path).is_none() && path.is_absolute() {
                found.insert((path.clone(), path));
            }
        }
        let in_store_runpath: Vec<PathBuf> =
            dynamic.runpath.iter().map(PathBuf::from).filter(|p| store_path_of(p).is_some()).collect();
        for name in dynamic.needed {
            if !seen.insert(name.clone()) {
                continue;
            }
            if in_store_runpath.iter().any(|dir| dir.join(&name).exists()) {
                continue;
            }
            let Some(dir) = search.iter().map(Path::new).find(|d| d.join(&name).exists()) else {
                return Err(format!(
                    "needs the library {name}, which is in none of {} (install it on the host, or link the \
                     program statically)",
                    search.join(", ")
                ));
            };
            let host = dir.join(&name);
            found.insert((host.clone(), host.clone()));
            queue.push(host);
        }
    }
    Ok(found.into_iter().collect())
}

struct Dynamic {
    interpreter: Option<String>,
    needed: Vec<String>,
    runpath: Vec<String>,
}

/// PT_INTERP, DT_NEEDED and DT_RUNPATH/DT_RPATH of an ELF file; None when it is not ELF.
fn read_dynamic(bytes: &[u8]) -> Result<Option<Dynamic>, String> {
    use object::read::elf::{Dyn, FileHeader, ProgramHeader};
    use object::Endianness;
    if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
        return Ok(None);
    }
    let header = object::elf::FileHeader64::<Endianness>::parse(bytes).map_err(|e| format!("not a 64-bit ELF: {e}"))?;
    let endian = header.endian().map_err(|e| e.to_string())?;
    let segments = header.program_headers(endian, bytes).map_err(|e| e.to_string())?;
    let mut interpreter = None;
    for segment in segments {
        if let Some(data) = segment.interpreter(endian, bytes).map_err(|e| e.to_string())? {
            interpreter = Some(String::from_utf8_lossy(data.split(|b| *b == 0).next().unwrap_or(data)).into_owned());
        }
    }
    let mut needed = Vec::new();
    let mut runpath = Vec::new();
    let sections = header.sections(endian, bytes).map_err(|e| e.to_string())?;
    if let Some((entries, link)) = sections.dynamic(endian, bytes).map_err(|e| e.to_string())? {
        let strings = sections.strings(endian, bytes, link).map_err(|e| e.to_string())?;
        for entry in entries {
            let tag = entry.tag(endian);
            let string = || -> Result<String, String> {
                let data = entry.string(endian, strings).map_err(|e| e.to_string())?;
                Ok(String::from_utf8_lossy(data).into_owned())
            };
            match tag {
                object::elf::DT_NEEDED => needed.push(string()?),
                object::elf::DT_RUNPATH | object::elf::DT_RPATH => {
                    runpath.extend(string()?.split(':').filter(|s| !s.is_empty()).map(String::from))
                }
                _ => {}
            }
        }
    }
    Ok(Some(Dynamic { interpreter, needed, runpath }))
}

/// A Docker repository name component: lowercase letters, digits and `._-`.
pub fn repository_name(plan: &str) -> String {
    let name: String =
        plan.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
    let name = name.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string();
    if name.is_empty() {
        "plan".to_string()
    } else {
        name
    }
}

impl Image {
    /// Hashes every layer and the config: the image id, without writing anything.
    pub fn compute(spec: &ImageSpec) -> Result<Image, BuildError> {
        let mut layers = Vec::with_capacity(spec.layers.len());
        for source in &spec.layers {
            let mut sink = HashingWriter::new(io::sink());
            write_layer(source, &mut sink).map_err(|e| layer_error(source, e))?;
            let (digest, size) = sink.finish();
            layers.push(Layer { source: source.clone(), digest, size });
        }
        let config = config_json(spec, &layers);
        let id = format!("sha256:{}", hex(&Sha256::digest(&config)));
        Ok(Image { tag: spec.tag.clone(), id, layers, config })
    }

    /// The config blob (its sha256 is [`Image::id`]).
    pub fn config(&self) -> &[u8] {
        &self.config
    }

    /// Writes the image tar (docker-archive + OCI layout) to `path`. Layers are written to
    /// temporary files beside it first; a layer whose contents changed since [`Image::compute`]
    /// is an error, never a silently different image.
    pub fn write_tar(&self, path: &Path) -> Result<(), BuildError> {
        let io_err = |p: &Path| {
            let p = p.display().to_string();
            move |source: io::Error| BuildError::Io { path: p.clone(), source }
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let manifest = oci_manifest(self);
        let manifest_digest = format!("sha256:{}", hex(&Sha256::digest(&manifest)));
        let docker_manifest = docker_manifest(self);
        let index = oci_index(self, &manifest_digest, manifest.len() as u64);

        // Blobs in digest order, so the archive's entries are sorted.
        enum Blob<'a> {
            Bytes(&'a [u8]),
            Layer(&'a Layer),
        }
        let mut blobs: Vec<(String, Blob<'_>)> =
            vec![(self.id.clone(), Blob::Bytes(&self.config)), (manifest_digest.clone(), Blob::Bytes(&manifest))];
        for layer in &self.layers {
            if !blobs.iter().any(|(d, _)| d == &layer.digest) {
                blobs.push((layer.digest.clone(), Blob::Layer(layer)));
            }
        }
        blobs.sort_by(|a, b| a.0.cmp(&b.0));

        let file = std::fs::File::create(path).map_err(io_err(path))?;
        let mut out = tar::Builder::new(io::BufWriter::new(file));
        append_dir(&mut out, "blobs/", 0o755).map_err(io_err(path))?;
        append_dir(&mut out, "blobs/sha256/", 0o755).map_err(io_err(path))?;
        for (digest, blob) in &blobs {
            let name = blob_path(digest);
            match blob {
                Blob::Bytes(bytes) => append_bytes(&mut out, &name, bytes, 0o644).map_err(io_err(path))?,
                Blob::Layer(layer) => {
                    let tmp = dir.join(format!(".layer-{}.tar", &digest[7..]));
                    let written = (|| {
                        let mut w = HashingWriter::new(io::BufWriter::new(std::fs::File::create(&tmp)?));
                        write_layer(&layer.source, &mut w)?;
                        let (got, size) = w.finish_flush()?;
                        if got != layer.digest || size != layer.size {
                            return Err(io::Error::other(format!(
                                "its contents changed while the image was written (was {}, now {got})",
                                layer.digest
                            )));
                        }
                        let mut header = file_header(size, 0o644);
                        out.append_data(&mut header, &name, std::fs::File::open(&tmp)?)
                    })();
                    let _ = std::fs::remove_file(&tmp);
                    written.map_err(|e| layer_error(&layer.source, e))?;
                }
            }
        }
        append_bytes(&mut out, "index.json", &index, 0o644).map_err(io_err(path))?;
        append_bytes(&mut out, "manifest.json", &docker_manifest, 0o644).map_err(io_err(path))?;
        append_bytes(&mut out, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644).map_err(io_err(path))?;
        let mut inner = out.into_inner().map_err(io_err(path))?;
        inner.flush().map_err(io_err(path))?;
        Ok(())
    }
}

fn layer_error(source: &LayerSource, e: io::Error) -> BuildError {
    let what = match source {
        LayerSource::Tree(p) => p.display().to_string(),
        LayerSource::Files { .. } => "the base layer".to_string(),
    };
    BuildError::Io { path: what, source: e }
}

fn blob_path(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

#[derive(Serialize)]
struct ConfigFile<'a> {
    architecture: &'a str,
    config: RunConfig<'a>,
    created: &'a str,
    history: Vec<History>,
    os: &'a str,
    rootfs: RootFs<'a>,
}

#[derive(Serialize)]
struct RunConfig<'a> {
    #[serde(rename = "Entrypoint")]
    entrypoint: Vec<String>,
    #[serde(rename = "Env")]
    env: &'a [String],
    #[serde(rename = "WorkingDir")]
    working_dir: &'a str,
}

#[derive(Serialize)]
struct History {
    created: &'static str,
    created_by: String,
}

#[derive(Serialize)]
struct RootFs<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    diff_ids: Vec<&'a str>,
}

fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn config_json(spec: &ImageSpec, layers: &[Layer]) -> Vec<u8> {
    let config = ConfigFile {
        architecture: architecture(),
        config: RunConfig { entrypoint: vec![spec.entrypoint.display().to_string()], env: &spec.env, working_dir: "/" },
        created: CREATED,
        history: layers
            .iter()
            .map(|l| History {
                created: CREATED,
                created_by: match &l.source {
                    LayerSource::Tree(p) => format!("tg-nix: {}", p.display()),
                    LayerSource::Files { .. } => "tg-nix: runtime files".to_string(),
                },
            })
            .collect(),
        os: "linux",
        rootfs: RootFs { kind: "layers", diff_ids: layers.iter().map(|l| l.digest.as_str()).collect() },
    };
    serde_json::to_vec(&config).unwrap_or_default()
}

#[derive(Serialize)]
struct Descriptor<'a> {
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    digest: &'a str,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<Annotations<'a>>,
}

#[derive(Serialize)]
struct Annotations<'a> {
    #[serde(rename = "io.containerd.image.name")]
    image_name: String,
    #[serde(rename = "org.opencontainers.image.ref.name")]
    ref_name: &'a str,
}

#[derive(Serialize)]
struct OciManifest<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    config: Descriptor<'a>,
    layers: Vec<Descriptor<'a>>,
}

#[derive(Serialize)]
struct OciIndex<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    manifests: Vec<Descriptor<'a>>,
}

#[derive(Serialize)]
struct DockerManifestEntry<'a> {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags")]
    repo_tags: Vec<&'a str>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn oci_manifest(image: &Image) -> Vec<u8> {
    let manifest = OciManifest {
        schema_version: 2,
        media_type: "application/vnd.oci.image.manifest.v1+json",
        config: Descriptor {
            media_type: "application/vnd.oci.image.config.v1+json",
            digest: &image.id,
            size: image.config.len() as u64,
            annotations: None,
        },
        layers: image
            .layers
            .iter()
            .map(|l| Descriptor {
                media_type: "application/vnd.oci.image.layer.v1.tar",
                digest: &l.digest,
                size: l.size,
                annotations: None,
            })
            .collect(),
    };
    serde_json::to_vec(&manifest).unwrap_or_default()
}

fn oci_index(image: &Image, manifest_digest: &str, manifest_size: u64) -> Vec<u8> {
    let ref_name = image.tag.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
    let index = OciIndex {
        schema_version: 2,
        media_type: "application/vnd.oci.image.index.v1+json",
        manifests: vec![Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json",
            digest: manifest_digest,
            size: manifest_size,
            annotations: Some(Annotations { image_name: format!("docker.io/{}", image.tag), ref_name }),
        }],
    };
    serde_json::to_vec(&index).unwrap_or_default()
}

fn docker_manifest(image: &Image) -> Vec<u8> {
    let entry = DockerManifestEntry {
        config: blob_path(&image.id),
        repo_tags: vec![&image.tag],
        layers: image.layers.iter().map(|l| blob_path(&l.digest)).collect(),
    };
    serde_json::to_vec(&[entry]).unwrap_or_default()
}

/// A header with everything that could vary fixed: mtime 0, uid/gid 0, no names.
fn file_header(size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn append_bytes<W: Write>(out: &mut tar::Builder<W>, name: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut header = file_header(bytes.len() as u64, mode);
    out.append_data(&mut header, name, bytes)
}

fn append_dir<W: Write>(out: &mut tar::Builder<W>, name: &str, mode: u32) -> io::Result<()> {
    let mut header = file_header(0, mode);
    header.set_entry_type(tar::EntryType::Directory);
    out.append_data(&mut header, name, io::empty())
}

fn append_symlink<W: Write>(out: &mut tar::Builder<W>, name: &str, target: &Path) -> io::Result<()> {
    let mut header = file_header(0, 0o777);
    header.set_entry_type(tar::EntryType::Symlink);
    out.append_link(&mut header, name, target)
}

/// The tar path of an absolute image path: no leading `/`, directories ending in `/`.
fn entry_name(path: &Path, dir: bool) -> String {
    let s = path.to_string_lossy();
    let s = s.trim_start_matches('/');
    if dir {
        format!("{}/", s.trim_end_matches('/'))
    } else {
        s.to_string()
    }
}

/// Writes one layer tar. Entries are sorted by name, parents before children.
fn write_layer<W: Write>(source: &LayerSource, w: W) -> io::Result<()> {
    let mut out = tar::Builder::new(w);
    match source {
        LayerSource::Tree(root) => {
            let mut parents = BTreeSet::new();
            add_parents(root, &mut parents);
            for parent in parents {
                append_dir(&mut out, &entry_name(&parent, true), 0o755)?;
            }
            write_tree(&mut out, root)?;
        }
        LayerSource::Files { files, dirs, inline } => {
            // Every entry by name; parents of files get 0755 unless listed with their own mode.
            enum Entry<'a> {
                Dir(u32),
                File(&'a Path),
                Inline(&'a [u8]),
            }
            let mut entries: std::collections::BTreeMap<String, Entry<'_>> = std::collections::BTreeMap::new();
            let mut parents = BTreeSet::new();
            for (inside, _) in files {
                add_parents(inside, &mut parents);
            }
            for (inside, _) in inline {
                add_parents(inside, &mut parents);
            }
            for parent in parents {
                entries.insert(entry_name(&parent, true), Entry::Dir(0o755));
            }
            for (dir, mode) in dirs {
                entries.insert(entry_name(dir, true), Entry::Dir(*mode));
            }
            for (inside, host) in files {
                entries.insert(entry_name(inside, false), Entry::File(host));
            }
            for (inside, bytes) in inline {
                entries.insert(entry_name(inside, false), Entry::Inline(bytes));
            }
            for (name, entry) in entries {
                match entry {
                    Entry::Dir(mode) => append_dir(&mut out, &name, mode)?,
                    Entry::Inline(bytes) => append_bytes(&mut out, &name, bytes, 0o644)?,
                    Entry::File(host) => {
                        let file = std::fs::File::open(host)?;
                        let meta = file.metadata()?;
                        let mode = if meta.permissions().mode() & 0o111 != 0 { 0o755 } else { 0o644 };
                        let mut header = file_header(meta.len(), mode);
                        out.append_data(&mut header, &name, LimitedExact::new(file, meta.len()))?;
                    }
                }
            }
        }
    }
    out.into_inner()?.flush()
}

/// Every ancestor directory of `path` except `/`.
fn add_parents(path: &Path, parents: &mut BTreeSet<PathBuf>) {
    let mut p = path.parent();
    while let Some(dir) = p {
        if dir.as_os_str().is_empty() || dir == Path::new("/") {
            break;
        }
        parents.insert(dir.to_path_buf());
        p = dir.parent();
    }
}

/// Appends `path` and everything below it, sorted by name, keeping modes and symlinks.
fn write_tree<W: Write>(out: &mut tar::Builder<W>, path: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    let ft = meta.file_type();
    let mode = meta.mode() & 0o7777;
    if ft.is_symlink() {
        let target = std::fs::read_link(path)?;
        append_symlink(out, &entry_name(path, false), &target)
    } else if ft.is_dir() {
        append_dir(out, &entry_name(path, true), mode)?;
        let mut children: Vec<PathBuf> =
            std::fs::read_dir(path)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
        children.sort_by(|a, b| a.as_os_str().as_encoded_bytes().cmp(b.as_os_str().as_encoded_bytes()));
        for child in children {
            write_tree(out, &child)?;
        }
        Ok(())
    } else if ft.is_file() {
        let file = std::fs::File::open(path)?;
        let mut header = file_header(meta.len(), mode);
        out.append_data(&mut header, entry_name(path, false), LimitedExact::new(file, meta.len()))
    } else {
        Err(io::Error::other(format!("{}: neither a file, a directory nor a symlink", path.display())))
    }
}

/// Reads exactly `len` bytes, failing if the file is shorter (it changed under us).
struct LimitedExact<R> {
    inner: io::Take<R>,
    left: u64,
}

impl<R: Read> LimitedExact<R> {
    fn new(inner: R, len: u64) -> Self {
        LimitedExact { inner: inner.take(len), left: len }
    }
}

impl<R: Read> Read for LimitedExact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while it was read"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Passes writes through and hashes them.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Sha256::new(), len: 0 }
    }

    fn finish(self) -> (String, u64) {
        (format!("sha256:{}", hex(&self.hasher.finalize())), self.len)
    }

    fn finish_flush(mut self) -> io::Result<(String, u64)> {
        self.inner.flush()?;
        Ok(self.finish())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed tree: two files (one executable), a subdirectory and a symlink, with fixed modes.
    fn fixed_tree(root: &Path) -> PathBuf {
        let tree = root.join("abc-fixed");
        std::fs::create_dir_all(tree.join("bin")).unwrap();
        std::fs::create_dir_all(tree.join("share/doc")).unwrap();
        std::fs::write(tree.join("bin/prog"), b"#!/bin/sh\necho hi\n").unwrap();
        std::fs::write(tree.join("share/doc/readme"), b"fixed\n").unwrap();
        std::os::unix::fs::symlink("../share/doc/readme", tree.join("bin/readme")).unwrap();
        for (p, mode) in
            [("bin/prog", 0o555), ("share/doc/readme", 0o444), ("bin", 0o555), ("share/doc", 0o555), ("share", 0o555)]
        {
            std::fs::set_permissions(tree.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::fs::set_permissions(&tree, std::fs::Permissions::from_mode(0o555)).unwrap();
        tree
    }

    fn spec(tree: &Path) -> ImageSpec {
        ImageSpec {
            tag: "tg-nix/fixed:abc".into(),
            entrypoint: tree.join("bin/prog"),
            env: vec!["PATH=/bin".into()],
            layers: vec![
                base_layer(Vec::new()),
                LayerSource::Tree(tree.to_path_buf()),
                LayerSource::Files {
                    files: Vec::new(),
                    dirs: vec![(PathBuf::from("/data"), 0o700)],
                    inline: vec![(PathBuf::from("/data/x"), b"x".to_vec())],
                },
            ],
        }
    }

    fn entries(tar_bytes: &[u8]) -> Vec<(String, u64, u64, u64, u32)> {
        let mut archive = tar::Archive::new(tar_bytes);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.mtime().unwrap(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    h.mode().unwrap(),
                )
            })
            .collect()
    }

    fn files(tar_bytes: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
        let mut archive = tar::Archive::new(tar_bytes);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().to_string_lossy().into_owned();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (name, data)
            })
            .collect()
    }

    #[test]
    fn two_writes_are_byte_identical_sorted_and_zeroed() {
        let dir = tempfile::tempdir().unwrap();
        let tree = fixed_tree(dir.path());
        let image = Image::compute(&spec(&tree)).unwrap();
        let (a, b) = (dir.path().join("out/a.tar"), dir.path().join("out/b.tar"));
        image.write_tar(&a).unwrap();
        Image::compute(&spec(&tree)).unwrap().write_tar(&b).unwrap();
        let (a, b) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(a, b, "two writes differ");
        // No temporary layer files are left behind.
        assert_eq!(std::fs::read_dir(dir.path().join("out")).unwrap().count(), 2);

        let outer = entries(&a);
        let names: Vec<&str> = outer.iter().map(|e| e.0.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert!(outer.iter().all(|e| e.1 == 0 && e.2 == 0 && e.3 == 0), "{outer:?}");

        let blobs = files(&a);
        for layer in &image.layers {
            let bytes = &blobs[&blob_path(&layer.digest)];
            assert_eq!(format!("sha256:{}", hex(&Sha256::digest(bytes))), layer.digest);
            let inner = entries(bytes);
            let names: Vec<&str> = inner.iter().map(|e| e.0.as_str()).collect();
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(names, sorted, "layer entries sorted");
            assert!(inner.iter().all(|e| e.1 == 0 && e.2 == 0 && e.3 == 0), "{inner:?}");
        }
        // Modes and symlinks of the tree are kept.
        let tree_layer = entries(&blobs[&blob_path(&image.layers[1].digest)]);
        let prog = tree_layer.iter().find(|e| e.0.ends_with("bin/prog")).unwrap();
        assert_eq!(prog.4, 0o555);
        let tmp = entries(&blobs[&blob_path(&image.layers[0].digest)]);
        assert_eq!(tmp.iter().find(|e| e.0 == "tmp/").unwrap().4, 0o1777);
    }

    #[test]
    fn manifest_and_oci_index_reference_the_same_digests() {
        let dir = tempfile::tempdir().unwrap();
        let tree = fixed_tree(dir.path());
        let image = Image::compute(&spec(&tree)).unwrap();
        let path = dir.path().join("i.tar");
        image.write_tar(&path).unwrap();
        let blobs = files(&std::fs::read(&path).unwrap());
        let manifest: serde_json::Value = serde_json::from_slice(&blobs["manifest.json"]).unwrap();
        assert_eq!(manifest[0]["Config"], blob_path(&image.id));
        assert_eq!(manifest[0]["RepoTags"][0], "tg-nix/fixed:abc");
        let docker_layers: Vec<String> =
            manifest[0]["Layers"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();

        let index: serde_json::Value = serde_json::from_slice(&blobs["index.json"]).unwrap();
        let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
        let oci: serde_json::Value = serde_json::from_slice(&blobs[&blob_path(manifest_digest)]).unwrap();
        assert_eq!(oci["config"]["digest"], image.id.as_str());
        let oci_layers: Vec<String> =
            oci["layers"].as_array().unwrap().iter().map(|l| blob_path(l["digest"].as_str().unwrap())).collect();
        assert_eq!(docker_layers, oci_layers);
        let config: serde_json::Value = serde_json::from_slice(&blobs[&blob_path(&image.id)]).unwrap();
        let diff_ids: Vec<String> =
            config["rootfs"]["diff_ids"].as_array().unwrap().iter().map(|d| blob_path(d.as_str().unwrap())).collect();
        assert_eq!(diff_ids, docker_layers);
        assert_eq!(format!("sha256:{}", hex(&Sha256::digest(&blobs[&blob_path(&image.id)]))), image.id);
        assert!(blobs.contains_key("oci-layout"));
    }

    /// The id is a pure function of the tree and the spec: pinned, so any change to the layout
    /// (ordering, headers, config fields) shows up here and is deliberate.
    #[test]
    fn golden_image_id() {
        let dir = tempfile::tempdir().unwrap();
        // The tree's absolute path is part of its layer; fix it under the temp dir's name.
        let tree = fixed_tree(dir.path());
        let moved = PathBuf::from("/tmp/tg-nix-golden-image").join("abc-fixed");
        let _ = std::fs::remove_dir_all(moved.parent().unwrap());
        std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
        std::process::Command::new("cp").arg("-a").arg(&tree).arg(&moved).status().unwrap();
        let id = Image::compute(&spec(&moved)).unwrap().id;
        let _ = Command::new("chmod").args(["-R", "u+w"]).arg(moved.parent().unwrap()).status();
        let _ = std::fs::remove_dir_all(moved.parent().unwrap());
        if architecture() == "amd64" {
            assert_eq!(id, "sha256:6b96be8f012c4ff5dee61560e3465a214e6bddd9ef7d6138bc7754671878d0b0");
        }
    }

    #[test]
    fn libraries_of_a_dynamic_program() {
        // The test binary itself is a dynamic glibc program.
        let me = std::env::current_exe().unwrap();
        let libs = runtime_libs(&me, HOST_LIB_DIRS).unwrap();
        let inside: Vec<String> = libs.iter().map(|(i, _)| i.display().to_string()).collect();
        assert!(inside.iter().any(|p| p.ends_with("/libc.so.6")), "{inside:?}");
        assert!(inside.iter().any(|p| p.contains("ld-linux")), "{inside:?}");
        // A script needs nothing.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s"), b"#!/bin/sh\n").unwrap();
        assert!(runtime_libs(&dir.path().join("s"), HOST_LIB_DIRS).unwrap().is_empty());
    }

    #[test]
    fn names() {
        assert_eq!(repository_name("Ping_Rust"), "ping_rust");
        assert_eq!(repository_name("a b/c"), "a-b-c");
        assert_eq!(repository_name("--"), "plan");
        assert_eq!(store_path_of(Path::new("/nix/store/abc-x/bin/p")), Some(PathBuf::from("/nix/store/abc-x")));
        assert_eq!(store_path_of(Path::new("/usr/bin/p")), None);
    }
}
