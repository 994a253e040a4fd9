#!/usr/bin/env python3
"""Float64 numpy reference for famstream's memory policies, and the goldens built from it.

A deliberately *different* computation from the Rust engine (which streams token by token through
ring buffers and runs the FAM update as its own graph): here every policy is one masked softmax
per layer. Spec (algorithm: fam.md, the FAM guide); stream index i = RoPE position, block
t = i // B:
  full              token i attends to every j <= i.
  bswa(B, M)        i sees j with block(j) in [t-M, t-1], or block(j) == t and j <= i.
  sink(B, M, S)     bswa + tokens j < S (j <= i). A sink inside i's window is seen once, at j; a
                    sink outside it has its K re-rotated to the virtual position w - S + j, with
                    w = max(0, t-M) * B (the sinks sit just before the window). V is unchanged.
  keep(B, M, F, S)  with F >= every token that leaves the window (the only case here: which tokens a
                    smaller F keeps is salience, tests/keep_memory.rs): bswa + every token j that
                    has left i's window (j < w), its K re-rotated to M*B + j: sinks then kept
                    tokens, in stream order, end just before the current block (t*B - w + j). With
                    M = 0 that is j itself (full attention); with M > 0 they share positions with
                    the memory blocks.
  fam(B, M, F, init, query_pos, zero_first_residual)
                    per layer l: F residual-stream rows Fm_l at positions P_l; KF/VF from
                    attn_norm(Fm_l), K rotated at P_l. Combined layout, block by block: layer l's
                    rows are [Fm_l ; block-t tokens] and one masked softmax over
                    [memory blocks | FAM keys | block keys]:
                      token rows: memory window + all F old FAM keys + causal block keys;
                      FAM rows:   old FAM keys + ALL block-t keys (no memory, no sinks).
                    FAM queries at (t+1)B-F..(t+1)B-1 (`block-end`) or at P_l (`prev-fam`).
                    FAM residual = Fm_l, or 0 on the stream's first update if zero_first_residual.
                    The FAM rows' layer-l outputs are F_new_l (they do not feed layer l+1); after
                    a complete block, P_l = (t+1)B-F..(t+1)B-1. Initial FAM: `seed` = layer inputs
                    of the seed ids run alone (full causal) at -F..-1; `bos` = F copies of [BOS]'s
                    layer inputs run alone at -1, P = -F..-1; `tail` = no FAM in block 0, then
                    block 0's last F layer inputs at B-F..B-1 (no update for block 0).
                    With S > 0 the token rows also see the sinks exactly as in `sink` (FAM rows
                    never do). With keep_len >= every token that leaves the window (`--keep-len`,
                    kept tokens next to the FAM) the token rows instead see every token j that has
                    left the window, sinks included, K re-rotated to M*B + j as in `keep` (FAM rows
                    never do). `renorm`: each updated row is rms_norm(F_new_l) * rms(Fm_l).
                    feedback `reread` (training-free, not the paper's): after each complete block
                    t the seed ids are run again at (t+1)B-F..(t+1)B-1, through every layer, each
                    layer's rows seeing the old FAM keys, all block-t keys and the seed rows
                    before them (causal); their layer-l inputs become Fm_l (no tail/FAM-row rule).
Goldens: logits [N, vocab] of the token rows. Weights/RoPE/GQA conventions as in check_gguf.py
(llama: adjacent pairs, qwen2: NEOX halves; q head h uses kv head h // (n_head / n_head_kv)).

usage: python3 tools/fam_reference.py [--out tests/golden/fam]   (writes *.npy + cases.json)
"""
import argparse, json
from pathlib import Path
import numpy as np
import gguf

ROOT = Path(__file__).resolve().parent.parent
PARAMS = ("block_size", "mem_blocks", "fam_len", "sinks", "init", "seed_ids", "query_pos", "zero_first_residual",
          "feedback", "renorm", "keep_len")


