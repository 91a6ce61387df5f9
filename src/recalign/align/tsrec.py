"""TS-Rec (fine-grained semantics integration for SID recommenders): SA-Init and TS-Align.

Each SID token (each level on its own: ``<b_25>`` is every item whose second code is 25) stands for the cluster of
items carrying it. A *token semantics* entry gives the cluster a ``description`` and ``keywords``; it comes from

- a teacher file (``[{token, description, keywords}, ...]``, the format of TS-Rec's
  ``*.description_keywords.json``),
- a local teacher LLM prompted with the cluster's titles (``teacher_semantics``; the instruct backbone by default),
- or TF-IDF over the cluster's titles when no LLM is wanted (``tfidf_semantics``; the description is then the
  keywords and three example titles written as a sentence).

**SA-Init** (TS-Rec §5.2): after the SID tokens are added and the embeddings resized, each token's input row becomes
the mean of the backbone's static input embeddings of its keywords' sub-word tokens (keywords joined by spaces),
rescaled to the mean row norm of the embedding matrix (all rows, taken once before any row is written). Tied
output rows follow, since they are the same tensor; an untied head is left alone, as in the reference.

**TS-Align** (TS-Rec §5.3): two SFT tasks per token, token -> description and description -> token, mixed into the
SFT data at their natural frequency with no loss weight.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..llm.prompts import alpaca, encode_prompt
from ..llm.tasks import text_target
from ..llm.train import SFTExample

SOURCES = ("tfidf", "teacher")  # or the path of a teacher file

TOKEN_TO_DESCRIPTION = alpaca(
    "token-to-description", "Answer the question about item Semantic ID token identification.",
    "What is the typical scope and shared features of items that contain the token: {history}?")
DESCRIPTION_TO_TOKEN = alpaca(
    "description-to-token", "Answer the question about item Semantic ID token identification.",
    'What token do the items that have the following scope and shared characteristics contain: "{history}"?')
# the reference's bytes: its TS-Align instruction block ends with one newline, not the other tasks' blank line
TOKEN_TO_DESCRIPTION_REFERENCE, DESCRIPTION_TO_TOKEN_REFERENCE = (
    alpaca(t.name, t.instruction.rsplit("\n", 1)[1], t.input_line.split("\n", 1)[1], reference=True,
           short_instruction=True) for t in (TOKEN_TO_DESCRIPTION, DESCRIPTION_TO_TOKEN))


@dataclass
class TokenSemantics:
    token: str
    description: str
    keywords: list[str]


def token_clusters(sids: list[list[str]]) -> dict[str, list[int]]:
    """SID token -> the item ids carrying it (at its level)."""
    clusters: dict[str, list[int]] = defaultdict(list)
    for item, sid in enumerate(sids):
        for token in sid:
            clusters[token].append(item)
    return dict(clusters)


def read_semantics(path: str | Path) -> dict[str, TokenSemantics]:
    """A teacher file: a JSON list of ``{token, description, keywords}``; each entry checked."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of {{token, description, keywords}} objects")
    semantics = {}
    for row, entry in enumerate(entries):
        for name, kind in (("token", str), ("description", str), ("keywords", list)):
            if not isinstance(entry, dict) or not isinstance(entry.get(name), kind):
                raise ValueError(f"{path}: entry {row}: field {name!r} missing or not a {kind.__name__}")
        semantics[entry["token"]] = TokenSemantics(entry["token"], entry["description"],
                                                   [str(k) for k in entry["keywords"]])
    return semantics


def write_semantics(semantics: dict[str, TokenSemantics], path: str | Path) -> None:
    Path(path).write_text(json.dumps([asdict(s) for s in semantics.values()], indent=1, ensure_ascii=False) + "\n")


