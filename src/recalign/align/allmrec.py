"""A-LLMRec stage 1 (Kim et al., KDD 2024): align a frozen CF model's item embeddings with item text embeddings.

Two autoencoders to a shared 128-d latent (shared/reference/allmrec.md §2): the item encoder enc_I(E) =
sigmoid(W1 E + b1) over the CF model's item embeddings, its decoder W2 e + b2; the text encoder enc_T(Q) =
sigmoid(W3 Q + b3) over sentence embeddings of the item texts, its decoder W4 q + b4. Per (user, positive, negative)
the losses are

- matching: MSE(enc_I(E+), enc_T(Q+)) + MSE(enc_I(E-), enc_T(Q-)),
- item reconstruction: MSE(dec_I(enc_I(E)), E) for the positive and the negative,
- text reconstruction: MSE(dec_T(enc_T(Q)), sg(Q)) for both,
- recommendation: BCE-with-logits of s = x_u . dec_I(enc_I(E)) against 1 (positive) and 0 (negative), x_u the
  frozen CF model's user vector. The official code divides the dot product by the dimension (a mean; ``rec_score
  "mean"``, the default); the paper uses the plain dot product (``"dot"``).

L = matching + item_weight * item_rec + text_weight * text_rec + rec_weight * rec (the code's 0.5 and 0.2). The CF
model stays frozen *and in eval mode* (the official code leaves its dropout on; ``cf_dropout=True`` reproduces
that). The text encoder is frozen by default on CPU (cached embeddings); ``finetune_text`` trains the
sentence-transformers model with the rest, as the paper does.

The joint item embedding is enc_I(E_i) for items the CF model saw in training, and enc_T(Q_i) for the others (the
paper's cold-item path, which the official code lacks).

Training rows (``train_rows``, stages 1 and 2): ``all`` (default) learns from every training row, the paper's
"A-LLMRec_all" variant (its Table 10: slower, slightly better); ``last`` takes one row per user, the one whose target
is the user's last training item, as the paper's A-LLMRec and the official code do.

Text input (``text_input``): ``unit`` (default) embeds ``title. description[:1000]`` and L2-normalises it;
``reference`` embeds ``title, description`` as the official code does and keeps the raw mean-pooled vector (the
encoder's Normalize layer left out), so the text-reconstruction term has the official scale (with unit vectors it
is about 1/dim of it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..cf.base import CFModel

WEIGHTS = "alignment.safetensors"
CONFIG = "alignment.json"
REC_SCORES = ("mean", "dot")
TRAIN_ROWS = ("all", "last")
TEXT_INPUTS = ("unit", "reference")


@dataclass
class Stage1Config:
    latent: int = 128
    item_weight: float = 0.5  # alpha of the paper / code
    text_weight: float = 0.2  # beta: the code's value for every dataset (the paper: 0.5 on Movies and Games)
    rec_weight: float = 1.0
    rec_score: str = "mean"  # "mean": the official code's x.e / d; "dot": the paper's x.e
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    cf_dropout: bool = False  # True: the official code's CF model in train mode (dropout on x_u)
    finetune_text: bool = False  # train the sentence encoder too (slow on CPU)
    seed: int = 0
    train_rows: str = "all"  # "all": every training row (A-LLMRec_all); "last": one per user (the reference)
    text_input: str = "unit"  # "unit": L2-normalised title. description; "reference": raw title, description

    def __post_init__(self) -> None:
        for name, allowed in (("rec_score", REC_SCORES), ("train_rows", TRAIN_ROWS), ("text_input", TEXT_INPUTS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")


class AlignmentNetwork(nn.Module):
    def __init__(self, cf_dim: int, text_dim: int, config: Stage1Config):
        super().__init__()
        self.config = config
        self.item_encoder = nn.Linear(cf_dim, config.latent)
        self.item_decoder = nn.Linear(config.latent, cf_dim)
        self.text_encoder = nn.Linear(text_dim, config.latent)
        self.text_decoder = nn.Linear(config.latent, text_dim)

    def encode_items(self, cf_embeddings: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.item_encoder(cf_embeddings))

    def encode_texts(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.text_encoder(text_embeddings))

    def losses(self, user: torch.Tensor, item_pos: torch.Tensor, item_neg: torch.Tensor, text_pos: torch.Tensor,
               text_neg: torch.Tensor) -> dict[str, torch.Tensor]:
        """The four losses of a batch (user vectors, CF item embeddings and text embeddings of the positives and
        negatives) and their weighted total."""
        config = self.config
        latent_i = [self.encode_items(item_pos), self.encode_items(item_neg)]
        latent_t = [self.encode_texts(text_pos), self.encode_texts(text_neg)]
        decoded_i = [self.item_decoder(z) for z in latent_i]
        decoded_t = [self.text_decoder(z) for z in latent_t]
        matching = sum(F.mse_loss(zi, zt) for zi, zt in zip(latent_i, latent_t))
        item_rec = sum(F.mse_loss(d, e) for d, e in zip(decoded_i, (item_pos, item_neg)))
        text_rec = sum(F.mse_loss(d, q.detach()) for d, q in zip(decoded_t, (text_pos, text_neg)))
        scale = user.shape[-1] if config.rec_score == "mean" else 1
        pos, neg = ((user * d).sum(-1) / scale for d in decoded_i)
        rec = (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
               + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg)))
        total = matching + config.item_weight * item_rec + config.text_weight * text_rec + config.rec_weight * rec
        return {"matching": matching, "item_rec": item_rec, "text_rec": text_rec, "rec": rec, "total": total}

    def joint_embeddings(self, cf_embeddings: torch.Tensor, text_embeddings: torch.Tensor,
                         warm: torch.Tensor) -> torch.Tensor:
        """(N, latent) joint item embeddings: enc_I for warm items, enc_T for the others (cold start)."""
        with torch.no_grad():
            return torch.where(warm.unsqueeze(-1), self.encode_items(cf_embeddings),
                               self.encode_texts(text_embeddings))

    def save_pretrained(self, directory: str | Path, warm: np.ndarray, log: list[dict]) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, directory / WEIGHTS)
        record = {"config": asdict(self.config), "cf_dim": self.item_encoder.in_features,
                  "text_dim": self.text_encoder.in_features, "warm_items": int(warm.sum()), "log": log}
        (directory / CONFIG).write_text(json.dumps(record, indent=2) + "\n")
        np.save(directory / "warm_items.npy", warm)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> tuple[AlignmentNetwork, np.ndarray]:
        directory = Path(directory)
        if not (directory / CONFIG).exists():
            raise FileNotFoundError(f"{directory} holds no A-LLMRec stage-1 model ({CONFIG}); run `recalign "
                                    "allmrec stage1` first")
        record = json.loads((directory / CONFIG).read_text())
        network = cls(record["cf_dim"], record["text_dim"], Stage1Config(**record["config"]))
        network.load_state_dict(load_file(directory / WEIGHTS))
        return network.eval(), np.load(directory / "warm_items.npy")


def interaction_counts(dataset) -> np.ndarray:
    """Per item, how many users interacted with it in the training rows (histories and targets). Rows of one user
    overlap (each carries the window before its target), so pairs are counted once, not once per row."""
    frame = dataset.split("train")
    pairs = {(user, int(item)) for user, history, target in zip(frame["user"], frame["history"], frame["target"])
             for item in (*history, target)}
    counts = np.zeros(dataset.n_items, dtype=np.int64)
    np.add.at(counts, np.array([item for _, item in pairs], dtype=np.int64), 1)
    return counts


def training_frame(dataset, rows: str = "all"):
    """The training rows the two stages learn from: ``all``, or ``last`` (per user, the row of its last training
    target: latest timestamp, then longest history, then file order)."""
    if rows not in TRAIN_ROWS:
        raise ValueError(f"train_rows must be one of {', '.join(TRAIN_ROWS)}, not {rows!r}")
    frame = dataset.split("train")
    if rows == "all":
        return frame
    ordered = frame.assign(_length=frame["history"].map(len), _row=np.arange(len(frame)))
    last = ordered.sort_values(["timestamp", "_length", "_row"], kind="stable").groupby("user", sort=False).tail(1)
    return frame.loc[last.sort_values("_row").index]


def training_triples(dataset, seed: int, rows: str = "all") -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """(histories, positives, negatives) of the training rows (``training_frame``): the row's target is the
    positive, the negative a uniform item outside the history and the target (fresh per call: per epoch)."""
    frame = training_frame(dataset, rows)
    rng = np.random.default_rng(seed)
    histories = [np.asarray(h, dtype=np.int64) for h in frame["history"]]
    positives = frame["target"].to_numpy().astype(np.int64)
    negatives = rng.integers(0, dataset.n_items, len(positives))
    for row, (history, positive) in enumerate(zip(histories, positives)):
        seen = set(history.tolist()) | {int(positive)}
        while int(negatives[row]) in seen:
            negatives[row] = rng.integers(0, dataset.n_items)
    return histories, positives, negatives


def train_stage1(cf_model: CFModel, dataset, text_embeddings: np.ndarray, config: Stage1Config, out: str | Path,
                 text_encoder=None, texts: list[str] | None = None,
                 progress: bool = True) -> tuple[AlignmentNetwork, list[dict]]:
    """Trains the alignment network on the dataset's training rows; the CF model is frozen. A checkpoint is written
    once per epoch (the official code writes one every few steps), and a run resumes from the last one. Returns the
    network and the mean losses per epoch.

    With ``config.finetune_text``, ``text_encoder`` (a sentence-transformers model) encodes ``texts`` in every
    batch and trains too; otherwise ``text_embeddings`` are used as they are."""
    out = Path(out)
    if config.finetune_text and (text_encoder is None or texts is None):
        raise ValueError("finetune_text needs the sentence encoder and the item texts")
    torch.manual_seed(config.seed)
    cf_model.requires_grad_(False).train(config.cf_dropout)
    with torch.no_grad():
        cf_items = cf_model.item_embeddings().float()
    text_table = torch.from_numpy(np.asarray(text_embeddings, dtype=np.float32))
    network = AlignmentNetwork(cf_items.shape[1], text_table.shape[1], config)
    parameters = list(network.parameters()) + (list(text_encoder.parameters()) if config.finetune_text else [])
    optimiser = torch.optim.Adam(parameters, lr=config.lr, betas=(0.9, 0.98), eps=1e-8)
    state_path = out / "stage1_checkpoint.pt"
    # what the checkpoint was trained from: a resumed run must be the same run
    signature = {"config": asdict(config), "cf": float(cf_items.double().sum()), "text_shape": list(text_table.shape),
                 "text": float(text_table.double().sum()), "n_items": dataset.n_items}
    start, log = 0, []
    if state_path.exists():
        try:
            state = torch.load(state_path, weights_only=False)
        except Exception as exc:  # truncated or overwritten: torch.load raises many kinds (EOFError, RuntimeError)
            raise ValueError(f"cannot resume from {state_path}: the file is unreadable ({exc}); delete it to "
                             "start afresh") from exc
        if state.get("signature") != signature:
            raise ValueError(f"{state_path} was trained with other settings, CF model or texts; use another "
                             "output folder (or delete the checkpoint)")
        network.load_state_dict(state["network"])
        optimiser.load_state_dict(state["optimiser"])
        if config.finetune_text:
            text_encoder.load_state_dict(state["text_encoder"])
        start, log = state["epoch"], state["log"]
    for epoch in range(start, config.epochs):
        histories, positives, negatives = training_triples(dataset, config.seed + epoch, config.train_rows)
        order = np.random.default_rng(config.seed + epoch).permutation(len(positives))
        sums, batches = {}, 0
        for batch in tqdm(np.array_split(order, max(1, len(order) // config.batch_size)),
                          desc=f"stage 1, epoch {epoch + 1}", disable=not progress):
            with torch.no_grad():
                user = cf_model.user_vectors(cf_model.pad([histories[i] for i in batch])).float()
            pos, neg = torch.from_numpy(positives[batch]), torch.from_numpy(negatives[batch])
            if config.finetune_text:
                q_pos, q_neg = (_encode(text_encoder, [texts[int(i)] for i in items], config.text_input == "unit")
                                for items in (pos, neg))
            else:
                q_pos, q_neg = text_table[pos], text_table[neg]
            losses = network.losses(user, cf_items[pos], cf_items[neg], q_pos, q_neg)
            optimiser.zero_grad(set_to_none=True)
            losses["total"].backward()
            optimiser.step()
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + value.item()  # float() of a graph tensor warns
            batches += 1
        log.append({"epoch": epoch + 1, **{name: value / batches for name, value in sums.items()}})
        out.mkdir(parents=True, exist_ok=True)
        state = {"network": network.state_dict(), "optimiser": optimiser.state_dict(), "epoch": epoch + 1,
                 "log": log, "signature": signature}
        if config.finetune_text:
            state["text_encoder"] = text_encoder.state_dict()
        torch.save(state, state_path.with_suffix(".tmp"))
        state_path.with_suffix(".tmp").replace(state_path)
    cf_model.eval()
    return network.eval(), log


def _encode(text_encoder, texts: list[str], normalise: bool) -> torch.Tensor:
    vectors = text_encoder(text_encoder.tokenize(texts))["sentence_embedding"]
    return F.normalize(vectors, dim=-1) if normalise else vectors


def run_stage1(cf_model: CFModel, dataset, config: Stage1Config, out: str | Path, embedder: str,
               progress: bool = True) -> tuple[AlignmentNetwork, list[dict], np.ndarray]:
    """Stage 1 end to end: item texts embedded (cached), the network trained, and the joint embedding of every
    item (text path for items without a training interaction) saved with it in ``out`` (``joint.npy``)."""
    from ..index.text import item_texts, load_encoder, text_embeddings

    out = Path(out)
    normalise = config.text_input == "unit"
    texts = item_texts(dataset) if normalise else item_texts(dataset, separator=", ", max_description=None)
    embeddings = text_embeddings(texts, embedder, progress=progress, normalise=normalise)
    encoder = None
    if config.finetune_text:
        encoder = load_encoder(embedder, "cpu", normalise)  # beside the alignment network
        encoder.train()  # its dropout on while it trains, as the paper's SBERT
    network, log = train_stage1(cf_model, dataset, embeddings, config, out, encoder, texts, progress)
    if config.finetune_text:  # the cold path reads the fine-tuned encoder
        encoder.save(str(out / "text_encoder"))
        embeddings = encoder.encode(texts, normalize_embeddings=normalise, convert_to_numpy=True).astype(np.float32)
    warm = interaction_counts(dataset) > 0
    joint = network.joint_embeddings(cf_model.item_embeddings().float(), torch.from_numpy(embeddings),
                                     torch.from_numpy(warm)).numpy()
    network.save_pretrained(out, warm, log)
    np.save(out / "joint.npy", joint)
    return network, log, joint
