//! `famstream convert`: convert a Hugging Face checkpoint directory or a GGUF file into a (quantized) GGUF.

use super::common::*;
use clap::Args;
use famstream::gguf::GgufFile;
use famstream::settings::FamSettings;
use famstream::Result;
use std::path::PathBuf;

#[derive(Args)]
pub struct ConvertArgs {
    /// HF model directory (config.json, tokenizer.json, *.safetensors) or a .gguf file.
    pub input: PathBuf,
    /// Output GGUF (written to a temporary file, then renamed).
    #[arg(short = 'o', long = "out")]
    pub out: PathBuf,
    /// f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k, q4_k_m (GGUF input:
    /// omit to keep the tensors and only rewrite metadata).
    #[arg(long = "type")]
    pub ty: Option<String>,
    /// general.name of the output.
    #[arg(long)]
    pub name: Option<String>,
    /// Memory settings to store as the output's fam.* defaults (any of them writes every
    /// fam.* key), the same flags as a stream's.
    #[command(flatten)]
    pub fam: SettingsArgs,
    /// Merge this LoRA adapter into the weights (GGUF input): W + scale * B A, requantized
    /// to the output type; its learned FAM and fam.* keys are copied.
    #[arg(long = "adapter")]
    pub adapter: Option<PathBuf>,
}

pub fn run(args: ConvertArgs) -> Result<()> {
    let ConvertArgs {
        input,
        out,
        ty,
        name,
        fam: fam_args,
        adapter,
        ..
    } = args;
    let target = ty
        .as_deref()
        .map(famstream::convert::Target::parse)
        .transpose()?;
    let fam = if !fam_args.overrides().is_empty() {
        let mut f = match GgufFile::open(&input) {
            Ok(g) if input.is_file() => FamSettings::from_gguf(&g)?,
            _ => FamSettings::default(),
        };
        // The adapter's keys (copied into the output) under the flags.
        if let Some(a) = &adapter {
            f.override_from(&GgufFile::open(a)?)?;
        }
        fam_args.apply(&mut f)?;
        f.validate()?;
        Some(f)
    } else {
        None
    };
    let opts = famstream::convert::ConvertOptions { target, fam, name };
    let pb = famstream::util::progress(0, "bytes");
    let t0 = std::time::Instant::now();
    let r = famstream::convert::convert_with_adapter(
        &input,
        &out,
        &opts,
        adapter.as_deref(),
        &mut |name, done, total| {
            pb.set_length(total);
            pb.set_position(done);
            pb.set_message(name.to_string());
        },
    )?;
    pb.finish_and_clear();
    for (t, want, used) in &r.fallbacks {
        eprintln!("note: {t}: {want} does not fit rows of this tensor, used {used}");
    }
    println!(
            "wrote {}: {} tensors, {} params, {} bytes of tensors ({:.3} bits/weight), {} fallbacks, {:.1}s",
            out.display(),
            r.n_tensors,
            r.n_params,
            r.tensor_bytes,
            r.bits_per_weight,
            r.fallbacks.len(),
            t0.elapsed().as_secs_f64()
        );
    Ok(())
}
