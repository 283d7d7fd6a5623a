"""The one registry of stages: the CLI (`negrec/cli.py`), the pipeline (`negrec/pipeline.py`),
`negrec status` and the stage table of `docs/ARCHITECTURE.md` (checked by `tests/test_stages.py`)
all read `STAGES`. Adding a stage is one `Stage(...)` entry here.

A stage is what the pipeline runs (`pipeline.skip`, `force`, `stop_after`) and what the freshness
rule of `negrec.contract` judges (its `_DONE` marker in `folder`); a CLI subcommand (`command`) runs
one or more stages (`negrec sft --task align|next`, `negrec grpo [--plain]`).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Stage:
    name: str                   # pipeline stage name (pipeline.skip / force / stop_after)
    command: str                # the CLI subcommand that runs it
    module: str
    func: str                   # run_<x>(raw, run_dir, **kwargs) -> dict
    help: str
    sections: tuple = ()        # config sections it reads
    inputs: tuple = ()          # stages whose outputs it reads
    outputs: tuple = ()         # key outputs, relative to the run folder ("{export}/..." = export.out_dir)
    kwargs: dict = field(default_factory=dict)  # what the pipeline passes (the CLI: from its flags)
    torch_free: bool = False    # never imports torch (no thread setup; runs where torch is absent)
    fingerprint: str = ""       # "module:function(raw) -> json-able": raw inputs outside the run folder
    folder: str = ""            # the folder it writes, relative to the run folder ("{export}": export.out_dir,
                                # ".": the run folder); shared by several stages -> marker _DONE.<name>
    # inputs it does without when they are in pipeline.skip and their folder is an older run's: it asks
    # `contract.left_out` and leaves them out; any other input not done is refused
    skippable_inputs: tuple = ()

    @property
    def command_line(self) -> str:
        """The CLI call that runs this stage alone (`sft --task next`, `grpo --plain`)."""
        flags = [f"--{k}" if v is True else f"--{k} {v}" for k, v in self.kwargs.items() if v is not False]
        return " ".join([self.command, *flags])


STAGES: tuple[Stage, ...] = (
    Stage("data", "data", "negrec.data", "run_prepare",
          "prepare the log (loaders, implicit negatives, cuts, samples); `data stats` prints statistics",
          ("data",), (), ("data/interactions.parquet", "data/items.parquet", "data/cuts.parquet",
                          "data/data_config.json", "data/samples_train.parquet", "data/samples_valid.parquet",
                          "data/samples_test.parquet"),
          torch_free=True, fingerprint="negrec.data:raw_inputs_fingerprint", folder="data"),
    Stage("encode", "encode", "negrec.encode", "run_encode", "item embeddings: text, collaborative, features, fused",
          ("encode",), ("data",), ("encode/embeddings.npy", "encode/item_ids.npy", "encode/meta.json"), folder="encode"),
    Stage("tokenize", "tokenize", "negrec.tokenizer", "run_tokenize",
          "quantize items into semantic IDs (RQ-VAE or RQ-KMeans) and build the SID tokenizer",
          ("tokenize",), ("encode",),
          ("tokenize/sid_tokenizer", "tokenize/quantizer", "tokenize/raw_codes.npy", "tokenize/metrics.json"), folder="tokenize"),
    Stage("build-model", "build-model", "negrec.llm", "run_build_model",
          "load or build the LLM and extend its vocabulary with SID tokens",
          ("model", "prompt"), ("data", "tokenize"), ("model/config.json",), folder="model"),
    Stage("sft-align", "sft", "negrec.train", "run_sft", "item-level alignment SFT (--task align)",
          ("sft_align",), ("data", "build-model"), ("sft_align/final/config.json", "sft_align/summary.json"),
          kwargs={"task": "align"}, folder="sft_align"),
    Stage("sft-next", "sft", "negrec.train", "run_sft", "next-negative SFT (--task next)",
          ("sft_next",), ("data", "build-model", "sft-align"), ("sft_next/final/config.json", "sft_next/summary.json"),
          kwargs={"task": "next"}, folder="sft_next"),
    # GRPO's key output is its summary: with no rows to train on it writes no policy (final/), only why;
    # a policy deleted since is still caught, by the file sizes its marker records
    Stage("grpo", "grpo", "negrec.train", "run_grpo", "progressive GRPO with the future-negative rewards",
          ("grpo", "rewards"), ("data", "sft-next"), ("grpo/summary.json",), folder="grpo"),
    Stage("grpo-plain", "grpo", "negrec.train", "run_grpo",
          "plain (non-progressive) GRPO into <run>/grpo_plain, the ablation (--plain)",
          ("grpo", "rewards"), ("data", "sft-next"), ("grpo_plain/summary.json",),
          kwargs={"plain": True}, folder="grpo_plain"),
    Stage("baselines", "baselines", "negrec.eval", "run_baselines", "fit and score the baselines",
          ("baselines", "eval"), ("data", "encode"), ("eval/baselines_summary.json",), folder="eval"),
    Stage("predict", "predict", "negrec.eval", "run_predict",
          "write predictions.parquet and targets.parquet for the test users",
          ("eval", "prompt"), ("data", "tokenize", "sft-next", "grpo", "grpo-plain"),
          # predictions.parquet only when a policy exists
          ("eval/targets.parquet", "eval/predict_summary.json"), folder="eval", skippable_inputs=("grpo", "grpo-plain")),
    Stage("evaluate", "evaluate", "negrec.eval", "run_evaluate", "score predictions.parquet against targets.parquet",
          ("eval", "blend"), ("data", "predict", "baselines"), ("eval/metrics.json", "eval/results_table.txt"),
          torch_free=True, folder="eval"),
    Stage("filter", "filter", "negrec.eval", "run_filter", "the predicted-dislike filter and its removal curve",
          ("filter", "eval"), ("data", "tokenize", "predict"), ("filter/curve.json",), torch_free=True, folder="filter"),
    Stage("export", "export-codebook", "negrec.tokenizer", "run_export",
          "export codebooks, SID tables, trie and manifest for serving",
          ("export",), ("data", "tokenize"), ("{export}/manifest.json",), torch_free=True, folder="{export}"),
    Stage("report", "report", "negrec.eval", "run_report", "report.md and plots in the run folder",
          ("report", "eval"), ("evaluate", "filter", "grpo", "tokenize"), ("report.md",), torch_free=True, folder=".",
          skippable_inputs=("grpo",)),
)


@dataclass
class PipelineConfig:
    """Section `pipeline`: which stages `negrec pipeline` runs, and on how many processes."""
    skip: list[str] = field(default_factory=list)   # stage names to leave out
    stop_after: str = ""                            # run up to and including this stage
    force: list[str] = field(default_factory=list)  # stage names to rerun even if up to date
    # processes for the timeline SFT stages and predict (`RANKED`), launched under torchrun on this
    # machine: data-parallel training (negrec.train.ranks), the users split (negrec.eval.data_parallel);
    # 0: one per GPU (one process without a GPU)
    ranks: int = 0

    def __post_init__(self):
        if self.ranks < 0:
            raise ValueError(f"pipeline.ranks must be 0 (auto) or a number of processes, got {self.ranks}")


@dataclass(frozen=True)
class Command:
    name: str
    module: str
    func: str
    help: str
    sections: list | None       # checked before it runs (a torch command: its inputs' too); None: every section
    torch_free: bool


def commands() -> dict[str, Command]:
    """CLI subcommand -> Command, in pipeline order, then `pipeline` and `status`."""
    out: dict[str, Command] = {}
    for cmd in dict.fromkeys(s.command for s in STAGES):
        group = [s for s in STAGES if s.command == cmd]
        torch_free = all(s.torch_free for s in group)
        # a stage that imports torch anyway also checks what its inputs were built from (sft reads
        # prompt and model): a bad field there is named, not reported as a stale input
        read = group if torch_free else _with_upstream(group)
        sections = list(dict.fromkeys(sec for s in read for sec in s.sections))
        out[cmd] = Command(cmd, group[0].module, group[0].func, "; ".join(s.help for s in group), sections,
                           torch_free)
    out["pipeline"] = Command("pipeline", "negrec.pipeline", "run_pipeline",
                              "every stage in order, resuming where outputs are up to date", None, False)
    out["status"] = Command("status", "negrec.pipeline", "run_status",
                            "each stage's state in a run folder (done / stale / missing) and why; writes nothing",
                            None, True)
    return out


def _with_upstream(group: list[Stage]) -> list[Stage]:
    """`group` and every stage it reads from, directly or not, in pipeline order."""
    need, todo = set(), [s.name for s in group]
    while todo:
        name = todo.pop()
        if name not in need:
            need.add(name)
            todo.extend(stage(name).inputs)
    return [s for s in STAGES if s.name in need]


def stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    raise ValueError(f"unknown stage {name!r}; stages are {[s.name for s in STAGES]}")
