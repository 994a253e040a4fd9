#!/usr/bin/env python3
"""Speed and state size of the trained FAM against `sink` at the same window (issue 18): the
adapter applied in the graph (`--adapter`), the same adapter merged into the weights
(`famstream convert --adapter`), the un-tuned `fam`, the training-free `keep`, and `sink`, all at the adapter's window
(B = 64, M = 0, F = 16; sink S = 4), on the default model.

Runs `famstream bench --json` for each configuration, ROUNDS times in alternating order (the
order rotates each round, so a slow spell of the machine does not land on one configuration),
and reports the median over rounds of each run's best-of-R tokens/s. Run it on a quiet machine.

usage: tools/bench_adapter.py [--rounds 3 | --pairs N | --against N] [--threads 2]
[--set adapter|keep|keep-default|kept-fam|kept-fam-d05|kept-fam-b128|kept-fam-b256|kept-fam-b512|kept-heads-b256|kept-heads-b512|trained-heads-b256|trained-k16-b256|
trained-kh34-k16-b256]
[--splice]
writes results/speed/<set>.json and, with --splice, the table into results/README.md (the
`<set>-speed` block). `--set keep`: `sink` and `keep` with F = 16, 64 and 256 kept tokens at the
same window, no adapter. `--set kept-fam-d05`: the shipped adapter merged at B = 64 and B = 128, each
against `sink` at its window; `--set kept-fam-b128`: at B = 128, `sink`, `keep` F = 64, the adapter trained at
B = 128 (session 31) and the B = 64 one, merged; `--set kept-fam-b256`: at B = 256, `sink`, `keep` F = 64 and the
B = 256 file with 64, 32, 16 and 0 kept tokens; `--set kept-fam-b512`: the same file at B = 512 (pp512/tg512 by
default: the tokens decoded are one whole block); `--set kept-heads-b256`: at B = 256 the B = 256 file with
its 64 kept tokens shown to every head (`--kept-heads-all`), to the 68 and to the 34 (layer, head) pairs with the
most kept-token attention (`fam.kept_heads`, written by tools/kept_heads.py from
results/kept_heads/fam-kp64b256-mass.json), and with none kept; `--set kept-heads-b512`: the 68 pairs' file at
B = 512 with 64 and 128 kept tokens, and with none (pp512/tg512 by default); `--set trained-heads-b256`
(session 36): at B = 256 the file trained with its kept tokens shown to 34 pairs (`fam_train.py --kept-heads`)
and the shipped 68 pairs' file; `--set trained-k16-b256` (session 37): the 68 pairs' file trained on with them at
1-16 blocks, next to the 68 pairs' file as shipped before; `--set trained-kh34-k16-b256` (session 38): the
session-37 file trained on with only the top 34 pairs seeing the kept tokens at 1-16 blocks, next to the 68 pairs'
file. `--set keep-default`: `sink` and `keep` with F = 64 and 256 at the
default window (B = 1024, M = 3), measured at stream position 8192 (the window and the kept
slots full), pp960 + tg128 so that the block end at 9216 (keep's selection) is timed; each
repetition refills the state first (5,120 tokens), so the best of 1, not 3.

`--pairs N` (results/speed/<set>-pairs.json, `<set>-pairs` block): each configuration run next to `sink` at its
window N times, each in its own process. `--against N` (results/speed/<set>-against.json, `<set>-against`
block; session 35): each configuration and `sink` in one process (`famstream bench --against`), N repetitions
alternated there; on this VM the per-process spread was as large as the differences measured."""
import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the `tools` package
from tools.common import ROOT, default_model, splice  # noqa: E402

