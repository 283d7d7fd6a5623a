"""Parameter-efficient training of the policy (YAML `model.peft`), shared by both SFT stages and GRPO.

`mode`:
- `none` (the default): full fine-tuning, as before.
- `lora`: LoRA adapters on `target_modules` (rank `r`, `alpha`, `dropout`); with `train_new_tokens`
  the rows of the tokens negrec added (SID and feedback tokens) train too, in the input embedding
  and in an untied LM head. Every other weight stays frozen.
- `sid_embeddings_only`: the LLM is frozen; only the new token rows train (MiniOneRec).

The new token rows train in place: the embedding (and untied head) weight requires grad and a
gradient hook zeroes every other row. PEFT's own `trainable_token_indices` / `TrainableTokensConfig`
wrap the LM head, and TRL 1.16's SFT and GRPO trainers compute log-probs from `lm_head.weight`
directly (fused head): the wrapped head either fails (`.bias`) or its trained rows are ignored.
Keep `weight_decay: 0` (negrec's default): decoupled weight decay would shrink the other rows too.
Under GRPO with LoRA the token rows stay frozen, so the adapter-free KL reference is exactly the SFT
policy; with `sid_embeddings_only` GRPO trains the token rows alone and TRL loads the SFT policy as
a separate reference model. The row mask needs whole matrices: refused under ZeRO-3.

A trained PEFT policy is saved by `negrec.llm.model.save_policy` as a normal policy folder with the
adapter beside it in `adapter/` and `peft.json`; with `merge: true` (default) the top-level weights
are the merged ones, so predict/eval/GRPO load it unchanged; with `merge: false` they are the base
weights (with the trained token rows, which live there) and `load_policy` applies `adapter/` on load.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

PEFT_MODES = ("none", "lora", "sid_embeddings_only")
ADAPTER_DIR = "adapter"
PEFT_FILE = "peft.json"


@dataclass
class PeftSettings:
    mode: str = "none"            # none | lora | sid_embeddings_only (frozen LLM, only the new SID/feedback token rows train)
    r: int = 16                   # lora: rank
    alpha: float = 32.0           # lora: lora_alpha (scale alpha / r)
    dropout: float = 0.05         # lora: lora_dropout
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])  # lora: module names; ["all-linear"] = every linear but the head
    train_new_tokens: bool = True  # lora: the SID and feedback token rows (embedding and head) train too
    merge: bool = True            # saved policy: merged weights (true) or base weights + adapter/ applied on load (false)

    def __post_init__(self):
        if self.mode not in PEFT_MODES:
            raise ValueError(f"model.peft.mode: expected one of {PEFT_MODES}, got {self.mode!r}")
        if self.r < 1 or self.alpha <= 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("model.peft: r must be >= 1, alpha > 0, dropout in [0, 1)")
        if not self.target_modules:
            raise ValueError("model.peft.target_modules: name at least one module (or all-linear)")

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


def new_token_ids(hf_tok, sid_tok) -> list[int]:
    """Ids of the tokens negrec adds to the LM: every SID token, the compact format's tokens
    and, where the model has them, the like tokens."""
    from negrec.llm.prompts import compact_tokens, like_token

    vocab = hf_tok.get_vocab()
    names = list(sid_tok.all_tokens()) + compact_tokens() + [like_token(t) for t in sid_tok.all_tokens()]
    return sorted({vocab[t] for t in names if t in vocab})


def _tied(model) -> bool:
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    # identity first: under ZeRO-3 both are empty local shards, whose data pointers say nothing
    return out is None or out.weight is inp.weight or out.weight.data_ptr() == inp.weight.data_ptr() != 0


def peft_config(settings: PeftSettings):
    """The `peft.LoraConfig` for `settings` (None when PEFT is off or the mode needs no adapter)."""
    if not settings.enabled or settings.mode == "sid_embeddings_only":
        return None
    from peft import LoraConfig

    targets = settings.target_modules
    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, task_type="CAUSAL_LM",
                      target_modules="all-linear" if targets == ["all-linear"] else list(targets))


def train_token_rows(model, token_ids: list[int]) -> None:
    """Let only the rows `token_ids` of the input embedding (and of an untied head) train."""
    import torch

    if any(hasattr(p, "ds_id") for p in model.parameters()):
        raise ValueError("model.peft: training the new token rows alone (sid_embeddings_only, or lora with "
                         "train_new_tokens) needs whole embedding matrices, and ZeRO-3 partitions them: use a "
                         "ZeRO-2 DeepSpeed config, or mode: lora with train_new_tokens: false")
    weights = [model.get_input_embeddings().weight]
    if not _tied(model):
        weights.append(model.get_output_embeddings().weight)
    for w in weights:
        mask = torch.zeros(w.shape[0], 1, dtype=w.dtype, device=w.device)
        mask[torch.as_tensor(list(token_ids), device=w.device)] = 1
        w.requires_grad_(True)
        w.register_hook(lambda g, m=mask: g * m.to(g.dtype))
    model.negrec_new_tokens = list(token_ids)


def token_rows(model) -> dict:
    """The trainable token rows (for a checkpoint): {"input"/"output": (n, h) tensor, "ids": ...}."""
    ids = getattr(model, "negrec_new_tokens", None)
    if not ids:
        return {}
    import torch

    idx = torch.as_tensor(ids)
    out = {"ids": idx, "input": model.get_input_embeddings().weight.detach()[idx].cpu().clone()}
    if not _tied(model):
        out["output"] = model.get_output_embeddings().weight.detach()[idx].cpu().clone()
    return out


def load_token_rows(model, rows: dict) -> None:
    import torch

    with torch.no_grad():
        for key, layer in (("input", model.get_input_embeddings()), ("output", model.get_output_embeddings())):
            if key in rows:
                layer.weight[rows["ids"].to(layer.weight.device)] = rows[key].to(layer.weight)


def apply_peft(model, settings: PeftSettings | None, token_ids: list[int]):
    """`model` prepared for `settings`: LoRA wraps it in a `peft.PeftModel`; sid_embeddings_only freezes
    it; with the new token rows trainable in both. `model` itself when PEFT is off.

    The one preparation used by TRL's SFTTrainer and the timeline trainer's torch loop (GRPO passes
    `peft_config` to TRL). The settings ride on the result, so `save_policy` knows what to write.
    """
    if settings is None or not settings.enabled:
        return model
    config = peft_config(settings)
    if config is None:  # sid_embeddings_only
        for p in model.parameters():
            p.requires_grad_(False)
        wrapped = model
    else:
        from peft import get_peft_model

        wrapped = get_peft_model(model, config)
        wrapped.enable_input_require_grads()  # gradient checkpointing with a frozen embedding needs it
    if settings.mode == "sid_embeddings_only" or settings.train_new_tokens:
        train_token_rows(wrapped, token_ids)
    wrapped.negrec_peft = settings
    return wrapped


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def trainable_summary(model) -> dict:
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    ids = getattr(model, "negrec_new_tokens", None)
    if ids:  # `train_token_rows`: a gradient mask keeps every other row of the token matrices fixed
        mats = [model.get_input_embeddings().weight] + ([] if _tied(model) else [model.get_output_embeddings().weight])
        n_train -= sum((w.shape[0] - len(ids)) * w.shape[1] for w in mats if w.requires_grad)
    return {"trainable_params": n_train, "all_params": n_all}


def save_peft_model(model, out_dir: Path) -> None:
    """Write a PeftModel into `out_dir` (a staging folder): the adapter in `adapter/`, `peft.json`,
    and the top-level weights, merged (`merge: true`) or the base ones. The model is unloaded in
    place (merged or not): use it no further."""
    settings = getattr(model, "negrec_peft", None) or PeftSettings(mode="lora")
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir / ADAPTER_DIR)
    # the trained token rows live in the base weights (see the module docstring), merged or not
    base = model.merge_and_unload() if settings.merge else model.unload()
    base.save_pretrained(out_dir)
    write_peft_file(out_dir, settings)


def write_peft_file(out_dir: Path, settings: PeftSettings) -> None:
    (Path(out_dir) / PEFT_FILE).write_text(json.dumps({**asdict(settings), "adapter": ADAPTER_DIR}, indent=2) + "\n")


def read_peft_file(model_dir: Path) -> dict | None:
    path = Path(model_dir) / PEFT_FILE
    return json.loads(path.read_text()) if path.exists() else None


def unmerged_adapter(model_dir: Path) -> Path | None:
    """The adapter folder `load_policy` must apply, when the policy was saved with `merge: false`."""
    info = read_peft_file(model_dir)
    if info and not info.get("merge", True):
        return Path(model_dir) / info.get("adapter", ADAPTER_DIR)
    return None


def attach_adapter(model, adapter_dir: Path):
    """`model` with the saved adapter applied and merged (same logits as the adapter model)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()


def load_adapter_weights(peft_model, adapter_dir: Path) -> None:
    """Copy a saved adapter's weights into `peft_model`'s (same config): GRPO stage k starts from k-1."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(peft_model, state)
    missing = [k for k in getattr(result, "unexpected_keys", [])]
    if missing:
        raise ValueError(f"{adapter_dir}: adapter weights do not fit this model: {missing[:3]}")


__all__ = ["PeftSettings", "PEFT_MODES", "ADAPTER_DIR", "new_token_ids", "peft_config", "apply_peft", "is_peft_model",
           "train_token_rows", "token_rows", "load_token_rows",
           "save_peft_model", "read_peft_file", "unmerged_adapter", "attach_adapter", "load_adapter_weights",
           "trainable_summary", "write_peft_file"]