def tfidf_semantics(sids: list[list[str]], titles: list[str], n_keywords: int = 20,
                    n_examples: int = 3) -> dict[str, TokenSemantics]:
    """Keywords: the top TF-IDF terms (words and word pairs) of each cluster's titles, the clusters of all tokens
    being the documents; description: a sentence naming the keywords and the cluster's first titles."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    clusters = token_clusters(sids)
    tokens = sorted(clusters)
    documents = [" . ".join(titles[i] for i in clusters[t]) for t in tokens]
    vectorizer = TfidfVectorizer(stop_words="english", ngram_range=(1, 2), sublinear_tf=True)
    try:
        weights = vectorizer.fit_transform(documents)
        vocabulary = vectorizer.get_feature_names_out()
    except ValueError:  # no title holds a word: no keywords (SA-Init then leaves the rows at their default)
        weights, vocabulary = None, []
    semantics = {}
    for row, token in enumerate(tokens):
        scores = weights[[row]].toarray().ravel() if weights is not None else []
        top = [vocabulary[i] for i in (-scores).argsort()[:n_keywords] if scores[i] > 0] if len(scores) else []
        examples = "; ".join(titles[i] for i in clusters[token][:n_examples])
        description = (f"This product family covers {', '.join(top[:8]) or 'assorted items'}. "
                       f"Examples: {examples}.")
        semantics[token] = TokenSemantics(token, description, top)
    return semantics


TEACHER_PROMPT = ("These products share one category code:\n{titles}\n\nDescribe this product family in about 60 "
                  "words (common scope, shared features, materials and uses; no brand names), then give 20 keywords. "
                  'Answer with JSON only: {{"description": "...", "keywords": ["...", "..."]}}')


def teacher_semantics(sids: list[list[str]], titles: list[str], model, tokenizer, max_items: int = 30,
                      batch_size: int = 8, max_new_tokens: int = 200, progress=None) -> tuple[dict, dict]:
    """Asks a local instruct LLM for each token's description and keywords from (up to ``max_items`` of) its
    cluster's titles, greedy, in batches. An answer that is not the asked-for JSON is kept as the description, with
    its words as keywords; such repairs are counted and returned with the semantics."""
    clusters = token_clusters(sids)
    tokens = sorted(clusters)
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    semantics, repairs = {}, {"unparsed_answers": 0, "tokens": len(tokens)}
    try:
        for start in range(0, len(tokens), batch_size):
            batch = tokens[start:start + batch_size]
            prompts = [_teacher_prompt(tokenizer, [titles[i] for i in clusters[t][:max_items]]) for t in batch]
            encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                output = model.generate(**encoded.to(model.device), max_new_tokens=max_new_tokens, do_sample=False,
                                        num_beams=1, pad_token_id=tokenizer.pad_token_id)
            answers = tokenizer.batch_decode(output[:, encoded.input_ids.shape[1]:], skip_special_tokens=True)
            for token, answer in zip(batch, answers):
                entry, parsed = _parse_answer(token, answer)
                semantics[token] = entry
                repairs["unparsed_answers"] += not parsed
            if progress is not None:
                progress(len(semantics), len(tokens))
    finally:
        tokenizer.padding_side = padding_side
    return semantics, repairs


def _teacher_prompt(tokenizer, titles: list[str]) -> str:
    text = TEACHER_PROMPT.format(titles="\n".join(f"- {t}" for t in titles))
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             tokenize=False)
    return text + "\n"


def _parse_answer(token: str, answer: str) -> tuple[TokenSemantics, bool]:
    match = re.search(r"\{.*\}", answer, flags=re.DOTALL)
    if match:
        try:
            data = json.loads(match.group(0))
            if isinstance(data.get("description"), str) and isinstance(data.get("keywords"), list):
                return TokenSemantics(token, data["description"].strip(), [str(k) for k in data["keywords"]]), True
        except (json.JSONDecodeError, AttributeError):
            pass
    words = list(dict.fromkeys(w.lower() for w in re.findall(r"[A-Za-z][A-Za-z-]{2,}", answer)))
    return TokenSemantics(token, answer.strip(), words[:20]), False


def sa_init(model, tokenizer, semantics: dict[str, TokenSemantics], tokens: list[str]) -> dict:
    """Writes the SA-Init rows of ``tokens`` (those with keywords) into the input embeddings; returns counts."""
    embeddings = model.get_input_embeddings().weight
    with torch.no_grad():
        table = embeddings.detach().float()
        mean_norm = table.norm(dim=1).mean()
        written = 0
        for token in tokens:
            entry = semantics.get(token)
            ids = tokenizer(" ".join(entry.keywords), add_special_tokens=False).input_ids if entry else []
            if not ids:
                continue
            vector = table[ids].mean(dim=0)
            vector = vector * mean_norm / (vector.norm() + 1e-6)
            embeddings[tokenizer.convert_tokens_to_ids(token)] = vector.to(embeddings.dtype)
            written += 1
    return {"initialised": written, "left_at_default": len(tokens) - written}


def sa_init_hook(semantics: dict[str, TokenSemantics], log=None):
    """SA-Init as the recommender's ``token_init`` (``LLMRecommender.create``), reporting its counts to ``log``."""
    def token_init(model, tokenizer, tokens: list[str]) -> dict:
        counts = sa_init(model, tokenizer, semantics, tokens)
        if log is not None:
            log(f"SA-Init: {counts['initialised']} token rows from keywords, {counts['left_at_default']} left at the "
                "default initialisation")
        return counts

    return token_init