ADAPTER = ROOT / "results/adapters/smollm2-135m-fam-b64.gguf"
BIN = ROOT / "target/release/famstream"
# --set NAME: (label, adapter file, tag) of a file trained with its kept-heads list, run next to the 68 pairs' file
TRAINED_VS_KH68 = {
    "trained-heads-b256": ("34 pairs, trained with them (fam-kp64b256kh34t)",
                           "results/adapters/smollm2-135m-fam-b256-keep64-d05-kh34-trained.gguf", "kh34t"),
    "trained-k16-b256": ("68 pairs, trained with them at 1-16 blocks (fam-kp64b256kh68k16)",
                         "results/adapters/smollm2-135m-fam-b256-keep64-d05-kh68-k16.gguf", "kh68k16"),
    "trained-kh34-k16-b256": ("34 pairs, trained with them at 1-16 blocks (fam-kp64b256kh34k16)",
                              "results/adapters/smollm2-135m-fam-b256-keep64-d05-kh34-k16.gguf", "kh34k16"),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-p", type=int, help="prompt tokens (default 256; keep-default: 960)")
    ap.add_argument("-n", type=int, default=128,
                    help="generated tokens (pp + tg crosses a block end: FAM updates, keep's selection)")
    ap.add_argument("--set", choices=["adapter", "keep", "keep-default", "kept-fam", "kept-fam-d05", "kept-fam-b128", "kept-fam-b256", "kept-fam-b512", "kept-heads-b256", "kept-heads-b512", *TRAINED_VS_KH68], default="adapter")
    ap.add_argument("--pairs", type=int, default=0,
                    help="instead of rounds: N pairs per configuration, each run back to back with `sink` at its "
                         "window, which one first alternating (best of 1 each); reports the median and quartiles of the pairs' decode ratios. For a "
                         "machine whose speed drifts between runs (this VM's sink decode: 124-163 t/s); at least 4")
    ap.add_argument("--against", type=int, default=0, metavar="N",
                    help="instead of rounds or pairs: each configuration in one process with `sink` at its window "
                         "(`famstream bench --against`), N repetitions alternated there; reports the median and "
                         "quartiles of the repetitions' decode ratios (at least 4)")
    ap.add_argument("--splice", action="store_true")
    a = ap.parse_args()
    if a.against and a.against < 4:
        ap.error("--against needs at least 4 repetitions (quartiles)")
    if a.pairs and a.pairs < 4:
        ap.error("--pairs needs at least 4 pairs (quartiles)")
    a.p = a.p or (960 if a.set == "keep-default" else 512 if a.set in ("kept-fam-b512", "kept-heads-b512") else 256)
    model = default_model()
    w = ["--block", "1024", "--mem-blocks", "3"] if a.set == "keep-default" else ["--block", "64", "--mem-blocks", "0"]
    extra = ["--at-position", "8192", "-r", "1"] if a.set == "keep-default" else ["-r", "3"]
    w128 = ["--block", "128", "--mem-blocks", "0"]  # the kept-fam sets' second window
    w256 = ["--block", "256", "--mem-blocks", "0"]
    w512 = ["--block", "512", "--mem-blocks", "0"]

    def sink_at(win):
        return ["-m", model, "--memory", "sink", *win, "--sinks", "4"]

    def keep(f, win=w):
        return ["-m", model, "--memory", "keep", *win, "--fam-len", str(f), "--sinks", "4"]

    sink = sink_at(w)

    with tempfile.TemporaryDirectory() as tmp:
        def merged(adapter, tag="merged"):
            """`adapter` merged into the default model's weights (`famstream convert --adapter`)."""
            if not Path(adapter).exists():  # files not in git (a -kh copy, an unshipped run): results/README.md says how
                raise SystemExit(f"--set {a.set}: {adapter} is not here; results/README.md names the command that "
                                 "makes it")
            out = Path(tmp) / f"{tag}.gguf"
            subprocess.run([str(BIN), "convert", model, "--adapter", str(adapter), "-o", str(out)], check=True,
                           capture_output=True)
            return str(out)

        def kept_heads(top):
            """The B = 256 file with fam.kept_heads = the `top` pairs of the committed measurement, merged."""
            out = Path(tmp) / f"kh{top}.gguf"
            subprocess.run([sys.executable, str(ROOT / "tools/kept_heads.py"),
                            str(ROOT / "results/adapters/smollm2-135m-fam-b256-keep64-d05.gguf"),
                            "--mass", str(ROOT / "results/kept_heads/fam-kp64b256-mass.json"), "--top", str(top),
                            "--write", str(out)], check=True, capture_output=True)
            return merged(out, f"kh{top}")

        if a.set == "kept-fam-d05":  # session 30: the shipped adapter (decay 0.5) at B = 64 and B = 128
            kp = ROOT / "results/adapters/smollm2-135m-fam-b64-keep64-d05.gguf"
            kp_merged = merged(kp)
            configs = {
                "sink (S=4)": sink,
                "keep, training-free (F=64, S=4)": keep(64),
                "fam + 64 kept, decay 0.5 (fam-kp64d5): adapter merged": ["-m", kp_merged],
                "B=128: sink (S=4)": sink_at(w128),
                "B=128: fam + 64 kept, decay 0.5: adapter merged": ["-m", kp_merged, *w128],
            }
        elif a.set == "kept-fam-b128":  # session 31: the same memory trained at B = 128
            configs = {
                "B=128: sink (S=4)": sink_at(w128),
                "B=128: keep, training-free (F=64, S=4)": keep(64, w128),
                "B=128: fam + 64 kept, trained at B=128 (fam-kp64b128): adapter merged":
                    ["-m", merged(ROOT / "results/adapters/smollm2-135m-fam-b128-keep64-d05.gguf", "b128"), *w128],
                "B=128: fam + 64 kept, trained at B=64 (fam-kp64d5): adapter merged":
                    ["-m", merged(ROOT / "results/adapters/smollm2-135m-fam-b64-keep64-d05.gguf", "b64"), *w128],
            }
        elif a.set == "kept-fam-b256":  # session 32: the same memory at B = 256, with fewer kept tokens
            m256 = merged(ROOT / "results/adapters/smollm2-135m-fam-b256-keep64-d05.gguf", "b256")
            configs = {
                "B=256: sink (S=4)": sink_at(w256),
                "B=256: keep, training-free (F=64, S=4)": keep(64, w256),
                **{f"B=256: fam + {n} kept (fam-kp64b256, --keep-len {n}): adapter merged":
                   ["-m", m256, *w256, "--keep-len", str(n)] for n in (64, 32, 16, 0)},
            }
        elif a.set == "kept-fam-b512":  # session 34: the B = 256 file at B = 512
            m256 = merged(ROOT / "results/adapters/smollm2-135m-fam-b256-keep64-d05.gguf", "b256")
            configs = {
                "B=512: sink (S=4)": sink_at(w512),
                **{f"B=512: fam + {n} kept (fam-kp64b256, --keep-len {n}): adapter merged":
                   ["-m", m256, *w512, "--keep-len", str(n)] for n in (64, 32, 0)},
            }
        elif a.set == "kept-heads-b512":  # session 35: the 68 pairs' file at B = 512
            kh68 = kept_heads(68)
            configs = {
                "B=512: sink (S=4)": sink_at(w512),
                **{f"B=512: fam + {n} kept, 68 (layer, head) pairs (fam-kp64b256kh68, --keep-len {n}): adapter merged":
                   ["-m", kh68, *w512, "--keep-len", str(n)] for n in (64, 128, 0)},
            }
        elif a.set == "kept-heads-b256":  # session 34: kept tokens shown to 34 or 68 of 270 (layer, head) pairs
            kh34, kh68 = kept_heads(34), kept_heads(68)
            configs = {
                "B=256: sink (S=4)": sink_at(w256),
                "B=256: fam + 64 kept, every head (--kept-heads-all): adapter merged": ["-m", kh34, *w256, "--kept-heads-all"],
                "B=256: fam + 64 kept, 68 (layer, head) pairs (fam-kp64b256kh68): adapter merged": ["-m", kh68, *w256],
                "B=256: fam + 64 kept, 34 (layer, head) pairs (fam-kp64b256kh34): adapter merged": ["-m", kh34, *w256],
                "B=256: fam + 0 kept (--keep-len 0): adapter merged": ["-m", kh34, *w256, "--keep-len", "0"],
            }
        elif a.set in TRAINED_VS_KH68:  # sessions 36-38: a file trained with its head list, next to the 68 pairs' file
            label, file, tag = TRAINED_VS_KH68[a.set]
            configs = {
                "B=256: sink (S=4)": sink_at(w256),
                f"B=256: fam + 64 kept, {label}: adapter merged": ["-m", merged(ROOT / file, tag), *w256],
                "B=256: fam + 64 kept, 68 pairs (fam-kp64b256kh68): adapter merged":
                    ["-m", merged(ROOT / "results/adapters/smollm2-135m-fam-b256-keep64-d05-kh68.gguf", "kh68"), *w256],
            }
        elif a.set == "kept-fam":  # session 29: the FAM trained with 64 kept tokens next to it
            kp = ROOT / "results/adapters/smollm2-135m-fam-b64-keep64-cpu.gguf"
            kp_merged = merged(kp)
            configs = {
                "sink (S=4)": sink,
                "keep, training-free (F=64, S=4)": keep(64),
                "fam + 64 kept (fam-kp64): adapter in the graph": ["-m", model, "--adapter", str(kp)],
                "fam + 64 kept (fam-kp64): adapter merged": ["-m", kp_merged],
                "fam alone (fam-kp64, --keep-len 0): adapter merged": ["-m", kp_merged, "--keep-len", "0"],
            }
        elif a.set.startswith("keep"):
            fs = (64, 256) if a.set == "keep-default" else (16, 64, 256)
            configs = {"sink (S=4)": sink, **{f"keep (F={f}, S=4)": keep(f) for f in fs}}
        else:
            ad_merged = merged(ADAPTER)
            configs = {
                "sink (S=4)": sink,
                "fam, un-tuned (F=16, seed init)": ["-m", model, "--memory", "fam", *w, "--fam-len", "16"],
                "keep, training-free (F=16, S=4)": keep(16),
                "fam, trained: adapter in the graph": ["-m", model, "--adapter", str(ADAPTER)],
                "fam, trained: adapter merged": ["-m", ad_merged],
            }
        runs = {k: [] for k in configs}
        names = list(configs)
        if a.against:
            return in_process(a, configs, names)
        if a.pairs:
            return paired(a, configs, names, extra)
        for r in range(a.rounds):
            for i in range(len(names)):
                name = names[(i + r) % len(names)]
                runs[name].append(bench(a, configs[name], extra))
                print(f"round {r + 1}: {name}: tg {runs[name][-1]['tg_tokens_per_s']:.1f} t/s", file=sys.stderr)
    rows = []

    for name in names:
        tg = statistics.median(x["tg_tokens_per_s"] for x in runs[name])
        pp = statistics.median(x["pp_tokens_per_s"] for x in runs[name])
        base_tg = statistics.median(x["tg_tokens_per_s"] for x in runs[sink_at_window(name)])
        rows.append(dict(config=name, pp=pp, tg=tg, tg_vs_sink=tg / base_tg, state_bytes=runs[name][0]["state_bytes"],
                         peak_rss_bytes=max(x["peak_rss_bytes"] for x in runs[name])))
    out = ROOT / f"results/speed/{a.set}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(rounds=a.rounds, threads=a.threads, n_prompt=a.p, n_gen=a.n, rows=rows,
                                   runs=runs), indent=1) + "\n")
    lines = ["| configuration | pp t/s | tg t/s | tg vs sink | state bytes | peak RSS MiB |", "|---|---|---|---|---|---|"]
    for x in rows:
        lines.append(f"| {x['config']} | {x['pp']:.1f} | {x['tg']:.1f} | {x['tg_vs_sink']:.3f} | {x['state_bytes']:,} | "
                     f"{x['peak_rss_bytes'] / 2**20:.0f} |")
    best = "1 at position 8192" if a.set == "keep-default" else "3"
    table = "\n".join(lines) + (f"\n\n(`tools/bench_adapter.py --set {a.set} --rounds {a.rounds} --threads {a.threads}`: "
                                f"pp{a.p}/tg{a.n}, median over rounds of the best of {best}, order rotating)")
    print(table)
    if a.splice:
        splice(ROOT / "results/README.md", f"{a.set}-speed", table)


