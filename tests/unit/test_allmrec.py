"""A-LLMRec: the stage-1 losses against hand-built tensors, frozen parts staying bit-identical, the soft tokens'
positions, candidate sampling, candidate-constrained decoding and the cold-item path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.conftest import rule_dataset
from torch.nn import functional as F

from recalign.align.allmrec import AlignmentNetwork, Stage1Config, interaction_counts, train_stage1
from recalign.align.allmrec_llm import (
    CANDIDATE_TOKEN,
    HISTORY_TOKEN,
    SOFT_TOKENS,
    USER_TOKEN,
    ALLMRecHook,
    PromptWords,
    encode,
    pick,
    prompt_text,
    sample_candidates,
    stage2_examples,
)
from recalign.cf import build_model
from recalign.llm.hooks import hooked_embeddings
from recalign.llm.recommender import LLMRecommender, RecommenderConfig
from recalign.llm.train import SFTConfig, sft_train


def cf_for(dataset, hidden=8):
    torch.manual_seed(0)
    return build_model("sasrec", dataset.n_items, hidden=hidden, max_len=6).attach_catalogue(dataset)


def test_stage1_losses_by_hand():
    config = Stage1Config(latent=2, item_weight=0.5, text_weight=0.2, rec_weight=1.0, rec_score="mean")
    net = AlignmentNetwork(cf_dim=2, text_dim=3, config=config)
    with torch.no_grad():
        net.item_encoder.weight.copy_(torch.eye(2))
        net.item_encoder.bias.zero_()
        net.item_decoder.weight.copy_(2 * torch.eye(2))
        net.item_decoder.bias.zero_()
        net.text_encoder.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0]]))
        net.text_encoder.bias.zero_()
        net.text_decoder.weight.copy_(torch.tensor([[1.0, 0], [0, 1], [1, 1]]))
        net.text_decoder.bias.zero_()
    user = torch.tensor([[1.0, -1.0]])
    e_pos, e_neg = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 2.0]])
    q_pos, q_neg = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[2.0, 0.0, 0.0]])
    got = net.losses(user, e_pos, e_neg, q_pos, q_neg)
    s = torch.sigmoid
    zi = [s(e_pos), s(e_neg)]
    zt = [s(q_pos[:, :2]), s(q_neg[:, :2])]
    matching = sum(((a - b) ** 2).mean() for a, b in zip(zi, zt))
    item_rec = sum(((2 * z - e) ** 2).mean() for z, e in zip(zi, (e_pos, e_neg)))
    text_rec = sum(((torch.cat([z, z.sum(-1, keepdim=True)], -1) - q) ** 2).mean() for z, q in zip(zt, (q_pos, q_neg)))
    pos, neg = ((user * 2 * z).sum(-1) / 2 for z in zi)
    rec = -F.logsigmoid(pos).mean() - F.logsigmoid(-neg).mean()
    for name, value in (("matching", matching), ("item_rec", item_rec), ("text_rec", text_rec), ("rec", rec)):
        torch.testing.assert_close(got[name], value)
    torch.testing.assert_close(got["total"], matching + 0.5 * item_rec + 0.2 * text_rec + rec)
    dot = AlignmentNetwork(2, 3, Stage1Config(latent=2, rec_score="dot"))
    dot.load_state_dict(net.state_dict())
    pos_dot, neg_dot = ((user * 2 * z).sum(-1) for z in zi)  # the paper's plain dot product: no division by d
    torch.testing.assert_close(dot.losses(user, e_pos, e_neg, q_pos, q_neg)["rec"],
                               -F.logsigmoid(pos_dot).mean() - F.logsigmoid(-neg_dot).mean())


def test_stage1_trains_the_autoencoders_keeps_the_cf_model_frozen_and_gives_cold_items_text_embeddings(tmp_path):
    dataset = rule_dataset()
    cf = cf_for(dataset)
    before = {k: v.clone() for k, v in cf.state_dict().items()}
    texts = torch.randn(dataset.n_items, 5, generator=torch.Generator().manual_seed(0)).numpy()
    config = Stage1Config(latent=4, epochs=3, batch_size=8, lr=1e-2)
    network, log = train_stage1(cf, dataset, texts, config, tmp_path, progress=False)
    assert len(log) == 3 and log[-1]["total"] < log[0]["total"]
    assert all(torch.equal(v, before[k]) for k, v in cf.state_dict().items())  # bit-identical
    assert not cf.training
    warm = interaction_counts(dataset) > 0
    warm[[3, 7]] = False  # as if the CF model had never seen items 3 and 7
    joint = network.joint_embeddings(cf.item_embeddings(), torch.from_numpy(texts), torch.from_numpy(warm))
    torch.testing.assert_close(joint[3], network.encode_texts(torch.from_numpy(texts[3])))
    torch.testing.assert_close(joint[0], network.encode_items(cf.item_embeddings()[0]).detach())
    assert joint.shape == (dataset.n_items, 4) and bool(((joint > 0) & (joint < 1)).all())
    # a second call resumes after the last finished epoch instead of starting over
    again, log_again = train_stage1(cf, dataset, texts, config, tmp_path, progress=False)
    assert log_again == log
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), network.state_dict().values()))


def test_candidates_are_the_target_and_unseen_items():
    rng = np.random.default_rng(0)
    for _ in range(50):
        history = rng.integers(0, 40, 8).tolist()
        target = int(rng.integers(0, 40))
        candidates = sample_candidates(40, history, target, 20, rng)
        assert len(set(candidates)) == 20 and target in candidates
        assert not (set(candidates) - {target}) & set(history)
    same = [sample_candidates(40, [1, 2], 3, 5, np.random.default_rng(7)) for _ in range(2)]
    assert same[0] == same[1]
    with pytest.raises(ValueError, match="outside a history"):
        sample_candidates(10, list(range(9)), 9, 5, rng)


@pytest.fixture(scope="module")
def soft_recommender():
    dataset = rule_dataset()
    recommender = LLMRecommender.create(dataset, RecommenderConfig(backbone="tiny", precision="fp32",
                                                                   finetune="frozen", max_history=3))
    ids = recommender.add_special_tokens(list(SOFT_TOKENS))
    joint = torch.rand(dataset.n_items, 4, generator=torch.Generator().manual_seed(1))
    hidden = recommender.model.get_input_embeddings().embedding_dim
    recommender.feature_injector = ALLMRecHook(cf_for(dataset), joint, *ids, hidden, max_history=3)
    return dataset, recommender


def test_soft_tokens_land_at_their_placeholders(soft_recommender):
    dataset, recommender = soft_recommender
    hook = recommender.embedding_hook
    words = PromptWords()
    history, candidates = (1, 2, 3, 4), (5, 0, 9)
    text = prompt_text(["t2", "t3", "t4"], ["t5", "t0", "t9"], words, True)
    assert text.startswith(f"{USER_TOKEN} is a user representation. This user has bought ")
    assert f'"t2"{HISTORY_TOKEN},"t3"{HISTORY_TOKEN},"t4"{HISTORY_TOKEN} in the previous' in text
    assert f'"t5"{CANDIDATE_TOKEN},"t0"{CANDIDATE_TOKEN},"t9"{CANDIDATE_TOKEN}. The recommendation is' in text
    ids = torch.tensor([encode(recommender, history, candidates, words, True)])
    embeds = recommender.model.get_input_embeddings()(ids)
    out = hook(embeds, ids, [(history, candidates)])
    token = {name: recommender.tokenizer.convert_tokens_to_ids(name) for name in SOFT_TOKENS}
    cols = {name: (ids[0] == token[name]).nonzero().squeeze(-1).tolist() for name in SOFT_TOKENS}
    assert len(cols[USER_TOKEN]) == 1 and len(cols[HISTORY_TOKEN]) == 3 and len(cols[CANDIDATE_TOKEN]) == 3
    for col, item in zip(cols[HISTORY_TOKEN], (2, 3, 4)):  # the last max_history items, oldest first
        torch.testing.assert_close(out[0, col], hook.item_projector(hook.joint[item]))
    for col, item in zip(cols[CANDIDATE_TOKEN], candidates):
        torch.testing.assert_close(out[0, col], hook.item_projector(hook.joint[item]))
    user = hook.cf_model.user_vectors(hook.cf_model.pad([np.array(history)]))
    torch.testing.assert_close(out[0, cols[USER_TOKEN][0]], hook.user_projector(user)[0])
    others = torch.ones(ids.shape[1], dtype=torch.bool)
    others[[c for cs in cols.values() for c in cs]] = False
    assert torch.equal(out[0, others], embeds[0, others])
    with pytest.raises(ValueError, match="placeholder"):
        hook(embeds, ids, [(history, candidates[:2])])


def test_stage2_trains_the_projectors_only_and_decodes_candidates_only(soft_recommender, tmp_path):
    dataset, recommender = soft_recommender
    llm_before = {k: v.clone() for k, v in recommender.model.state_dict().items()}
    hook = recommender.embedding_hook
    cf_before = {k: v.clone() for k, v in hook.cf_model.state_dict().items()}
    projector_before = hook.item_projector[0].weight.clone()
    examples = stage2_examples(recommender, dataset, PromptWords(), True, 5, seed=0, max_rows=16)
    assert all(e.history[0] and len(e.history[1]) == 5 and e.item in e.history[1] for e in examples)
    sft = SFTConfig(epochs=1, batch_size=4, micro_batch_size=4, lr=1e-2, warmup_steps=0, precision="fp32")
    sft_train(recommender.model, examples, sft, tmp_path / "train", progress=False, pad_id=recommender.pad_id,
              embedding_hook=hook)
    assert not torch.equal(hook.item_projector[0].weight, projector_before)
    assert all(torch.equal(v, llm_before[k]) for k, v in recommender.model.state_dict().items())
    assert all(torch.equal(v, cf_before[k]) for k, v in hook.cf_model.state_dict().items())
    candidates = [4, 7, 1, 10, 11]
    groups = pick(recommender, [0, 2, 3], candidates, PromptWords(), True, num_beams=5)
    assert sorted(i for g in groups for i in g) == sorted(candidates)  # every candidate, nothing else
    # oracle: every candidate's title + EOS scored by one forward pass over the hooked embeddings (length penalty 0)
    prompt = encode(recommender, [0, 2, 3], candidates, PromptWords(), True)
    scored = {}
    for item in candidates:
        tokens = recommender.index.tokens(item)
        ids = torch.tensor([prompt + tokens])
        embeds = hooked_embeddings(recommender.model, ids, hook, [((0, 2, 3), tuple(candidates))])
        with torch.no_grad():
            logp = torch.log_softmax(recommender.model(inputs_embeds=embeds).logits[0].float(), -1)
        scored[item] = logp[len(prompt) - 1:-1].gather(1, torch.tensor(tokens)[:, None]).sum().item()
    assert [g[0] for g in groups] == sorted(candidates, key=lambda c: -scored[c])
    saved = recommender.save_pretrained(tmp_path / "saved")
    loaded = LLMRecommender.from_pretrained(saved, dataset)
    assert loaded.config.finetune == "frozen" and isinstance(loaded.embedding_hook, ALLMRecHook)
    assert pick(loaded, [0, 2, 3], candidates, PromptWords(), True, num_beams=5) == groups


def test_interaction_counts_count_each_user_item_pair_once():
    import pandas as pd

    from recalign.data.dataset import Dataset, item_table
    from recalign.data.sequences import examples_from_lists

    # user 0's rows overlap: [0, 1] -> 2 and [0, 1, 2] -> 3; user 1: [1] -> 4
    train = examples_from_lists([0, 0, 1], ["u0", "u0", "u1"], [[0, 1], [0, 1, 2], [1]], [2, 3, 4], [0, 0, 0])
    items = pd.DataFrame({"raw_id": [f"i{i}" for i in range(6)], "title": [f"t{i}" for i in range(6)]})
    empty = examples_from_lists([], [], [], [], [])
    dataset = Dataset(item_table(items), {"train": train, "valid": empty, "test": empty})
    assert interaction_counts(dataset).tolist() == [1, 2, 1, 1, 1, 0]


def test_stage1_refuses_to_resume_another_run(tmp_path):
    dataset = rule_dataset()
    cf = cf_for(dataset)
    texts = np.ones((dataset.n_items, 5), dtype=np.float32)
    train_stage1(cf, dataset, texts, Stage1Config(latent=4, epochs=1, batch_size=8), tmp_path, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        train_stage1(cf, dataset, texts, Stage1Config(latent=4, epochs=2, batch_size=8, lr=1e-3), tmp_path,
                     progress=False)


def small_dataset(rows, test_rows=None):
    """A dataset from (user, history, target, timestamp) rows (the test split repeats the training rows unless
    given)."""
    import pandas as pd

    from recalign.data.dataset import Dataset, item_table
    from recalign.data.sequences import examples_from_lists

    def table(rows):
        users, histories, targets, times = zip(*rows)
        return examples_from_lists([int(u) for u in users], [f"u{u}" for u in users], [list(h) for h in histories],
                                   list(targets), list(times))

    items = pd.DataFrame({"raw_id": [f"i{i}" for i in range(12)], "title": [f"t{i}" for i in range(12)]})
    train = table(rows)
    return Dataset(item_table(items), {"train": train, "valid": train.slice(0, 0), "test": table(test_rows or rows)})


def test_train_rows_all_or_one_per_user_the_last_training_item():
    from recalign.align.allmrec import training_frame, training_triples

    dataset = small_dataset([(0, [1], 2, 10), (0, [1, 2], 3, 20), (1, [4, 5], 6, 5), (1, [4], 5, 5),
                             (2, [7], 8, 1)])
    assert training_frame(dataset, "all")["target"].tolist() == [2, 3, 6, 5, 8]
    # user 0: the later timestamp; user 1: a tie in time, the longer history wins; rows stay in file order
    assert training_frame(dataset, "last")["target"].tolist() == [3, 6, 8]
    histories, positives, negatives = training_triples(dataset, seed=0, rows="last")
    assert positives.tolist() == [3, 6, 8] and [h.tolist() for h in histories] == [[1, 2], [4, 5], [7]]
    assert all(n not in (*h, p) for h, p, n in zip(histories, positives, negatives))
    with pytest.raises(ValueError, match="train_rows"):
        training_frame(dataset, "first")


def test_stage2_trains_on_the_rows_asked_for(soft_recommender):
    dataset, recommender = soft_recommender
    frame = dataset.split("train")
    every = stage2_examples(recommender, dataset, PromptWords(), True, 5, seed=0)
    last = stage2_examples(recommender, dataset, PromptWords(), True, 5, seed=0, rows="last")
    assert [e.item for e in every] == frame["target"].tolist()
    longest = frame.loc[frame.groupby("user", sort=False)["history"].apply(lambda h: h.map(len).idxmax())]
    assert [e.item for e in last] == longest["target"].tolist() and len(last) == frame["user"].nunique()
    assert [list(e.history[0]) for e in last] == [list(h) for h in longest["history"]]


def test_warm_and_cold_items_and_cold_users_by_hand():
    from recalign.align.allmrec_llm import item_groups

    # training counts: item 1: 4 users, item 2: 3, items 3-6: 1, items 0 and 7-11: 0; the 35% quantile of the
    # 12 counts is 0 (cold: count <= 0), the 65% one 1 (warm: count >= 1 and not cold)
    train = [(0, [1, 2], 3, 0), (1, [1, 2], 4, 0), (2, [1, 2], 5, 0), (3, [1], 6, 0)]
    test = [(0, [1, 2, 3], 1, 1), (1, [1, 2, 4], 0, 1), (9, [2], 5, 1), (2, [5], 11, 1)]
    groups = item_groups(small_dataset(train, test), "test", None)
    assert groups["warm items"].tolist() == [True, False, True, False]
    assert groups["cold items"].tolist() == [False, True, False, True]
    assert groups["cold users"].tolist() == [False, False, True, False]  # user 9 has no training row
    assert item_groups(small_dataset(train, test), "test", 2)["cold items"].tolist() == [False, True]


def test_stage2_cf_dropout_keeps_the_cf_model_in_train_mode_only_while_training(soft_recommender):
    _, recommender = soft_recommender
    hook = recommender.embedding_hook
    reference = ALLMRecHook(hook.cf_model, hook.joint, *(hook.config.user_token_id, hook.config.history_token_id,
                                                         hook.config.candidate_token_id), hook.config.hidden_size,
                            cf_dropout=True)
    assert reference.train().cf_model.training and not reference.eval().cf_model.training
    assert not hook.train().cf_model.training  # the default: eval mode throughout
    hook.eval()
