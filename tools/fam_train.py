#!/usr/bin/env python3
"""Train a FAM (learned initial memory + LoRA) for a llama/qwen2 HF checkpoint; export a GGUF adapter.

An independent PyTorch implementation of famstream's FAM forward (fam.md; same settings as the
runtime: B, M, F, S, init, query position, first residual, renorm, decay; feedback `within`), written
from the spec and checked against the numpy reference's goldens (`goldens` below), not against
the Rust engine. Trainable: a soft prompt of F embeddings (the paper's learned initial FAM: run
alone through the layers at positions -F..-1, each layer's input rows become that layer's initial
FAM) and LoRA on the chosen linears. Full backpropagation through every block of a sample.

Subcommands:
  train   RUN_DIR --model HF_DIR [...]   trains; resumes from RUN_DIR/ckpt.pt when started again
                                         with the same settings; RUN_DIR/log.jsonl gets a line per
                                         step (loss, tokens/s) and per evaluation (held-out recall)
  eval    RUN_DIR [--k 1 2 4] [--trials N]   held-out recall (Moby-Dick filler, held-out templates
                                         and values) with 95% Wilson intervals, trained FAM vs the
                                         same FAM with its rows zeroed at the question block;
                                         RUN_DIR may be an exported ADAPTER.gguf (with --model);
                                         --after-sample K: the stream read another sample first
  export  RUN_DIR --base-gguf GGUF --out ADAPTER.gguf
                                         GGUF adapter in llama.cpp's LoRA layout + fam.init_memory
                                         + the fam.* settings it was trained with
  migrate OLD.gguf NEW.gguf              rewrite an adapter whose fam.init_memory is a tensor
                                         (before metadata; llama.cpp refuses such files) in the
                                         current layout: the same values, as a metadata array
  smoke                                  CI: train/resume/export on the tiny checkpoint, loss
                                         falls on a fixed batch, goldens regenerate as committed
  report  RUN_DIR [--splice]              the log as Markdown (compute, held-out recall curve)
  goldens                                tests/golden/adapter/: a random adapter for each tiny
                                         checkpoint and this forward's logits (the Rust test
                                         tests/adapter_golden.rs compares famstream with them);
                                         first checks this forward against tests/golden/fam/

CPU by default (threads: --threads); `--device cuda` runs the same code on a GPU.
Requirements: tools/requirements.txt (torch, safetensors, tokenizers, numpy, gguf).
"""
import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as Fn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the `tools` package
from tools.common import ROOT, splice, wilson95  # noqa: E402
TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
LORA_SCOPES = ("all", "fam")  # which rows LoRA applies to (fam.adapter.lora_scope)
HF_LIN = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
          "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
GGUF_LIN = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output", "gate": "ffn_gate", "up": "ffn_up",
            "down": "ffn_down"}


# ------------------------------------------------------------------------------------------------
# The model: frozen base weights from an HF checkpoint, LoRA, the FAM forward.

