//! A prefill band (`summarize --prefill-band`, `FamState::set_prefill_band`) on the real model:
//! a banded row does not see the chunk tokens outside its band (a change there reaches it only
//! through the layers, `width - 1` tokens per layer), still sees every token before the chunk,
//! and the rows after the chunk see every token. Without the band the same change reaches every
//! later row.

mod common;

use famstream::settings::MemoryPolicy;
use famstream::slots::PrefillBand;
use famstream::state::Logits;

/// Prompt rows; the chunk starts at FROM. A 512-token window (B = 256, M = 1) holds them all.
const N: usize = 400;
const FROM: usize = 40;
const WIDTH: usize = 4;
/// The same tokens through the same graphs: the logits are bitwise equal (a masked slot adds
/// exp(-inf) = 0 exactly, whatever its K/V hold).
const SAME: f32 = 0.0;
/// A changed token that a row attends to moves its logits far more than this.
const CHANGED: f32 = 1e-3;

struct Run {
    logits: Vec<f32>,
    nv: usize,
}

impl Run {
    fn row(&self, i: usize) -> &[f32] {
        &self.logits[i * self.nv..(i + 1) * self.nv]
    }
}

fn run(tokens: &[u32], band: Option<PrefillBand>) -> Run {
    let rt = common::runtime(common::model_path());
    let mut eng = rt.engine().unwrap();
    let s = common::settings(MemoryPolicy::Sink, 256, 1, 0, 4);
    let mut st = rt.new_state(&eng, s, 0).unwrap();
    st.set_prefill_band(band);
    let logits = st.feed(&mut eng, tokens, Logits::All).unwrap();
    let nv = logits.len() / tokens.len();
    Run { logits, nv }
}

#[test]
fn a_banded_row_sees_the_prompt_before_the_chunk_and_its_band_only() {
    let rt = common::runtime(common::model_path());
    let n_layer = rt.model.hp.n_layer;
    // a change at row FROM can reach row i only through a chain of layers
    let horizon = FROM + (WIDTH - 1) * n_layer;
    assert!(
        horizon + 1 < N,
        "the prompt is too short for {n_layer} layers"
    );
    drop(rt);

    let tokens = common::prose_tokens(N);
    let mut chunk_changed = tokens.clone();
    chunk_changed[FROM] = tokens[FROM + 1];
    let mut prefix_changed = tokens.clone();
    prefix_changed[FROM - 1] = tokens[FROM + 1];
    let band = |to: usize| {
        Some(PrefillBand {
            from: FROM as i64,
            to: to as i64,
            width: WIDTH as i64,
        })
    };

    let base = run(&tokens, band(N));
    let changed = run(&chunk_changed, band(N));
    for i in horizon + 1..N {
        let d = common::max_diff(base.row(i), changed.row(i));
        assert!(d <= SAME, "row {i} saw the changed chunk token: {d}");
    }
    for i in FROM..FROM + WIDTH {
        let d = common::max_diff(base.row(i), changed.row(i));
        assert!(
            d > CHANGED,
            "row {i} did not see the token in its band: {d}"
        );
    }
    // the prompt before the chunk stays visible to the last banded row
    let prefix = run(&prefix_changed, band(N));
    let d = common::max_diff(base.row(N - 1), prefix.row(N - 1));
    assert!(
        d > CHANGED,
        "the last row did not see the prompt before the chunk: {d}"
    );

    // rows after the chunk (the request) attend to every token again
    let to = N - 8;
    let (a, b) = (run(&tokens, band(to)), run(&chunk_changed, band(to)));
    let d = common::max_diff(a.row(to - 1), b.row(to - 1));
    assert!(d <= SAME, "the chunk's last row saw outside its band: {d}");
    let d = common::max_diff(a.row(N - 1), b.row(N - 1));
    assert!(
        d > CHANGED,
        "a row after the chunk did not see all of it: {d}"
    );

    // without a band the change reaches the last row
    let (a, b) = (run(&tokens, None), run(&chunk_changed, None));
    let d = common::max_diff(a.row(N - 1), b.row(N - 1));
    assert!(
        d > CHANGED,
        "no band, and the change did not reach the last row: {d}"
    );
}
