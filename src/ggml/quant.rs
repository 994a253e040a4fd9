//! ggml's quantizers and type traits.

use crate::dtype::GgmlType;
use crate::error::{Error, Result};
use llama_cpp_sys_2 as sys;

/// ggml's own block size and bytes per block for a type id (for checking our type table).
pub fn ggml_type_traits(ty: GgmlType) -> Option<(u64, u64)> {
    if ty.0 >= sys::GGML_TYPE_COUNT {
        return None;
    }
    // SAFETY: id < GGML_TYPE_COUNT, so ggml's table lookup is in bounds.
    let (blck, size) = unsafe { (sys::ggml_blck_size(ty.0), sys::ggml_type_size(ty.0)) };
    (blck > 0).then_some((blck as u64, size as u64))
}

/// Whether ggml can quantize to `ty` without an importance matrix.
pub fn can_quantize(ty: GgmlType) -> bool {
    ggml_type_traits(ty).is_some()
        && ty != GgmlType::I32
        // SAFETY: id validated above.
        && !unsafe { sys::ggml_quantize_requires_imatrix(ty.0) }
        && matches!(ty.0, 0 | 1 | 2 | 3 | 6 | 7 | 8 | 10..=14 | 20 | 30)
}

/// Quantize `src` (rows of `n_per_row` f32) to `ty` with ggml's own quantizer.
pub fn quantize(ty: GgmlType, src: &[f32], n_per_row: usize) -> Result<Vec<u8>> {
    if !can_quantize(ty) {
        return Err(Error::Unsupported(format!("quantizing to {ty}")));
    }
    if n_per_row == 0 || !src.len().is_multiple_of(n_per_row) {
        return Err(Error::Invalid(format!(
            "{} values are not rows of {n_per_row}",
            src.len()
        )));
    }
    let row = ty.row_size(n_per_row as u64).ok_or_else(|| {
        Error::Invalid(format!(
            "row length {n_per_row} is not a multiple of {ty}'s block {}",
            ty.block_size()
        ))
    })?;
    let nrows = src.len() / n_per_row;
    let mut out = vec![0u8; row as usize * nrows];
    // SAFETY: id validated; `src` holds nrows*n_per_row f32; `out` holds nrows rows of `row`
    // bytes, exactly what ggml writes; no importance matrix (null) for these types.
    let written = unsafe {
        sys::ggml_quantize_init(ty.0);
        sys::ggml_quantize_chunk(
            ty.0,
            src.as_ptr(),
            out.as_mut_ptr().cast(),
            0,
            nrows as i64,
            n_per_row as i64,
            std::ptr::null(),
        )
    };
    if written != out.len() {
        return Err(Error::Ggml(format!(
            "quantize wrote {written} bytes, expected {}",
            out.len()
        )));
    }
    Ok(out)
}

/// Dequantize `n` values of type `ty` from `data` with ggml's `to_float`.
pub fn dequantize(ty: GgmlType, data: &[u8], n: usize) -> Result<Vec<f32>> {
    if ty == GgmlType::F32 {
        if data.len() != n * 4 {
            return Err(Error::Invalid("f32 data of the wrong length".into()));
        }
        return Ok(data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect());
    }
    let need = ty.row_size(n as u64);
    if need != Some(data.len() as u64) || ggml_type_traits(ty).is_none() {
        return Err(Error::Invalid(format!(
            "{} bytes are not {n} values of {ty}",
            data.len()
        )));
    }
    let mut out = vec![0f32; n];
    // SAFETY: id validated; the traits table is static; to_float reads exactly row_size(n) bytes
    // (checked) and writes n floats.
    unsafe {
        let traits = sys::ggml_get_type_traits(ty.0);
        let Some(f) = traits.as_ref().and_then(|t| t.to_float) else {
            return Err(Error::Unsupported(format!("dequantizing {ty}")));
        };
        f(data.as_ptr().cast(), out.as_mut_ptr(), n as i64);
    }
    Ok(out)
}
