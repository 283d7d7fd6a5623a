"""RQ-VAE as in TIGER: MLP encoder -> L residual codebooks -> MLP decoder.

Codebooks start from faiss k-means on a first batch of encoded items (level by level, on the
residuals), gradients pass the quantiser straight-through, and codes unused for a while are
restarted on random residuals of the current batch: the two standard cures for codebook
collapse. Training logs to TensorBoard and writes resumable checkpoints atomically.
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from negrec.io import atomic_path
from negrec.rqvae.numpy_quantizer import NumpyQuantizer
from negrec.rqvae.rqkmeans import faiss_kmeans
from negrec.runtime import resolve_device

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": lambda: nn.GELU(approximate="tanh"), "silu": nn.SiLU}


def mlp(dims: list[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def _linear_weights(seq: nn.Sequential) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(m.weight.detach().cpu().numpy().astype(np.float32), m.bias.detach().cpu().numpy().astype(np.float32))
            for m in seq if isinstance(m, nn.Linear)]


class RQVAE(nn.Module):
    def __init__(self, input_dim: int, hidden_dims: list[int], latent_dim: int, levels: int, codebook_size: int,
                 beta: float = 0.25, activation: str = "relu"):
        super().__init__()
        self.activation, self.beta = activation, beta
        self.encoder = mlp([input_dim, *hidden_dims, latent_dim], activation)
        self.decoder = mlp([latent_dim, *reversed(hidden_dims), input_dim], activation)
        self.codebooks = nn.Parameter(torch.randn(levels, codebook_size, latent_dim) * 0.1)

    def quantize(self, z: torch.Tensor):
        """Greedy residual quantisation; returns (z_q, codes, codebook loss, commitment loss, residuals)."""
        r, z_q = z, torch.zeros_like(z)
        codes, residuals = [], []
        cb_loss = commit = z.new_zeros(())
        for cb in self.codebooks:
            d = (r.detach() ** 2).sum(1, keepdim=True) - 2 * r.detach() @ cb.T + (cb ** 2).sum(1)[None]
            idx = d.argmin(1)
            e = cb[idx]
            # squared error per item (summed over dims), like the reconstruction term
            cb_loss = cb_loss + ((r.detach() - e) ** 2).sum(1).mean()
            commit = commit + ((r - e.detach()) ** 2).sum(1).mean()
            residuals.append(r.detach())
            codes.append(idx)
            z_q = z_q + e
            r = r - e.detach()
        return z_q, torch.stack(codes, 1), cb_loss, commit, residuals

    def forward(self, x: torch.Tensor):
        z = self.encoder(x)
        z_q, codes, cb_loss, commit, residuals = self.quantize(z)
        x_hat = self.decoder(z + (z_q - z).detach())  # straight-through estimator
        recon = ((x_hat - x) ** 2).sum(1).mean()
        return {"loss": recon + cb_loss + self.beta * commit, "recon": recon, "codebook": cb_loss,
                "commit": commit, "codes": codes, "residuals": residuals}

    @torch.no_grad()
    def init_codebooks(self, x: torch.Tensor, niter: int, seed: int) -> None:
        """k-means (faiss) of each level on the residuals of a first batch of encoded items."""
        r = self.encoder(x).cpu().numpy().astype(np.float32)
        for lvl in range(self.codebooks.shape[0]):
            cb = faiss_kmeans(r, self.codebooks.shape[1], niter, seed + lvl)
            self.codebooks.data[lvl] = torch.from_numpy(cb).to(self.codebooks.device)
            d = (cb ** 2).sum(1)[None] - 2 * r @ cb.T
            r = r - cb[d.argmin(1)]

    @torch.no_grad()
    def restart_dead_codes(self, usage: torch.Tensor, residuals: list[torch.Tensor], generator: torch.Generator) -> int:
        """Move codes with zero usage onto random residuals of the latest batch at their level."""
        restarted = 0
        for lvl, res in enumerate(residuals):
            dead = torch.nonzero(usage[lvl] == 0).flatten()
            if len(dead) == 0 or len(res) == 0:
                continue
            pick = torch.randint(0, len(res), (len(dead),), generator=generator).to(res.device)
            noise = 1e-3 * res.std() * torch.randn(len(dead), res.shape[1], generator=generator).to(res.device)
            self.codebooks.data[lvl, dead] = res[pick] + noise
            restarted += len(dead)
        return restarted

    def to_numpy(self) -> NumpyQuantizer:
        return NumpyQuantizer([c.detach().cpu().numpy().astype(np.float32) for c in self.codebooks],
                              _linear_weights(self.encoder), _linear_weights(self.decoder), self.activation, "rqvae")


def _perplexity(counts: torch.Tensor) -> float:
    p = counts.float() / counts.sum().clamp(min=1)
    return float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))


def warmup_autoencoder(model: RQVAE, data: torch.Tensor, cfg, gen: torch.Generator) -> float | None:
    """Train encoder + decoder without quantisation for `cfg.warmup_steps` steps.

    A fresh encoder's latents are tiny and move fast once training starts, so codebooks fitted
    to them go stale within a few steps and most codes die (seen on ML-100K: level-0 usage fell
    to 2%). Fitting the k-means init to a warmed-up latent space avoids that.
    """
    if cfg.warmup_steps <= 0:
        return None
    opt = torch.optim.AdamW([*model.encoder.parameters(), *model.decoder.parameters()], lr=cfg.lr, weight_decay=cfg.weight_decay)
    recon = torch.zeros(())
    for _ in range(cfg.warmup_steps):
        batch = data[torch.randint(0, len(data), (min(cfg.batch_size, len(data)),), generator=gen).to(data.device)]
        recon = ((model.decoder(model.encoder(batch)) - batch) ** 2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        recon.backward()
        opt.step()
    return round(float(recon.detach()), 6)


def _start(model: RQVAE, opt, gen: torch.Generator, data: torch.Tensor, cfg, checkpoint: Path | None,
           resume_key: str) -> tuple[int, dict]:
    """(first epoch, history): resumed from `checkpoint` when it records `resume_key`, else a fresh
    start (autoencoder warm-up, then the k-means init of the codebooks)."""
    start_epoch, history = 0, {"epochs": [], "restarted_codes": 0}
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location=data.device, weights_only=False)
        if state.get("key") == resume_key:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            gen.set_state(state["generator"])
            start_epoch, history = state["epoch"] + 1, state["history"]
            print(f"[tokenize] resuming RQ-VAE from {checkpoint} at epoch {start_epoch}")
    if start_epoch == 0:
        history["warmup_recon"] = warmup_autoencoder(model, data, cfg, gen)
        if cfg.kmeans_init:
            n = len(data)
            first = torch.randperm(n, generator=gen)[: min(n, cfg.kmeans_init_items)].to(data.device)
            model.init_codebooks(data[first], cfg.kmeans_iters, cfg.seed)
    return start_epoch, history


def _save_checkpoint(checkpoint: Path | None, model: RQVAE, opt, gen: torch.Generator, epoch: int, resume_key: str,
                     history: dict) -> None:
    if checkpoint is None:
        return
    with atomic_path(checkpoint) as tmp:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "key": resume_key,
                    "generator": gen.get_state(), "history": history}, tmp)


def _train_epoch(model: RQVAE, opt, gen: torch.Generator, data: torch.Tensor, cfg, usage: torch.Tensor, step: int,
                 total_steps: int, max_steps: int | None, history: dict) -> tuple[dict, int]:
    """One epoch over shuffled batches; returns (the epoch's record, the global step after it).
    `usage` counts code use since the last dead-code restart (across epochs)."""
    n = len(data)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    model.train()
    perm = torch.randperm(n, generator=gen).to(data.device)
    sums = {k: torch.zeros((), device=data.device) for k in ("loss", "recon", "codebook", "commit")}
    epoch_usage = torch.zeros_like(usage)
    restarted_this_epoch = 0
    for b in range(steps_per_epoch):
        out = model(data[perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]])
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        for k in sums:
            sums[k] += out[k].detach() / steps_per_epoch  # no host sync per step
        for lvl in range(cfg.levels):
            counts = torch.bincount(out["codes"][:, lvl], minlength=cfg.codebook_size)
            epoch_usage[lvl] += counts
            usage[lvl] += counts
        step += 1
        # restart codes unused over the last window (never in the last window: they need training after)
        if cfg.dead_code_steps and step % cfg.dead_code_steps == 0 and step + cfg.dead_code_steps <= total_steps:
            restarted = model.restart_dead_codes(usage, out["residuals"], gen)
            history["restarted_codes"] += restarted
            restarted_this_epoch += restarted
            usage.zero_()
        if max_steps and step >= max_steps:
            break
    used = (epoch_usage > 0).float().mean(1)
    rec = {**{k: round(float(v), 6) for k, v in sums.items()}, "restarted": restarted_this_epoch,
           "usage": [round(float(u), 4) for u in used], "perplexity": [round(_perplexity(c), 2) for c in epoch_usage]}
    return rec, step


def _log_epoch(writer, rec: dict, levels: int) -> None:
    epoch = rec["epoch"]
    for k in ("loss", "recon", "codebook", "commit"):
        writer.add_scalar(f"rqvae/{k}", rec[k], epoch)
    for lvl in range(levels):
        writer.add_scalar(f"rqvae/usage_level{lvl}", rec["usage"][lvl], epoch)
        writer.add_scalar(f"rqvae/perplexity_level{lvl}", rec["perplexity"][lvl], epoch)


@contextlib.contextmanager
def deterministic_kernels(device: torch.device):
    """Deterministic torch kernels on CPU for the duration. The codebook lookup's gradient
    (`cb[idx]` backward, an accumulating scatter) sums in thread order once a batch is large
    enough to be split over threads: with 2 threads and batches of 1,024 two runs of one seed gave
    other codes. Below that size the deterministic kernel gives the same bits as before."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def train_rqvae(x: np.ndarray, cfg, checkpoint: Path | None = None, tb_dir: Path | None = None,
                resume_key: str = "", max_steps: int | None = None) -> tuple[NumpyQuantizer, dict]:
    """Train an RQ-VAE on item vectors `x` (n, d); returns its numpy twin and the training history.

    `cfg`: the tokenize section (`negrec.tokenizer.TokenizeConfig`).
    `checkpoint`: resumable state written atomically every `cfg.save_every` epochs and at the end;
    it is reused only when it records the same `resume_key` (the caller's config hash).
    `max_steps`: stop early (benchmarks). One seed gives one result on a CPU (`deterministic_kernels`).
    """
    device = resolve_device(cfg.device)
    with deterministic_kernels(device):
        return _train_rqvae(x, cfg, device, checkpoint, tb_dir, resume_key, max_steps)