def sink_at_window(name):
    """The `sink` configuration at `name`'s window (a name "B=N: ..." is at B = N, the others at the set's)."""
    return (name.split(": ")[0] + ": " if name.startswith("B=") else "") + "sink (S=4)"


def bench(a, args, extra):
    out = subprocess.run([str(BIN), "bench", *args, "-p", str(a.p), "-n", str(a.n), *extra, "-t", str(a.threads),
                          "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def in_process(a, configs, names):
    """Each non-sink configuration against `sink` at its window in one famstream process (`bench --against`):
    both loaded once, `a.against` repetitions alternated (which goes first alternating), so the two meet the
    same machine state within seconds and the processes' own differences (load, memory placement) are
    shared."""
    rows = {}
    for n in [n for n in names if "sink" not in n]:
        sink = configs[sink_at_window(n)] + ["-t", str(a.threads)]
        assert not any(" " in x for x in sink), "--against takes whitespace-separated flags"
        out = subprocess.run([str(BIN), "bench", *configs[n], "-p", str(a.p), "-n", str(a.n), "-r", str(a.against),
                              "-t", str(a.threads), "--json", "--against", " ".join(sink)],
                             check=True, capture_output=True, text=True)
        rows[n] = json.loads(out.stdout)
        print(f"{n}: {rows[n]['tg_ratio_median']:.3f}", file=sys.stderr)
    out = ROOT / f"results/speed/{a.set}-against.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(repetitions=a.against, threads=a.threads, n_prompt=a.p, n_gen=a.n, runs=rows),
                              indent=1) + "\n")
    lines = ["| configuration | tg vs sink, median of repetitions | quartiles | sink tg t/s (range) | "
             "tg time at block ends |", "|---|---|---|---|---|"]
    for n, r in rows.items():
        st = r["against"]["tg_tokens_per_s"]
        lo, hi = r["tg_ratio_quartiles"]
        lines.append(f"| {n} | {r['tg_ratio_median']:.3f} | {lo:.3f}-{hi:.3f} | {min(st):.0f}-{max(st):.0f} | "
                     f"{100 * r['this']['tg_block_end_share']:.1f}% |")
    table = "\n".join(lines) + (f"\n\n(`tools/bench_adapter.py --set {a.set} --against {a.against} -n {a.n} "
                                f"--threads {a.threads}`: pp{a.p}/tg{a.n}, each configuration in one process with "
                                "`sink` at its window, repetitions alternated)")
    print(table)
    if a.splice:
        splice(ROOT / "results/README.md", f"{a.set}-against", table)


