//! Where a model comes from. `--model` takes a path (a checkpoint directory in the Hugging Face
//! layout, or a GGUF file), `hf:ORG/NAME[@REVISION][/FILE.gguf]` (downloaded from the Hugging Face
//! hub into its usual cache, through the `hf-hub` crate: `HF_HOME` for the cache, `HF_ENDPOINT`
//! for a mirror, `HF_TOKEN` or the cache's token file for gated repositories), or
//! `ollama:NAME[:TAG]` (a model Ollama has already pulled: its manifest under `~/.ollama/models`
//! or `$OLLAMA_MODELS` names the model layer, a GGUF blob). `ghostline-server models` lists what
//! is available without a download.
//!
//! Invariant: resolving never changes what is on disk except the hub's own cache, and every
//! failure names the model spec and what to do next.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use serde::Deserialize;

/// A parsed `--model` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// A checkpoint directory or a `.gguf` file.
    Path(PathBuf),
    /// A Hugging Face hub repository: the whole checkpoint, or one GGUF file of it.
    Hub { repo: String, revision: String, file: Option<String> },
    /// A model Ollama has pulled: `name` as Ollama spells it (`qwen2.5-coder`, `user/model`,
    /// `host/user/model`), `tag` defaulting to `latest`.
    Ollama { name: String, tag: String },
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSpec::Path(p) => write!(f, "{}", p.display()),
            ModelSpec::Hub { repo, revision, file } => {
                write!(f, "hf:{repo}")?;
                if revision != "main" {
                    write!(f, "@{revision}")?;
                }
                if let Some(file) = file {
                    write!(f, "/{file}")?;
                }
                Ok(())
            }
            ModelSpec::Ollama { name, tag } => write!(f, "ollama:{name}:{tag}"),
        }
    }
}

impl ModelSpec {
    /// Parses a `--model` value. Anything without an `hf:` or `ollama:` prefix is a path.
    pub fn parse(s: &str) -> anyhow::Result<ModelSpec> {
        if let Some(rest) = s.strip_prefix("hf:") {
            return parse_hub(rest).with_context(|| {
                format!("--model {s}: write a hub model as hf:ORG/NAME, hf:ORG/NAME@REVISION or hf:ORG/NAME/FILE.gguf")
            });
        }
        if let Some(rest) = s.strip_prefix("ollama:") {
            return parse_ollama(rest)
                .with_context(|| format!("--model {s}: write an Ollama model as ollama:NAME or ollama:NAME:TAG"));
        }
        Ok(ModelSpec::Path(PathBuf::from(s)))
    }
}

fn valid_part(p: &str) -> bool {
    !p.is_empty()
        && p != "."
        && p != ".."
        && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn parse_hub(rest: &str) -> anyhow::Result<ModelSpec> {
    let mut parts = rest.splitn(3, '/');
    let org = parts.next().unwrap_or_default();
    let name_rev = parts.next().ok_or_else(|| anyhow!("no repository name after the organisation"))?;
    let file = parts.next().map(str::to_string);
    let (name, revision) = match name_rev.split_once('@') {
        Some((n, r)) => (n, r.to_string()),
        None => (name_rev, "main".to_string()),
    };
    if !valid_part(org) || !valid_part(name) {
        bail!("{org:?}/{name:?} is not a repository id (letters, digits, '-', '_', '.')");
    }
    if revision.is_empty() || revision.contains("..") {
        bail!("{revision:?} is not a revision");
    }
    if let Some(f) = &file {
        if !f.ends_with(".gguf") || f.split('/').any(|p| !valid_part(p)) {
            bail!("{f:?} is not a GGUF file name in the repository (FILE.gguf)");
        }
    }
    Ok(ModelSpec::Hub { repo: format!("{org}/{name}"), revision, file })
}

fn parse_ollama(rest: &str) -> anyhow::Result<ModelSpec> {
    // A tag follows the last ':' unless that ':' belongs to a registry host's port.
    let (name, tag) = match rest.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, t),
        _ => (rest, "latest"),
    };
    if name.split('/').count() > 3 || !name.split('/').all(valid_part) || !valid_part(tag) {
        bail!("{rest:?} is not an Ollama model name");
    }
    Ok(ModelSpec::Ollama { name: name.to_string(), tag: tag.to_string() })
}

