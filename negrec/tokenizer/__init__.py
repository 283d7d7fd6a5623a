"""Semantic-ID tokenizer, the tokenize stage (quantize item embeddings into SIDs, config
`TokenizeConfig`) and the codebook export for serving: `export` writes it, `serving` loads it.
`SemanticIdTokenizer` and the serving module (`ExportedCodebook`, `filter_candidates`,
`verify_export`) need only numpy; the stage functions import torch/faiss lazily."""
from negrec.tokenizer.config import TokenizeConfig
from negrec.tokenizer.serving import ExportedCodebook, filter_candidates, verify_export
from negrec.tokenizer.sid import PrefixTrie, SemanticIdTokenizer


def run_tokenize(raw: dict, run_dir):
    from negrec.tokenizer.stage import run_tokenize as _run

    return _run(raw, run_dir)


def run_export(raw: dict, run_dir, out_dir=None, verify: bool = False):
    from negrec.tokenizer.export import run_export as _run

    return _run(raw, run_dir, out_dir=out_dir, verify=verify)


__all__ = ["ExportedCodebook", "PrefixTrie", "SemanticIdTokenizer", "TokenizeConfig", "filter_candidates",
           "run_tokenize", "run_export", "verify_export"]