class Model(torch.nn.Module):
    def __init__(self, hf_dir, rank=8, alpha=16.0, targets=TARGETS, fam_len=16, device="cpu", seed=0,
                 lora_scope="all", fam_bias=None):
        super().__init__()
        # "all": LoRA on every row; "fam": only on FAM rows (the soft prompt's run, the FAM
        # update), so the tokens' own computation is the base model's (fam.adapter.lora_scope)
        assert lora_scope in LORA_SCOPES, lora_scope
        self.lora_scope = lora_scope
        self.lora_off = False  # True: the base model alone (the distillation teacher)
        self._rope_cache = {}  # positions -> (cos, sin) on the device
        from safetensors.torch import load_file
        hf_dir = Path(hf_dir)
        cfg = json.loads((hf_dir / "config.json").read_text())
        self.arch = cfg["model_type"]
        if self.arch not in ("llama", "qwen2"):
            raise SystemExit(f"{hf_dir}: model_type {self.arch!r} is not supported (llama, qwen2)")
        rp = cfg.get("rope_parameters") or {}
        scaling = cfg.get("rope_scaling") or ({} if rp.get("rope_type", "default") == "default" else rp)
        if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
            raise SystemExit(f"{hf_dir}: rope scaling {scaling} is not supported")
        self.base = float(rp.get("rope_theta", cfg.get("rope_theta", 10000.0)))
        self.L, self.d = cfg["num_hidden_layers"], cfg["hidden_size"]
        self.H, self.KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.hd = cfg.get("head_dim") or self.d // self.H
        self.eps = cfg["rms_norm_eps"]
        self.bos = cfg.get("bos_token_id", 1)
        self.cfg, self.device = cfg, device
        files = sorted(hf_dir.glob("*.safetensors"))
        if not files:
            raise SystemExit(f"{hf_dir}: no *.safetensors")
        w = {}
        for f in files:
            w.update({k: v.to(torch.float32) for k, v in load_file(str(f)).items()})
        self.w = {k: v.to(device) for k, v in w.items()}
        self.embed_w = self.w["model.embed_tokens.weight"]
        self.head_w = self.w.get("lm_head.weight", self.embed_w)
        self.vocab = self.head_w.shape[0]
        # LoRA: A [r, n_in] (small random), B [n_out, r] (zero): the adapter starts as the identity
        g = torch.Generator().manual_seed(seed)
        self.rank, self.alpha, self.targets = rank, alpha, tuple(targets)
        self.lora = torch.nn.ParameterDict()
        for l in range(self.L):
            for t in self.targets:
                W = self.lin_w(l, t)
                self.lora[f"{l}_{t}_a"] = torch.nn.Parameter(
                    (torch.randn(rank, W.shape[1], generator=g) / math.sqrt(W.shape[1])).to(device))
                self.lora[f"{l}_{t}_b"] = torch.nn.Parameter(torch.zeros(W.shape[0], rank, device=device))
        self.F = fam_len
        self.prompt = torch.nn.Parameter(torch.zeros(fam_len, self.d, device=device))
        # a learned bias on the attention logits of token rows at the FAM's columns (every
        # layer and head; fam.adapter.fam_attn_bias): starting negative, an untrained memory is
        # nearly `bswa`, and training raises it only as far as the memory helps
        self.fam_bias = None if fam_bias is None else torch.nn.Parameter(
            torch.tensor(float(fam_bias), device=device))

    def small_params(self):
        """The trainable parameters other than LoRA: the soft prompt (and the FAM bias)."""
        return [self.prompt] + ([self.fam_bias] if self.fam_bias is not None else [])

    def lin_w(self, l, t):
        return self.w[f"model.layers.{l}.{HF_LIN[t]}.weight"]

    def lin(self, x, l, t, rows=None):
        """x [N, T, n_in]; LoRA on the first `rows` rows of each sample (None: all)."""
        p = f"model.layers.{l}.{HF_LIN[t]}."
        y = x @ self.w[p + "weight"].T
        if p + "bias" in self.w:
            y = y + self.w[p + "bias"]
        if t in self.targets and rows != 0 and not self.lora_off:
            xr = x if rows is None else x[:, :rows]
            d = (xr @ self.lora[f"{l}_{t}_a"].T) @ self.lora[f"{l}_{t}_b"].T * (self.alpha / self.rank)
            if rows is not None:
                d = torch.cat([d, d.new_zeros(d.shape[0], x.shape[1] - rows, d.shape[2])], 1)
            y = y + d
        return y

    def lora_rows(self, n_fam):
        """The rows of a [FAM; tokens] batch that LoRA applies to under this model's scope."""
        return None if self.lora_scope == "all" else n_fam

    def rms(self, x, w):
        x32 = x.float()
        return x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def rope(self, x, pos):
        """x [N, heads, T, hd]; pos [T] (may be negative); HF rotate_half layout, angles in float64."""
        pos = torch.as_tensor(pos, dtype=torch.float64)
        key = (pos.numpy().tobytes(), x.dtype, str(x.device))
        cs = self._rope_cache.get(key)
        if cs is None:  # every layer rotates at the same positions: one host-to-device copy per block
            inv = self.base ** (-torch.arange(0, self.hd, 2, dtype=torch.float64) / self.hd)
            ang = pos[:, None] * inv[None, :]
            ang = torch.cat([ang, ang], -1)
            cs = ang.cos().to(x.dtype).to(x.device), ang.sin().to(x.dtype).to(x.device)
            if len(self._rope_cache) > 256:
                self._rope_cache.clear()
            self._rope_cache[key] = cs
        c, s = cs
        h = self.hd // 2
        rot = torch.cat([-x[..., h:], x[..., :h]], -1)
        return x * c + rot * s

    def qkv(self, l, x, rows=None):
        """x [N, T, d] layer-l inputs -> unrotated q [N, H, T, hd], k, v [N, KV, T, hd]."""
        N, T, _ = x.shape
        h = self.rms(x, self.w[f"model.layers.{l}.input_layernorm.weight"])
        q = self.lin(h, l, "q", rows).view(N, T, self.H, self.hd).transpose(1, 2)
        k = self.lin(h, l, "k", rows).view(N, T, self.KV, self.hd).transpose(1, 2)
        v = self.lin(h, l, "v", rows).view(N, T, self.KV, self.hd).transpose(1, 2)
        return q, k, v

    def attend(self, q, k, v, visible):
        """q [N, H, R, hd] rotated; k, v [N, KV, C, hd]; visible bool [R, C] (or a float mask
        added to the logits) -> [N, R, H*hd]."""
        rep = self.H // self.KV
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        o = Fn.scaled_dot_product_attention(q, k, v, attn_mask=visible.to(q.device))
        N, _, R, _ = o.shape
        return o.transpose(1, 2).reshape(N, R, self.H * self.hd)

    def finish(self, l, resid, o, rows=None):
        p = f"model.layers.{l}."
        r = resid + self.lin(o, l, "o", rows)
        h = self.rms(r, self.w[p + "post_attention_layernorm.weight"])
        return r + self.lin(Fn.silu(self.lin(h, l, "gate", rows)) * self.lin(h, l, "up", rows), l, "down", rows)

    def logits(self, x):
        return self.rms(x, self.w["model.norm.weight"]) @ self.head_w.T

    def embed(self, ids):
        return self.embed_w[torch.as_tensor(ids, device=self.device)]

    def run_alone(self, x, pos, rows=None):
        """Rows x [N, T, d] alone, causal, at positions pos: the layer inputs [L+1] (init FAM).
        rows: LoRA's rows (None: all, as for the soft prompt, which is FAM rows only)."""
        T = x.shape[1]
        vis = torch.tril(torch.ones(T, T, dtype=torch.bool)).to(x.device)
        xs = [x]
        for l in range(self.L):
            q, k, v = self.qkv(l, xs[-1], rows)
            xs.append(self.finish(l, xs[-1], self.attend(self.rope(q, pos), self.rope(k, pos), v, vis), rows))
        return xs

    def initial_fam(self, s, n, seed_ids=None):
        """Per-layer initial FAM [n, F, d] for settings s (fam.md section 5), or None (tail)."""
        F = s["fam_len"]
        P = torch.arange(-F, 0, dtype=torch.float64)
        if s["init"] == "learned":
            xs = self.run_alone(self.prompt[None], P)
        elif s["init"] == "seed":  # tokens, run as tokens are (famstream: the token graph)
            xs = self.run_alone(self.embed([seed_ids]), P, self.lora_rows(0))
        elif s["init"] == "bos":
            xs = [x.repeat(1, F, 1) for x in self.run_alone(self.embed([[self.bos]]), torch.tensor([-1.0]),
                                                            self.lora_rows(0))]
        else:
            assert s["init"] == "tail", s["init"]
            return None
        return [xs[l].expand(n, -1, -1) for l in range(self.L)]

    def forward_full(self, ids, out_pos=None):
        """Plain causal attention (the `full` policy); logits at out_pos (all rows if None)."""
        x = self.embed(ids)
        xs = self.run_alone(x, torch.arange(x.shape[1], dtype=torch.float64), self.lora_rows(0))
        h = xs[-1] if out_pos is None else xs[-1][:, out_pos]
        return self.logits(h)

    def forward_fam(self, ids, s, out_pos=None, fam0=None, pos0=None, drop_fam_from=None, seed_ids=None):
        """The FAM policy over ids [N, T] (same layout as tools/fam_reference.py forward_fam).

        s: settings dict (block_size, mem_blocks, fam_len, sinks, init, query_pos,
        zero_first_residual, renorm, decay: each updated row becomes (1 - decay) x itself + decay x the
        initial row, 0 if absent). out_pos: positions (list) whose logits to return, else all.
        fam0: (per-layer FAM [N, F, d], positions) to start from instead of the init (random state
        passing); the stream then starts at absolute position pos0 (default: just after the last
        finished block fam0 read; 0 without fam0). drop_fam_from: from this block on, token rows do not
        see the FAM keys (the ablation: the memory removed, the rest is `bswa`).
        s["keep_len"] = K > 0 (famstream's `--keep-len`): the token rows also see the K/V of up to K
        tokens that left the window, chosen as famstream's `keep` chooses them (see `keep_select`), shown
        with the sinks as famstream shows them: kept tokens in stream order just before the current block,
        the sinks just before those (`FamState::pinned_positions`); the FAM rows never see them. Which
        tokens stay is decided without gradients (surprisal under the current weights); their K/V carry
        gradients. A passed state (fam0) starts with nothing kept. s["kept_heads"] (optional, famstream's
        `fam.kept_heads`, src/kept_heads.rs): the (layer, head) pairs, as layer * n_head + head, whose
        attention sees the kept tokens; the other heads' token rows do not (sinks and FAM unaffected).
        Returns (logits [N, len(out_pos), vocab], (final FAM, its positions))."""
        ids = torch.as_tensor(ids, device=self.device)
        N, n = ids.shape
        B, M, F, S = s["block_size"], s["mem_blocks"], s["fam_len"], s["sinks"]
        assert 0 <= F <= B and s["query_pos"] in ("block-end", "prev-fam") and S <= B
        decay = s.get("decay") or 0.0
        init = self.initial_fam(s, N, seed_ids) if F > 0 and (fam0 is None or decay) else None
        assert not decay or init is not None, "fam.decay needs an initial FAM to decay toward (not init = tail)"
        if pos0 is None:
            pos0 = 0 if fam0 is None else int(fam0[1][-1]) + 1
        if fam0 is not None:
            fam, P = fam0
            n_updates = 1
        else:
            fam = init
            P = torch.arange(-F, 0, dtype=torch.float64) + pos0
            n_updates = 0
        assert pos0 % B == 0, "streams start at a block boundary"
        want = list(range(n)) if out_pos is None else list(out_pos)
        outs = {}
        mem_kv = [[] for _ in range(self.L)]  # per layer: list of (k, v, positions) of finished blocks
        sink_kv = [None] * self.L  # per layer: (k, v) of the first S tokens of the stream
        K = s.get("keep_len") or 0
        kh = s.get("kept_heads")
        hide_kept = None  # [L, H]: heads that do not see the kept tokens
        if K and kh is not None:
            hide_kept = torch.ones(self.L * self.H, dtype=torch.bool)
            hide_kept[list(kh)] = False
            hide_kept = hide_kept.view(self.L, self.H)
        if K:
            all_kv = [[] for _ in range(self.L)]  # per layer: un-rotated (k, v) of every block read
            kept = [[] for _ in range(N)]  # per sample: [(score, stream index)] of the kept tokens
            surp = torch.zeros(N, n)  # each token's surprisal when it was read
            prev_lp = None  # log-probabilities after the previous block's last token
        for t in range(-(-n // B)):
            lo, hi = t * B, min((t + 1) * B, n)
            blk_pos = torch.arange(lo, hi, dtype=torch.float64) + pos0
            end_pos = torch.arange((t + 1) * B - F, (t + 1) * B, dtype=torch.float64) + pos0
            nb = hi - lo
            nf = F if fam is not None else 0
            zero = s["zero_first_residual"] and n_updates == 0
            q_pos = torch.cat([(end_pos if s["query_pos"] == "block-end" else P) if nf else blk_pos[:0], blk_pos])
            k_pos = torch.cat([P if nf else blk_pos[:0], blk_pos])
            # sinks that have left the window, at virtual positions just before it
            sk = [j for j in range(min(S, n)) if j // B < t - M]
            w0 = max(0, t - M) * B
            sk_pos = torch.tensor([w0 - S + j for j in sk], dtype=torch.float64) + pos0
            ns = len(sk)
            if K:  # pinned columns per sample: the sinks, then the kept tokens, padded to the longest
                pin = [sk + sorted(j for _, j in kept[i]) for i in range(N)]
                ns = max(len(p) for p in pin)
                pin_pos = []
                for i in range(N):
                    nk = len(kept[i])
                    pos_i = [t * B - nk - S + j for j in sk] + [t * B - nk + r for r in range(nk)]
                    pin_pos.append(torch.tensor(pos_i + [0] * (ns - len(pos_i)), dtype=torch.float64) + pos0)
                    pin[i] = pin[i] + [0] * (ns - len(pin[i]))
            nm = sum(len(p) for _, _, p in mem_kv[0])
            vis = torch.zeros(nf + nb, ns + nm + nf + nb, dtype=torch.bool)
            vis[:nf, ns + nm:] = True
            vis[nf:, :ns + nm + nf] = True
            vis[nf:, ns + nm + nf:] = torch.tril(torch.ones(nb, nb, dtype=torch.bool))
            if drop_fam_from is not None and t >= drop_fam_from:
                vis[nf:, ns + nm:ns + nm + nf] = False  # the ablation: token rows lose the FAM
            if K:  # one mask per sample: padded pinned columns are hidden
                vis = vis[None].repeat(N, 1, 1)
                for i in range(N):
                    vis[i, nf:, len(sk) + len(kept[i]):ns] = False
                vis = vis[:, None]  # [N, 1, rows, columns]
            mask = vis.to(self.device)
            if self.fam_bias is not None and nf:
                on_fam = torch.zeros(vis.shape, device=self.device)
                on_fam[..., nf:, ns + nm:ns + nm + nf] = 1.0
                mask = torch.zeros(vis.shape, device=self.device).masked_fill(~mask, float("-inf")) \
                    + self.fam_bias * on_fam
            x = self.embed(ids[:, lo:hi])
            new_fam, layer_in = [], []
            for l in range(self.L):
                layer_in.append(x)
                rows = torch.cat([fam[l], x], 1) if nf else x
                q, k, v = self.qkv(l, rows, self.lora_rows(nf))
                ks, vs = [], []
                if K and ns:
                    ka = torch.cat([kk for kk, _ in all_kv[l]], 2)
                    va = torch.cat([vv for _, vv in all_kv[l]], 2)
                    ks.append(torch.cat([self.rope(ka[i:i + 1, :, pin[i]], pin_pos[i]) for i in range(N)]))
                    vs.append(torch.stack([va[i, :, pin[i]] for i in range(N)]))
                elif ns:
                    ks.append(self.rope(sink_kv[l][0][:, :, sk], sk_pos))
                    vs.append(sink_kv[l][1][:, :, sk])
                for km, vm, pm in mem_kv[l]:
                    ks.append(self.rope(km, pm)); vs.append(vm)
                ks.append(self.rope(k, k_pos)); vs.append(v)
                mask_l = mask
                if hide_kept is not None and hide_kept[l].any() and ns > len(sk):
                    # these heads' token rows do not see the kept columns (after the sinks)
                    mask_l = mask.expand(-1, self.H, -1, -1).clone()
                    hid = mask_l[:, hide_kept[l].to(mask_l.device), nf:, len(sk):ns]
                    mask_l[:, hide_kept[l].to(mask_l.device), nf:, len(sk):ns] = \
                        False if mask_l.dtype == torch.bool else torch.full_like(hid, float("-inf"))
                o = self.attend(self.rope(q, q_pos), torch.cat(ks, 2), torch.cat(vs, 2), mask_l)
                resid = rows
                if zero and nf:
                    resid = torch.cat([torch.zeros_like(rows[:, :nf]), rows[:, nf:]], 1)
                out = self.finish(l, resid, o, self.lora_rows(nf))
                if s.get("renorm") and nf:
                    new = out[:, :nf]
                    new = new * torch.rsqrt(new.pow(2).mean(-1, keepdim=True) + self.eps) \
                        * rows[:, :nf].pow(2).mean(-1, keepdim=True).sqrt()
                    out = torch.cat([new, out[:, nf:]], 1)
                if decay and nf:  # a leaky memory: each update pulls the rows toward the initial FAM
                    out = torch.cat([(1 - decay) * out[:, :nf] + decay * init[l], out[:, nf:]], 1)
                kb, vb = k[:, :, nf:], v[:, :, nf:]
                if t == 0 and S:
                    sink_kv[l] = (kb[:, :, :S], vb[:, :, :S])
                if M:
                    mem_kv[l] = (mem_kv[l] + [(kb, vb, blk_pos)])[-M:]
                if K:
                    all_kv[l].append((kb, vb))
                x = out[:, nf:]
                new_fam.append(out[:, :nf])
            rows_here = [p for p in want if lo <= p < hi]
            if rows_here:
                outs.update(zip(rows_here, self.logits(x[:, [p - lo for p in rows_here]]).unbind(1)))
            if K:  # surprisal of this block's tokens; after a full block, block t - M's tokens compete
                with torch.no_grad():
                    lp = torch.log_softmax(self.logits(x.detach()).float(), -1)
                    surp[:, lo + 1:hi] = -lp[:, :-1].gather(-1, ids[:, lo + 1:hi, None])[..., 0].cpu()
                    if prev_lp is not None:
                        surp[:, lo] = -prev_lp.gather(-1, ids[:, lo:lo + 1])[:, 0].cpu()
                    surp[:, lo:hi] = surp[:, lo:hi].nan_to_num(0.0).clamp(0.0, MAX_SURPRISAL)
                    prev_lp = lp[:, -1]
                leaving = t - M
                if nb == B and leaving >= 0:
                    idx = [j for j in range(leaving * B, (leaving + 1) * B) if j >= S]
                    for i in range(N):
                        kept[i] = keep_select(kept[i], idx, surp[i, idx].tolist(), K)
            if nb == B and nf:
                fam, P, n_updates = new_fam, end_pos, n_updates + 1
            elif nb == B and F and fam is None:  # tail init, after block 0
                fam, P = [layer_in[l][:, -F:] for l in range(self.L)], end_pos
        return torch.stack([outs[p] for p in want], 1), (fam, P)


# ------------------------------------------------------------------------------------------------
# famstream's `keep` salience rule (src/keep.rs), for kept tokens next to the FAM

MAX_SURPRISAL = 104.0  # keep::MAX_SURPRISAL
SALIENCE_RADIUS = 8  # keep::SALIENCE_RADIUS


def leaving_scores(idx, surp, radius=SALIENCE_RADIUS):
    """keep::Salience::leaving_scores: each leaving token's density is the sum of the surprisals of
    the leaving tokens within `radius` of it; its score the largest density within `radius`."""
    near = lambda j: [x for x, i in enumerate(idx) if abs(i - j) <= radius]
    density = [sum(surp[x] for x in near(j)) for j in idx]
    return [max((density[x] for x in near(j)), default=0.0) for j in idx]


def keep_select(kept, idx, surp, K, radius=SALIENCE_RADIUS):
    """keep::Salience::select: the tokens leaving the window (stream indices idx, surprisals surp)
    compete with the kept ones ([(score, index)]): the K highest scores stay, ties to the later
    token. Returns the new kept list."""
    allc = kept + list(zip(leaving_scores(idx, surp, radius), idx))
    allc.sort(key=lambda e: (-e[0], -e[1]))
    return allc[:K]


# ------------------------------------------------------------------------------------------------
# Training

def settings_of(a):
    return dict(policy="fam", block_size=a.block, mem_blocks=a.mem_blocks, fam_len=a.fam_len, sinks=a.sinks,
                init="learned", query_pos=a.query_pos, zero_first_residual=a.zero_first_residual, renorm=False,
                feedback="within", decay=a.decay, keep_len=a.keep_len)


def kept_heads_of(path, n_pairs):
    """The (layer, head) pairs, as layer * n_head + head, that a file's `fam.kept_heads` names (an
    adapter written by `tools/kept_heads.py --write`): training with them teaches the LoRA to read
    the kept tokens through those heads only, as famstream will run it."""
    import gguf
    try:
        f = gguf.GGUFReader(str(path)).fields
    except (OSError, ValueError) as e:
        raise SystemExit(f"--kept-heads {path}: cannot read it as GGUF ({e})")
    if "fam.kept_heads" not in f:
        raise SystemExit(f"--kept-heads {path}: has no fam.kept_heads (tools/kept_heads.py --write makes one)")
    kh = sorted({int(x) for x in f["fam.kept_heads"].contents()})
    if not kh or kh[-1] >= n_pairs:
        raise SystemExit(f"--kept-heads {path}: pairs {kh[:1]}..{kh[-1:]} outside this model's {n_pairs}")
    return kh


def recall_batch(model, s, ids, ans_pos, drop_fam_from=None, fam0=None):
    """Exact-match recall (greedy under teacher forcing: every answer token is the argmax).
    fam0: (FAM, positions) to start from (a stream that has read something before), else fresh."""
    flat = sorted({p for ps in ans_pos for p in ps})
    with torch.no_grad():
        lg, _ = model.forward_fam(ids, s, out_pos=flat, drop_fam_from=drop_fam_from, fam0=fam0)
    col = {p: i for i, p in enumerate(flat)}
    hits = []
    for i, ps in enumerate(ans_pos):
        pred = [int(lg[i, col[p]].argmax()) for p in ps]
        hits.append(pred == [ids[i][p + 1] for p in ps])
    return hits


def distill_loss(model, ids, pos, student):
    """KL(teacher || student) per position, in nats: the teacher is the base model (no LoRA) with
    full attention over the whole sample, so the loss is zero only where the FAM model predicts as
    if nothing had left its window, and it never pulls the adapter toward the training text itself
    (a cross-entropy loss does: fitting the text's domain then outweighs learning to remember)."""
    with torch.no_grad():
        model.lora_off = True
        try:
            teacher = model.forward_full(ids, out_pos=pos)
        finally:
            model.lora_off = False
    V = student.shape[-1]
    return Fn.kl_div(Fn.log_softmax(student.reshape(-1, V), -1), Fn.log_softmax(teacher.reshape(-1, V), -1),
                     log_target=True, reduction="batchmean")


def load_ckpt(path, model, opt=None):
    ck = torch.load(path, map_location=model.device, weights_only=False)
    model.lora.load_state_dict(ck["lora"])
    with torch.no_grad():
        model.prompt.copy_(ck["prompt"])
        if model.fam_bias is not None:
            model.fam_bias.copy_(ck["fam_bias"])
    if opt is not None and "opt" in ck:
        opt.load_state_dict(ck["opt"])
    return ck


def save_atomic(obj, path):
    tmp = str(path) + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def cmd_train(a):
    from tokenizers import Tokenizer
    from tools.fam_data import RecallData
    torch.set_num_threads(a.threads)
    kept_heads = None  # checked before the run directory is made
    if a.kept_heads:
        if not a.keep_len:
            raise SystemExit(f"--kept-heads {a.kept_heads}: names the heads that see kept tokens; needs --keep-len")
        cfg = json.loads((Path(a.model) / "config.json").read_text())
        kept_heads = kept_heads_of(a.kept_heads, cfg["num_hidden_layers"] * cfg["num_attention_heads"])
    run = Path(a.run_dir); run.mkdir(parents=True, exist_ok=True)
    args_path, ckpt_path, log_path = run / "args.json", run / "ckpt.pt", run / "log.jsonl"
    # The curriculum's schedule (steps, last distance, the recall that advances it) may change
    # when a run resumes; everything else that shapes the model must stay as it started.
    schedule = ("steps", "max_k", "advance_at")
    keep = {k: v for k, v in vars(a).items() if k not in ("func", "threads", "device", "max_minutes") + schedule}
    if args_path.exists():
        old = json.loads(args_path.read_text())
        old.setdefault("lora_scope", "all")  # runs from before the flags
        old.setdefault("fam_bias", None)
        old.setdefault("lm_loss", "ce")
        old.setdefault("rsp_from_k", 1)
        old.setdefault("train_values", "pools")
        old.setdefault("decay", 0.0)
        old.setdefault("keep_len", 0)
        old.setdefault("kept_heads", None)
        diff = {k: (old.get(k), v) for k, v in keep.items() if old.get(k) != v}
        if diff:
            raise SystemExit(f"{run}: was started with other settings {diff}; use another RUN_DIR")
        if old.get("advance_at", a.advance_at) != a.advance_at:
            print(f"curriculum: advancing at held-out recall {a.advance_at} (was {old.get('advance_at')})",
                  file=sys.stderr)
            old.setdefault("advance_at_history", []).append(old.get("advance_at"))
            old["advance_at"] = a.advance_at
            args_path.write_text(json.dumps(old, indent=1) + "\n")
    else:
        args_path.write_text(json.dumps(keep, indent=1) + "\n")
    torch.manual_seed(a.seed)
    if a.device.startswith("cuda"):
        # TF32 tensor cores for the f32 matmuls (10 mantissa bits in the products, f32 sums): the
        # frozen base is Q4_1 dequantized, far coarser than that; CPU runs are unchanged
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = Model(a.model, a.rank, a.alpha, a.targets.split(","), a.fam_len, a.device, a.seed, a.lora_scope,
                  a.fam_bias)
    tok = Tokenizer.from_file(str(Path(a.model) / "tokenizer.json"))
    s = settings_of(a)
    if kept_heads is not None:
        s["kept_heads"] = kept_heads
    # the soft prompt starts as the embeddings of the runtime's seed text (BOS + text, cut to F)
    seed_text = ("The following is a long document. Remember the names, numbers, places and decisions in it, "
                 "from the beginning to the end.")
    seed_ids = ([model.bos] + tok.encode(seed_text).ids)[:a.fam_len]
    seed_ids += seed_ids[1:] * a.fam_len
    with torch.no_grad():
        model.prompt.copy_(model.embed(seed_ids[:a.fam_len]))
    opt = torch.optim.AdamW([{"params": [model.prompt], "lr": a.lr_prompt},
                             *([{"params": [model.fam_bias], "lr": a.lr_bias}] if model.fam_bias is not None else []),
                             {"params": list(model.lora.parameters()), "lr": a.lr_lora}], weight_decay=0.0)
    step, k_cur, last_recall = 0, a.k_start, None
    rng = random.Random(a.seed)
    if a.init_from and a.init_from.endswith(".gguf") and not ckpt_path.exists():
        restored = load_adapter(a.init_from, model, s)
        print(f"started from the adapter {a.init_from} (LoRA{', soft prompt' if restored else ''}; "
              f"{'' if restored else 'no soft prompt in it: the prompt starts from the seed text; '}"
              f"fresh optimizer)", file=sys.stderr)
        meta = json.loads(args_path.read_text())
        meta["init_from_adapter_prompt"] = restored
        args_path.write_text(json.dumps(meta, indent=1) + "\n")
    elif a.init_from and not ckpt_path.exists():
        # warm start: another run's LoRA, soft prompt and optimizer state; this run counts its own steps
        src = Path(a.init_from) / "ckpt.pt"
        if not src.exists():
            raise SystemExit(f"--init-from {a.init_from}: no checkpoint {src}")
        ck = load_ckpt(src, model, opt)
        for key in ("rank", "alpha", "targets"):
            if ck.get(key) != getattr(a, key):
                raise SystemExit(f"--init-from {a.init_from}: its {key} is {ck.get(key)}, this run's {getattr(a, key)}")
        theirs = dict(ck["settings"]); theirs.setdefault("decay", 0.0); theirs.setdefault("keep_len", 0)
        free = ("decay", "keep_len")  # may change in a warm start: a leaky or a keeping memory from a plain one
        if {k: v for k, v in theirs.items() if k not in free} != {k: v for k, v in s.items() if k not in free}:
            raise SystemExit(f"--init-from {a.init_from}: trained with other FAM settings {ck['settings']}")
        if theirs["decay"] != s["decay"]:  # allowed: e.g. a leaky memory fine-tuned from a plain one
            print(f"--init-from {a.init_from}: trained with decay {theirs['decay']}, this run uses {s['decay']}",
                  file=sys.stderr)
        print(f"started from {src} (its step {ck['step']})", file=sys.stderr)
        meta = json.loads(args_path.read_text())
        meta["init_from_step"] = ck["step"]
        args_path.write_text(json.dumps(meta, indent=1) + "\n")
    if ckpt_path.exists():
        ck = load_ckpt(ckpt_path, model, opt)
        step, k_cur, last_recall = ck["step"], ck["k_cur"], ck.get("recall")
        rng.setstate(ck["rng"])
        torch.set_rng_state(ck["torch_rng"])
        print(f"resumed {run} at step {step} (k={k_cur})", file=sys.stderr)
        if log_path.exists():  # steps after the checkpoint are run again: drop their lines
            kept = [l for l in log_path.read_text().splitlines() if json.loads(l)["step"] <= step]
            tmp = log_path.with_suffix(".tmp")
            tmp.write_text("".join(l + "\n" for l in kept))
            os.replace(tmp, log_path)
    train = RecallData(tok, a.block, "train", values=a.train_values)
    val = RecallData(tok, a.block, "val", templates="eval", values=a.train_values)
    val_rng_seed = a.seed + 1
    log = open(log_path, "a")
    t_start, tok_done, rsp = time.time(), 0, None  # rsp: (FAM, positions)

    def evaluate():
        vr = random.Random(val_rng_seed)  # the same held-out samples every time
        hits = []
        for _ in range(a.eval_batches):
            ids, ans, _ = val.batch(vr, a.batch, k_cur)
            hits += recall_batch(model, s, ids, ans)
        return sum(hits) / len(hits)

    step_seconds = 0.0  # this invocation's step time, for --max-minutes
    while step < a.steps and not (a.max_minutes and step_seconds > 60 * a.max_minutes):
        k = k_cur if rng.random() < 0.5 else rng.randint(1, k_cur)  # half at the frontier
        ids, ans, _ = train.batch(rng, a.batch, k)
        T = len(ids[0])
        # LM loss positions: filler after the fact block (those rows read the FAM), sampled
        cand = list(range(a.block, T - 1 - max(len(p) for p in ans) - 16))
        lm_pos = sorted(rng.sample(cand, min(a.lm_positions, len(cand)))) if a.lm_weight > 0 and cand else []
        flat = sorted({p for ps in ans for p in ps} | set(lm_pos))
        col = {p: i for i, p in enumerate(flat)}
        t0 = time.time()
        # random state passing: start from the previous stream's final FAM, positions continuing
        fam0 = rsp if rsp is not None and k_cur >= a.rsp_from_k and rng.random() < a.rsp else None
        if fam0 is not None and fam0[0][0].shape[0] != len(ids):
            fam0 = None  # the batch was halved after running out of GPU memory
        try:  # a passed state continues at its stream's positions
            lg, (fam_end, P_end) = model.forward_fam(ids, s, out_pos=flat, fam0=fam0)
            tgt = torch.tensor(ids, device=model.device)
            a_idx = [(i, col[p], ids[i][p + 1]) for i, ps in enumerate(ans) for p in ps]
            ans_loss = Fn.cross_entropy(torch.stack([lg[i, c] for i, c, _ in a_idx]),
                                        torch.tensor([y for _, _, y in a_idx], device=model.device))
            loss = ans_loss
            lm_loss = torch.zeros(())
            if lm_pos and a.lm_loss == "kl":
                lm_loss = distill_loss(model, ids, lm_pos, lg[:, [col[p] for p in lm_pos]])
            elif lm_pos:
                lm_loss = Fn.cross_entropy(lg[:, [col[p] for p in lm_pos]].reshape(-1, model.vocab),
                                           tgt[:, [p + 1 for p in lm_pos]].reshape(-1))
            if lm_pos:
                loss = loss + a.lm_weight * lm_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
        except torch.OutOfMemoryError:
            # a one-shot GPU run must not die on a batch too large for the card: halve it, go on
            if a.batch <= 1:
                raise
            lg = fam_end = loss = ans_loss = lm_loss = None
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            a.batch //= 2
            print(f"step {step + 1}: out of GPU memory at k={k}; batch now {a.batch}", file=sys.stderr, flush=True)
            continue
        torch.nn.utils.clip_grad_norm_(model.small_params() + list(model.lora.parameters()), 1.0)
        opt.step()
        if a.rsp > 0 and fam_end is not None:
            rsp = ([f.detach() for f in fam_end], P_end)
        step += 1
        dt = time.time() - t0
        step_seconds += dt
        tok_done += a.batch * T
        rate = tok_done / (time.time() - t_start)
        rec = dict(step=step, k=k, k_cur=k_cur, loss=round(loss.item(), 4), ans_loss=round(ans_loss.item(), 4),
                   lm_loss=round(lm_loss.item(), 4), tokens=a.batch * T, seconds=round(dt, 2))
        if step % a.eval_every == 0 or step == a.steps:
            last_recall = evaluate()
            rec["recall_val"] = last_recall
            rec["recall_k"] = k_cur
            if last_recall >= a.advance_at and k_cur < a.max_k:
                k_cur += 1
        log.write(json.dumps(rec) + "\n"); log.flush()
        eta = (a.steps - step) * dt
        print(f"step {step}/{a.steps} k={k}/{k_cur} loss {loss.item():.3f} (answer {ans_loss.item():.3f}, "
              f"lm {lm_loss.item():.3f}) recall@k={last_recall if last_recall is None else round(last_recall, 3)} "
              f"{rate:.0f} tok/s ETA {eta / 60:.0f} min"
              + (f" GPU peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if a.device.startswith("cuda") else ""),
              file=sys.stderr, flush=True)
        stopping = step == a.steps or (a.max_minutes and step_seconds > 60 * a.max_minutes)
        if step % a.ckpt_every == 0 or stopping:
            save_atomic(dict(lora=model.lora.state_dict(), prompt=model.prompt.detach(), opt=opt.state_dict(),
                             fam_bias=None if model.fam_bias is None else model.fam_bias.detach(),
                             step=step, k_cur=k_cur, recall=last_recall, rng=rng.getstate(),
                             torch_rng=torch.get_rng_state(), settings=s, rank=a.rank, alpha=a.alpha,
                             targets=a.targets), ckpt_path)


def load_run(run_dir, device="cpu", model_dir=None):
    run = Path(run_dir)
    a = json.loads((run / "args.json").read_text())
    model = Model(model_dir or a["model"], a["rank"], a["alpha"], a["targets"].split(","), a["fam_len"], device, a["seed"],
                  a.get("lora_scope", "all"), a.get("fam_bias"))
    ck = load_ckpt(run / "ckpt.pt", model)
    return model, a, ck


def adapter_model(path, model_dir, device="cpu"):
    """A Model with an exported adapter's LoRA and soft prompt, and the FAM settings it carries
    (`eval ADAPTER.gguf --model HF_DIR`: checkpoints are not in git, adapters are)."""
    import gguf
    r = gguf.GGUFReader(str(path))
    f = r.fields
    def sc(k, default=None):
        return f[k].contents() if k in f else default
    if sc("general.type") != "adapter" or sc("adapter.type") != "lora":
        raise SystemExit(f"{path}: not a LoRA adapter")
    s = dict(policy="fam", init="learned", query_pos=sc("fam.query_pos"), feedback=sc("fam.feedback"),
             zero_first_residual=bool(sc("fam.zero_first_residual", False)), renorm=bool(sc("fam.renorm", False)),
             decay=round(float(sc("fam.decay", 0.0)), 6), keep_len=int(sc("fam.keep_len", 0)),
             **{k: int(sc(f"fam.{k}")) for k in ("block_size", "mem_blocks", "fam_len", "sinks")})
    if "fam.kept_heads" in f:  # absent: every head sees the kept tokens
        s["kept_heads"] = [int(x) for x in f["fam.kept_heads"].contents()]
    shapes = {t.name: t.shape for t in r.tensors}
    targets = [t for t in TARGETS if f"blk.0.{GGUF_LIN[t]}.weight.lora_a" in shapes]
    rank = int(shapes[f"blk.0.{GGUF_LIN[targets[0]]}.weight.lora_a"][1])  # ne [n_in, r]
    bias = sc("fam.adapter.fam_attn_bias")
    model = Model(model_dir, rank, float(sc("adapter.lora.alpha")), targets, s["fam_len"], device, 0,
                  sc("fam.adapter.lora_scope") or "all", None if bias is None else float(bias))
    if not load_adapter(path, model, s):
        raise SystemExit(f"{path}: carries no soft prompt (famtrain.prompt); export it again")
    return model, s


def cmd_eval(a):
    from tokenizers import Tokenizer
    from tools.fam_data import RecallData
    torch.set_num_threads(a.threads)
    if a.run_dir.endswith(".gguf"):
        if not a.model:
            raise SystemExit("eval ADAPTER.gguf needs --model HF_DIR (the base it was trained on)")
        model, s = adapter_model(a.run_dir, a.model, a.device)
        tok_dir, step = a.model, None
    else:
        model, ra, ck = load_run(a.run_dir, a.device, a.model)
        s, tok_dir, step = ck["settings"], a.model or ra["model"], ck["step"]
    if a.keep_len is not None:
        s = dict(s, keep_len=a.keep_len)
    tok = Tokenizer.from_file(str(Path(tok_dir) / "tokenizer.json"))
    data = RecallData(tok, s["block_size"], "eval")
    rows = []
    for k in a.k:
        rng = random.Random(a.seed + k)
        pre_rng = random.Random(a.seed + 7919 * k)  # its own stream: the same cases either way
        hits, zeroed = [], []
        while len(hits) < a.trials:
            ids, ans, _ = data.batch(rng, min(a.batch, a.trials - len(hits)), k)
            fam0 = None
            if a.after_sample:
                # the stream has read another held-out sample first (its fact, filler and
                # question): the FAM starts holding that one, as in training's state passing
                pre, _, _ = data.batch(pre_rng, len(ids), a.after_sample)
                with torch.no_grad():
                    fam0 = model.forward_fam(pre, s, out_pos=[0])[1]
            hits += recall_batch(model, s, ids, ans, fam0=fam0)
            zeroed += recall_batch(model, s, ids, ans, drop_fam_from=k, fam0=fam0)
        for name, h in (("fam (trained)", hits), ("fam rows removed at the question", zeroed)):
            lo, hi = wilson95(sum(h), len(h))  # len(h) = a.trials > 0
            rows.append(dict(k=k, variant=name, hits=sum(h), trials=len(h), recall=sum(h) / len(h), ci95=[lo, hi]))
            print(f"k={k:3d} {name:34s} {sum(h):4d}/{len(h):<4d} = {sum(h) / len(h):.3f}  [{lo:.3f}, {hi:.3f}]",
                  flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(dict(step=step, settings=s, after_sample=a.after_sample, rows=rows),
                                           indent=1) + "\n")


# ------------------------------------------------------------------------------------------------
# Export: the GGUF adapter

def base_fingerprint(gguf_path):
    """FNV-1a 64 over the base GGUF's tensor table (name, ggml type u32, ne as u64, in file order)
    and the first 64 KiB of token_embd.weight's data; famstream computes the same."""
    import gguf
    r = gguf.GGUFReader(str(gguf_path))
    h = 0xcbf29ce484222325

    def feed(b):
        nonlocal h
        for x in b:
            h = ((h ^ x) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    emb = None
    for t in r.tensors:
        feed(t.name.encode())
        feed(int(t.tensor_type).to_bytes(4, "little"))
        for d in t.shape:
            feed(int(d).to_bytes(8, "little"))
        if t.name == "token_embd.weight":
            emb = t
    if emb is not None:
        feed(np.asarray(emb.data).tobytes()[:65536])
    return f"{h:016x}"


def permute(w, n_head):
    """convert_hf_to_gguf.py's Q/K row permutation (HF rotate_half -> llama.cpp's adjacent pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w, n_head):
    """The inverse of `permute` (llama.cpp's adjacent pairs -> HF rotate_half)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_adapter(path, model, s):
    """Warm start from an exported adapter (`--init-from ADAPTER.gguf`): its LoRA, and its soft
    prompt when the export carries one (`famtrain.prompt`, exports since session 16); checks
    that it was made with this run's rank, alpha, targets and FAM settings. Checkpoints
    (`ckpt.pt`) are not in git, so a committed adapter is what a run in a new session starts
    from. The optimizer starts fresh. Returns whether the prompt was restored."""
    import gguf
    r = gguf.GGUFReader(str(path))
    f = r.fields
    def scalar(k):
        return f[k].contents() if k in f else None
    if scalar("general.type") != "adapter" or scalar("adapter.type") != "lora":
        raise SystemExit(f"--init-from {path}: not a LoRA adapter")
    if abs(float(scalar("adapter.lora.alpha")) - model.alpha) > 1e-6:
        raise SystemExit(f"--init-from {path}: its alpha is {scalar('adapter.lora.alpha')}, this run's {model.alpha}")
    scope = scalar("fam.adapter.lora_scope") or "all"
    if scope != model.lora_scope:
        # allowed: a warm start of the FAM rows' LoRA from an adapter trained on all rows
        print(f"--init-from {path}: its LoRA was trained for {scope} rows, this run applies it to "
              f"{model.lora_scope} rows", file=sys.stderr)
    # block_size may differ (below); the rest must match
    theirs = {k: scalar(f"fam.{k}") for k in ("policy", "init", "query_pos", "feedback", "mem_blocks", "fam_len",
                                             "sinks", "zero_first_residual")}
    ours = {k: s[k] for k in theirs}
    if {k: str(v) for k, v in theirs.items()} != {k: str(v) for k, v in ours.items()}:
        raise SystemExit(f"--init-from {path}: trained with other FAM settings {theirs}, this run's {ours}")
    if str(scalar("fam.block_size")) != str(s["block_size"]):
        # allowed: the plan grows B once a small window works (the LoRA and the F prompt rows
        # do not depend on B); session 30: the B = 64 memory at B = 128 is what decodes within 5%
        print(f"--init-from {path}: trained at B = {scalar('fam.block_size')}, this run's B = {s['block_size']}",
              file=sys.stderr)
    tensors = {t.name: np.asarray(t.data, dtype=np.float32) for t in r.tensors}
    want = {f"blk.{l}.{GGUF_LIN[t]}.weight" for l in range(model.L) for t in model.targets}
    have = {n.rsplit(".", 1)[0] for n in tensors}
    if have != want:
        raise SystemExit(f"--init-from {path}: its LoRA targets differ from this run's {model.targets}")
    with torch.no_grad():
        for l in range(model.L):
            for t in model.targets:
                base = f"blk.{l}.{GGUF_LIN[t]}.weight"
                A, Bm = tensors[base + ".lora_a"], tensors[base + ".lora_b"]
                if model.arch == "llama" and t in ("q", "k"):
                    Bm = unpermute(Bm, model.H if t == "q" else model.KV)
                pa, pb = model.lora[f"{l}_{t}_a"], model.lora[f"{l}_{t}_b"]
                if A.shape != tuple(pa.shape) or Bm.shape != tuple(pb.shape):
                    raise SystemExit(f"--init-from {path}: {base} has rank {A.shape[0]}, this run's {model.rank}")
                pa.copy_(torch.from_numpy(np.ascontiguousarray(A)))
                pb.copy_(torch.from_numpy(np.ascontiguousarray(Bm)))
        if "famtrain.prompt" not in f:
            return False
        if model.fam_bias is not None and "fam.adapter.fam_attn_bias" in f:
            model.fam_bias.copy_(torch.tensor(float(scalar("fam.adapter.fam_attn_bias"))))
        prompt = np.asarray(f["famtrain.prompt"].contents(), dtype=np.float32)
        model.prompt.copy_(torch.from_numpy(prompt.reshape(model.prompt.shape)))
    return True


def export_adapter(model, s, out, base_gguf=None, name="famstream FAM adapter", extra=None, lora_dtype=np.float32):
    import gguf
    out = Path(out)
    w = gguf.GGUFWriter(str(out) + ".tmp", model.arch)
    w.add_string("general.type", "adapter")
    w.add_string("general.name", name)
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(model.alpha))
    if base_gguf:
        w.add_string("fam.adapter.base_fingerprint", base_fingerprint(base_gguf))
    for k in ("policy", "init", "query_pos", "feedback"):
        w.add_string(f"fam.{k}", s[k])
    for k in ("block_size", "mem_blocks", "fam_len", "sinks"):
        w.add_uint32(f"fam.{k}", int(s[k]))
    w.add_bool("fam.zero_first_residual", bool(s["zero_first_residual"]))
    w.add_bool("fam.renorm", bool(s.get("renorm", False)))
    if s.get("decay"):  # absent: 0, the paper's FAM
        w.add_float32("fam.decay", float(s["decay"]))
    if s.get("keep_len"):  # absent: no kept tokens next to the FAM
        w.add_uint32("fam.keep_len", int(s["keep_len"]))
    if s.get("kept_heads") is not None:  # absent: every head sees the kept tokens
        w.add_array("fam.kept_heads", sorted(int(x) for x in s["kept_heads"]))
    if model.lora_scope != "all":  # absent: every row (llama.cpp's meaning of a LoRA adapter)
        w.add_string("fam.adapter.lora_scope", model.lora_scope)
    if model.fam_bias is not None:  # absent: 0
        w.add_float32("fam.adapter.fam_attn_bias", float(model.fam_bias.detach()))
    for k, v in (extra or {}).items():
        w.add_string(k, v)
    with torch.no_grad():
        for l in range(model.L):
            for t in model.targets:
                A = model.lora[f"{l}_{t}_a"].detach().cpu().float().numpy()
                Bm = model.lora[f"{l}_{t}_b"].detach().cpu().float().numpy()
                if model.arch == "llama" and t in ("q", "k"):
                    Bm = permute(Bm, model.H if t == "q" else model.KV)
                base = f"blk.{l}.{GGUF_LIN[t]}.weight"
                w.add_tensor(base + ".lora_a", np.ascontiguousarray(A, dtype=lora_dtype))  # ne [n_in, r]
                w.add_tensor(base + ".lora_b", np.ascontiguousarray(Bm, dtype=lora_dtype))  # ne [r, n_out]
        init = model.initial_fam(dict(s, init="learned"), 1)
        mem = np.stack([init[l][0].cpu().float().numpy() for l in range(model.L)])  # [L, F, d] -> ne [d, F, L]
        # a metadata array, not a tensor: llama.cpp's adapter loader refuses tensors other than
        # .lora_a/.lora_b, but ignores metadata it does not know (src/init_memory.rs)
        w.add_array("fam.init_memory", mem.astype(np.float32).ravel().tolist())
        # the soft prompt itself (F x d), so that a later run can start from this file
        # (`--init-from ADAPTER.gguf`); runtimes ignore it
        w.add_array("famtrain.prompt", model.prompt.detach().cpu().float().numpy().ravel().tolist())
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    os.replace(str(out) + ".tmp", out)


def cmd_export(a):
    model, ra, ck = load_run(a.run_dir, "cpu")
    s, extra = dict(ck["settings"]), {"fam.adapter.trained_steps": str(ck["step"])}
    if a.decay is not None and a.decay != (s.get("decay") or 0.0):
        # the decay the adapter is used with, chosen after training (measured: results/README.md);
        # the file records the one it was trained with next to it
        if not 0.0 <= a.decay < 1.0:
            sys.exit(f"--decay {a.decay}: 0 <= decay < 1")
        # what famstream refuses to load (src/settings.rs, src/fam_memory.rs)
        if a.decay > 0 and (s["feedback"] != "within" or s["init"] == "tail"):
            sys.exit(f"--decay {a.decay}: a decay pulls the `within` feedback's rows toward a learned initial FAM; "
                     f"this run has feedback {s['feedback']} and init {s['init']}")
        extra["fam.adapter.trained_decay"] = str(s.get("decay") or 0.0)
        s["decay"] = a.decay
    export_adapter(model, s, a.out, a.base_gguf, extra=extra,
                   lora_dtype=np.float16 if a.dtype == "f16" else np.float32)
    print(f"wrote {a.out} ({os.path.getsize(a.out)} bytes, step {ck['step']})")


# ------------------------------------------------------------------------------------------------
# Goldens for the Rust test, after checking this forward against the numpy reference

def cmd_migrate(a):
    """fam.init_memory tensor -> metadata array (src/init_memory.rs); everything else as it is."""
    import gguf
    r = gguf.GGUFReader(a.old)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    out = Path(a.new)
    w = gguf.GGUFWriter(str(out) + ".tmp", arch)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = f.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_array(name, list(f.contents()))
        else:
            w.add_key_value(name, f.contents(), vtype)
    mem = None
    for t in r.tensors:
        data = np.asarray(t.data)
        if t.name == "fam.init_memory":
            mem = data.astype(np.float32).ravel()
            continue
        w.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    if mem is None:
        sys.exit(f"{a.old}: no fam.init_memory tensor, nothing to migrate")
    w.add_array("fam.init_memory", mem.tolist())
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    os.replace(str(out) + ".tmp", out)
    print(f"wrote {out}: {len(r.tensors) - 1} LoRA tensors, fam.init_memory as {mem.size} f32 metadata values")


def cmd_goldens(a):
    torch.set_num_threads(a.threads)
    torch.set_default_dtype(torch.float32)
    out = Path(a.out) if getattr(a, "out", None) else ROOT / "tests/golden/adapter"
    out.mkdir(parents=True, exist_ok=True)
    fam_cases = json.loads((ROOT / "tests/golden/fam/cases.json").read_text())
    cases, worst_ref = [], 0.0
    # the salience rule as src/keep.rs's unit tests pin it (kept tokens next to the FAM)
    ix = list(range(100, 107))
    assert leaving_scores(ix, [0, 0, 9, 1, 1, 0, 2], 1) == [9, 10, 11, 11, 11, 3, 3]
    assert keep_select([], ix, [0, 0, 9, 1, 1, 0, 2], 1, 1) == [(11, 104)]
    assert keep_select([], [10, 11], [1.0, 1.0], 3, 0) == [(1.0, 11), (1.0, 10)]
    for arch in ("llama", "qwen2"):
        tiny = ROOT / "tests/golden/tiny" / arch
        # 1. without an adapter, this forward reproduces the numpy reference (float64) goldens
        m0 = Model(tiny / "hf", rank=1, targets=(), fam_len=4)
        for c in fam_cases:
            # reread feedback and `keep` are training-free runtime policies the trainer lacks
            if c["arch"] != arch or c.get("feedback") == "reread" or c["policy"] == "keep":
                continue
            ref = np.load(ROOT / "tests/golden/fam" / c["file"])
            if c["policy"] == "full":
                got = m0.forward_full([c["ids"]])[0]
            else:  # bswa and sink are fam with F = 0 (and S sinks)
                fam = c["policy"] == "fam"
                s = dict(block_size=c["block_size"], mem_blocks=c["mem_blocks"], fam_len=c["fam_len"] if fam else 0,
                         sinks=c["sinks"], init=c["init"] or "bos", query_pos=c["query_pos"] or "block-end",
                         zero_first_residual=bool(c["zero_first_residual"]), renorm=bool(c["renorm"]),
                         keep_len=c.get("keep_len") or 0)
                got = m0.forward_fam([c["ids"]], s, seed_ids=c["seed_ids"])[0][0]
            d = float(np.abs(got.detach().numpy() - ref).max())
            worst_ref = max(worst_ref, d)
            print(f"{arch} {c['file']:36s} max|torch - numpy reference| = {d:.2e}")
        # 2. a random adapter (nonzero LoRA B, a random prompt) and this forward's logits
        F = 4
        m = Model(tiny / "hf", rank=4, alpha=8.0, fam_len=F, seed=7)
        g = torch.Generator().manual_seed(11)
        with torch.no_grad():
            for key, p in m.lora.items():
                if key.endswith("_b"):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            m.prompt.copy_(torch.randn(m.prompt.shape, generator=g) * m.embed_w.std())
        s = dict(policy="fam", block_size=8, mem_blocks=1, fam_len=F, sinks=0, init="learned", query_pos="block-end",
                 zero_first_residual=False, renorm=False, feedback="within")
        adapter = out / f"{arch}.gguf"
        export_adapter(m, s, adapter, tiny / "model.f32.gguf", name=f"tiny {arch} test adapter")
        ids = [m.bos] + np.random.default_rng(18).integers(5, m.vocab, size=43).tolist()
        variants = [("full", dict(s, policy="full")),
                    ("fam", s),
                    ("fam_sinks_zero", dict(s, sinks=2, zero_first_residual=True)),
                    ("fam_m0_prevfam", dict(s, mem_blocks=0, query_pos="prev-fam")),
                    ("fam_decay", dict(s, decay=0.3)),
                    # room for every token that leaves: which tokens are kept does not depend on rounding
                    ("fam_keep_all", dict(s, sinks=2, keep_len=40))]

        def save_case(adapter_name, vname, vs):
            """m's logits for variant vs as tests/golden/adapter/<adapter_name>_<vname>.npy and a case."""
            with torch.no_grad():
                lg = m.forward_full([ids])[0] if vs["policy"] == "full" else m.forward_fam([ids], vs)[0][0]
            f = f"{adapter_name}_{vname}.npy"
            np.save(out / f, np.ascontiguousarray(lg.numpy().astype("<f4")))
            cases.append(dict(arch=arch, model=f"tests/golden/tiny/{arch}/model.f32.gguf",
                              adapter=f"tests/golden/adapter/{adapter_name}.gguf", policy=vs["policy"],
                              settings={k: vs[k] for k in ("block_size", "mem_blocks", "fam_len", "sinks", "init",
                                                           "query_pos", "zero_first_residual", "decay", "keep_len")
                                        if k in vs},
                              ids=ids, logits=f"tests/golden/adapter/{f}"))
        for vname, vs in variants:
            save_case(arch, vname, vs)
        # the adapter must matter: its logits differ from the base's
        with torch.no_grad():
            base = m0.forward_full([ids])[0]
        diff = float(np.abs(np.load(out / f"{arch}_full.npy") - base.numpy()).max())
        print(f"{arch}: adapter changes the full-attention logits by max {diff:.3f}")
        assert diff > 1e-2, "the test adapter would not be distinguishable from none"
        d_decay = float(np.abs(np.load(out / f"{arch}_fam_decay.npy") - np.load(out / f"{arch}_fam.npy")).max())
        print(f"{arch}: a FAM decay of 0.3 moves the logits by max {d_decay:.3f}")
        assert d_decay > 1e-2, "the decay would not be distinguishable from none"
        d_keep = float(np.abs(np.load(out / f"{arch}_fam_keep_all.npy") - np.load(out / f"{arch}_fam.npy")).max())
        print(f"{arch}: tokens kept next to the FAM move the logits by max {d_keep:.3f}")
        assert d_keep > 1e-2, "kept tokens would not be distinguishable from none"
        # kept tokens shown to some heads only (fam.kept_heads, an adapter key): layer 0 to heads
        # 0 and 2, layer 1 to none; the same LoRA and prompt in a second file
        keep_all = dict(s, sinks=2, keep_len=40)
        kh = dict(keep_all, kept_heads=[0, 2])
        export_adapter(m, kh, out / f"{arch}_kept_heads.gguf", tiny / "model.f32.gguf",
                       name=f"tiny {arch} test adapter (kept heads)")
        save_case(f"{arch}_kept_heads", "fam_keep", kh)
        d_kh = float(np.abs(np.load(out / f"{arch}_kept_heads_fam_keep.npy")
                            - np.load(out / f"{arch}_fam_keep_all.npy")).max())
        print(f"{arch}: kept tokens hidden from 6 of 8 (layer, head) pairs move the logits by max {d_kh:.3f}")
        assert d_kh > 1e-2, "hiding kept tokens from heads would not be distinguishable from showing them"
        # the same LoRA and prompt with LoRA on the FAM rows only (fam.adapter.lora_scope = fam)
        # and a bias on tokens' attention to the FAM (fam.adapter.fam_attn_bias): full attention
        # is then the base model, and FAM streams differ from both
        m.lora_scope = "fam"
        with torch.no_grad():
            unbiased = m.forward_fam([ids], s)[0][0]
        m.fam_bias = torch.nn.Parameter(torch.tensor(-1.5))
        adapter = out / f"{arch}_fam_rows.gguf"
        export_adapter(m, s, adapter, tiny / "model.f32.gguf", name=f"tiny {arch} test adapter (FAM rows)")
        for vname, vs in variants[:3]:
            save_case(f"{arch}_fam_rows", vname, vs)
        full_rows = np.load(out / f"{arch}_fam_rows_full.npy")
        assert np.abs(full_rows - base.numpy()).max() < 1e-5, "FAM-rows LoRA changed the token path"
        for vname in ("fam", "fam_sinks_zero"):
            d_all = float(np.abs(np.load(out / f"{arch}_fam_rows_{vname}.npy") - np.load(out / f"{arch}_{vname}.npy")).max())
            print(f"{arch} {vname}: FAM-rows LoRA vs all-rows LoRA differ by max {d_all:.3f}")
            assert d_all > 1e-2, "the FAM-rows adapter would not be distinguishable from the all-rows one"
        d_bias = float(np.abs(np.load(out / f"{arch}_fam_rows_fam.npy") - unbiased.numpy()).max())
        print(f"{arch}: the FAM attention bias moves the logits by max {d_bias:.3f}")
        assert d_bias > 1e-2, "the test adapter's FAM bias would not be distinguishable from none"
        m.lora_scope, m.fam_bias = "all", None
    (out / "cases.json").write_text("[\n" + ",\n".join(json.dumps(c) for c in cases) + "\n]\n")
    # float32 torch vs float64 numpy over 2 tiny layers: a few 1e-6 of rounding
    TOL_REF = 1e-4
    print(f"worst torch vs numpy reference: {worst_ref:.2e} (tolerance {TOL_REF})")
    assert worst_ref < TOL_REF
    print(f"wrote {len(cases)} cases to {out}")


def cmd_report(a):
    """A run's log as Markdown: compute spent and the held-out recall curve."""
    run = Path(a.run_dir)
    rows = {}
    for l in (run / "log.jsonl").read_text().splitlines():
        r = json.loads(l)
        rows[r["step"]] = r  # a resumed run's repeated steps: the last one counts
    rows = [rows[k] for k in sorted(rows)]
    tokens, secs = sum(r["tokens"] for r in rows), sum(r["seconds"] for r in rows)
    evals = [r for r in rows if "recall_val" in r]
    out = [f"Run `{run}`: {len(rows)} steps, {tokens:,} training tokens, {secs / 3600:.2f} h of step time "
           f"({tokens / max(secs, 1e-9):.0f} tokens/s).", "",
           "| step | distance k | held-out recall (24 samples) | answer loss (that step) |", "|---|---|---|---|"]
    out += [f"| {r['step']} | {r['recall_k']} | {r['recall_val']:.2f} | {r['ans_loss']:.2f} |" for r in evals]
    text = "\n".join(out)
    print(text)
    if a.splice:
        splice(ROOT / "results/README.md", "train", text)


def cmd_smoke(a):
    """CI's check of the trainer on the tiny llama checkpoint: a few steps, a resume, an export;
    the loss falls on a batch trained on repeatedly; the goldens regenerate as committed."""
    import tempfile
    import gguf
    from tokenizers import Tokenizer
    from tools.fam_data import RecallData
    torch.set_num_threads(a.threads)
    tiny = ROOT / "tests/golden/tiny/llama"
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        base = ["train", str(run), "--model", str(tiny / "hf"), "--block", "64", "--fam-len", "4", "--batch", "2",
                "--eval-every", "2", "--eval-batches", "1", "--ckpt-every", "1", "--rank", "4"]
        def call(*argv):
            x = parser().parse_args(list(argv))
            x.func(x)
        call(*base, "--steps", "2")
        call(*base, "--steps", "4")  # resumes at step 2
        steps = [json.loads(l)["step"] for l in (run / "log.jsonl").read_text().splitlines()]
        assert steps == [1, 2, 3, 4], f"resume did not continue the run: {steps}"
        out = Path(tmp) / "adapter.gguf"
        call("export", str(run), "--base-gguf", str(tiny / "model.f32.gguf"), "--out", str(out))
        r = gguf.GGUFReader(str(out))
        model, _, ck = load_run(run)
        a0 = next(t for t in r.tensors if t.name == "blk.0.attn_v.weight.lora_a")
        assert np.array_equal(np.asarray(a0.data), model.lora["0_v_a"].detach().numpy()), "export lost LoRA A"
        assert not any(t.name == "fam.init_memory" for t in r.tensors), "init memory must be metadata"
        mem = np.asarray(r.fields["fam.init_memory"].contents(), dtype=np.float32)
        with torch.no_grad():
            want = torch.stack([x[0] for x in model.initial_fam(dict(ck["settings"], init="learned"), 1)])
        assert mem.shape == (model.d * 4 * model.L,), mem.shape
        assert np.array_equal(mem, want.detach().float().numpy().ravel()), "export lost the init memory"
        assert "fam.decay" not in r.fields, "a run trained without a decay must not export one"
        # export --decay: the decay to use, and the trained one next to it
        out_d = Path(tmp) / "adapter-d.gguf"
        call("export", str(run), "--base-gguf", str(tiny / "model.f32.gguf"), "--out", str(out_d), "--decay", "0.5")
        fd = gguf.GGUFReader(str(out_d)).fields
        assert fd["fam.decay"].contents() == 0.5 and fd["fam.adapter.trained_decay"].contents() == "0.0", \
            "export --decay did not write the decay and the trained one"
        call("export", str(run), "--base-gguf", str(tiny / "model.f32.gguf"), "--out", str(out_d), "--decay", "0")
        assert "fam.adapter.trained_decay" not in gguf.GGUFReader(str(out_d)).fields, "--decay as trained is no change"
        # a run started from the export has the same LoRA (Q/K un-permuted) and soft prompt
        m2 = Model(tiny / "hf", rank=4, fam_len=4)
        assert load_adapter(out, m2, ck["settings"]), "the export carries no soft prompt"
        for name, p in model.lora.items():
            assert torch.equal(p, m2.lora[name]), f"--init-from ADAPTER lost LoRA {name}"
        assert torch.equal(model.prompt, m2.prompt), "--init-from ADAPTER lost the soft prompt"
        # another block size may start from it (growing B), another F may not
        m3 = Model(tiny / "hf", rank=4, fam_len=4)
        assert load_adapter(out, m3, dict(ck["settings"], block_size=32)), "a warm start at another B failed"
        try:
            load_adapter(out, m3, dict(ck["settings"], fam_len=8))
            raise AssertionError("an adapter with F = 4 started a run with F = 8")
        except SystemExit:
            pass
        call("train", str(Path(tmp) / "run2"), *base[2:], "--steps", "1", "--init-from", str(out))
        # the exported adapter evaluates as its run does (same cases, same hits), and the
        # --after-sample path runs
        ev = [Path(tmp) / f"eval{i}.json" for i in range(3)]
        call("eval", str(run), "--k", "1", "--trials", "4", "--batch", "2", "--json", str(ev[0]))
        call("eval", str(out), "--model", str(tiny / "hf"), "--k", "1", "--trials", "4", "--batch", "2",
             "--json", str(ev[1]))
        call("eval", str(out), "--model", str(tiny / "hf"), "--k", "1", "--trials", "4", "--batch", "2",
             "--after-sample", "1", "--json", str(ev[2]))
        e0, e1, e2 = (json.loads(f.read_text()) for f in ev)
        assert e0["rows"] == e1["rows"], (e0["rows"], e1["rows"])
        assert e1["settings"] == e0["settings"], (e1["settings"], e0["settings"])
        m_ad, s_ad = adapter_model(out, tiny / "hf")
        probe = RecallData(Tokenizer.from_file(str(tiny / "hf/tokenizer.json")), 64, "eval").batch(
            random.Random(9), 2, 2)[0]
        with torch.no_grad():
            d_ad = float((m_ad.forward_fam(probe, s_ad)[0] - model.forward_fam(probe, s_ad)[0]).abs().max())
        TOL_EXPORT = 1e-6  # an f32 export read back is the same numbers: only a broken reload differs
        assert d_ad < TOL_EXPORT, f"the adapter evaluates differently from its run: {d_ad}"
        assert e2["after_sample"] == 1 and len(e2["rows"]) == 2
        # a FAM-rows run with a FAM bias: its export says so (the bias trained one step), and a
        # run with other settings refuses to resume it
        run3 = Path(tmp) / "run3"
        call("train", str(run3), *base[2:], "--steps", "1", "--lora-scope", "fam", "--fam-bias", "-2")
        out3 = Path(tmp) / "adapter3.gguf"
        call("export", str(run3), "--base-gguf", str(tiny / "model.f32.gguf"), "--out", str(out3))
        f3 = gguf.GGUFReader(str(out3)).fields
        assert f3["fam.adapter.lora_scope"].contents() == "fam", "export lost the LoRA scope"
        b3 = f3["fam.adapter.fam_attn_bias"].contents()
        assert b3 != -2.0 and abs(b3 + 2.0) < 0.1, f"export lost the trained FAM bias ({b3})"
        assert "fam.adapter.lora_scope" not in r.fields, "an all-rows export must not name a scope"
        try:
            call("train", str(run3), *base[2:], "--steps", "2")
            raise AssertionError("a run resumed with another --lora-scope and no --fam-bias")
        except SystemExit as e:
            assert "lora_scope" in str(e) and "fam_bias" in str(e), e
        # a FAM trained with kept tokens next to it: selection, gathering and the gradient through
        # the kept K/V run; the export carries fam.keep_len, which the adapter's settings read back
        run4 = Path(tmp) / "run-keep"
        call("train", str(run4), *base[2:], "--steps", "1", "--keep-len", "8")
        out4 = Path(tmp) / "adapter4.gguf"
        call("export", str(run4), "--base-gguf", str(tiny / "model.f32.gguf"), "--out", str(out4))
        assert gguf.GGUFReader(str(out4)).fields["fam.keep_len"].contents() == 8, "export lost fam.keep_len"
        assert adapter_model(out4, tiny / "hf")[1]["keep_len"] == 8
        assert "fam.keep_len" not in r.fields, "an export without kept tokens must not name them"
        # kept tokens shown to some heads only (--kept-heads FILE: its fam.kept_heads), as the
        # runtime shows them; the export carries the list, and a file without one is refused
        kh_file = Path(tmp) / "kept-heads.gguf"
        w = gguf.GGUFWriter(str(kh_file), "llama")
        w.add_array("fam.kept_heads", [model.H + 1, 0])
        w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
        run5 = Path(tmp) / "run-kept-heads"
        call("train", str(run5), *base[2:], "--steps", "1", "--keep-len", "8", "--kept-heads", str(kh_file))
        out5 = Path(tmp) / "adapter5.gguf"
        call("export", str(run5), "--base-gguf", str(tiny / "model.f32.gguf"), "--out", str(out5))
        assert list(gguf.GGUFReader(str(out5)).fields["fam.kept_heads"].contents()) == [0, model.H + 1]
        assert adapter_model(out5, tiny / "hf")[1]["kept_heads"] == [0, model.H + 1]
        assert "fam.kept_heads" not in gguf.GGUFReader(str(out4)).fields, "no --kept-heads: every head sees them"
        for bad, why in ((out4, "no fam.kept_heads"), (kh_file, "needs --keep-len")):
            try:
                call("train", str(Path(tmp) / "run-bad"), *base[2:], "--steps", "1", "--kept-heads", str(bad),
                     *(["--keep-len", "8"] if bad == out4 else []))
                raise AssertionError(f"--kept-heads {bad} was taken")
            except SystemExit as e:
                assert why in str(e), e
        # made-up training values (--train-values generated): never a held-out one, seldom repeated
        from tools.fam_data import HELD_OUT_WORDS, value
        r = random.Random(5)
        places = [value("place", r, "train", "generated") for _ in range(200)]
        names = [value("name", r, "train", "generated") for _ in range(200)]
        assert not set(places) & HELD_OUT_WORDS, places
        assert not {w for n in names for w in n.split()} & HELD_OUT_WORDS, names
        assert len(set(places)) > 150 and len(set(names)) > 190, (len(set(places)), len(set(names)))
        # learning: one fixed batch, 12 steps, the answer loss must fall
        m = Model(tiny / "hf", rank=4, fam_len=4)
        s = dict(policy="fam", block_size=64, mem_blocks=0, fam_len=4, sinks=0, init="learned",
                 query_pos="block-end", zero_first_residual=False, renorm=False, feedback="within")
        data = RecallData(Tokenizer.from_file(str(tiny / "hf/tokenizer.json")), 64, "val")
        ids, ans, _ = data.batch(random.Random(3), 2, 1)
        flat = sorted({p for ps in ans for p in ps})
        col = {p: i for i, p in enumerate(flat)}
        opt = torch.optim.AdamW([m.prompt] + list(m.lora.parameters()), lr=1e-2)
        losses = []
        for _ in range(12):
            lg, _ = m.forward_fam(ids, s, out_pos=flat)
            loss = Fn.cross_entropy(torch.stack([lg[i, col[p]] for i, ps in enumerate(ans) for p in ps]),
                                    torch.tensor([ids[i][p + 1] for i, ps in enumerate(ans) for p in ps]))
            opt.zero_grad(); loss.backward(); opt.step()
            losses.append(loss.item())
        print(f"fixed-batch answer loss {losses[0]:.3f} -> {losses[-1]:.3f}")
        assert losses[-1] < 0.5 * losses[0], losses
        # distillation (--lm-loss kl): nil against the teacher's own logits (the base model, full
        # attention: the trained LoRA must not reach the teacher), positive for the FAM student
        pos = list(range(64, 64 + 16))  # the second block: it reads the FAM of the first
        with torch.no_grad():
            m.lora_off = True
            teacher = m.forward_full(ids, out_pos=pos)
            m.lora_off = False
            assert distill_loss(m, ids, pos, teacher).item() < 1e-6, "the teacher saw the LoRA"
            kl = distill_loss(m, ids, pos, m.forward_fam(ids, s, out_pos=pos)[0]).item()
        assert kl > 1e-3, f"a FAM student with a trained LoRA matches the teacher ({kl})"
        call("train", str(Path(tmp) / "run4"), *base[2:], "--steps", "1", "--lm-loss", "kl", "--lm-weight", "1")
        # the committed goldens are what this trainer makes
        gold = Path(tmp) / "goldens"
        cmd_goldens(argparse.Namespace(threads=a.threads, out=str(gold)))
        committed = ROOT / "tests/golden/adapter"
        worst = 0.0
        for f in sorted(gold.glob("*.npy")):
            worst = max(worst, float(np.abs(np.load(f) - np.load(committed / f.name)).max()))
        # float32 summation order may differ between machines/thread counts: a few ulps of a logit
        TOL_REGEN = 1e-4
        print(f"regenerated goldens vs committed: max |diff| {worst:.2e} (tolerance {TOL_REGEN})")
        assert worst < TOL_REGEN
    print("smoke: ok")


def parser():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(required=True)
    t = sub.add_parser("train")
    t.add_argument("run_dir")
    t.add_argument("--model", required=True, help="HF checkpoint dir (llama/qwen2, safetensors + tokenizer.json)")
    t.add_argument("--block", type=int, default=128)
    t.add_argument("--mem-blocks", type=int, default=0)
    t.add_argument("--fam-len", type=int, default=16)
    t.add_argument("--sinks", type=int, default=0)
    t.add_argument("--query-pos", default="block-end", choices=["block-end", "prev-fam"])
    t.add_argument("--zero-first-residual", action="store_true")
    t.add_argument("--rank", type=int, default=8)
    t.add_argument("--alpha", type=float, default=16.0)
    t.add_argument("--targets", default="q,k,v,o,gate,up,down")
    t.add_argument("--lora-scope", choices=LORA_SCOPES, default="all",
                   help="rows LoRA applies to: all, or fam (the FAM's rows only: tokens run the base model)")
    t.add_argument("--fam-bias", type=float, default=None,
                   help="learn a bias on tokens' attention logits at the FAM's columns, starting here (e.g. -4)")
    t.add_argument("--lr-bias", type=float, default=0.05,
                   help="the FAM bias's learning rate (Adam moves it by about this much per step)")
    t.add_argument("--lr-lora", type=float, default=5e-4)
    t.add_argument("--lr-prompt", type=float, default=2e-3)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--k-start", type=int, default=1, help="blocks between fact and question at the start")
    t.add_argument("--max-k", type=int, default=4, help="the curriculum's last distance")
    t.add_argument("--advance-at", type=float, default=0.8, help="held-out recall that moves k up by one")
    t.add_argument("--lm-weight", type=float, default=0.1)
    t.add_argument("--lm-positions", type=int, default=32)
    t.add_argument("--lm-loss", choices=["ce", "kl"], default="ce",
                   help="at the LM positions: cross-entropy on the text, or KL from the base model with full "
                        "attention over the sample (distillation: keeps prediction without fitting the text)")
    t.add_argument("--train-values", choices=["pools", "generated"], default="generated",
                   help="training names and places: small fixed lists (runs before session 19; a FAM learned "
                        "which of them it saw, not their tokens) or made-up words, new in almost every sample")
    t.add_argument("--rsp", type=float, default=0.0, help="random state passing probability")
    t.add_argument("--decay", type=float, default=0.0,
                   help="a leaky FAM (fam.decay): each update pulls the rows toward the learned initial FAM by "
                        "this fraction, so they stay bounded however long the stream (0: the paper's FAM, whose rows "
                        "grow with every update)")
    t.add_argument("--keep-len", type=int, default=0,
                   help="train with this many salient evicted tokens kept next to the FAM (famstream's --keep-len; "
                        "0: none)")
    t.add_argument("--kept-heads", metavar="GGUF",
                   help="only the (layer, head) pairs this file's fam.kept_heads names see the kept tokens, as "
                        "famstream runs such a file (tools/kept_heads.py --write); the export carries the list")
    t.add_argument("--rsp-from-k", type=int, default=1,
                   help="pass states only once the curriculum has reached this distance (a FAM learns to "
                        "recall from fresh states first: state passing from step 1 kept it at chance)")
    t.add_argument("--init-from", help="another run's directory: start from its checkpoint (LoRA, prompt, optimizer); "
                   "or an exported adapter (.gguf): its LoRA and soft prompt, a fresh optimizer")
    t.add_argument("--eval-every", type=int, default=25)
    t.add_argument("--eval-batches", type=int, default=4)
    t.add_argument("--ckpt-every", type=int, default=10)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--max-minutes", type=float, default=0,
                   help="stop (with a checkpoint) after this many minutes of step time in this invocation")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--device", default="cpu")
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("eval")
    e.add_argument("run_dir")
    e.add_argument("--k", type=int, nargs="+", default=[1, 2, 4])
    e.add_argument("--trials", type=int, default=100)
    e.add_argument("--batch", type=int, default=10)
    e.add_argument("--seed", type=int, default=1000)
    e.add_argument("--json")
    e.add_argument("--model", help="HF checkpoint dir: needed when RUN_DIR is an adapter (.gguf); else the run's")
    e.add_argument("--after-sample", type=int, default=0, metavar="K",
                   help="start each case's stream after another held-out sample at distance K (0: a fresh FAM)")
    e.add_argument("--keep-len", type=int, default=None,
                   help="keep this many salient evicted tokens next to the FAM (default: the adapter's)")
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=cmd_eval)
    x = sub.add_parser("export")
    x.add_argument("run_dir")
    x.add_argument("--base-gguf", required=True)
    x.add_argument("--out", required=True)
    x.add_argument("--dtype", choices=["f32", "f16"], default="f32", help="LoRA tensors (f16 halves the file)")
    x.add_argument("--decay", type=float,
                   help="fam.decay to write (default: the run's): a leakier memory chosen after training; the "
                        "file then records the trained one as fam.adapter.trained_decay")
    x.set_defaults(func=cmd_export)
    g = sub.add_parser("goldens")
    g.add_argument("--threads", type=int, default=2)
    g.add_argument("--out", help="directory (default tests/golden/adapter)")
    g.set_defaults(func=cmd_goldens)
    rp = sub.add_parser("report")
    rp.add_argument("run_dir")
    rp.add_argument("--splice", action="store_true", help="write it into results/README.md")
    rp.set_defaults(func=cmd_report)
    mg = sub.add_parser("migrate")
    mg.add_argument("old")
    mg.add_argument("new")
    mg.set_defaults(func=cmd_migrate)
    sm = sub.add_parser("smoke")
    sm.add_argument("--threads", type=int, default=2)
    sm.set_defaults(func=cmd_smoke)
    return ap


def main():
    a = parser().parse_args()
    a.func(a)


if __name__ == "__main__":
    main()
