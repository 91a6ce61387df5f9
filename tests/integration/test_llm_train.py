from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

import torch.nn.functional as F  # noqa: E402
from safetensors import safe_open  # noqa: E402
from tests.conftest import cpu_launch, launch_fsdp  # noqa: E402

from recalign.llm.train import (  # noqa: E402
    PROGRESS,
    LabelBatch,
    LabelPositionLM,
    SFTConfig,
    SFTExample,
    TrainingDiverged,
    collate,
    cross_entropy_loss,
    sft_train,
)

HELPER = Path(__file__).with_name("sft_two_process.py")
_spec = importlib.util.spec_from_file_location("sft_two_process", HELPER)
helper = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helper)
tiny_llama, random_examples = helper.tiny_llama, helper.random_examples


def lora(model, seed: int = 0, dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=dropout,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], bias="none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def config(**overrides) -> SFTConfig:
    settings = dict(epochs=1, batch_size=4, micro_batch_size=2, lr=1e-2, weight_decay=0.0, warmup_steps=0,
                    precision="fp32", log_every=1, checkpoint_every=1000)
    return SFTConfig(**{**settings, **overrides})


# --- collate -----------------------------------------------------------------------------------------------------

def test_collate_points_at_the_positions_before_each_trained_token():
    examples = [SFTExample([5, 6, 7], [10, 11, 2], item=3, history=(1, 2), label_mask=[False, True, True]),
                SFTExample([8], [12, 2], item=4)]
    batch = collate(examples, pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 10, 11, 2], [8, 12, 2, 0, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]
    assert batch.position_ids[:, :3].tolist() == [[0, 1, 2], [0, 1, 2]]
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 4, 5]
    # a: 10 is masked out, 11 is predicted from column 3 (10), EOS from column 4; b: 12 from column 0, EOS from 1
    assert batch.label_rows.tolist() == [0, 0, 1, 1]
    assert batch.label_cols.tolist() == [3, 4, 0, 1]
    assert batch.label_tokens.tolist() == [11, 2, 12, 2]
    assert batch.label_depth.tolist() == [1, 2, 0, 1]
    assert batch.label_example.tolist() == [0, 0, 1, 1]
    assert batch.items.tolist() == [3, 4]
    assert batch.histories == [(1, 2), ()]
    assert torch.equal(batch.input_ids[batch.label_rows, batch.label_cols + 1], batch.label_tokens)


def test_collate_pads_with_pad_id_and_rejects_bad_examples():
    batch = collate([SFTExample([1, 2], [3]), SFTExample([4], [5, 6, 7])], pad_id=99)
    assert batch.input_ids.tolist() == [[1, 2, 3, 99], [4, 5, 6, 7]]
    with pytest.raises(ValueError, match="label_mask"):
        collate([SFTExample([1], [2, 3], label_mask=[True])])
    with pytest.raises(ValueError, match="empty prompt"):
        collate([SFTExample([], [2, 3])])


# --- label-position logits ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("with_lora", [False, True])
def test_label_position_logits_equal_the_full_models(with_lora):
    model = tiny_llama()
    if with_lora:
        model = lora(model)
        with torch.no_grad():  # B starts at zero: make the adapters matter
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    model.eval()
    batch = collate(random_examples(6, seed=3))
    assert len(set(batch.attention_mask.sum(1).tolist())) > 1  # right padding is exercised
    with torch.no_grad():
        logits = LabelPositionLM(model)(batch.input_ids, batch.attention_mask, batch.position_ids,
                                        batch.label_rows, batch.label_cols)
        full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    expected = full[batch.label_rows, batch.label_cols]
    assert logits.shape == (len(batch.label_tokens), helper.VOCAB) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    targets = batch.input_ids[batch.label_rows, batch.label_cols + 1]
    torch.testing.assert_close(cross_entropy_loss(logits, batch),
                               F.cross_entropy(expected, targets, reduction="none"), atol=1e-5, rtol=1e-5)


# --- training ------------------------------------------------------------------------------------------------------

