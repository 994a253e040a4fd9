//! ggml through our wrapper: quantized matmuls agree with a plain f32 matmul of the dequantized
//! weights.

mod common;

use common::Rng;
use famstream::dtype::GgmlType;
use famstream::ggml::{self, Allocator, Backend, Context};

/// ggml's quantized matmul quantizes the activations to Q8_0/Q8_1 blocks (8-bit, one scale per
/// 32 values) before the dot products. With |x| <= 1 and K = 256 that rounding error is bounded
/// by about K * max|w| * max|x| / 127 / 2 ~ 1 in the worst case but averages far less; relative
/// to the output scale we allow 2%.
const QUANT_MATMUL_REL_TOL: f32 = 0.02;

fn matmul_check(ty: GgmlType) {
    let (k, m, n) = (256usize, 48usize, 5usize);
    let mut rng = Rng(7 + ty.0 as u64);
    let w: Vec<f32> = (0..k * m).map(|_| rng.f32()).collect();
    let x: Vec<f32> = (0..k * n).map(|_| rng.f32()).collect();
    let wq = ggml::quantize(ty, &w, k).unwrap();
    let wd = ggml::dequantize(ty, &wq, k * m).unwrap();
    // Quantization really happened (not a copy) and dequantization is close.
    assert_eq!(
        wq.len() as u64,
        ty.tensor_size(&[k as u64, m as u64]).unwrap()
    );
    let max_err = w
        .iter()
        .zip(&wd)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        max_err > 0.0 && max_err < 0.2,
        "{ty}: dequantization error {max_err}"
    );

    let mut backend = Backend::cpu(2).unwrap();
    let ctx = Context::new_no_alloc(8, 16).unwrap();
    let wt = ctx
        .new_tensor(ty, &[k as i64, m as i64])
        .set_name("w")
        .set_input();
    let xt = ctx
        .new_tensor(GgmlType::F32, &[k as i64, n as i64])
        .set_name("x")
        .set_input();
    let y = ctx.mul_mat(wt, xt).set_name("y").set_output();
    let mut g = ctx.new_graph(16);
    g.expand(y);
    let mut alloc = Allocator::new(&backend).unwrap();
    alloc.alloc_graph(&g).unwrap();
    wt.write_bytes(0, &wq).unwrap();
    xt.write_f32(&x).unwrap();
    backend.compute(&g).unwrap();
    assert_eq!(y.ne(), [m as i64, n as i64, 1, 1]);
    let got = y.read_f32().unwrap();

    // Reference: plain f32 matmul of the dequantized weights.
    let mut max_ref = 0f32;
    let mut max_diff = 0f32;
    for j in 0..n {
        for i in 0..m {
            let r: f32 = (0..k).map(|t| wd[i * k + t] * x[j * k + t]).sum();
            max_ref = max_ref.max(r.abs());
            max_diff = max_diff.max((r - got[j * m + i]).abs());
        }
    }
    assert!(max_ref > 1.0, "non-trivial outputs");
    assert!(
        max_diff <= QUANT_MATMUL_REL_TOL * max_ref,
        "{ty}: max diff {max_diff} vs output scale {max_ref}"
    );
}

#[test]
fn q8_0_matmul_matches_f32_reference() {
    matmul_check(GgmlType::Q8_0);
}

#[test]
fn q4_0_matmul_matches_f32_reference() {
    matmul_check(GgmlType::Q4_0);
}

#[test]
fn quantize_rejects_bad_rows() {
    assert!(ggml::quantize(GgmlType::Q8_0, &[0.0; 33], 33).is_err());
    assert!(ggml::quantize(GgmlType::Q8_0, &[0.0; 64], 0).is_err());
    assert!(
        ggml::quantize(GgmlType(16), &[0.0; 256], 256).is_err(),
        "IQ2_XXS needs an imatrix"
    );
}
