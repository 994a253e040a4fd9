//! The forward pass on the real model against llama.cpp (in-process) on the same GGUF.

mod common;

use common::llama::{argmax, kl_divergence, LlamaOracle};
use famstream::engine::Engine;
use famstream::ggml::Backend;
use famstream::model::Model;
use famstream::state::{FamState, Logits};

/// Both engines run the same quantized weights with the same ggml kernels, but differ in graph
/// details (our RoPE angle computation, op fusion, accumulation order), so per-position
/// distributions differ by rounding only. A mean KL above 1e-4 nats would mean a real bug (a
/// wrong mask or RoPE shows up as > 0.1).
const MEAN_KL_BOUND: f64 = 1e-4;
/// Greedy continuations may part only where llama.cpp's logits for the two tokens are closer
/// than this. With a mean KL of 1e-4, logits agree to about 1e-2; a wrong graph differs by
/// whole logits.
const GREEDY_TIE_MARGIN: f32 = 0.05;

const PROSE: &str = "The old lighthouse keeper climbed the spiral stairs every evening at dusk. \
He had done so for forty-one years, through storms and calm, and he knew each of the two hundred \
and twelve steps by the sound it made under his boots. Tonight, however, the seventh step was \
silent. He paused, listened to the sea below, and wondered what had changed.";

#[test]
fn logits_match_llama_cpp_on_a_multi_sentence_prompt() {
    let path = common::model_path();
    let mut oracle = LlamaOracle::new(&path, 1024, 2);
    let tokens = oracle.tokenize(PROSE, true, false);
    assert!(tokens.len() > 60, "{} tokens", tokens.len());
    let theirs = oracle.logits_all(&tokens);

    let backend = Backend::cpu(2).unwrap();
    let model = std::sync::Arc::new(Model::load(&path, &backend).unwrap());
    let mut stream = FamState::full(&model, &backend, 1024).unwrap();
    let mut eng = Engine::new(model.clone(), backend).unwrap();
    let ours = stream.feed(&mut eng, &tokens, Logits::All).unwrap();
    let nv = model.hp.n_vocab;
    assert_eq!(ours.len(), tokens.len() * nv);

    let mut kl_sum = 0.0;
    for (i, t) in theirs.iter().enumerate() {
        let o = &ours[i * nv..(i + 1) * nv];
        assert_eq!(argmax(o), argmax(t), "argmax differs at position {i}");
        kl_sum += kl_divergence(t, o);
    }
    let mean_kl = kl_sum / tokens.len() as f64;
    eprintln!(
        "mean KL(llama.cpp || famstream) over {} positions: {mean_kl:.3e}",
        tokens.len()
    );
    assert!(mean_kl < MEAN_KL_BOUND, "mean KL {mean_kl}");
}

#[test]
fn greedy_generation_matches_llama_cpp() {
    let path = common::model_path();
    let mut oracle = LlamaOracle::new(&path, 512, 2);
    let rt = common::runtime(&path);
    let mut eng = rt.engine().unwrap();
    let prompts = [
        "The capital of France is".to_string(),
        rt.chat.render(
            &[famstream::chat::Message::new(
                "user",
                "Name three primary colors.",
            )],
            true,
        ),
        "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n".to_string(),
    ];
    for p in &prompts {
        let tokens = rt.tokenizer.encode(p, true, true);
        assert_eq!(
            tokens,
            oracle.tokenize(p, true, true),
            "tokenization of {p:?}"
        );
        common::llama::assert_greedy_matches(
            &rt,
            &mut eng,
            &mut oracle,
            &tokens,
            32,
            GREEDY_TIE_MARGIN,
        );
    }
}

/// Same logits should give the same perplexity; the brief asks for agreement within 1%.
const PERPLEXITY_REL_TOL: f64 = 0.01;

#[test]
fn perplexity_matches_llama_cpp_on_moby_dick() {
    let path = common::model_path();
    let text = common::shared_text("moby_dick.txt");
    let text = &text[..40_000];
    let ctx = 512;
    let rt = common::runtime(&path);
    let mut tokens = rt.tokenizer.encode(text, rt.tokenizer.add_bos(), false);
    tokens.truncate(4 * ctx);
    assert_eq!(tokens.len(), 4 * ctx);
    let mut eng = rt.engine().unwrap();
    let ours = famstream::perplexity::windowed(&rt.model, &mut eng, &tokens, ctx, None, |_, _| {})
        .unwrap();

    // llama.cpp, scored the same way (llama-perplexity: second half of each window).
    let mut oracle = LlamaOracle::new(&path, ctx, 2);
    let (theirs, n) = common::llama::llama_perplexity(&mut oracle, &tokens, ctx);
    eprintln!(
        "perplexity: famstream {:.4}, llama.cpp {theirs:.4}",
        ours.perplexity
    );
    assert_eq!(ours.tokens_scored, n);
    assert!(ours.perplexity > 1.0 && ours.perplexity < 1000.0);
    assert!((ours.perplexity / theirs - 1.0).abs() < PERPLEXITY_REL_TOL);
}

/// `--q8-copy`: famstream loads the Q4_1 file with its matmul weights copied to Q8_0, and
/// llama.cpp loads the Q8_0 file famstream's converter writes from the same Q4_1 file (each
/// block dequantized and requantized by ggml both times, so the weights are the same bytes).
/// The two must agree as on any one file (MEAN_KL_BOUND), and the copy must be a real change of
/// weights: its distributions differ from the Q4_1 file's (a copy that silently kept Q4_1 would
/// give KL 0 here).
#[test]
fn the_q8_copy_matches_llama_cpp_on_the_converted_q8_0_file() {
    use famstream::convert::{convert, ConvertOptions, Target};
    let path = common::model_path();
    let q8 = common::scratch_dir("q8-copy").join("q8_0.gguf");
    let opts = ConvertOptions {
        target: Some(Target::parse("q8_0").unwrap()),
        fam: None,
        name: None,
    };
    convert(&path, &q8, &opts, &mut |_, _, _| {}).unwrap();
    let mut oracle = LlamaOracle::new(&q8, 1024, 2);
    let tokens = oracle.tokenize(PROSE, true, false);
    let theirs = oracle.logits_all(&tokens);

    let logits = |q8_copy: bool| {
        let backend = Backend::cpu(2).unwrap();
        let model = std::sync::Arc::new(Model::load_opts(&path, &backend, true, q8_copy).unwrap());
        let mut stream = FamState::full(&model, &backend, 1024).unwrap();
        let mut eng = Engine::new(model.clone(), backend).unwrap();
        stream.feed(&mut eng, &tokens, Logits::All).unwrap()
    };
    let (copy, plain) = (logits(true), logits(false));
    let nv = theirs[0].len();
    let (mut kl_llama, mut kl_plain) = (0.0, 0.0);
    for (i, t) in theirs.iter().enumerate() {
        let o = &copy[i * nv..(i + 1) * nv];
        kl_llama += kl_divergence(t, o);
        kl_plain += kl_divergence(&plain[i * nv..(i + 1) * nv], o);
    }
    let (kl_llama, kl_plain) = (
        kl_llama / tokens.len() as f64,
        kl_plain / tokens.len() as f64,
    );
    eprintln!("mean KL: q8 copy vs llama.cpp on the q8_0 file {kl_llama:.3e}, vs the Q4_1 weights {kl_plain:.3e}");
    assert!(kl_llama < MEAN_KL_BOUND, "mean KL vs llama.cpp {kl_llama}");
    assert!(kl_plain > 0.0, "the copy changed nothing");
}