def test_training_memorises_a_small_set(tmp_path):
    model = tiny_llama()
    result = sft_train(model, random_examples(8), config(epochs=30, batch_size=8, micro_batch_size=4), tmp_path,
                       progress=False)
    losses = [row["loss"] for row in result.log]
    assert result.steps == len(losses) == 30
    assert losses[-1] < 0.3 * losses[0]
    with open(tmp_path / "train_log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    assert [float(r["loss"]) for r in rows] == pytest.approx(losses)
    assert {int(r["labels"]) for r in rows} == {sum(e.label_count() for e in random_examples(8))}
    assert float(rows[0]["lr"]) == pytest.approx(1e-2) and float(rows[-1]["lr"]) == pytest.approx(1e-2 / 30)
    assert not model.training


def test_lora_training_changes_only_the_adapters(tmp_path):
    model = lora(tiny_llama())
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = trainable_state(model)
    assert before and all("lora_" in n for n in before)
    sft_train(model, random_examples(8), config(epochs=3), tmp_path, progress=False)
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in base.items())
    assert all(not torch.equal(after[n], p) for n, p in before.items() if "lora_B" in n)
    with safe_open(tmp_path / "checkpoint" / "model.safetensors", "pt") as handle:  # frozen weights stay out
        assert {k.removeprefix("model.") for k in handle.keys()} == set(before)


def test_gradient_checkpointing_trains_exactly_the_same(tmp_path):
    runs = []
    for checkpointing in (False, True):
        model = lora(tiny_llama())
        result = sft_train(model, random_examples(8), config(epochs=2, gradient_checkpointing=checkpointing),
                           tmp_path / str(checkpointing), progress=False)
        runs.append((trainable_state(model), [row["loss"] for row in result.log]))
    (plain, plain_losses), (recomputed, recomputed_losses) = runs
    assert recomputed_losses == pytest.approx(plain_losses, abs=1e-6)
    assert all(torch.allclose(plain[n], recomputed[n], atol=1e-6) for n in plain)
    assert recomputed_losses[-1] < recomputed_losses[0]  # it did train


def test_resume_ends_like_an_uninterrupted_run(tmp_path):
    # LoRA dropout draws from the global RNG: the checkpoint must carry its state too.
    examples = random_examples(10)  # 3 steps per epoch, the last topped up
    settings = config(epochs=2, batch_size=4, micro_batch_size=2, warmup_steps=2, weight_decay=0.01)
    straight_model = lora(tiny_llama(), dropout=0.1)
    straight = sft_train(straight_model, examples, settings, tmp_path / "straight", progress=False)
    assert straight.steps == 6

    first = sft_train(lora(tiny_llama(), dropout=0.1), examples, config(**{**vars(settings), "max_steps": 4}),
                      tmp_path / "resumed", progress=False)
    assert first.steps == 4
    resumed_model = lora(tiny_llama(), seed=1, dropout=0.1)  # other adapter init: the weights must come from disk
    resumed = sft_train(resumed_model, examples, settings, tmp_path / "resumed", resume=True, progress=False)
    assert resumed.steps == 6

    expected, got = trainable_state(straight_model), trainable_state(resumed_model)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=0)
    exact = ("step", "epoch", "labels", "tokens")
    assert [[r[k] for k in exact] for r in resumed.log] == [[r[k] for k in exact] for r in straight.log]
    for key in ("loss", "lr"):
        assert [r[key] for r in resumed.log] == pytest.approx([r[key] for r in straight.log], abs=1e-6)
    with open(tmp_path / "resumed" / "train_log.csv") as handle:
        assert [float(r["loss"]) for r in csv.DictReader(handle)] == pytest.approx([r["loss"] for r in straight.log])
    with pytest.raises(ValueError, match="seed"):
        sft_train(lora(tiny_llama()), examples, config(**{**vars(settings), "seed": 7}), tmp_path / "resumed",
                  resume=True, progress=False)


def test_resume_clears_an_old_checkpoint_left_half_removed(tmp_path):
    """A kill while the previous checkpoint is being removed leaves ``checkpoint.old`` beside ``checkpoint``; the
    next save must not trip over it."""
    examples = random_examples(8)
    settings = config(epochs=1, batch_size=4, micro_batch_size=2)
    sft_train(lora(tiny_llama()), examples, config(**{**vars(settings), "max_steps": 1}), tmp_path, progress=False)
    stale = tmp_path / "checkpoint.old"
    stale.mkdir()
    (stale / "optimizer.bin").write_bytes(b"what the removal had not reached")
    result = sft_train(lora(tiny_llama()), examples, settings, tmp_path, resume=True, progress=False)
    assert result.steps == 2 and not stale.exists()
    assert json.loads((tmp_path / "checkpoint" / "progress.json").read_text())["state"]["global_step"] == 2


# --- loss hooks ------------------------------------------------------------------------------------------------------

