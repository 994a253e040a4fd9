//! `famstream inspect`: what is in a GGUF file, for people (text) and machines (JSON).

use crate::error::Result;
use crate::gguf::{Array, GgufFile, Value};
use crate::model::HParams;
use crate::settings::FamSettings;
use serde_json::{json, Value as Json};
use std::fmt::Write;

/// Everything `inspect` reports, as JSON (the text form is rendered from it).
pub fn report(g: &GgufFile) -> Result<Json> {
    let arch = g.architecture().unwrap_or("unknown").to_string();
    let hparams = match HParams::from_gguf(g) {
        Ok(hp) => json!({
            "n_layer": hp.n_layer, "n_embd": hp.n_embd, "n_head": hp.n_head,
            "n_head_kv": hp.n_head_kv, "head_dim": hp.head_dim, "n_ff": hp.n_ff,
            "n_ctx_train": hp.n_ctx_train, "n_vocab": hp.n_vocab, "rms_eps": f32_json(hp.rms_eps),
            "rope_freq_base": f32_json(hp.rope_freq_base), "rope_dims": hp.rope_dims,
        }),
        Err(e) => json!({ "error": e.to_string() }),
    };
    let tok = |k: &str| g.get(&format!("tokenizer.ggml.{k}"));
    let n_tokens = match tok("tokens") {
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    };
    let n_merges = match tok("merges") {
        Some(Value::Array(Array::String(m))) => m.len(),
        _ => 0,
    };
    let id = |k: &str| tok(k).and_then(|v| v.as_int()).map(|i| i as i64);
    let tokenizer = json!({
        "model": tok("model").map(|v| match v { Value::String(s) => s.clone(), v => v.to_string() }),
        "pre": tok("pre").map(|v| match v { Value::String(s) => s.clone(), v => v.to_string() }),
        "n_tokens": n_tokens, "n_merges": n_merges,
        "bos_token_id": id("bos_token_id"), "eos_token_id": id("eos_token_id"),
        "has_chat_template": g.get("tokenizer.chat_template").is_some(),
    });
    // How chat prompts are rendered: the template itself, or the built-in family used instead.
    let token_text = |k: &str| -> String {
        match (tok("tokens"), id(k)) {
            (Some(Value::Array(Array::String(t))), Some(i)) => {
                t.get(i as usize).cloned().unwrap_or_default()
            }
            _ => String::new(),
        }
    };
    let template = g.opt_str("tokenizer.chat_template").ok().flatten();
    let (renderer, unusable) = crate::chat::ChatTemplate::for_model(
        template,
        &token_text("bos_token_id"),
        &token_text("eos_token_id"),
    );
    let chat = json!({
        "renderer": renderer.describe(),
        "template": template,
        "unusable": unusable,
    });
    let fam = FamSettings::from_gguf(g)?;
    let fam_json = fam_json(&fam, FamSettings::present_in(g));
    let is_adapter = g.opt_str(crate::adapter::KEY_GENERAL_TYPE).ok().flatten() == Some("adapter");
    let tensors: Vec<Json> = g
        .tensors()
        .iter()
        .map(|t| {
            json!({"name": t.name, "type": t.ty.name(), "shape": t.ne, "bytes": t.size,
                        "offset": g.tensor_file_offset(t)})
        })
        .collect();
    let (bytes, elems) = g.tensor_totals();
    let mut type_counts: Vec<(String, usize)> = Vec::new();
    for t in g.tensors() {
        match type_counts.iter_mut().find(|(n, _)| n == t.ty.name()) {
            Some(c) => c.1 += 1,
            None => type_counts.push((t.ty.name().to_string(), 1)),
        }
    }
    Ok(json!({
        "file": g.path().display().to_string(),
        "chat": chat,
        "file_bytes": g.bytes().len(),
        "gguf_version": g.version,
        "alignment": g.alignment,
        "architecture": arch,
        "name": g.opt_str("general.name").ok().flatten(),
        "hparams": hparams,
        "tokenizer": tokenizer,
        "fam": fam_json,
        "adapter": if is_adapter { crate::adapter::adapter_summary(g) } else { Json::Null },
        "n_kv": g.metadata().len(),
        "n_tensors": g.tensors().len(),
        "tensor_bytes": bytes,
        "n_params": elems,
        "bits_per_weight": if elems > 0 { bytes as f64 * 8.0 / elems as f64 } else { 0.0 },
        "tensor_types": type_counts.into_iter().map(|(n, c)| json!({"type": n, "count": c})).collect::<Vec<_>>(),
        "tensors": tensors,
    }))
}

fn fam_json(fam: &FamSettings, from_file: bool) -> Json {
    let mut j = fam.to_json();
    j["from_file"] = json!(from_file);
    j
}

/// `inspect MODEL --adapter FILE`: check the adapter against the model file (the same checks
/// as loading it) and add its summary to the report; `fam` becomes the stream defaults with the
/// adapter (its `fam.*` keys over the model file's).
pub fn add_adapter(r: &mut Json, model: &GgufFile, path: &std::path::Path) -> Result<()> {
    let hp = HParams::from_gguf(model)?;
    let a = crate::adapter::AdapterFile::open(path, model, &hp)?;
    let mut fam = FamSettings::default();
    fam.override_from(model)?;
    fam.override_from(&a.gguf)
        .map_err(|e| crate::Error::adapter(path, e.to_string()))?;
    fam.validate()
        .map_err(|e| crate::Error::adapter(path, e.to_string()))?;
    let from_file = FamSettings::present_in(model) || FamSettings::present_in(&a.gguf);
    r["fam"] = fam_json(&fam, from_file);
    let mut summary = a.summary();
    summary["file"] = json!(path.display().to_string());
    summary["base_fingerprint_of_model"] =
        json!(format!("{:016x}", crate::adapter::base_fingerprint(model)));
    summary["checked_against_model"] = json!(true);
    r["adapter"] = summary;
    Ok(())
}