def ts_align_examples(tokenizer, semantics: dict[str, TokenSemantics], tokens: list[str],
                      reference: bool = False) -> list[SFTExample]:
    """Token -> description and description -> token, for each of ``tokens`` that has a description;
    ``reference``: the reference's bytes (a single newline after the instruction, ``### Response:\n``, targets
    ending "\n")."""
    examples = []
    eos = int(tokenizer.eos_token_id)
    to_description, to_token, suffix = TOKEN_TO_DESCRIPTION, DESCRIPTION_TO_TOKEN, ""
    if reference:
        to_description, to_token, suffix = TOKEN_TO_DESCRIPTION_REFERENCE, DESCRIPTION_TO_TOKEN_REFERENCE, "\n"
    newline = list(tokenizer(suffix, add_special_tokens=False).input_ids) if suffix else []
    for token in tokens:
        entry = semantics.get(token)
        if entry is None or not entry.description:
            continue
        examples.append(SFTExample(encode_prompt(tokenizer, to_description, [token]),
                                   text_target(tokenizer, entry.description, suffix)))
        examples.append(SFTExample(encode_prompt(tokenizer, to_token, [entry.description]),
                                   [int(tokenizer.convert_tokens_to_ids(token)), *newline, eos]))
    return examples


def load_semantics(source: str, sids: list[list[str]], titles: list[str], teacher: str = "smollm2-135m",
                   precision: str = "auto", progress=None) -> tuple[dict[str, TokenSemantics], dict]:
    """Token semantics from ``source``: "tfidf", "teacher" (the local LLM ``teacher``, loaded here) or the path of a
    teacher file; and what was repaired (teacher answers that were not JSON)."""
    if source == "tfidf":
        return tfidf_semantics(sids, titles), {}
    if source == "teacher":
        from ..llm.backbones import load_backbone

        model, tokenizer = load_backbone(teacher, precision)
        return teacher_semantics(sids, titles, model, tokenizer, progress=progress)
    return read_semantics(source), {}


def sid_training_examples(recommender, dataset, tasks: tuple[str, ...], semantics: dict | None, ts_align: bool,
                          max_rows: int | None = None, budget: int | None = None, seed: int = 0,
                          label_mask=None, rows: str = "target", context: int = 1
                          ) -> tuple[list[SFTExample], dict[str, int]]:
    """The SFT examples of a recommender: its tasks (``recalign.llm.tasks``), TS-Align's with ``ts_align``, mixed
    at natural proportions (cut to ``budget`` examples, every task by the same fraction); and the count per task."""
    from ..llm.tasks import mix_tasks, task_examples

    per_task = task_examples(recommender, dataset, "train", tasks, max_rows, label_mask, rows, context)
    if ts_align:
        if semantics is None or recommender.sids is None:
            raise ValueError("TS-Align needs semantic IDs and token semantics")
        per_task["ts_align"] = ts_align_examples(recommender.tokenizer, semantics,
                                                 sorted({t for sid in recommender.sids for t in sid}),
                                                 reference=bool(recommender.template.target_suffix))
    return mix_tasks(per_task, budget, seed)