def test_a_zero_loss_hook_leaves_the_weights_alone(tmp_path):
    calls = []

    def zero(logits: torch.Tensor, batch: LabelBatch) -> torch.Tensor:
        calls.append((logits.shape, logits.dtype, batch))
        return logits[:, 0] * 0.0

    examples = random_examples(8)
    model = tiny_llama()
    before = trainable_state(model)
    result = sft_train(model, examples, config(epochs=2), tmp_path, loss_hook=zero, progress=False)
    assert all(torch.equal(p, before[n]) for n, p in trainable_state(model).items())
    assert [row["loss"] for row in result.log] == [0.0] * 4
    assert len(calls) == 8  # 2 epochs x 2 steps x 2 micro-batches
    by_item = {e.item: e for e in examples}
    for shape, dtype, batch in calls:
        assert shape == (len(batch.label_tokens), helper.VOCAB) and dtype == torch.float32
        assert len(batch.items) == 2 and len(batch.histories) == 2
        assert torch.equal(batch.input_ids[batch.label_rows, batch.label_cols + 1], batch.label_tokens)
        assert batch.label_tokens.tolist() == [
            by_item[int(batch.items[r])].target_ids[d] for r, d in zip(batch.label_example, batch.label_depth)]
        assert batch.histories == [by_item[int(i)].history for i in batch.items]


def test_the_hooks_loss_is_what_gets_optimised(tmp_path):
    favourite = 7

    def always_seven(logits: torch.Tensor, batch: LabelBatch) -> torch.Tensor:
        return F.cross_entropy(logits, torch.full_like(batch.label_tokens, favourite), reduction="none")

    model = tiny_llama()
    result = sft_train(model, random_examples(8), config(epochs=15), tmp_path, loss_hook=always_seven, progress=False)
    assert result.log[-1]["loss"] < 0.1 * result.log[0]["loss"]
    batch = collate(random_examples(8))
    with torch.no_grad():
        logits = LabelPositionLM(model)(batch.input_ids, batch.attention_mask, batch.position_ids,
                                        batch.label_rows, batch.label_cols)
    assert (logits.argmax(-1) == favourite).all()


def test_a_non_finite_loss_stops_training_before_its_step_is_checkpointed(tmp_path):
    calls = []

    def nan_from_the_third_micro_batch(logits: torch.Tensor, batch: LabelBatch) -> torch.Tensor:
        calls.append(1)
        losses = F.cross_entropy(logits, batch.label_tokens, reduction="none")
        return losses * float("nan") if len(calls) > 2 else losses

    with pytest.raises(TrainingDiverged, match=r"optimiser step 2 \(epoch 1\): the loss is nan"):
        sft_train(tiny_llama(), random_examples(8), config(epochs=2, checkpoint_every=1), tmp_path,
                  loss_hook=nan_from_the_third_micro_batch, progress=False)
    assert json.loads((tmp_path / "checkpoint" / PROGRESS).read_text())["state"]["global_step"] == 1


def test_a_constant_schedule_keeps_the_rate_and_bad_optimiser_names_are_refused(tmp_path):
    result = sft_train(tiny_llama(), random_examples(8), config(epochs=2, warmup_steps=3, schedule="constant",
                                                                optimizer="adam", max_grad_norm=0.0),
                       tmp_path, progress=False)
    assert [row["lr"] for row in result.log] == [1e-2] * 4
    with pytest.raises(ValueError, match="optimizer"):
        config(optimizer="sgd")


# --- two processes ---------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    """2 processes x micro-batch 2 x accumulation 2 against 1 process x micro-batch 4 x accumulation 2."""
    out = tmp_path / "two"
    command, env = cpu_launch(HELPER, out, "2", tmp_path=tmp_path)
    launched = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    # The one-process run overlaps the launch (2 cores).
    model = tiny_llama()
    single = sft_train(model, random_examples(helper.DDP_EXAMPLES), helper.ddp_config(4), tmp_path / "one",
                       progress=False)
    output, _ = launched.communicate(timeout=120)
    assert launched.returncode == 0, output[-3000:]

    result = json.loads((out / "result.json").read_text())
    assert result["num_processes"] == 2
    labels = [row["labels"] for row in single.log]
    assert len(labels) == 3 and [row["labels"] for row in result["log"]] == labels
    assert [row["loss"] for row in result["log"]] == pytest.approx([row["loss"] for row in single.log],
                                                                   abs=1e-5, rel=1e-5)
    weights = torch.load(out / "weights_0.pt")
    for name, value in model.state_dict().items():
        torch.testing.assert_close(weights[name], value, atol=1e-5, rtol=1e-5)
    assert any(not torch.equal(value, tiny_llama().state_dict()[name]) for name, value in weights.items())

    # Either run's checkpoint (under DDP names or not) resumes on one process to the same last step.
    finished = []
    for run in (tmp_path / "one", out):
        with safe_open(run / "checkpoint" / "model.safetensors", "pt") as handle:
            assert set(handle.keys()) == {f"model.{name}" for name, _ in model.named_parameters()}
        finished.append(tiny_llama(seed=1))
        sft_train(finished[-1], random_examples(helper.DDP_EXAMPLES), config(**{**vars(helper.ddp_config(4)),
                  "max_steps": None}), run, resume=True, progress=False)
    for name, value in finished[0].state_dict().items():
        torch.testing.assert_close(finished[1].state_dict()[name], value, atol=1e-5, rtol=1e-5)
        assert not torch.equal(value, weights[name])  # the fourth step did train


