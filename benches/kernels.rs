//! criterion micro-benchmarks: ggml matmul per quant type through our wrapper, and on the real
//! model one decode step, one prefill block and one FAM update.
//! `cargo bench --bench kernels`

use criterion::{criterion_group, criterion_main, Criterion};
use famstream::dtype::GgmlType;
use famstream::ggml::{self, Allocator, Backend, Context};
use famstream::runtime::{LoadOptions, Runtime};
use famstream::settings::{FamSettings, MemoryPolicy};
use famstream::state::Logits;

fn matmul(c: &mut Criterion) {
    let (k, m, n) = (576usize, 1536usize, 1usize);
    let w: Vec<f32> = (0..k * m)
        .map(|i| ((i * 2654435761) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let x: Vec<f32> = (0..k * n)
        .map(|i| ((i * 40503) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut g = c.benchmark_group("matmul 576x1536 by 576x1");
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
    ] {
        let wq = ggml::quantize(ty, &w, k).unwrap();
        let mut backend = Backend::cpu(2).unwrap();
        let ctx = Context::new_no_alloc(8, 16).unwrap();
        let wt = ctx.new_tensor(ty, &[k as i64, m as i64]).set_input();
        let xt = ctx
            .new_tensor(GgmlType::F32, &[k as i64, n as i64])
            .set_input();
        let y = ctx.mul_mat(wt, xt).set_output();
        let mut graph = ctx.new_graph(16);
        graph.expand(y);
        let mut alloc = Allocator::new(&backend).unwrap();
        alloc.alloc_graph(&graph).unwrap();
        wt.write_bytes(0, &wq).unwrap();
        xt.write_f32(&x).unwrap();
        g.bench_function(ty.name(), |b| b.iter(|| backend.compute(&graph).unwrap()));
    }
    g.finish();
}

fn model_steps(c: &mut Criterion) {
    let out = std::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tools/fetch_model.sh"))
        .output()
        .unwrap();
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let rt = Runtime::load(
        &path,
        &LoadOptions {
            threads: 2,
            device: None,
            ..Default::default()
        },
    )
    .unwrap();
    let mut eng = rt.engine().unwrap();
    let tokens: Vec<u32> = rt.tokenizer.encode(
        &"The committee met on Tuesday to discuss the budget. ".repeat(200),
        false,
        false,
    );
    let s = FamSettings {
        policy: MemoryPolicy::Fam,
        block_size: 256,
        mem_blocks: 1,
        fam_len: 16,
        ..FamSettings::default()
    };
    let mut g = c.benchmark_group("SmolLM2-135M Q4_1, 2 threads");
    g.sample_size(10);
    // One decode step with a full window behind it.
    let mut st = rt.new_state(&eng, s, 0).unwrap();
    st.feed(&mut eng, &tokens[..600], Logits::None).unwrap();
    let mut i = 0;
    // Every 256th step also runs the block's FAM update: amortized, as in real decoding.
    g.bench_function("decode step (fam, window full)", |b| {
        b.iter(|| {
            i += 1;
            st.feed(&mut eng, &tokens[i % 500..i % 500 + 1], Logits::Last)
                .unwrap()
        })
    });
    // One prefill block of 256 tokens, including the FAM update that ends it.
    g.bench_function("prefill block of 256 + FAM update", |b| {
        let mut st = rt.new_state(&eng, s, 0).unwrap();
        st.feed(&mut eng, &tokens[..256], Logits::None).unwrap();
        b.iter(|| st.feed(&mut eng, &tokens[256..512], Logits::None).unwrap())
    });
    g.finish();
}

criterion_group!(benches, matmul, model_steps);
criterion_main!(benches);