def _train_rqvae(x: np.ndarray, cfg, device, checkpoint: Path | None, tb_dir: Path | None, resume_key: str,
                 max_steps: int | None) -> tuple[NumpyQuantizer, dict]:
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    data = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
    n = len(data)
    model = RQVAE(data.shape[1], list(cfg.hidden_dims), cfg.latent_dim, cfg.levels, cfg.codebook_size,
                  cfg.beta, cfg.activation).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_epoch, history = _start(model, opt, gen, data, cfg, checkpoint, resume_key)
    writer = None
    if tb_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(tb_dir))
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    usage = torch.zeros(cfg.levels, cfg.codebook_size, dtype=torch.long, device=device)
    step0 = step = start_epoch * steps_per_epoch  # global step (max_steps counts these)
    t0, epoch = time.time(), start_epoch - 1
    bar = tqdm(range(start_epoch, cfg.epochs), desc="rq-vae epochs", initial=start_epoch, total=cfg.epochs)
    for epoch in bar:
        rec, step = _train_epoch(model, opt, gen, data, cfg, usage, step, cfg.epochs * steps_per_epoch, max_steps, history)
        rec = {"epoch": epoch, **rec}
        history["epochs"].append(rec)
        bar.set_postfix(loss=f"{rec['loss']:.4f}", recon=f"{rec['recon']:.4f}", use0=f"{rec['usage'][0]:.2f}")
        if writer:
            _log_epoch(writer, rec, cfg.levels)
        if cfg.save_every and (epoch + 1) % cfg.save_every == 0:
            _save_checkpoint(checkpoint, model, opt, gen, epoch, resume_key, history)
        if max_steps and step >= max_steps:
            break
    history["train_seconds"] = round(time.time() - t0, 3)
    history["train_steps"] = step - step0  # in this call (after a resume: since the resume)
    history["global_step"] = step
    history["train_items_per_s"] = round((step - step0) * min(cfg.batch_size, n) / max(history["train_seconds"], 1e-9), 1)
    _save_checkpoint(checkpoint, model, opt, gen, epoch, resume_key, history)
    if writer:
        writer.close()
    return model.eval().to_numpy(), history