/// Turns a spec into a local path (a directory or a `.gguf` file), downloading hub models that
/// are not in the cache yet. `progress` shows a progress bar (on a terminal).
pub fn resolve(spec: &ModelSpec, progress: bool) -> anyhow::Result<PathBuf> {
    match spec {
        ModelSpec::Path(p) => {
            if p.is_dir() || (p.is_file() && is_gguf(p)) {
                Ok(p.clone())
            } else if p.is_file() {
                bail!(
                    "model {}: a file must be a GGUF file (*.gguf); a Hugging Face checkpoint is a directory \
                     (config.json, model.safetensors, tokenizer.json)",
                    p.display()
                )
            } else {
                bail!(
                    "model {} not found: --model takes a checkpoint directory in the Hugging Face layout \
                     (config.json, model.safetensors, tokenizer.json), a .gguf file, hf:ORG/NAME or ollama:NAME[:TAG] \
                     (`ghostline-server models` lists what is here)",
                    p.display()
                )
            }
        }
        ModelSpec::Hub { repo, revision, file } => hub::fetch(repo, revision, file.as_deref(), progress)
            .with_context(|| format!("--model {spec}: downloading from {}", hub::endpoint())),
        ModelSpec::Ollama { name, tag } => {
            ollama_blob(&ollama_dir(), name, tag).with_context(|| format!("--model {spec}"))
        }
    }
}

fn is_gguf(p: &Path) -> bool {
    ghostline_engine::gguf::is_gguf(p)
}

// ---- Ollama ----------------------------------------------------------------------------------

const OLLAMA_REGISTRY: &str = "registry.ollama.ai";
const OLLAMA_MODEL_LAYER: &str = "application/vnd.ollama.image.model";

/// Ollama's models directory: `$OLLAMA_MODELS`, else `~/.ollama/models`.
pub fn ollama_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("OLLAMA_MODELS").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    home().join(".ollama/models")
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."))
}

#[derive(Deserialize)]
struct OllamaManifest {
    #[serde(default)]
    layers: Vec<OllamaLayer>,
}

#[derive(Deserialize)]
struct OllamaLayer {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
}

/// The manifest path of `name:tag`: `host/namespace/model/tag` under `manifests`, with Ollama's
/// defaults (`registry.ollama.ai`, `library`) for the parts left out.
fn ollama_manifest_path(dir: &Path, name: &str, tag: &str) -> PathBuf {
    let parts: Vec<&str> = name.split('/').collect();
    let (host, ns, model) = match parts.as_slice() {
        [m] => (OLLAMA_REGISTRY, "library", *m),
        [ns, m] => (OLLAMA_REGISTRY, *ns, *m),
        [h, ns, m, ..] => (*h, *ns, *m),
        [] => (OLLAMA_REGISTRY, "library", ""),
    };
    dir.join("manifests").join(host).join(ns).join(model).join(tag)
}

/// The GGUF blob of a pulled Ollama model.
pub fn ollama_blob(dir: &Path, name: &str, tag: &str) -> anyhow::Result<PathBuf> {
    let manifest = ollama_manifest_path(dir, name, tag);
    let text = std::fs::read_to_string(&manifest).map_err(|e| {
        anyhow!(
            "Ollama has no model {name}:{tag} here (no manifest at {}: {e}); pull it with `ollama pull {name}:{tag}`, \
             or point OLLAMA_MODELS at Ollama's models directory",
            manifest.display()
        )
    })?;
    let m: OllamaManifest = serde_json::from_str(&text)
        .with_context(|| format!("the Ollama manifest {} is not valid JSON", manifest.display()))?;
    let layer = m.layers.iter().find(|l| l.media_type == OLLAMA_MODEL_LAYER).ok_or_else(|| {
        anyhow!("the Ollama manifest {} has no model layer ({OLLAMA_MODEL_LAYER})", manifest.display())
    })?;
    let hex = layer
        .digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
        .ok_or_else(|| {
            anyhow!("the model layer's digest {:?} in {} is not sha256:HEX", layer.digest, manifest.display())
        })?;
    let blob = dir.join("blobs").join(format!("sha256-{hex}"));
    if !blob.is_file() {
        bail!(
            "the model layer {} of {name}:{tag} is missing (a pull that did not finish?); run `ollama pull {name}:{tag}` again",
            blob.display()
        );
    }
    Ok(blob)
}

