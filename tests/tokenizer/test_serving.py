"""The numpy-only serving module beside the codebook export: load, assign, decode, filter.

A hand-made export (2-d vectors, RQ-KMeans codebooks, TIGER extra level) so every expected
SID and every cosine can be checked by hand; the serving side runs in a process where importing
torch or pandas fails, as in a lean serving stack."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from negrec.rqvae.collisions import add_extra_level
from negrec.rqvae.numpy_quantizer import NumpyQuantizer
from negrec.tokenizer import SemanticIdTokenizer
from negrec.tokenizer.export import write_export
from negrec.tokenizer.serving import ExportedCodebook, filter_candidates, verify_export

# level 0: three directions; level 1: small offsets
CODEBOOKS = [np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], np.float32),
             np.array([[0.1, 0.0], [0.0, 0.1]], np.float32)]
ITEMS = np.array([10, 11, 12, 13, 14])
RAW = np.array([[0, 0], [0, 1], [1, 0], [2, 1], [0, 0]])  # item 14 collides with item 10


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    q = NumpyQuantizer([c.copy() for c in CODEBOOKS], method="rqkmeans")
    codes, size, n_coll = add_extra_level(RAW)
    assert n_coll == 2 and size == 2
    tok = SemanticIdTokenizer.from_codes(ITEMS, codes, q.codebook_sizes + [size], centroids=q.codebooks)
    emb = q.latent_from_codes(RAW)  # exact: re-quantisation reproduces RAW
    out = tmp_path_factory.mktemp("serving") / "export"
    write_export(out, tok, q, RAW, emb, "extra_level", {"run_dir": "hand-made"})
    return out


def test_export_has_readme_and_usage(export_dir):
    readme = (export_dir / "README.txt").read_text()
    assert "from negrec.tokenizer.serving import ExportedCodebook, filter_candidates" in readme
    assert str(export_dir) in readme and "input_dim=2" in readme
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert manifest["serving"]["module"] == "negrec.tokenizer.serving" and "README.txt" in manifest["files"]
    assert verify_export(export_dir)["mismatches"] == 0


def test_filter_candidates_by_hand():
    cands = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    assert filter_candidates(cands, np.array([[3.0, 0.0]]), 0.9).tolist() == [False, True, True]
    assert filter_candidates(cands, np.array([[3.0, 0.0]]), 0.7).tolist() == [False, True, False]
    assert filter_candidates(cands, np.array([[3.0, 0.0], [0.0, -1.0]]), 0.9).tolist() == [False, True, True]
    assert filter_candidates(cands, np.zeros((0, 2)), 0.5).all()
    assert filter_candidates(np.zeros((0, 2)), np.ones((1, 2)), 0.5).shape == (0,)
    with pytest.raises(ValueError, match="embedding sizes"):
        filter_candidates(cands, np.ones((1, 3)), 0.5)


def test_exported_codebook_in_process(export_dir):
    cb = ExportedCodebook.load(export_dir)
    assert len(cb) == 5 and cb.levels == 3 and cb.semantic_levels == 2
    assert cb.sid_of(14) == (0, 0, 1) and cb.item_of((0, 0, 1)) == 14 and cb.item_of((1, 1, 0)) is None
    assert cb.token_string(cb.sid_of(13)) == "<a_2><b_1><c_0>"
    np.testing.assert_array_equal(cb.parse(["<a_2><b_1><c_0>", "<a_0><b_1><c_0>"]), [[2, 1, 0], [0, 1, 0]])
    with pytest.raises(ValueError, match="SID string"):
        cb.parse("<a_2><c_1><b_0>")
    # decode = sum of centroids, the extra level ignored; same as the SID tokenizer's item embeddings
    np.testing.assert_allclose(cb.decode([[2, 1, 0]]), [[-1.0, 0.1]], atol=1e-6)
    tok = SemanticIdTokenizer.from_pretrained(export_dir / "sid_tokenizer")
    np.testing.assert_allclose(cb.item_embeddings(ITEMS), tok.item_embeddings(ITEMS), atol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        cb.decode([[-1, -1, -1]])


def test_serving_module_without_torch_or_pandas(export_dir):
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "pandas"):
                    raise ImportError(name + " is blocked in this test")
        sys.meta_path.insert(0, Block())
        import numpy as np
        from negrec.tokenizer.serving import ExportedCodebook, filter_candidates

        cb = ExportedCodebook.load({str(export_dir)!r})
        # new items: (-1, 0.09) -> raw (2, 1), taken by item 13 -> next free extra code; (0.05, 1) -> (1, 0, 1)
        new = cb.assign(np.array([[-1.0, 0.09], [0.05, 1.0]], np.float32))
        assert new.tolist() == [[2, 1, 1], [1, 0, 1]], new
        assert cb.assign(np.array([[-1.0, 0.09]], np.float32), unique=False).tolist() == [[2, 1]]
        # (1.05, 0.01) -> raw (0, 0), whose two numbers items 10 and 14 hold: the nearest last-level
        # code with a free number, (0, 1) (item 11 holds (0, 1, 0)); two such items fill it
        assert cb.assign(np.array([[1.05, 0.01]], np.float32)).tolist() == [[0, 1, 1]]
        assert cb.assign(np.array([[1.05, 0.01], [1.05, 0.0]], np.float32)).tolist() == [[0, 1, 1], [-1, -1, -1]]

        # the user is predicted to dislike item 10 (<a_0><b_0><c_0> -> (1.1, 0))
        disliked = cb.decode(cb.parse(["<a_0><b_0><c_0>"]))
        cands = cb.item_embeddings([11, 12, 13])  # (1, .1) cos .995 | (.1, 1) cos .0995 | (-1, .1) cos < 0
        assert filter_candidates(cands, disliked, 0.9).tolist() == [False, True, True]
        assert filter_candidates(cands, disliked, 0.05).tolist() == [False, False, True]
        assert cb.filter(cb.codes[1:4], cb.parse(["<a_0><b_0><c_0>"]), 0.9).tolist() == [False, True, True]
        assert filter_candidates(cands, np.zeros((0, 2)), 0.9).all()
        assert "torch" not in sys.modules and "pandas" not in sys.modules
        print("serving numpy-only ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "serving numpy-only ok" in proc.stdout
