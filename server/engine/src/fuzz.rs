//! Fuzz targets of the checkpoint parsers (driven by `ghostline-fuzz`): the safetensors header
//! and the GGUF header, metadata and tensor table, on bytes as a file would hold them. A parse
//! either refuses the bytes with an `EngineError` or returns tensors whose byte ranges lie
//! inside the buffer; it never panics or allocates for a count the bytes cannot hold.

use std::path::Path;

const PATH: &str = "fuzz.bin";

fn safetensors(header: &str, data: usize) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend(std::iter::repeat_n(0x3f, data));
    b
}

#[test]
fn fuzz_safetensors_headers() {
    let seeds = [
        safetensors(
            r#"{"__metadata__":{"format":"pt"},"model.embed_tokens.weight":{"dtype":"BF16","shape":[4,2],"data_offsets":[0,16]},"lm_head.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[16,32]}}"#,
            32,
        ),
        safetensors(r#"{"x":{"dtype":"F16","shape":[],"data_offsets":[0,2]}}"#, 2),
        safetensors("{}", 0),
    ];
    let seeds: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    for s in &seeds {
        assert!(crate::weights::parse_header(s, Path::new(PATH)).is_ok(), "the seeds are valid");
    }
    let words: &[&[u8]] = &[
        b"\"dtype\"",
        b"\"shape\"",
        b"\"data_offsets\"",
        b"\"F32\"",
        b"\"F16\"",
        b"\"BF16\"",
        b"\"I8\"",
        b"[0,0]",
        b"[18446744073709551615,0]",
        b"[4294967296,4294967296]",
        b"\"__metadata__\"",
        b"null",
        b"[]",
        b"{}",
    ];
    ghostline_fuzz::run("safetensors_header", &seeds, words, 5_000, |buf| {
        if let Ok(tensors) = crate::weights::parse_header(buf, Path::new(PATH)) {
            for (name, t) in tensors {
                assert!(t.start <= t.end && t.end <= buf.len(), "{name}: {}..{} of {}", t.start, t.end, buf.len());
                let numel: usize = t.shape.iter().product();
                assert!(numel <= buf.len(), "{name}: {numel} elements in {} bytes", buf.len());
            }
        }
    });
}

/// A GGUF file: version, metadata (key, type id, value bytes) and tensors (name, dims, type
/// id, offset), data aligned to 32 bytes.
fn gguf(version: u32, kvs: &[(&str, u32, Vec<u8>)], tensors: &[(&str, &[u64], u32, u64)], data: usize) -> Vec<u8> {
    let s = |b: &mut Vec<u8>, t: &str| {
        b.extend((t.len() as u64).to_le_bytes());
        b.extend(t.as_bytes());
    };
    let mut b = b"GGUF".to_vec();
    b.extend(version.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((kvs.len() as u64).to_le_bytes());
    for (k, ty, v) in kvs {
        s(&mut b, k);
        b.extend(ty.to_le_bytes());
        b.extend(v);
    }
    for (name, dims, ty, offset) in tensors {
        s(&mut b, name);
        b.extend((dims.len() as u32).to_le_bytes());
        for d in *dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(ty.to_le_bytes());
        b.extend(offset.to_le_bytes());
    }
    b.resize(b.len().div_ceil(32) * 32, 0);
    b.extend(std::iter::repeat_n(0x11, data));
    b
}

fn gguf_str(t: &str) -> Vec<u8> {
    let mut b = (t.len() as u64).to_le_bytes().to_vec();
    b.extend(t.as_bytes());
    b
}

#[test]
fn fuzz_gguf_headers() {
    let tokens: Vec<u8> = {
        // An array (type 9) of 3 strings (type 8).
        let mut b = 8u32.to_le_bytes().to_vec();
        b.extend(3u64.to_le_bytes());
        for t in ["<s>", "a", "\u{0120}b"] {
            b.extend(gguf_str(t));
        }
        b
    };
    let seeds = [
        gguf(
            3,
            &[
                ("general.architecture", 8, gguf_str("llama")),
                ("general.alignment", 4, 32u32.to_le_bytes().to_vec()),
                ("llama.context_length", 4, 2048u32.to_le_bytes().to_vec()),
                ("llama.rope.freq_base", 6, 10000f32.to_le_bytes().to_vec()),
                ("tokenizer.ggml.tokens", 9, tokens),
                ("general.quantized", 7, vec![1]),
            ],
            &[("token_embd.weight", &[32, 2], 0, 0), ("blk.0.attn_q.weight", &[32, 1], 8, 256)],
            256 + 34,
        ),
        gguf(2, &[("general.name", 8, gguf_str("x"))], &[("output.weight", &[32, 1, 1, 1], 2, 0)], 20),
        gguf(3, &[], &[], 0),
    ];
    let seeds: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    for s in &seeds {
        if let Err(e) = crate::gguf::parse(s, Path::new(PATH)) {
            panic!("the seeds are valid: {e}");
        }
    }
    let words: &[&[u8]] =
        &[b"GGUF", b"general.alignment", b"tokenizer.ggml.", b"\x09\x00\x00\x00", b"\x08\x00\x00\x00"];
    ghostline_fuzz::run("gguf_header", &seeds, words, 5_000, |buf| {
        if let Ok((version, _metadata, tensors)) = crate::gguf::parse(buf, Path::new(PATH)) {
            assert!((2..=3).contains(&version));
            for (name, t) in tensors {
                assert!(t.start <= t.end && t.end <= buf.len(), "{name}: {}..{} of {}", t.start, t.end, buf.len());
            }
        }
    });
}
