"""``recalign allmrec``: A-LLMRec's two training stages and its candidate-set evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .common import ThreadsOption, console, fail, load_dataset_or_fail, quiet_transformers, set_threads

allmrec_app = typer.Typer(help="A-LLMRec: align a frozen CF model with a frozen LLM (stage 1, stage 2, eval).",
                          no_args_is_help=True)

DataOption = Annotated[Path, typer.Option(help="A prepared dataset folder.")]
CFOption = Annotated[Path, typer.Option(help="A CF model folder (`recalign cf train`); it stays frozen.")]
RECORD = "allmrec.json"


def load_cf(cf: Path, dataset):
    from ..cf import from_pretrained
    from ..data import CatalogueMismatch

    try:
        return from_pretrained(cf, dataset)
    except (ValueError, FileNotFoundError, CatalogueMismatch) as exc:
        fail(str(exc))


@allmrec_app.command("stage1")
def stage1(
    data: DataOption,
    cf: CFOption,
    out: Annotated[Path, typer.Option(help="Folder for the alignment network and the joint item embeddings.")],
    embedder: Annotated[str, typer.Option(help="sentence-transformers model of the item texts.")] =
        "all-MiniLM-L6-v2",
    epochs: Annotated[int, typer.Option(help="Passes over the training rows.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Rows per step.")] = 32,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-4,
    item_weight: Annotated[float, typer.Option(help="Weight of the item reconstruction loss.")] = 0.5,
    text_weight: Annotated[float, typer.Option(help="Weight of the text reconstruction loss.")] = 0.2,
    rec_weight: Annotated[float, typer.Option(help="Weight of the recommendation loss.")] = 1.0,
    rec_score: Annotated[str, typer.Option(help="'mean' (the official x.e / d) or 'dot' (the paper's x.e).")] =
        "mean",
    cf_dropout: Annotated[bool, typer.Option(help="The official code's CF model in train mode (dropout on).")] =
        False,
    finetune_text: Annotated[bool, typer.Option(help="Train the sentence encoder too (the paper; slow on CPU).")] =
        False,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, negatives and order.")] = 0,
    threads: ThreadsOption = None,
) -> None:
    """Stage 1: item and text autoencoders aligned to a shared latent; joint embeddings for every item (text path
    for items the CF model never saw)."""
    set_threads(threads)
    import numpy as np
    import torch

    from ..align.allmrec import Stage1Config, interaction_counts, train_stage1
    from ..index.text import encoder_source, item_texts, text_embeddings

    dataset = load_dataset_or_fail(data)
    cf_model = load_cf(cf, dataset)
    try:
        config = Stage1Config(item_weight=item_weight, text_weight=text_weight, rec_weight=rec_weight,
                              rec_score=rec_score, epochs=epochs, batch_size=batch_size, lr=lr, cf_dropout=cf_dropout,
                              finetune_text=finetune_text, seed=seed)
        texts = item_texts(dataset)
        console.print(f"embedding {len(texts):,} item texts with {embedder}")
        embeddings = text_embeddings(texts, embedder, progress=True)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    encoder = None
    if finetune_text:
        from sentence_transformers import SentenceTransformer

        encoder = SentenceTransformer(encoder_source(embedder))
    network, log = train_stage1(cf_model, dataset, embeddings, config, out, encoder, texts)
    if finetune_text:  # the cold path reads the fine-tuned encoder
        encoder.save(str(out / "text_encoder"))
        embeddings = encoder.encode(texts, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
    warm = interaction_counts(dataset) > 0
    with torch.no_grad():
        joint = network.joint_embeddings(cf_model.item_embeddings().float(), torch.from_numpy(embeddings),
                                         torch.from_numpy(warm))
    network.save_pretrained(out, warm, log)
    np.save(out / "joint.npy", joint.numpy())
    for row in log:
        console.print(f"epoch {row['epoch']}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch"))
    console.print(f"{int(warm.sum()):,} warm items (enc_I), {int((~warm).sum()):,} cold items (enc_T); saved in {out}")


@allmrec_app.command("stage2")
def stage2(
    data: DataOption,
    cf: CFOption,
    out: Annotated[Path, typer.Option(help="Folder for the stage-2 recommender.")],
    stage1_dir: Annotated[Path | None, typer.Option("--stage1", help="The stage-1 folder (soft tokens need it).")] =
        None,
    soft_tokens: Annotated[bool, typer.Option(help="A-LLMRec's soft tokens; --no-soft-tokens is the LLM-only "
                                                   "baseline (same prompt, LoRA-tuned LLM).")] = True,
    backbone: Annotated[str, typer.Option(help="'smollm2-135m', 'tiny', a hub id or a local path.")] =
        "smollm2-135m",
    precision: Annotated[str, typer.Option(help="'bf16' or 'fp32'.")] = "bf16",
    lora_r: Annotated[int, typer.Option(help="LoRA rank (the LLM-only baseline).")] = 8,
    n_candidates: Annotated[int, typer.Option(help="Candidates per prompt (the target among them).")] = 20,
    max_history: Annotated[int, typer.Option(help="History titles shown in the prompt.")] = 10,
    dataset_name: Annotated[str, typer.Option(help="Amazon category for the prompt's words (Movies_and_TV: "
                                                   "watched/movie, Video_Games: played/game, else bought/item).")] =
        "",
    epochs: Annotated[int, typer.Option(help="Passes over the rows (fresh negatives each).")] = 1,
    batch_size: Annotated[int, typer.Option(help="Rows per optimiser step.")] = 4,
    micro_batch_size: Annotated[int, typer.Option(help="Rows per forward pass.")] = 2,
    lr: Annotated[float, typer.Option(help="Adam(W) learning rate.")] = 1e-4,
    max_train_rows: Annotated[int | None, typer.Option(help="The first N training rows only.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the projectors, candidates and order.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in --out.")] = False,
    threads: ThreadsOption = None,
) -> None:
    """Stage 2: the frozen LLM reads F_U(user) and F_I(items) at soft tokens; only the projectors train."""
    set_threads(threads)
    quiet_transformers()
    import numpy as np
    import torch

    from ..align.allmrec_llm import SOFT_TOKENS, ALLMRecHook, PromptWords, stage2_examples
    from ..llm.backbones import LoraSettings
    from ..llm.recommender import LLMRecommender, RecommenderConfig
    from ..llm.train import SFTConfig, sft_train

    dataset = load_dataset_or_fail(data)
    if soft_tokens and stage1_dir is None:
        fail("soft tokens need --stage1 DIR (from `recalign allmrec stage1`)")
    cf_model = load_cf(cf, dataset)
    words = PromptWords.for_dataset(dataset_name)
    try:
        config = RecommenderConfig(backbone, precision, "frozen" if soft_tokens else "lora",
                                   LoraSettings(r=lora_r, alpha=2 * lora_r), max_history=max_history, seed=seed)
        sft = SFTConfig(epochs=1, batch_size=batch_size, micro_batch_size=micro_batch_size, lr=lr,
                        precision=precision, seed=seed, weight_decay=0.0)
    except ValueError as exc:
        fail(str(exc))
    recommender = LLMRecommender.create(dataset, config)
    if soft_tokens:
        joint = torch.from_numpy(np.load(stage1_dir / "joint.npy"))
        ids = recommender.add_special_tokens(list(SOFT_TOKENS))
        recommender.feature_injector = ALLMRecHook(cf_model, joint, *ids,
                                                   recommender.model.get_input_embeddings().embedding_dim,
                                                   max_history, seed)
    examples = [e for epoch in range(epochs) for e in
                stage2_examples(recommender, dataset, words, soft_tokens, n_candidates, seed + epoch, max_train_rows)]
    result = sft_train(recommender.model, examples, sft, out / "train", resume=resume, pad_id=recommender.pad_id,
                       embedding_hook=recommender.embedding_hook)
    recommender.save_pretrained(out)
    record = {"soft_tokens": soft_tokens, "n_candidates": n_candidates, "words": vars(words),
              "stage1": str(stage1_dir) if stage1_dir else None, "cf": str(cf)}
    (out / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    trained = sum(p.numel() for p in recommender.model.parameters() if p.requires_grad) + sum(
        p.numel() for p in (recommender.embedding_hook.parameters() if soft_tokens else []) if p.requires_grad)
    console.print(f"trained {trained:,} parameters on {len(examples):,} prompts ({result.tokens_per_second:,.0f} "
                  f"tokens/s); saved in {out}")


@allmrec_app.command("eval")
def evaluate(
    data: DataOption,
    model: Annotated[Path | None, typer.Option(help="A stage-2 folder (`allmrec stage2`).")] = None,
    cf: Annotated[Path | None, typer.Option(help="A CF model: ranks the same candidates by its scores (alone), or "
                                                 "retrieves them (--protocol retrieved).")] = None,
    protocol: Annotated[str, typer.Option(help="'sampled' (target + random negatives, the paper's) or 'retrieved' "
                                               "(the CF model's top items over the whole catalogue).")] = "sampled",
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    rows: Annotated[int | None, typer.Option(help="The split's first N rows.")] = None,
    n_candidates: Annotated[int | None, typer.Option(help="Candidates per row (default: the model's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampled negatives (the same rows for every model).")] = 0,
    lenient: Annotated[bool, typer.Option(help="Also the paper's free generation + substring match.")] = False,
    threads: ThreadsOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Hit@1 among the candidates, overall and for warm items, cold items and cold users."""
    set_threads(threads)
    quiet_transformers()
    import numpy as np
    from tqdm.auto import tqdm

    from ..align.allmrec_llm import PromptWords, candidate_sets, item_groups, lenient_hit, pick
    from ..eval.metrics import Z_95

    if model is None and cf is None:
        fail("give --model (a stage-2 folder) or --cf (a CF model), or both for --protocol retrieved")
    dataset = load_dataset_or_fail(data)
    cf_model = load_cf(cf, dataset) if cf else None
    recommender, record = None, {}
    if model is not None:
        from ..llm.recommender import LLMRecommender

        if not (model / RECORD).exists():
            fail(f"{model} is not an A-LLMRec stage-2 folder (no {RECORD})")
        record = json.loads((model / RECORD).read_text())
        recommender = LLMRecommender.from_pretrained(model, dataset)
    n = n_candidates or record.get("n_candidates", 20)
    try:
        sets = candidate_sets(dataset, split, protocol, n, seed, rows, cf_model)
    except ValueError as exc:
        fail(str(exc))
    frame = dataset.split(split).iloc[:rows]
    hits, lenient_hits = np.zeros(len(frame), dtype=bool), np.zeros(len(frame), dtype=bool)
    words = PromptWords(**record["words"]) if record else None
    for row, (history, target, candidates) in enumerate(tqdm(list(zip(frame["history"], frame["target"], sets)),
                                                             desc="candidates", disable=as_json)):
        history = [int(i) for i in history]
        if recommender is not None:
            groups = pick(recommender, history, candidates, words, record["soft_tokens"])
            hits[row] = groups[:1] == [[int(target)]]  # pessimistic: not a hit when its title is shared
            if lenient:
                lenient_hits[row] = lenient_hit(recommender, history, candidates, int(target), words,
                                                record["soft_tokens"])
        else:
            scores = cf_model.score([np.asarray(history, dtype=np.int64)])[0][candidates]
            if int(target) in candidates:  # pessimistic: a candidate scoring as high as the target ranks first
                hits[row] = int((scores >= scores[candidates.index(int(target))]).sum()) == 1
    result = {"protocol": protocol, "split": split, "n_candidates": n, "seed": seed,
              "model": str(model) if model else None, "cf": str(cf) if cf else None, "groups": {}}
    for name, mask in item_groups(dataset, split, rows).items():
        values = hits[mask].astype(float)
        entry = {"rows": int(mask.sum()), "Hit@1": float(values.mean()) if len(values) else float("nan"),
                 "ci95": float(Z_95 * values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")}
        if lenient and recommender is not None:
            entry["Hit@1 lenient"] = float(lenient_hits[mask].mean()) if mask.any() else float("nan")
        result["groups"][name] = entry
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for name, entry in result["groups"].items():
        extra = f", lenient {entry['Hit@1 lenient']:.4f}" if "Hit@1 lenient" in entry else ""
        console.print(f"{name}: Hit@1 {entry['Hit@1']:.4f} ± {entry['ci95']:.4f} over {entry['rows']:,} rows{extra}")