/// Every pulled Ollama model, as `(name:tag, blob)`.
fn ollama_models(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let root = dir.join("manifests");
    for host in read_dirs(&root) {
        for ns in read_dirs(&host) {
            for model in read_dirs(&ns) {
                for tag in read_files(&model) {
                    let (h, n, m, t) = (file_name(&host), file_name(&ns), file_name(&model), file_name(&tag));
                    let name = match (h.as_str(), n.as_str()) {
                        (OLLAMA_REGISTRY, "library") => m,
                        (OLLAMA_REGISTRY, _) => format!("{n}/{m}"),
                        _ => format!("{h}/{n}/{m}"),
                    };
                    if let Ok(blob) = ollama_blob(dir, &name, &t) {
                        out.push((format!("{name}:{t}"), blob));
                    }
                }
            }
        }
    }
    out
}

fn read_dirs(d: &Path) -> Vec<PathBuf> {
    read_entries(d, true)
}

fn read_files(d: &Path) -> Vec<PathBuf> {
    read_entries(d, false)
}

fn read_entries(d: &Path, dirs: bool) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(d)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| if dirs { p.is_dir() } else { p.is_file() })
        .collect();
    v.sort();
    v
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

// ---- Without weights -------------------------------------------------------------------------

/// What the gateway needs of a model that an upstream runs: the EOS ids beside the tokenizer's
/// own and the context length, when the files say.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelMeta {
    pub eos_ids: Vec<u32>,
    pub context_length: Option<usize>,
}

