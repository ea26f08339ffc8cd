//! Broken checkpoints are reported with the file and the problem, never a panic.

use std::path::{Path, PathBuf};

use ghostline_engine::{Checkpoint, Model, Weights};

fn copy_fixture(tag: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2-tied-bf16");
    let dst = std::env::temp_dir().join(format!("ghostline-bad-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

fn load_err(dir: &Path) -> String {
    match Checkpoint::load(dir) {
        Ok(_) => panic!("{} should not load", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn each_kind_of_damage_is_named() {
    let d = copy_fixture("missing-config");
    std::fs::remove_file(d.join("config.json")).unwrap();
    let e = load_err(&d);
    assert!(e.contains("config.json") && e.contains("No such file"), "{e}");

    let d = copy_fixture("malformed-config");
    std::fs::write(d.join("config.json"), "{\"model_type\": ").unwrap();
    let e = load_err(&d);
    assert!(e.contains("config.json") && e.contains("not valid JSON"), "{e}");

    let d = copy_fixture("model-type");
    edit_config(&d, |v| v["model_type"] = "mamba".into());
    let e = load_err(&d);
    assert!(e.contains("mamba") && e.contains("not supported"), "{e}");

    let d = copy_fixture("wrong-shape");
    edit_config(&d, |v| v["intermediate_size"] = 100.into());
    let e = load_err(&d);
    assert!(e.contains("model.safetensors") && e.contains("shape"), "{e}");

    let d = copy_fixture("missing-tensor");
    edit_config(&d, |v| v["num_hidden_layers"] = 3.into());
    let e = load_err(&d);
    assert!(e.contains("missing tensor model.layers.2"), "{e}");

    let d = copy_fixture("untied-without-head");
    edit_config(&d, |v| v["tie_word_embeddings"] = false.into());
    let e = load_err(&d);
    assert!(e.contains("lm_head.weight"), "{e}");

    let d = copy_fixture("truncated");
    let p = d.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let e = load_err(&d);
    assert!(e.contains("model.safetensors") && e.contains("truncated"), "{e}");

    let d = copy_fixture("no-weights");
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    let e = load_err(&d);
    assert!(e.contains("no model.safetensors"), "{e}");

    let d = copy_fixture("tokenizer");
    std::fs::write(d.join("tokenizer.json"), "{\"version\": \"1.0\", \"model\": 5}").unwrap();
    let e = load_err(&d);
    assert!(e.contains("tokenizer.json") && e.contains("tokenizer does not load"), "{e}");

    let e = load_err(Path::new("/nonexistent/ghostline/model"));
    assert!(e.contains("not found"), "{e}");
}

/// The tokenizer is read before any weight, once, for both the checkpoint and the default
/// weights' sample check: a broken one fails the load at once, by name, even where the weights
/// are damaged too; the model alone still loads without it (the check then skips its sample).
#[test]
fn a_broken_tokenizer_fails_the_load_before_the_weights_are_read() {
    let d = copy_fixture("tokenizer-first");
    std::fs::write(d.join("tokenizer.json"), "{\"version\": \"1.0\", \"model\": 5}").unwrap();
    let model = Model::load_as(&d, Weights::Auto).unwrap();
    assert!(model.agreement.is_none(), "{}", model.describe_weights());
    let e = match Checkpoint::load_as(&d, Weights::Auto) {
        Ok(_) => panic!("a broken tokenizer should not load"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("tokenizer.json") && e.contains("tokenizer does not load"), "{e}");

    let w = d.join("model.safetensors");
    let len = std::fs::metadata(&w).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&w).unwrap().set_len(len / 2).unwrap();
    for weights in [Weights::Auto, Weights::Stored] {
        let e = match Checkpoint::load_as(&d, weights) {
            Ok(_) => panic!("a broken tokenizer should not load"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("tokenizer.json"), "{weights}: {e}");
    }
}

#[test]
fn sharded_checkpoints_load_and_bad_indexes_are_named() {
    // Split the single file into two shards with an index, as transformers does for big models.
    let d = copy_fixture("sharded");
    let p = d.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut names: Vec<&String> = header.keys().filter(|k| *k != "__metadata__").collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (shard, part) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", shard + 1);
        let mut h = serde_json::Map::new();
        let mut buf = Vec::new();
        for name in part {
            let info = &header[*name];
            let off = info["data_offsets"].as_array().unwrap();
            let (a, b) = (off[0].as_u64().unwrap() as usize, off[1].as_u64().unwrap() as usize);
            let start = buf.len();
            buf.extend_from_slice(&data[a..b]);
            let mut info = info.clone();
            info["data_offsets"] = serde_json::json!([start, buf.len()]);
            h.insert((*name).clone(), info);
            weight_map.insert((*name).clone(), file.clone().into());
        }
        let hb = serde_json::to_vec(&h).unwrap();
        let mut out = (hb.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&hb);
        out.extend_from_slice(&buf);
        std::fs::write(d.join(&file), out).unwrap();
    }
    std::fs::remove_file(&p).unwrap();
    std::fs::write(
        d.join("model.safetensors.index.json"),
        serde_json::to_string(&serde_json::json!({"metadata": {}, "weight_map": weight_map})).unwrap(),
    )
    .unwrap();
    let sharded = Checkpoint::load(&d).unwrap();
    let single =
        Checkpoint::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2-tied-bf16")).unwrap();
    assert_eq!(sharded.model.embed_tokens, single.model.embed_tokens);
    assert_eq!(sharded.model.num_params(), single.model.num_params());

    std::fs::write(d.join("model.safetensors.index.json"), "{\"weight_map\": {\"x\": \"../../etc/passwd\"}}").unwrap();
    let e = load_err(&d);
    assert!(e.contains("outside the checkpoint"), "{e}");
    std::fs::remove_file(d.join("model-00002-of-00002.safetensors")).unwrap();
    std::fs::write(
        d.join("model.safetensors.index.json"),
        serde_json::to_string(&serde_json::json!({"weight_map": weight_map})).unwrap(),
    )
    .unwrap();
    let e = load_err(&d);
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
}
