import numpy as np
import pytest

from negrec.rqvae import add_extra_level, codebook_metrics, collision_rate, sinkhorn_reassign
from negrec.rqvae.numpy_quantizer import NumpyQuantizer, residual_assign
from negrec.tokenizer import TokenizeConfig
from negrec.tokenizer.stage import tokenize_items

SMALL = dict(levels=3, codebook_size=16, epochs=12, batch_size=128, hidden_dims=[48, 24], latent_dim=8,
             kmeans_iters=10, dead_code_steps=10, save_every=0)


def _clustered(n=600, d=32, k=12, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d))
    labels = rng.integers(0, k, n)
    return (centers[labels] + 0.3 * rng.normal(size=(n, d))).astype(np.float32), labels


@pytest.mark.parametrize("method", ["rqkmeans", "rqvae"])
@pytest.mark.parametrize("collision", ["extra_level", "sinkhorn"])
def test_both_methods_and_collision_strategies_give_unique_sids(method, collision):
    x, _ = _clustered()
    ids = np.arange(len(x)) * 3 + 7
    res = tokenize_items(TokenizeConfig(method=method, collision=collision, **SMALL), ids, x)
    tok, m = res.tokenizer, res.metrics
    assert len(np.unique(tok.codes, axis=0)) == len(ids) and m["final_unique"]
    for i in ids[:50]:
        assert tok.item_for_tokens(tok.tokens_for_item(i)) == i
    # the report counts exactly the items the collision step touched
    colliding = int(round(collision_rate(res.raw_codes) * len(ids)))
    if collision == "extra_level":
        assert tok.levels == 4 and m["items_needing_collision_handling"] == colliding
    else:
        assert tok.levels == 3
        changed = int((tok.codes != res.raw_codes).any(1).sum())
        assert changed == m["items_needing_collision_handling"]
        groups = len(np.unique(res.raw_codes[(res.raw_codes[:, None] == res.raw_codes[None]).all(-1).sum(1) > 1], axis=0))
        assert changed == colliding - groups  # one item per colliding group keeps its SID
    # the numpy quantizer reproduces the raw codes, and the codebooks decode to embeddings
    assert np.array_equal(res.quantizer.assign(x)[0], res.raw_codes)
    assert tok.item_embeddings(ids[:3]).shape == (3, res.quantizer.codebooks[0].shape[1])
    assert m["recon_rel_err"] < 1.0


def test_add_extra_level_numbers_items_sharing_codes():
    codes = np.array([[1, 2], [0, 0], [1, 2], [1, 2], [0, 1]])
    out, size, n = add_extra_level(codes)
    assert out[:, 2].tolist() == [0, 0, 1, 2, 0] and size == 3 and n == 3
    assert len(np.unique(out, axis=0)) == len(out)


def test_sinkhorn_reassign_moves_only_colliders_and_goes_deeper_when_a_prefix_is_full():
    rng = np.random.default_rng(0)
    codebooks = [rng.normal(size=(3, 4)).astype(np.float32) for _ in range(2)]
    x = rng.normal(size=(8, 4)).astype(np.float32)
    # 5 items on prefix (0,): only 3 last-level codes there, so 2 must change the first level too
    codes = np.array([[0, 0], [0, 0], [0, 0], [0, 0], [0, 0], [1, 1], [2, 2], [1, 2]])
    residuals = lambda rows: [x[rows], x[rows] - codebooks[0][codes[rows, 0]]]
    out, stats = sinkhorn_reassign(codes, residuals, codebooks)
    assert len(np.unique(out, axis=0)) == len(out)
    assert np.array_equal(out[5:], codes[5:])  # non-colliding items untouched
    assert stats["moved"] == 4 and stats["moved_at_depth"] == {1: 2, 2: 2}
    with pytest.raises(ValueError, match="extra_level"):
        sinkhorn_reassign(np.zeros((10, 2), int), lambda rows: [x[:1].repeat(len(rows), 0)] * 2, codebooks)


def test_codebook_metrics_on_known_codes():
    codes = np.array([[0, 0], [1, 0], [2, 0], [3, 0], [0, 0]])
    m = codebook_metrics(codes, [8, 4])
    lv0, lv1 = m["levels"]
    assert lv0["used"] == 4 and lv0["unused_share"] == 0.5
    assert lv1["used"] == 1 and lv1["perplexity"] == 1.0
    assert m["collision_rate"] == 0.4 and m["unique_fraction"] == 0.8
    assert m["items_per_first_code"] == {"min": 1, "median": 1.0, "max": 2, "min_over_all_codes": 0}


def test_residual_assign_picks_nearest_codes_greedily():
    cb = [np.array([[0.0, 0.0], [10.0, 0.0]], np.float32), np.array([[0.0, 1.0], [0.0, -1.0]], np.float32)]
    codes, last = residual_assign(np.array([[9.0, -1.2], [0.5, 0.8]], np.float32), cb)
    assert codes.tolist() == [[1, 1], [0, 0]]
    np.testing.assert_allclose(last, [[-1.0, -1.2], [0.5, 0.8]], rtol=1e-6)