/// The human-readable report.
pub fn render_text(r: &Json, show_tensors: bool) -> String {
    let mut o = String::new();
    let s = |v: &Json| match v {
        Json::String(s) => s.clone(),
        Json::Null => "-".into(),
        v => v.to_string(),
    };
    let _ = writeln!(
        o,
        "file          {} ({} bytes, GGUF v{}, alignment {})",
        s(&r["file"]),
        r["file_bytes"],
        r["gguf_version"],
        r["alignment"]
    );
    let _ = writeln!(
        o,
        "architecture  {}   name: {}",
        s(&r["architecture"]),
        s(&r["name"])
    );
    let hp = &r["hparams"];
    if let Some(e) = hp.get("error") {
        let _ = writeln!(o, "hparams       unavailable: {}", s(e));
    } else {
        let _ = writeln!(o, "layers        {}", hp["n_layer"]);
        let _ = writeln!(o, "n_embd        {}", hp["n_embd"]);
        let _ = writeln!(
            o,
            "heads         {} (KV heads {}, head dim {})",
            hp["n_head"], hp["n_head_kv"], hp["head_dim"]
        );
        let _ = writeln!(o, "n_ff          {}", hp["n_ff"]);
        let _ = writeln!(o, "context       {}", hp["n_ctx_train"]);
        let _ = writeln!(o, "vocab         {}", hp["n_vocab"]);
        let _ = writeln!(
            o,
            "rope          base {}, {} dims   rms eps {}",
            hp["rope_freq_base"], hp["rope_dims"], hp["rms_eps"]
        );
    }
    let t = &r["tokenizer"];
    let _ = writeln!(
        o,
        "tokenizer     {} (pre {}), {} tokens, {} merges, bos {}, eos {}, chat template: {}",
        s(&t["model"]),
        s(&t["pre"]),
        t["n_tokens"],
        t["n_merges"],
        s(&t["bos_token_id"]),
        s(&t["eos_token_id"]),
        if t["has_chat_template"] == true {
            "yes"
        } else {
            "no"
        }
    );
    let c = &r["chat"];
    let _ = writeln!(
        o,
        "chat          {}{}",
        s(&c["renderer"]),
        match (&c["template"], &c["unusable"]) {
            (Json::String(t), Json::Null) => format!(", {} chars (--json shows it)", t.len()),
            (_, Json::String(why)) => format!(" (the model's template cannot be used: {why})"),
            _ => " (the file has no template)".to_string(),
        }
    );
    let f = &r["fam"];
    let _ = writeln!(
        o,
        "fam           policy {}, B {}, M {}, F {}, sinks {}, init {}, query pos {} ({})",
        s(&f["policy"]),
        f["block_size"],
        f["mem_blocks"],
        f["fam_len"],
        f["sinks"],
        s(&f["init"]),
        s(&f["query_pos"]),
        if f["from_file"] == true {
            "from file"
        } else {
            "defaults"
        }
    );
    let a = &r["adapter"];
    if !a.is_null() {
        let list = |v: &Json| -> String {
            v.as_array()
                .map(|x| x.iter().map(s).collect::<Vec<_>>().join(","))
                .unwrap_or_default()
        };
        let _ = writeln!(
            o,
            "adapter       {}{} ({}), {} LoRA pairs, rank {}, alpha {}, targets {}, layers {}",
            a.get("file")
                .map(|f| format!("{} ", s(f)))
                .unwrap_or_default(),
            s(&a["adapter_type"]),
            if a["checked_against_model"] == true {
                "checked against the model"
            } else {
                "not checked against a model"
            },
            a["pairs"],
            list(&a["ranks"]),
            s(&a["alpha"]),
            list(&a["targets"]),
            list(&a["layers"]),
        );
        let settings: Vec<String> = a["fam_settings"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k}={}", s(v))).collect())
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "adapter fam   init memory {}, settings: {}, base fingerprint {}{}",
            s(&a["init_memory"]),
            if settings.is_empty() {
                "none".to_string()
            } else {
                settings.join(" ")
            },
            s(&a["base_fingerprint"]),
            match a["kept_heads"].as_u64() {
                Some(n) =>
                    format!(", kept tokens seen by {n} (layer, head) pairs (fam.kept_heads)"),
                None => String::new(),
            },
        );
    }
    let types: Vec<String> = r["tensor_types"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| format!("{} x{}", s(&x["type"]), x["count"]))
                .collect()
        })
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "tensors       {} ({}), {} params, {} bytes, {:.3} bits/weight",
        r["n_tensors"],
        types.join(", "),
        r["n_params"],
        r["tensor_bytes"],
        r["bits_per_weight"].as_f64().unwrap_or(0.0)
    );
    if show_tensors {
        let _ = writeln!(
            o,
            "\n{:<40} {:<8} {:<22} {:>12}",
            "name", "type", "shape", "bytes"
        );
        for t in r["tensors"].as_array().into_iter().flatten() {
            let shape: Vec<String> = t["shape"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| d.to_string())
                .collect();
            let _ = writeln!(
                o,
                "{:<40} {:<8} {:<22} {:>12}",
                s(&t["name"]),
                s(&t["type"]),
                shape.join(" x "),
                t["bytes"]
            );
        }
    }
    o
}

/// An f32 as the shortest decimal that round-trips it (1e-5, not 9.999999747378752e-6).
fn f32_json(x: f32) -> Json {
    x.to_string()
        .parse::<f64>()
        .map(Json::from)
        .unwrap_or(Json::Null)
}
