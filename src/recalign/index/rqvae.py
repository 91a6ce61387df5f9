"""Residual quantisers that turn item embeddings into codes, one code per level: RQ-VAE and RQ-KMeans.

RQ-VAE (TIGER; MiniOneRec §1.2): an MLP encoder to a small latent, ``levels`` codebooks applied to successive
residuals (code = nearest codeword, residual -= codeword), an MLP decoder from the sum of the codewords. Loss:
reconstruction MSE + the mean over levels of ||sg(r) - e||² + beta ||r - sg(e)||², with a straight-through
estimator; the next level's residual subtracts the detached codeword, so every level's commitment term reaches
the encoder (TIGER's form). Each codebook starts as k-means over its level's residuals in the first batch. Codes
left unused for ``dead_code_every`` steps are re-seeded with residuals drawn from the batch (the reference has no
such step, and uses 48 of 256 first-level codes on Industrial). The weights with the lowest collision rate,
measured every ``check_every`` epochs over all items, are kept, as in the reference.

RQ-KMeans: k-means (scikit-learn) on the embeddings, then on the residuals, level by level; no training loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

METHODS = ("rqvae", "rqkmeans")


@dataclass
class QuantizerConfig:
    method: str = "rqvae"  # "rqvae" or "rqkmeans"
    levels: int = 3
    codebook_size: int = 256
    latent_dim: int = 32  # RQ-VAE latent size (the reference's e_dim)
    hidden: tuple[int, ...] = (512, 256, 128, 64)  # encoder widths; the decoder mirrors them
    beta: float = 0.25  # commitment weight
    epochs: int = 2000  # RQ-VAE passes over the items
    batch_size: int = 4096
    lr: float = 1e-3
    kmeans_init: bool = True  # k-means over the first batch's residuals, level by level
    dead_code_every: int = 100  # steps between re-seeding codes unused since the last check (0: never)
    check_every: int = 100  # epochs between collision checks over all items; the best weights are kept
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.levels < 1 or self.codebook_size < 2:
            raise ValueError("a quantiser needs at least one level and two codes per level")
        self.hidden = tuple(self.hidden)


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


def kmeans(points: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(centroids (k, dim), labels); with fewer distinct points than k, the spare centroids repeat points."""
    from sklearn.cluster import KMeans

    distinct = len(np.unique(points, axis=0))
    fit = KMeans(n_clusters=min(k, distinct), n_init=1, max_iter=100, random_state=seed).fit(points)
    centroids = fit.cluster_centers_
    if len(centroids) < k:
        extra = np.random.default_rng(seed).choice(len(points), k - len(centroids), replace=True)
        centroids = np.concatenate([centroids, points[extra]])
    return centroids.astype(np.float32), fit.labels_