class Model:
    """GGUF weights in float64 plus the per-layer building blocks (no attention masking here)."""

    def __init__(self, path):
        r = gguf.GGUFReader(str(path))
        kv = {k: f.contents() for k, f in r.fields.items() if not k.startswith("tokenizer.ggml.") or k.endswith("_id")}
        # t.data has numpy shape = reversed ggml ne, i.e. PyTorch's [out, in]
        self.W = {t.name: np.asarray(t.data, dtype=np.float64).reshape(tuple(int(x) for x in reversed(t.shape)))
                  for t in r.tensors}
        a = self.arch = kv["general.architecture"]
        self.n_layer, self.n_embd = kv[f"{a}.block_count"], kv[f"{a}.embedding_length"]
        self.n_head, self.n_kv = kv[f"{a}.attention.head_count"], kv[f"{a}.attention.head_count_kv"]
        self.eps, self.base = kv[f"{a}.attention.layer_norm_rms_epsilon"], kv[f"{a}.rope.freq_base"]
        self.hd = kv.get(f"{a}.attention.key_length", self.n_embd // self.n_head)
        self.neox = a in ("qwen2",)  # llama.cpp: LLAMA -> ROPE_TYPE_NORM, QWEN2 -> ROPE_TYPE_NEOX
        self.bos = int(kv.get("tokenizer.ggml.bos_token_id", 1))
        self.out_w = self.W.get("output.weight", self.W["token_embd.weight"])  # qwen2: tied

    def rms(self, x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * w

    def rope(self, x, pos):  # x: [T, H, hd], pos: [T] (float64, may be negative)
        hd = self.hd
        ang = np.asarray(pos, np.float64)[:, None] * self.base ** (-np.arange(0, hd, 2) / hd)[None, :]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        if self.neox:  # pairs (i, i + hd/2)
            a, b = x[..., : hd // 2], x[..., hd // 2:]
            return np.concatenate([a * c - b * s, a * s + b * c], -1)
        a, b = x[..., 0::2], x[..., 1::2]  # "norm": adjacent pairs (2i, 2i+1)
        out = np.empty_like(x); out[..., 0::2] = a * c - b * s; out[..., 1::2] = a * s + b * c
        return out

    def lin(self, x, name):
        y = x @ self.W[name + ".weight"].T
        return y + self.W[name + ".bias"] if name + ".bias" in self.W else y

    def embed(self, ids):
        return self.W["token_embd.weight"][np.asarray(ids, dtype=np.int64)]

    def qkv(self, l, x):
        """Unrotated q [T, n_head, hd], k, v [T, n_kv, hd] of rows x (layer-l inputs)."""
        p, T = f"blk.{l}.", len(x)
        h = self.rms(x, self.W[p + "attn_norm.weight"])
        return (self.lin(h, p + "attn_q").reshape(T, self.n_head, self.hd),
                self.lin(h, p + "attn_k").reshape(T, self.n_kv, self.hd),
                self.lin(h, p + "attn_v").reshape(T, self.n_kv, self.hd))

    def attend(self, q, k, v, visible):
        """q [R, H, hd] (rotated), k, v [C, n_kv, hd] (k rotated), visible bool [R, C] -> [R, H*hd]."""
        rep = self.n_head // self.n_kv  # q head h uses kv head h // rep
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.einsum("rhd,chd->hrc", q, k) / np.sqrt(self.hd)
        s = np.where(visible[None], s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True)); s /= s.sum(-1, keepdims=True)
        return np.einsum("hrc,chd->rhd", s, v).reshape(len(q), -1)

    def finish(self, l, resid, o):
        """o_proj + residual, then the FFN sublayer: r = resid + o_proj(o); r + mlp(ffn_norm(r))."""
        p = f"blk.{l}."
        r = resid + self.lin(o, p + "attn_output")
        h = self.rms(r, self.W[p + "ffn_norm.weight"])
        g = self.lin(h, p + "ffn_gate")
        return r + self.lin(g / (1 + np.exp(-g)) * self.lin(h, p + "ffn_up"), p + "ffn_down")

    def logits(self, x):
        return self.rms(x, self.W["output_norm.weight"]) @ self.out_w.T


def run_masked(m, ids, pos, visible, extra_src=(), extra_pos=()):
    """Whole sequence, layer by layer, one masked softmax per layer. Key columns are the N tokens at
    their positions `pos`, then extra columns: token extra_src[c]'s K re-rotated at extra_pos[c]
    (sinks). visible: bool [N, N + n_extra]. Returns the layer inputs X[0..n_layer] (X[-1] = final)."""
    pos, src = np.asarray(pos, np.float64), np.asarray(extra_src, np.int64)
    xs = [m.embed(ids)]
    for l in range(m.n_layer):
        q, k, v = m.qkv(l, xs[-1])
        keys = np.concatenate([m.rope(k, pos), m.rope(k[src], extra_pos)])
        vals = np.concatenate([v, v[src]])  # V is never rotated
        xs.append(m.finish(l, xs[-1], m.attend(m.rope(q, pos), keys, vals, visible)))
    return xs


def window_mask(n, B, M):
    """bswa: block(j) in [t-M, t-1], or block(j) == t and j <= i."""
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    return (j <= i) & (j // B >= i // B - M)


def forward_windowed(m, ids, B=None, M=None, S=0, keep_all=False):
    """full (B is None), bswa (S = 0), sink and keep (keep_all), as one masked pass per layer."""
    n = len(ids)
    if B is None:
        return m.logits(run_masked(m, ids, np.arange(n), np.tril(np.ones((n, n), bool)))[-1])
    win = window_mask(n, B, M)
    n_blocks = -(-n // B)
    if keep_all:  # extra columns: for every block t, the tokens j < w_t at M*B + j
        src = np.concatenate([np.arange(max(0, t - M) * B) for t in range(n_blocks)]).astype(np.int64)
        blk = np.concatenate([np.full(max(0, t - M) * B, t) for t in range(n_blocks)])
        visible = np.concatenate([win, (np.arange(n)[:, None] // B) == blk[None, :]], 1)
        return m.logits(run_masked(m, ids, np.arange(n), visible, src, M * B + src)[-1])
    # extra columns: for every block t, the S sink keys at virtual positions w_t - S + j
    src = np.tile(np.arange(S), n_blocks)
    w = np.repeat(np.maximum(0, np.arange(n_blocks) - M) * B, S)
    sink_vis = np.zeros((n, n_blocks * S), bool)
    for i in range(n):
        t = i // B
        for j in range(min(S, i + 1)):  # a sink is never a future token
            sink_vis[i, t * S + j] = not win[i, j]  # inside the window: seen once, at j
    visible = np.concatenate([win, sink_vis], 1)
    return m.logits(run_masked(m, ids, np.arange(n), visible, src, w - S + src)[-1])


def initial_fam(m, init, F, seed_ids):
    """(Fm per layer [F, d], P) before block 0, or (None, None) for `tail`."""
    P = np.arange(-F, 0, dtype=np.float64)
    if init == "seed":
        assert len(seed_ids) == F, "seed init needs exactly F seed ids"
        xs = run_masked(m, seed_ids, P, np.tril(np.ones((F, F), bool)))
        return [xs[l] for l in range(m.n_layer)], P
    if init == "bos":
        xs = run_masked(m, [m.bos], [-1.0], np.ones((1, 1), bool))
        return [np.repeat(xs[l], F, axis=0) for l in range(m.n_layer)], P
    assert init == "tail", init
    return None, None


def reread_fam(m, seed_ids, fam, P, X, blk, new_pos):
    """`reread` feedback after block `blk`: the seed ids' layer inputs at new_pos, each layer's rows
    attending to [old FAM keys | block keys | seed keys (causal)]."""
    F, y, out = len(seed_ids), m.embed(seed_ids), []
    nf = 0 if fam is None else F
    vis = np.ones((F, nf + len(blk) + F), bool)
    vis[:, nf + len(blk):] = np.tril(np.ones((F, F), bool))
    for l in range(m.n_layer):
        out.append(y)
        q, k, v = m.qkv(l, y)
        _, kb, vb = m.qkv(l, X[l][blk])
        ks, vs = [m.rope(kb, blk), m.rope(k, new_pos)], [vb, v]
        if nf:
            _, kf, vf = m.qkv(l, fam[l])
            ks, vs = [m.rope(kf, P)] + ks, [vf] + vs
        y = m.finish(l, y, m.attend(m.rope(q, new_pos), np.concatenate(ks), np.concatenate(vs), vis))
    return out


def forward_fam(m, ids, B, M, F, init="seed", seed_ids=None, query_pos="block-end", zero_first_residual=True,
                S=0, feedback="within", renorm=False, keep_all=False):
    """FAM, combined layout: per block and layer, rows [Fm_l ; block tokens], one masked softmax
    over [sinks | memory blocks | FAM keys | block keys]."""
    assert 0 <= F <= B and query_pos in ("block-end", "prev-fam") and feedback in ("within", "reread")
    n, L = len(ids), m.n_layer
    X = [np.zeros((n, m.n_embd)) for _ in range(L + 1)]  # X[l][i]: residual entering layer l
    X[0] = m.embed(ids)
    fam, P = initial_fam(m, init, F, seed_ids) if F > 0 else (None, None)
    n_updates = 0
    for t in range(-(-n // B)):
        blk = np.arange(t * B, min((t + 1) * B, n))
        mem = np.arange(max(0, t - M) * B, t * B)  # memory blocks [t-M, t-1]
        end_pos = np.arange((t + 1) * B - F, (t + 1) * B, dtype=np.float64)
        nf = F if fam is not None else 0  # no FAM yet (tail, block 0): no FAM rows/keys
        update = nf > 0 and len(blk) == B  # the FAM is updated after a complete block only
        zero = zero_first_residual and n_updates == 0
        q_pos = np.concatenate([(end_pos if query_pos == "block-end" else P) if nf else [], blk])
        k_pos = np.concatenate([P if nf else [], blk])
        # sinks that have left the window, at virtual positions just before it (as in `sink`)
        sk = np.array([j for j in range(min(S, n)) if j // B < t - M], np.int64)
        sk_pos = max(0, t - M) * B - S + sk
        if keep_all:  # every token that has left the window, sinks included, at M*B + j
            sk = np.arange(max(0, t - M) * B, dtype=np.int64)
            sk_pos = M * B + sk
        ns = len(sk)
        # mask over columns [sinks | mem | FAM | block]
        vis = np.zeros((nf + len(blk), ns + len(mem) + nf + len(blk)), bool)
        vis[:nf, ns + len(mem):] = True  # FAM rows: old FAM keys + the whole block, no memory/sinks
        vis[nf:, :ns + len(mem) + nf] = True  # token rows: sinks + memory window + all old FAM keys
        vis[nf:, ns + len(mem) + nf:] = np.tril(np.ones((len(blk), len(blk)), bool))  # causal in block
        new_fam = []
        for l in range(L):
            rows = np.concatenate([fam[l] if nf else np.zeros((0, m.n_embd)), X[l][blk]])
            q, k, v = m.qkv(l, rows)
            _, km, vm = m.qkv(l, X[l][mem])  # memory K/V recomputed from stored layer inputs
            _, ksk, vsk = m.qkv(l, X[l][sk])
            keys = np.concatenate([m.rope(ksk, sk_pos), m.rope(km, mem), m.rope(k, k_pos)])
            o = m.attend(m.rope(q, q_pos), keys, np.concatenate([vsk, vm, v]), vis)
            resid = rows.copy()
            if zero:
                resid[:nf] = 0.0  # first update of the stream: zero residual for the FAM rows
            out = m.finish(l, resid, o)
            if renorm and nf:  # rms_norm(new) * rms(old)
                new = out[:nf]
                out[:nf] = new / np.sqrt((new * new).mean(-1, keepdims=True) + m.eps) \
                    * np.sqrt((rows[:nf] ** 2).mean(-1, keepdims=True))
            X[l + 1][blk] = out[nf:]  # token rows go on to layer l+1 ...
            new_fam.append(out[:nf])  # ... FAM rows' outputs are F_new_l, kept for next block
        if feedback == "reread" and F > 0 and len(blk) == B:
            fam, P = reread_fam(m, seed_ids, fam, P, X, blk, end_pos), end_pos
        elif update:
            fam, P, n_updates = new_fam, end_pos, n_updates + 1
        elif F > 0 and fam is None and len(blk) == B:  # tail init, after block 0
            fam, P = [X[l][blk[-F:]] for l in range(L)], end_pos
    return m.logits(X[L])


def forward_policy(weights, ids, policy, block_size=None, mem_blocks=None, fam_len=0, sinks=0,
                   init=None, seed_ids=None, query_pos=None, zero_first_residual=None, feedback=None,
                   renorm=None, keep_len=0):
    """Logits [N, vocab] (float64) of `ids` under a memory policy; weights = Model or GGUF path."""
    m = weights if isinstance(weights, Model) else Model(weights)
    if policy == "full":
        return forward_windowed(m, ids)
    if policy in ("bswa", "sink"):
        return forward_windowed(m, ids, block_size, mem_blocks, sinks if policy == "sink" else 0)
    if policy == "keep":
        assert fam_len >= (-(-len(ids) // block_size) - 1 - mem_blocks) * block_size - sinks, \
            "the reference covers keep only with F >= every token that leaves the window"
        return forward_windowed(m, ids, block_size, mem_blocks, sinks, keep_all=True)
    assert policy == "fam", policy
    if keep_len:
        assert keep_len >= (-(-len(ids) // block_size) - 1 - mem_blocks) * block_size - sinks, \
            "the reference covers kept tokens next to a FAM only with keep_len >= every token that leaves"
    return forward_fam(m, ids, block_size, mem_blocks, fam_len, init, seed_ids,
                       query_pos or "block-end", True if zero_first_residual is None else zero_first_residual,
                       sinks, feedback or "within", bool(renorm), keep_all=bool(keep_len))


# ---------------------------------------------------------------------------------------------
# Self-check only: a second, naive implementation. One token at a time, explicit key lists (no
# masks), FAM update run separately after each complete block from cached per-layer state.

def naive_forward(m, ids, policy, block_size=None, mem_blocks=None, fam_len=0, sinks=0, init=None,
                  seed_ids=None, query_pos=None, zero_first_residual=True, feedback=None, renorm=None, pos0=0,
                  keep_len=0):
    B, M, S, F, L = block_size or 1 << 30, mem_blocks or 0, sinks, fam_len, m.n_layer
    kraw, vals, xin = [[] for _ in range(L)], [[] for _ in range(L)], [[] for _ in range(L)]
    fam, P, n_updates, out = None, None, 0, []
    if policy == "fam" and F and init in ("seed", "bos"):
        toks = seed_ids if init == "seed" else [m.bos]
        _, xs = naive_forward(m, toks, "full", pos0=-len(toks))
        fam = [np.array(xs[l]) if init == "seed" else np.repeat(np.array(xs[l]), F, 0) for l in range(L)]
        P = np.arange(-F, 0.0)
    rot = lambda k, p: m.rope(k[None], [p])[0]
    for i, tok in enumerate(ids):
        t, x = i // B, m.embed([tok])
        for l in range(L):
            xin[l].append(x[0])
            q, k, v = m.qkv(l, x)
            kraw[l].append(k[0]); vals[l].append(v[0])
            ks, vs = [], []
            for j in range(i + 1):
                if policy == "full" or j // B >= t - M:
                    ks.append(rot(kraw[l][j], pos0 + j)); vs.append(vals[l][j])
                elif policy == "keep" or keep_len:  # room for every token that left: at M*B + j
                    ks.append(rot(kraw[l][j], M * B + j)); vs.append(vals[l][j])
                elif policy in ("sink", "fam") and j < S:
                    ks.append(rot(kraw[l][j], max(0, t - M) * B - S + j)); vs.append(vals[l][j])
            if policy == "fam" and fam is not None:
                _, kf, vf = m.qkv(l, fam[l])
                ks += list(m.rope(kf, P)); vs += list(vf)
            o = m.attend(m.rope(q, [pos0 + i]), np.array(ks), np.array(vs), np.ones((1, len(ks)), bool))
            x = m.finish(l, x, o)
        out.append(m.logits(x)[0])
        if policy == "fam" and F and (i + 1) % B == 0:  # block t complete: separate FAM step
            blk, new_p = np.arange(t * B, i + 1), np.arange((t + 1) * B - F, (t + 1) * B, dtype=np.float64)
            if feedback == "reread":  # the seed again, one row at a time, explicit key lists
                y, new, sk, sv = [m.embed([tok])[0] for tok in seed_ids], [], [], []
                for l in range(L):
                    new.append(np.array(y))
                    ks, vs = [rot(kraw[l][j], j) for j in blk], [vals[l][j] for j in blk]
                    if fam is not None:
                        _, kf, vf = m.qkv(l, fam[l])
                        ks += list(m.rope(kf, P)); vs += list(vf)
                    for r in range(F):
                        q, k, v = m.qkv(l, y[r][None])
                        ks.append(rot(k[0], new_p[r])); vs.append(v[0])
                        o = m.attend(m.rope(q, new_p[r:r + 1]), np.array(ks), np.array(vs), np.ones((1, len(ks)), bool))
                        y[r] = m.finish(l, y[r][None], o)[0]
                fam, P = new, new_p
                continue
            if fam is None:  # tail init
                fam, P = [np.array(xin[l][-F:]) for l in range(L)], new_p
                continue
            zero, new = zero_first_residual and n_updates == 0, []
            for l in range(L):
                qf, kf, vf = m.qkv(l, fam[l])
                keys = np.concatenate([m.rope(kf, P), [rot(kraw[l][j], j) for j in blk]])
                vv = np.concatenate([vf, [vals[l][j] for j in blk]])
                qp = new_p if query_pos == "block-end" else P
                o = np.concatenate([m.attend(m.rope(qf[r:r + 1], qp[r:r + 1]), keys, vv, np.ones((1, len(keys)), bool))
                                    for r in range(F)])
                nl = m.finish(l, np.zeros_like(fam[l]) if zero else fam[l], o)
                if renorm:
                    nl = nl / np.sqrt((nl ** 2).mean(-1, keepdims=True) + m.eps) * np.sqrt((fam[l] ** 2).mean(-1, keepdims=True))
                new.append(nl)
            fam, P, n_updates = new, new_p, n_updates + 1
    return np.array(out), xin


def plain_forward(m, ids):
    """check_gguf.py's plain causal forward (triu -inf mask over the whole sequence)."""
    T = len(ids); pos = np.arange(T, dtype=np.float64); x = m.embed(ids)
    mask, rep = np.triu(np.full((T, T), -np.inf), 1), m.n_head // m.n_kv
    for l in range(m.n_layer):
        q, k, v = m.qkv(l, x)
        q, k = m.rope(q, pos), np.repeat(m.rope(k, pos), rep, 1)
        att = np.einsum("thd,shd->hts", q, k) / np.sqrt(m.hd) + mask
        att = np.exp(att - att.max(-1, keepdims=True)); att /= att.sum(-1, keepdims=True)
        x = m.finish(l, x, np.einsum("hts,shd->thd", att, np.repeat(v, rep, 1)).reshape(T, -1))
    return m.logits(x)


B_CASES = 8  # the goldens' block size


def cases_for(arch, ids):
    B, M, F, S, seed = B_CASES, 1, 4, 2, [1, 17, 42, 99]
    none = dict(block_size=None, mem_blocks=None, fam_len=0, sinks=0, init=None, seed_ids=None,
                query_pos=None, zero_first_residual=None, feedback=None, renorm=None, keep_len=0)
    fam = lambda init, qp, zero, f=F: dict(none, block_size=B, mem_blocks=M, fam_len=f, init=init,
                                           seed_ids=seed if init == "seed" else None, query_pos=qp, zero_first_residual=zero)
    spec = [("full", "full", none), ("bswa", "bswa", dict(none, block_size=B, mem_blocks=M)),
            ("sink", "sink", dict(none, block_size=B, mem_blocks=M, sinks=S)),
            ("fam_seed_blockend_zero", "fam", fam("seed", "block-end", True)),
            ("fam_bos_blockend_zero", "fam", fam("bos", "block-end", True)),
            ("fam_tail_blockend_zero", "fam", fam("tail", "block-end", True)),
            ("fam_seed_prevfam_zero", "fam", fam("seed", "prev-fam", True)),
            ("fam_seed_blockend_nozero", "fam", fam("seed", "block-end", False)),
            ("fam_f0", "fam", fam("bos", "block-end", True, f=0)),
            ("bswa_m5", "bswa", dict(none, block_size=B, mem_blocks=5)),
            # the runtime's training-free variants, and fam with sinks (the long-run setup)
            ("fam_seed_sinks", "fam", dict(fam("seed", "block-end", False), sinks=S)),
            ("fam_seed_renorm", "fam", dict(fam("seed", "block-end", False), renorm=True)),
            ("fam_reread", "fam", dict(fam("seed", "block-end", False), feedback="reread")),
            ("fam_reread_sinks", "fam", dict(fam("seed", "block-end", False), feedback="reread", sinks=S)),
            # kept tokens next to the FAM (--keep-len), room for every token that leaves
            ("fam_seed_keep_all", "fam", dict(fam("seed", "block-end", False), sinks=S, keep_len=32)),
            # the training-free salience memory with room for every token that leaves the window
            ("keep_all", "keep", dict(none, block_size=B, mem_blocks=M, fam_len=32, sinks=S))]
    return [dict(arch=arch, file=f"{arch}_{name}.npy", policy=pol, **p, ids=ids) for name, pol, p in spec]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "tests/golden/fam"))
    out = Path(ap.parse_args().out); out.mkdir(parents=True, exist_ok=True)
    all_cases, worst = [], {}
    note = lambda key, d: worst.__setitem__(key, max(worst.get(key, 0.0), float(d)))
    for arch in ("llama", "qwen2"):
        tiny = ROOT / "tests/golden/tiny" / arch
        m = Model(tiny / "model.f32.gguf")
        vocab = m.out_w.shape[0]
        ids = [m.bos] + np.random.default_rng(2404).integers(5, vocab, size=43).tolist()
        assert m.bos == 1
        # full == plain causal forward == HF transformers goldens
        hf = json.loads((tiny / "golden.json").read_text())
        for seq, f in zip(hf["sequences"], hf["logits_files"]):
            note("full vs HF float32 goldens (tiny/*/logits_*.npy)", np.abs(forward_policy(m, seq, "full") - np.load(tiny / f)).max())
        res = {}
        for c in cases_for(arch, ids):
            params = {k: c[k] for k in PARAMS}
            got = res[c["file"]] = forward_policy(m, ids, c["policy"], **params)
            naive, _ = naive_forward(m, ids, c["policy"], **params)
            note(f"masked/combined vs naive token-by-token ({c['policy']})", np.abs(got - naive).max())
            np.save(out / c["file"], np.ascontiguousarray(got.astype("<f4")))
            all_cases.append(c)
        r = lambda name: res[f"{arch}_{name}.npy"]
        note("full vs plain causal forward", np.abs(r("full") - plain_forward(m, ids)).max())
        note("fam F=0 vs bswa", np.abs(r("fam_f0") - r("bswa")).max())
        note("bswa M=5 vs full", np.abs(r("bswa_m5") - r("full")).max())
        keep_m0 = forward_policy(m, ids, "keep", block_size=B_CASES, mem_blocks=0, fam_len=40, sinks=2)
        note("keep-all M=0 vs full", np.abs(keep_m0 - r("full")).max())
        for a, b in [("bswa", "full"), ("sink", "bswa"), ("fam_seed_blockend_zero", "bswa"),
                     ("fam_bos_blockend_zero", "fam_seed_blockend_zero"), ("fam_tail_blockend_zero", "fam_seed_blockend_zero"),
                     ("fam_seed_prevfam_zero", "fam_seed_blockend_zero"), ("fam_seed_blockend_nozero", "fam_seed_blockend_zero"),
                     ("fam_seed_sinks", "fam_seed_blockend_nozero"), ("fam_seed_renorm", "fam_seed_blockend_nozero"),
                     ("fam_reread", "fam_seed_blockend_nozero"), ("fam_reread_sinks", "fam_reread"),
                     ("keep_all", "sink"), ("keep_all", "full"),
                     ("fam_seed_keep_all", "fam_seed_sinks"), ("fam_seed_keep_all", "keep_all")]:
            d = np.abs(r(a) - r(b)).max(); first = int(np.argmax(np.abs(r(a) - r(b)).max(1) > 1e-9))
            print(f"{arch}: {a:26s} differs from {b:24s} by max {d:.3e} (first differing row {first})")
            assert d > 1e-3, "goldens would not distinguish these policies"
    (out / "cases.json").write_text("[\n" + ",\n".join(json.dumps(c) for c in all_cases) + "\n]\n")  # one case a line
    for k, v in worst.items():
        print(f"check {k:58s} max|diff| = {v:.3e}")
        assert v < (1e-4 if "HF" in k else 1e-10), k
    print(f"wrote {len(all_cases)} cases to {out}")


if __name__ == "__main__":
    main()