/// Reads `ModelMeta` without touching any weights: from a GGUF file's metadata, a checkpoint
/// directory's `config.json` (any architecture: the upstream runs it, not this engine), or,
/// in a directory with only the tokenizer files, `tokenizer_config.json`'s `model_max_length`.
pub fn meta_without_weights(path: &Path) -> anyhow::Result<ModelMeta> {
    if path.is_file() {
        let f = ghostline_engine::gguf::GgufFile::open(path).with_context(|| format!("reading {}", path.display()))?;
        let arch = match f.get("general.architecture") {
            Some(ghostline_engine::gguf::Value::Str(a)) => a.clone(),
            _ => bail!("{}: the GGUF file names no general.architecture", path.display()),
        };
        let context_length = f.get(&format!("{arch}.context_length")).and_then(|v| v.as_u64()).map(|n| n as usize);
        return Ok(ModelMeta { eos_ids: Vec::new(), context_length });
    }
    if !path.join("tokenizer.json").is_file() && !path.join("config.json").is_file() {
        bail!(
            "{}: neither a checkpoint nor a tokenizer directory (it needs tokenizer.json, beside it optionally \
             tokenizer_config.json, generation_config.json and config.json)",
            path.display()
        );
    }
    let read = |name: &str| -> anyhow::Result<Option<serde_json::Value>> {
        let p = path.join(name);
        match std::fs::read_to_string(&p) {
            Ok(t) => Ok(Some(serde_json::from_str(&t).with_context(|| format!("{} is not valid JSON", p.display()))?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    };
    let mut meta = ModelMeta::default();
    if let Some(c) = read("config.json")? {
        meta.eos_ids = match c.get("eos_token_id") {
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|n| n as u32).collect(),
            Some(v) => v.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
            None => Vec::new(),
        };
        let keys = ["max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"];
        meta.context_length = keys.iter().find_map(|k| c.get(*k)?.as_u64()).map(|n| n as usize);
    }
    if meta.context_length.is_none() {
        // transformers writes a huge sentinel when the tokenizer has no limit of its own.
        let t = read("tokenizer_config.json")?;
        let n = t.as_ref().and_then(|t| t.get("model_max_length")?.as_u64()).filter(|&n| n > 0 && n <= 1 << 24);
        meta.context_length = n.map(|n| n as usize);
    }
    Ok(meta)
}

// ---- Listing ---------------------------------------------------------------------------------

/// One model available without a download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalModel {
    /// What to pass to `--model`.
    pub spec: String,
    pub path: PathBuf,
}

/// The models `--model` can open here without a download: the bundled one, the hub cache's
/// complete snapshots (and their GGUF files), and Ollama's pulled models.
pub fn list_local(bundled: &Path) -> Vec<LocalModel> {
    let mut out = Vec::new();
    if bundled.join("config.json").is_file() {
        out.push(LocalModel { spec: "(bundled)".into(), path: bundled.to_path_buf() });
    }
    out.extend(hub::cached_models());
    for (name, blob) in ollama_models(&ollama_dir()) {
        out.push(LocalModel { spec: format!("ollama:{name}"), path: blob });
    }
    out
}

// ---- Hugging Face hub ------------------------------------------------------------------------

mod hub {
    use super::*;
    use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
    use hf_hub::{Cache, Repo, RepoType};

    /// The files of a checkpoint beside its weights; only `config.json` is required.
    const REQUIRED: &[&str] = &["config.json"];
    const OPTIONAL: &[&str] = &[
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "special_tokens_map.json",
        "ghostline.json",
    ];
    const INDEX: &str = "model.safetensors.index.json";
    const SINGLE: &str = "model.safetensors";

    pub fn endpoint() -> String {
        std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()).unwrap_or_else(|| "https://huggingface.co".into())
    }

    fn api(progress: bool) -> anyhow::Result<hf_hub::api::sync::Api> {
        // Retries resume from the bytes already written, so a dropped connection costs little.
        let mut b = ApiBuilder::from_env().with_progress(progress).with_retries(3);
        if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
            b = b.with_token(Some(token));
        }
        b.build().context("could not set up the hub client")
    }

    fn not_found(e: &ApiError) -> bool {
        matches!(e, ApiError::RequestError(r) if matches!(**r, ureq::Error::Status(404, _)))
    }

    fn explain(e: ApiError, file: &str) -> anyhow::Error {
        match &e {
            ApiError::RequestError(r) => match &**r {
                ureq::Error::Status(401 | 403, _) => {
                    anyhow!("{file}: the hub refused access (a gated or private repository needs HF_TOKEN)")
                }
                ureq::Error::Status(404, _) => anyhow!("{file}: no such file or repository on the hub"),
                ureq::Error::Status(code, _) => anyhow!("{file}: the hub answered {code}"),
                ureq::Error::Transport(t) => {
                    anyhow!("{file}: could not reach the hub ({t}); set HF_ENDPOINT for a mirror, or use a local path")
                }
            },
            _ => anyhow!("{file}: {e}"),
        }
    }

    fn get(repo: &ApiRepo, file: &str) -> anyhow::Result<PathBuf> {
        repo.get(file).map_err(|e| explain(e, file))
    }

    fn get_optional(repo: &ApiRepo, file: &str) -> anyhow::Result<Option<PathBuf>> {
        match repo.get(file) {
            Ok(p) => Ok(Some(p)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(explain(e, file)),
        }
    }

    #[derive(Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }

    /// Downloads (or finds in the cache) what a checkpoint needs and returns its snapshot
    /// directory, or the one GGUF file asked for. Interrupted downloads resume.
    pub fn fetch(repo_id: &str, revision: &str, file: Option<&str>, progress: bool) -> anyhow::Result<PathBuf> {
        let spec = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string());
        // Whatever the cache already holds complete needs no network (and works offline).
        let cached = Cache::from_env().repo(spec.clone());
        if let Some(file) = file {
            if let Some(p) = cached.get(file) {
                return Ok(p);
            }
        } else if let (Some(config), Some(_)) = (cached.get("config.json"), cached.get("tokenizer.json")) {
            let dir = config.parent().map(Path::to_path_buf);
            if let Some(dir) = dir.filter(|d| weights_complete(d)) {
                return Ok(dir);
            }
        }
        let api = api(progress)?;
        let repo = api.repo(spec);
        if let Some(file) = file {
            return get(&repo, file);
        }
        let mut last = None;
        for f in REQUIRED {
            last = Some(get(&repo, f)?);
        }
        for f in OPTIONAL {
            get_optional(&repo, f)?;
        }
        match get_optional(&repo, INDEX)? {
            Some(index) => {
                let text = std::fs::read_to_string(&index)?;
                let idx: Index = serde_json::from_str(&text)
                    .with_context(|| format!("{INDEX} of {repo_id} is not a safetensors index"))?;
                let mut shards: Vec<&String> = idx.weight_map.values().collect();
                shards.sort();
                shards.dedup();
                for s in shards {
                    if s.contains("..") || s.starts_with('/') {
                        bail!("{INDEX} of {repo_id} names a shard outside the repository: {s:?}");
                    }
                    get(&repo, s)?;
                }
            }
            None => {
                get_optional(&repo, SINGLE)?.ok_or_else(|| {
                    anyhow!(
                        "{repo_id} has no {SINGLE} or {INDEX}; for a repository of GGUF files name one: \
                         hf:{repo_id}/FILE.gguf"
                    )
                })?;
            }
        }
        let dir = last
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .ok_or_else(|| anyhow!("the cache path of config.json has no parent"))?;
        if !dir.join("tokenizer.json").exists() {
            bail!("{repo_id} has no tokenizer.json, which the server needs");
        }
        Ok(dir)
    }

    /// Whether a snapshot directory holds its weights: the single file, or every shard its
    /// index names.
    fn weights_complete(dir: &Path) -> bool {
        if dir.join(SINGLE).is_file() {
            return true;
        }
        let Ok(text) = std::fs::read_to_string(dir.join(INDEX)) else { return false };
        let Ok(idx) = serde_json::from_str::<Index>(&text) else { return false };
        idx.weight_map.values().all(|s| !s.contains("..") && dir.join(s).is_file())
    }

    /// Complete snapshots in the hub cache (`$HF_HOME/hub`): directories with `config.json`,
    /// and GGUF files.
    pub fn cached_models() -> Vec<LocalModel> {
        let cache = Cache::from_env();
        let root = cache.path().clone();
        let mut out = Vec::new();
        for repo_dir in read_dirs(&root) {
            let Some(id) = file_name(&repo_dir).strip_prefix("models--").map(|s| s.replacen("--", "/", 1)) else {
                continue;
            };
            for snap in read_dirs(&repo_dir.join("snapshots")) {
                let rev = file_name(&snap);
                let short = &rev[..rev.len().min(12)];
                if snap.join("config.json").is_file() && snap.join("tokenizer.json").exists() && weights_complete(&snap)
                {
                    out.push(LocalModel { spec: format!("hf:{id}@{short}"), path: snap.clone() });
                }
                for p in read_files(&snap).into_iter().filter(|p| is_gguf(p)) {
                    out.push(LocalModel { spec: format!("hf:{id}@{short}/{}", file_name(&p)), path: p });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        let cases = [
            ("hf:Qwen/Qwen2.5-Coder-1.5B", "hf:Qwen/Qwen2.5-Coder-1.5B"),
            ("hf:Qwen/Qwen2.5-Coder-1.5B@v1.0", "hf:Qwen/Qwen2.5-Coder-1.5B@v1.0"),
            ("hf:org/repo-GGUF/model-q4_k_m.gguf", "hf:org/repo-GGUF/model-q4_k_m.gguf"),
            ("ollama:qwen2.5-coder", "ollama:qwen2.5-coder:latest"),
            ("ollama:qwen2.5-coder:1.5b", "ollama:qwen2.5-coder:1.5b"),
            ("ollama:user/model:q4", "ollama:user/model:q4"),
            ("some/dir", "some/dir"),
        ];
        for (input, shown) in cases {
            assert_eq!(ModelSpec::parse(input).unwrap().to_string(), shown, "{input}");
        }
    }

    #[test]
    fn bad_specs_are_refused_with_the_form_to_use() {
        for bad in [
            "hf:",
            "hf:onlyorg",
            "hf:../x/y",
            "hf:a/b/notgguf.bin",
            "hf:a/b/../../x.gguf",
            "hf:a/b@",
            "ollama:",
            "ollama:a/b/c/d",
            "ollama:x:..",
        ] {
            let e = ModelSpec::parse(bad).unwrap_err();
            let msg = format!("{e:#}");
            assert!(msg.contains("--model"), "{bad}: {msg}");
        }
    }

    fn ollama_layout(dir: &Path, name_path: &str, tag: &str, blob: Option<&[u8]>) -> String {
        let hex = "ab".repeat(32);
        let m = dir.join("manifests").join(name_path);
        std::fs::create_dir_all(&m).unwrap();
        let manifest = format!(
            r#"{{"schemaVersion":2,"layers":[{{"mediaType":"application/vnd.ollama.image.template","digest":"sha256:{}"}},{{"mediaType":"{OLLAMA_MODEL_LAYER}","digest":"sha256:{hex}","size":4}}]}}"#,
            "cd".repeat(32)
        );
        std::fs::write(m.join(tag), manifest).unwrap();
        std::fs::create_dir_all(dir.join("blobs")).unwrap();
        if let Some(b) = blob {
            std::fs::write(dir.join("blobs").join(format!("sha256-{hex}")), b).unwrap();
        }
        hex
    }

    #[test]
    fn ollama_models_resolve_to_their_model_layer() {
        let t = tempdir();
        let hex = ollama_layout(&t, "registry.ollama.ai/library/tiny", "latest", Some(b"GGUF"));
        let blob = ollama_blob(&t, "tiny", "latest").unwrap();
        assert_eq!(blob, t.join("blobs").join(format!("sha256-{hex}")));
        let listed = ollama_models(&t);
        assert_eq!(listed, vec![("tiny:latest".to_string(), blob)]);
        let e = format!("{:#}", ollama_blob(&t, "tiny", "7b").unwrap_err());
        assert!(e.contains("ollama pull tiny:7b"), "{e}");
        std::fs::remove_dir_all(&t).unwrap();
    }

    #[test]
    fn a_half_pulled_or_broken_ollama_model_is_explained() {
        let t = tempdir();
        ollama_layout(&t, "registry.ollama.ai/library/half", "latest", None);
        let e = format!("{:#}", ollama_blob(&t, "half", "latest").unwrap_err());
        assert!(e.contains("missing") && e.contains("ollama pull half:latest"), "{e}");
        let m = t.join("manifests/registry.ollama.ai/library/bad");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(m.join("latest"), "{not json").unwrap();
        let e = format!("{:#}", ollama_blob(&t, "bad", "latest").unwrap_err());
        assert!(e.contains("not valid JSON"), "{e}");
        std::fs::remove_dir_all(&t).unwrap();
    }

    #[test]
    fn a_path_that_is_neither_a_directory_nor_gguf_is_refused() {
        let t = tempdir();
        let f = t.join("weights.bin");
        std::fs::write(&f, b"x").unwrap();
        let e = format!("{:#}", resolve(&ModelSpec::Path(f), false).unwrap_err());
        assert!(e.contains("GGUF"), "{e}");
        let e = format!("{:#}", resolve(&ModelSpec::Path(t.join("nope")), false).unwrap_err());
        assert!(e.contains("not found") && e.contains("ghostline-server models"), "{e}");
        std::fs::remove_dir_all(&t).unwrap();
    }

    #[test]
    fn a_tokenizer_directory_gives_its_facts_without_weights() {
        let t = tempdir();
        let e = format!("{:#}", meta_without_weights(&t).unwrap_err());
        assert!(e.contains("tokenizer.json"), "{e}");
        std::fs::write(t.join("tokenizer.json"), "{}").unwrap();
        assert_eq!(meta_without_weights(&t).unwrap(), ModelMeta::default());
        std::fs::write(t.join("tokenizer_config.json"), r#"{"model_max_length": 1000000000000000019884624838656}"#)
            .unwrap();
        assert_eq!(meta_without_weights(&t).unwrap().context_length, None, "transformers' no-limit sentinel");
        std::fs::write(t.join("tokenizer_config.json"), r#"{"model_max_length": 8192}"#).unwrap();
        assert_eq!(meta_without_weights(&t).unwrap().context_length, Some(8192));
        std::fs::write(
            t.join("config.json"),
            r#"{"architectures":["Qwen3ForCausalLM"],"max_position_embeddings":32768,"eos_token_id":[1,2]}"#,
        )
        .unwrap();
        assert_eq!(meta_without_weights(&t).unwrap(), ModelMeta { eos_ids: vec![1, 2], context_length: Some(32768) });
        std::fs::write(t.join("config.json"), "{oops").unwrap();
        assert!(format!("{:#}", meta_without_weights(&t).unwrap_err()).contains("not valid JSON"));
        std::fs::remove_dir_all(&t).unwrap();
    }

    fn tempdir() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "ghostline-model-source-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