def nearest(residual: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    return torch.cdist(residual, codebook).argmin(dim=-1)


class ResidualQuantizer(nn.Module):
    def __init__(self, levels: int, codebook_size: int, dim: int, beta: float):
        super().__init__()
        self.beta = beta
        self.codebooks = nn.Parameter(torch.zeros(levels, codebook_size, dim))
        self.register_buffer("initialised", torch.tensor(False))

    def init_from(self, latent: torch.Tensor, seed: int) -> None:
        residual = latent.detach().float().numpy()
        for level in range(self.codebooks.shape[0]):
            centroids, labels = kmeans(residual, self.codebooks.shape[1], seed + level)
            self.codebooks.data[level] = torch.from_numpy(centroids)
            residual = residual - centroids[labels]
        self.initialised.fill_(True)

    def forward(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(quantised latent with straight-through gradient, codes (B, levels), RQ loss, last-level residual)."""
        residual, quantised, codes, losses = latent, torch.zeros_like(latent), [], []
        for codebook in self.codebooks:
            code = nearest(residual.detach(), codebook)
            word = codebook[code]
            losses.append(F.mse_loss(word, residual.detach()) + self.beta * F.mse_loss(residual, word.detach()))
            quantised = quantised + word
            codes.append(code)
            last = residual
            residual = residual - word.detach()
        straight_through = latent + (quantised - latent).detach()
        return straight_through, torch.stack(codes, dim=1), torch.stack(losses).mean(), last


class RQVAE(nn.Module):
    def __init__(self, in_dim: int, config: QuantizerConfig):
        super().__init__()
        sizes = [in_dim, *config.hidden, config.latent_dim]
        self.encoder = mlp(sizes)
        self.decoder = mlp(sizes[::-1])
        self.quantizer = ResidualQuantizer(config.levels, config.codebook_size, config.latent_dim, config.beta)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction loss, RQ loss, codes)."""
        latent = self.encoder(x)
        quantised, codes, rq_loss, _ = self.quantizer(latent)
        return F.mse_loss(self.decoder(quantised), x), rq_loss, codes

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes (N, levels), last-level residuals (N, latent_dim))."""
        _, codes, _, last = self.quantizer(self.encoder(x))
        return codes, last


def collision_rate(codes: torch.Tensor) -> float:
    return 1.0 - len(torch.unique(codes, dim=0)) / len(codes)


def train_rqvae(embeddings: np.ndarray, config: QuantizerConfig, progress=None) -> tuple[RQVAE, list[dict]]:
    """Trains an RQ-VAE on the item embeddings; returns the lowest-collision weights and a log per check."""
    import copy

    torch.manual_seed(config.seed)
    x = torch.from_numpy(np.asarray(embeddings, dtype=np.float32))
    model = RQVAE(x.shape[1], config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed)
    levels, k = config.levels, config.codebook_size
    used = torch.zeros(levels, k, dtype=torch.bool)
    best, best_rate, log, step = None, float("inf"), [], 0
    for epoch in range(1, config.epochs + 1):
        for batch in torch.randperm(len(x), generator=generator).split(config.batch_size):
            xb = x[batch]
            if not bool(model.quantizer.initialised) and config.kmeans_init:
                with torch.no_grad():
                    model.quantizer.init_from(model.encoder(xb), config.seed)
            # before the step, not after it: a collision check never sees codewords that were just re-seeded
            if config.dead_code_every and step and step % config.dead_code_every == 0:
                _reseed_dead_codes(model, xb, used, generator)
                used.zero_()
            recon, rq_loss, codes = model(xb)
            loss = recon + rq_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            used[torch.arange(levels).unsqueeze(1), codes.T] = True
        if epoch % config.check_every == 0 or epoch == config.epochs:
            model.eval()
            with torch.no_grad():
                recon_all, rq_all, codes_all = model(x)
            model.train()
            rate = collision_rate(codes_all)
            log.append({"epoch": epoch, "reconstruction": float(recon_all), "rq_loss": float(rq_all),
                        "collision_rate": rate,
                        "codes_used": [len(torch.unique(codes_all[:, lv])) for lv in range(levels)]})
            if rate < best_rate:
                best, best_rate = copy.deepcopy(model.state_dict()), rate
            if progress is not None:
                progress(log[-1])
    model.load_state_dict(best)
    return model.eval(), log


@torch.no_grad()
def _reseed_dead_codes(model: RQVAE, xb: torch.Tensor, used: torch.Tensor, generator: torch.Generator) -> None:
    """Unused codewords jump to residuals of the current batch, so every code keeps a chance to be chosen."""
    residual = model.encoder(xb)
    for level, codebook in enumerate(model.quantizer.codebooks.data):
        dead = torch.nonzero(~used[level]).squeeze(-1)
        if len(dead):
            pick = torch.randint(len(residual), (len(dead),), generator=generator)
            codebook[dead] = residual[pick]
        residual = residual - codebook[nearest(residual, codebook)]


def rq_kmeans(embeddings: np.ndarray, config: QuantizerConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes (N, levels), last-level residuals, last-level codebook) by residual k-means."""
    residual = np.asarray(embeddings, dtype=np.float32)
    codes = []
    for level in range(config.levels):
        centroids, labels = kmeans(residual, config.codebook_size, config.seed + level)
        codes.append(labels)
        last, last_codebook = residual, centroids
        residual = residual - centroids[labels]
    return np.stack(codes, axis=1), last, last_codebook