def test_rqvae_numpy_twin_matches_torch_and_resumes_from_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    from negrec.rqvae.model import RQVAE, train_rqvae

    x, _ = _clustered(n=300)
    for act in ("relu", "gelu", "silu"):
        model = RQVAE(32, [24, 16], 8, 2, 8, activation=act).eval()
        q = model.to_numpy()
        with torch.no_grad():
            z = model.encoder(torch.from_numpy(x)).numpy()
            dec = model.decoder(torch.from_numpy(z)).numpy()
        np.testing.assert_allclose(q.encode(x), z, atol=1e-5)
        np.testing.assert_allclose(q.reconstruct(np.zeros((1, 2), int)), model.decoder(model.codebooks[:, 0].sum(0, keepdim=True)).detach().numpy(), atol=1e-5)
        assert dec.shape == x.shape
    q.save(tmp_path / "q")
    back = NumpyQuantizer.load(tmp_path / "q")
    np.testing.assert_array_equal(back.assign(x)[0], q.assign(x)[0])

    cfg = TokenizeConfig(**{**SMALL, "epochs": 6, "save_every": 1})
    ckpt = tmp_path / "ckpt.pt"
    steps_per_epoch = -(-len(x) // cfg.batch_size)
    _, h1 = train_rqvae(x, cfg, checkpoint=ckpt, resume_key="k", max_steps=3 * steps_per_epoch)  # "killed" after 3 epochs
    assert len(h1["epochs"]) == 3 and ckpt.exists()
    q2, h2 = train_rqvae(x, cfg, checkpoint=ckpt, resume_key="k")
    assert [e["epoch"] for e in h2["epochs"]] == list(range(6)) and h2["train_steps"] == 3 * steps_per_epoch
    _, h3 = train_rqvae(x, cfg, checkpoint=tmp_path / "other.pt", resume_key="other-config")
    assert h3["train_steps"] == 6 * steps_per_epoch  # a checkpoint of another config is not reused


def test_one_seed_gives_one_rqvae_on_two_threads():
    """Batches large enough to be split over threads summed the codebook lookup's gradient in
    thread order: two trainings of one seed gave other codebooks. Deterministic kernels fix that,
    and leave the caller's setting as it was."""
    torch = pytest.importorskip("torch")
    from negrec.rqvae.model import train_rqvae

    x, _ = _clustered(n=3000, d=384)
    cfg = TokenizeConfig(**{**SMALL, "epochs": 4, "batch_size": 1024, "latent_dim": 32})
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first, again = (train_rqvae(x, cfg)[0] for _ in range(2))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(first.codebooks, again.codebooks):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first.assign(x)[0], again.assign(x)[0])
    assert not torch.are_deterministic_algorithms_enabled()


def test_dead_codes_restart_on_batch_residuals():
    torch = pytest.importorskip("torch")
    from negrec.rqvae.model import RQVAE

    model = RQVAE(8, [8], 4, 2, 6)
    usage = torch.ones(2, 6, dtype=torch.long)
    usage[0, [1, 4]] = 0
    residuals = [torch.randn(20, 4), torch.randn(20, 4)]
    before = model.codebooks.detach().clone()
    n = model.restart_dead_codes(usage, residuals, torch.Generator().manual_seed(0))
    assert n == 2
    changed = (model.codebooks.detach() != before).any(-1)
    assert changed[0].tolist() == [False, True, False, False, True, False] and not changed[1].any()
    d = torch.cdist(model.codebooks.detach()[0, [1, 4]], residuals[0]).min(1).values
    assert (d < 1e-2).all()  # restarted next to real residuals


def test_kmeans_init_and_dead_code_restarts_prevent_collapse():
    x, _ = _clustered(n=800, k=40)
    x = 5 * x + 3  # off-centre, large-norm inputs: random codebooks collapse onto a few codes here
    base = {**SMALL, "codebook_size": 32, "epochs": 16}
    fixed = tokenize_items(TokenizeConfig(method="rqvae", **base), np.arange(len(x)), x).metrics
    ablated = tokenize_items(TokenizeConfig(method="rqvae", **{**base, "kmeans_init": False, "dead_code_steps": 0}),
                             np.arange(len(x)), x).metrics
    assert fixed["train"]["restarted_codes"] > 0
    for lvl in range(3):
        assert fixed["levels"][lvl]["used"] >= 24
        assert fixed["levels"][lvl]["perplexity"] > 2 * ablated["levels"][lvl]["perplexity"]
    assert fixed["unique_fraction"] > 2 * ablated["unique_fraction"]


def test_config_rejects_unknown_method():
    from negrec.config import ConfigError, section_config

    with pytest.raises(ConfigError, match="tokenize.method"):
        section_config(TokenizeConfig, {"tokenize": {"method": "pq"}}, "tokenize")
    with pytest.raises(ConfigError, match="unknown field"):
        section_config(TokenizeConfig, {"_source": "x.yaml", "tokenize": {"codebook": 3}}, "tokenize")


def test_codebook_size_0_is_sized_to_the_catalogue(capsys):
    """120 items: 256 codes a level (the old default) would leave most codes unused and every item
    colliding; the catalogue's own size (16 n)^(1/3) = 13 uses most of them."""
    from negrec.tokenizer.config import auto_codebook_size

    assert [auto_codebook_size(n, 3) for n in (1, 120, 1682, 10 ** 6, 10 ** 9)] == [4, 13, 30, 252, 256]
    x, _ = _clustered(n=120)
    res = tokenize_items(TokenizeConfig(method="rqkmeans", **{**SMALL, "codebook_size": 0}), np.arange(120), x)
    assert res.tokenizer.codebook_sizes[:3] == [13, 13, 13] and "13 codes per level" in capsys.readouterr().out
    assert res.metrics["levels"][0]["used"] >= 10
    with pytest.raises(Exception, match="codebook_size"):
        TokenizeConfig(codebook_size=1)