@pytest.mark.slow
def test_fsdp_matches_one_process_and_resumes_from_its_sharded_checkpoint(tmp_path):
    """FSDP2 over two processes, stopped after 3 steps and resumed to the end, against one process doing the same:
    the same losses and, on every process, the same whole weights."""
    out = tmp_path / "fsdp"
    launch_fsdp(HELPER, out, "2", "3", tmp_path=tmp_path)
    assert (out / "checkpoint" / "pytorch_model_fsdp_0").is_dir()  # accelerate's sharded checkpoint, not ours
    stopped = [torch.load(out / f"weights_{rank}.pt") for rank in (0, 1)]
    launch_fsdp(HELPER, out, "2", "0", tmp_path=tmp_path)
    finished = [torch.load(out / f"weights_{rank}.pt") for rank in (0, 1)]
    log = json.loads((out / "result.json").read_text())["log"]

    model = tiny_llama()
    sft_train(model, random_examples(helper.DDP_EXAMPLES), helper.ddp_config(4), tmp_path / "one", progress=False)
    stopped_state = {name: value.clone() for name, value in model.state_dict().items()}
    single = sft_train(model, random_examples(helper.DDP_EXAMPLES), config(**{**vars(helper.ddp_config(4)),
                       "max_steps": None}), tmp_path / "one", resume=True, progress=False)
    assert [row["loss"] for row in log] == pytest.approx([row["loss"] for row in single.log], abs=1e-5, rel=1e-5)
    assert len(log) == 4
    for weights, reference in ((stopped, stopped_state), (finished, model.state_dict())):
        for rank_weights in weights:
            for name, value in reference.items():
                torch.testing.assert_close(rank_weights[name], value, atol=1e-5, rtol=1e-5)
    assert any(not torch.equal(finished[0][name], stopped[0][name]) for name in stopped_state)
    with pytest.raises(ValueError, match="written under FSDP"):  # sharded and whole checkpoints do not mix
        sft_train(tiny_llama(), random_examples(helper.DDP_EXAMPLES), helper.ddp_config(4), out, resume=True,
                  progress=False)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:bf16 on a CPU without native bf16")  # the dtype is tested, not speed
def test_fsdp_in_bf16_keeps_the_loss_in_float32_and_takes_float32_features(tmp_path):
    """accelerate's FSDP mixed precision casts module outputs to bf16; the float32 label logits must stay float32,
    or the loss itself is rounded to bf16 (steps 1 and 2 run on the initial weights: warm-up starts at lr 0). An
    embedding hook feeding float32 features through its (now bf16) weights must run, as under autocast."""
    launch_fsdp(HELPER, tmp_path / "fsdp", "2", "3", "bf16", tmp_path=tmp_path, precision="bf16")
    log = json.loads((tmp_path / "fsdp" / "result.json").read_text())["log"]
    single = sft_train(tiny_llama(), random_examples(helper.DDP_EXAMPLES), config(**{**vars(helper.ddp_config(4)),
                       "precision": "bf16"}), tmp_path / "one", progress=False, embedding_hook=helper.FloatFeatures())
    # bf16 weights under FSDP against bf16 autocast: ~1e-4 apart; a loss rounded to bf16 is ~6e-3 off at 6.2
    assert [row["loss"] for row in log[:2]] == pytest.approx([row["loss"] for row in single.log[:2]], abs=1e-3)


def test_one_process_can_train_in_fp32_then_in_bf16(tmp_path):
    model = lora(tiny_llama())
    sft_train(model, random_examples(4), config(precision="fp32"), tmp_path / "fp32", progress=False)
    result = sft_train(model, random_examples(4), config(precision="bf16"), tmp_path / "bf16", progress=False)
    assert result.steps == 1 and all(row["loss"] > 0 for row in result.log)