def paired(a, configs, names, extra):
    """Each non-sink configuration against `sink` at its window, run back to back, `a.pairs` times (the
    configurations interleaved, in a new seeded random order each round), so a drift of the machine's speed
    lands on both runs of a pair and no configuration always follows the same one."""
    extra = ["-r", "1"] if extra == ["-r", "3"] else extra  # best of 1: the pairs are the repetitions
    ratios = {n: [] for n in names if "sink" not in n}
    rng = random.Random(0)
    for r in range(a.pairs):
        order = list(ratios)
        rng.shuffle(order)  # session 32 on: a fixed order left a 2.4% gap between two same-cost files
        for n in order:
            if r % 2 == 0:  # which runs first alternates, so an order effect does not land on every ratio
                s = bench(a, configs[sink_at_window(n)], extra)
                c = bench(a, configs[n], extra)
            else:
                c = bench(a, configs[n], extra)
                s = bench(a, configs[sink_at_window(n)], extra)
            ratios[n].append(dict(sink_tg=s["tg_tokens_per_s"], tg=c["tg_tokens_per_s"],
                                  ratio=c["tg_tokens_per_s"] / s["tg_tokens_per_s"],
                                  upkeep=c.get("tg_block_end_share")))
            print(f"pair {r + 1}: {n}: {ratios[n][-1]['ratio']:.3f} ({c['tg_tokens_per_s']:.1f} / "
                  f"{s['tg_tokens_per_s']:.1f})", file=sys.stderr)
    out = ROOT / f"results/speed/{a.set}-pairs.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(pairs=a.pairs, threads=a.threads, n_prompt=a.p, n_gen=a.n, ratios=ratios),
                              indent=1) + "\n")
    lines = ["| configuration | tg vs sink, median of pairs | quartiles | sink tg t/s (range) | tg time at block ends |",
             "|---|---|---|---|---|"]
    for n, v in ratios.items():
        q = statistics.quantiles([x["ratio"] for x in v], n=4, method="inclusive")
        st = [x["sink_tg"] for x in v]
        up = [x["upkeep"] for x in v if x["upkeep"] is not None]  # bench's tg_block_end_share (session 31 on)
        lines.append(f"| {n} | {statistics.median(x['ratio'] for x in v):.3f} | {q[0]:.3f}-{q[2]:.3f} | "
                     f"{min(st):.0f}-{max(st):.0f} | {f'{100 * statistics.median(up):.1f}%' if up else '-'} |")
    table = "\n".join(lines) + (f"\n\n(`tools/bench_adapter.py --set {a.set} --pairs {a.pairs} -n {a.n} --threads "
                                f"{a.threads}`: pp{a.p}/tg{a.n}, each run next to `sink` at its window, best of 1)")
    print(table)
    if a.splice:
        splice(ROOT / "results/README.md", f"{a.set}-pairs", table)


if __name__ == "__main__":
    main()
