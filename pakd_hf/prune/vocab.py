"""Vocabulary pruning: drop the word-embedding rows of tokens a task corpus never produces.

    ids = used_token_ids(tokenizer, train_texts)            # + every special / added token
    res = prune_vocabulary(model, tokenizer, ids)           # slices rows in place, new tokenizer
    save_pruned(model, out, extra={"vocab": res.record()})   # or model.save_pretrained(out)
    res.tokenizer.save_pretrained(out)                      # writes the full shared-id table

MiniLM-L6's 30,522 x 384 word embedding is ~half of its 22.7M parameters; a task corpus
touches a few thousand WordPiece tokens. Kept rows keep their ORIGINAL ORDER (new id = rank of
the old id among the kept ones), so ``[PAD]`` stays 0 when it was 0.

Contract (``dropped="unk"``, the default)
-----------------------------------------
For ANY text, the saved tokenizer produces exactly ``[id_map[i] for i in original_ids]``: the
original WordPiece segmentation, each kept token at its new id and each dropped token at the
``[UNK]`` id (same length, same offsets, same token_type_ids). So the compressed model gives
the same logits as the unpruned model fed the original ids with dropped positions replaced by
the original ``[UNK]`` id; on a text whose original tokens are all kept, the same logits as
the unpruned model, full stop. A dataset already tokenised with the old tokenizer maps to the
new ids elementwise (``res.id_map()[input_ids]``), e.g. to feed a teacher (old ids) and the
pruned student (new ids) the same positions.

How: a many-to-one WordPiece table
----------------------------------
Greedy longest-match-first WordPiece run on a SUBSET vocabulary gives the original
segmentation of every word whose original pieces are all kept (the longest match in the full
vocabulary is still there and nothing longer was added), but a word whose original segmentation
used a dropped piece is re-segmented into kept pieces (``walking`` -> ``walk ##in ##g`` instead
of ``walk [UNK]``), and a word that was ``[UNK]`` can even become kept pieces. To keep the
original segmentation exactly, the tokenizer keeps the FULL original token table and maps every
dropped token to the ``[UNK]`` id (several tokens share one id). ``tokenizers`` (0.23) accepts
that: the WordPiece model matches on the full table; ``[UNK]`` is an added special token, so
``convert_ids_to_tokens``/``decode`` show ``[UNK]`` at dropped positions
(``skip_special_tokens=True`` removes them; ``tokenize()`` still shows the original pieces).
The post-processor's ``[CLS]``/``[SEP]`` ids, the added tokens' ids and padding's ``pad_id``
are remapped; the saved folder keeps its stock ``tokenizer_class`` (``BertTokenizer``), which
``AutoTokenizer.from_pretrained`` (always fast in transformers 5: ``use_fast`` is ignored)
rebuilds from ``tokenizer.json``'s vocab dict, duplicates included.

Trade-offs of the many-to-one table (``dropped="unk"``):

- ``len(tokenizer)``/``vocab_size`` stay at the ORIGINAL count (30,522), above the model's
  ``config.vocab_size`` (the kept rows): the ids produced are always < the kept count, and
  ``pipeline("text-classification")`` does not look, but ``model.resize_token_embeddings(
  len(tokenizer))`` would grow the embedding back (with fresh rows) and an MLM collator's random
  replacement would draw ids past the table. Use ``model.config.vocab_size`` for such purposes.
- ``tokenizers`` SERIALISES a WordPiece model from its id->token map, keeping one arbitrary
  token per id: ``backend_tokenizer.save``/``to_str``, a stock ``save_pretrained``, pickling and
  ``copy.deepcopy`` silently collapse the table (the ``[UNK]`` id keeps one random token, often
  not ``[UNK]``; encoding then fails with "Missing [UNK] token" or re-segments). Mitigations
  here: (1) the tokenizer returned by :func:`prune_vocabulary` carries a ``_save_pretrained``
  hook, so ITS normal ``save_pretrained`` writes the full table; :func:`save_tokenizer` does the
  same for any in-memory tokenizer (e.g. one re-loaded with stock ``AutoTokenizer``, whose
  in-memory table is intact); (2) importing this module registers a ``copyreg`` reducer for
  ``tokenizers.Tokenizer`` that serialises WordPiece models with their full table, so
  ``deepcopy``/``pickle``/``dill`` (``datasets.map(num_proc=...)``) are exact in any process that
  imported it (tokenizers without shared ids pickle exactly as before); (3)
  :func:`saved_vocab_problems` detects a collapsed ``tokenizer.json`` in a folder. A process that
  never imports ``pakd_hf`` and re-saves or pickles the tokenizer still collapses it: re-save
  with :func:`save_tokenizer` (or re-copy the original ``tokenizer.json``).

``dropped="resegment"`` writes a plain one-to-one subset vocabulary instead: robust to every
serialisation, ``len(tokenizer) == config.vocab_size``, and the slow tokenizer agrees, but
dropped-piece words are re-segmented (not ``[UNK]``), and a word the original tokenizer turned
into ``[UNK]`` may come out as kept pieces: the equal-logits contract holds only for texts whose
original tokenization uses kept tokens and no ``[UNK]``.

Slow tokenizer / ``vocab.txt``: the folder also gets a ``vocab.txt`` with ONE token per new id
(kept tokens in id order). transformers 5 never builds a slow tokenizer by default
(``AutoTokenizer(..., use_fast=False)`` still returns the fast ``BertTokenizer``, reading
``tokenizer.json``); the legacy ``BertTokenizerLegacy.from_pretrained(folder)`` reads
``vocab.txt`` and behaves like ``dropped="resegment"``: same ids for texts whose original
tokens are kept, re-segmentation (not ``[UNK]``) for dropped pieces. A slow vocab.txt cannot
express shared ids.

Model side: the input embedding's rows are sliced (new ``nn.Parameter``, like
:func:`~pakd_hf.prune.compact.compact`: rebuild any optimizer afterwards), and a tied or untied
output embedding (``get_output_embeddings()``, an ``nn.Linear`` with one row per token, e.g.
BERT's MLM decoder and its bias) is sliced too, ties preserved. Any other parameter with one row
per token is refused before anything changes. ``config.vocab_size`` and the token-id fields
(pad/bos/eos/sep/cls/unk/mask/decoder_start) of the config and generation config are remapped.
Only WordPiece fast tokenizers are supported (BERT family); BPE/Unigram raise.
"""

from __future__ import annotations

import copy
import copyreg
import json
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tokenizers import Tokenizer

from ..carried import set_vocabulary_record

DROPPED_MODES = ("unk", "resegment")
TOKEN_ID_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id",
                   "unk_token_id", "mask_token_id", "decoder_start_token_id")
_HOOK = "_pakd_vocab_hook"


class VocabPruneError(ValueError):
    """Vocabulary pruning cannot be applied to this model / tokenizer as asked."""


# ---------------------------------------------------------------- corpus ids
def used_token_ids(tokenizer, texts: Iterable[Any], batch_size: int = 1024) -> set[int]:
    """Every id the (fast) tokenizer produces on ``texts``, special tokens it adds included.

    ``texts``: strings, or ``(text_a, text_b)`` pairs (so the pair template's tokens count).
    No truncation: tokens past ``model_max_length`` count too.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise VocabPruneError(f"used_token_ids needs a fast tokenizer, got {type(tokenizer).__name__}")
    if isinstance(texts, str):
        texts = [texts]
    used: set[int] = set()
    singles: list[str] = []
    pairs: list[tuple[str, str]] = []

    def flush() -> None:
        kw = dict(add_special_tokens=True, truncation=False, padding=False, verbose=False,
                  return_attention_mask=False, return_token_type_ids=False)
        if singles:
            for ids in tokenizer(singles, **kw)["input_ids"]:
                used.update(ids)
            singles.clear()
        if pairs:
            a, b = zip(*pairs)
            for ids in tokenizer(list(a), list(b), **kw)["input_ids"]:
                used.update(ids)
            pairs.clear()

    for t in texts:
        if isinstance(t, str):
            singles.append(t)
        elif isinstance(t, (tuple, list)) and len(t) == 2 and all(isinstance(x, str) for x in t):
            pairs.append((t[0], t[1]))
        else:
            raise TypeError(f"texts must be strings or (str, str) pairs, got {type(t).__name__}")
        if len(singles) >= batch_size or len(pairs) >= batch_size:
            flush()
    flush()
    return used


# ------------------------------------------------------------------- result
@dataclass
class VocabPruneResult:
    """What :func:`prune_vocabulary` did. ``kept_ids[new_id]`` is the original id."""

    tokenizer: Any
    kept_ids: list[int]
    unk_id: int  # NEW id of the unknown token (what dropped tokens map to in "unk" mode)
    dropped: str
    vocab_size_original: int
    params_before: int
    params_after: int
    embedding_params_before: int
    embedding_params_after: int
    old_to_new: dict[int, int] = field(repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        if not self.old_to_new:
            self.old_to_new = {o: n for n, o in enumerate(self.kept_ids)}

    @property
    def vocab_size(self) -> int:
        return len(self.kept_ids)

    @property
    def kept_share(self) -> float:
        return self.vocab_size / self.vocab_size_original

    @property
    def embedding_share_before(self) -> float:
        return self.embedding_params_before / self.params_before

    @property
    def embedding_share_after(self) -> float:
        return self.embedding_params_after / self.params_after

    def id_map(self) -> torch.Tensor:
        """LongTensor ``[vocab_size_original]``: old id -> new id, dropped -> the ``[UNK]`` id.
        ``id_map()[old_input_ids]`` is what the new tokenizer produces in ``"unk"`` mode."""
        m = torch.full((self.vocab_size_original,), self.unk_id, dtype=torch.long)
        m[torch.tensor(self.kept_ids, dtype=torch.long)] = torch.arange(len(self.kept_ids))
        return m

    def teacher_ids(self) -> torch.Tensor:
        """LongTensor ``[vocab_size]``: new id -> old id. ``teacher_ids()[new_input_ids]`` feeds a
        model with the original vocabulary (a teacher) the same tokens at the same positions."""
        return torch.tensor(self.kept_ids, dtype=torch.long)

    def record(self) -> dict[str, Any]:
        """JSON-able summary for ``pakd.json`` (e.g. ``extra={"vocab": res.record()}``)."""
        return {
            "vocab_size_original": self.vocab_size_original,
            "vocab_size": self.vocab_size,
            "kept_share": round(self.kept_share, 6),
            "dropped_tokens": self.dropped,
            "unk_token_id": self.unk_id,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "embedding_params_before": self.embedding_params_before,
            "embedding_params_after": self.embedding_params_after,
            "embedding_share_before": round(self.embedding_share_before, 6),
            "embedding_share_after": round(self.embedding_share_after, 6),
        }

    def describe(self) -> str:
        return (f"vocab {self.vocab_size}/{self.vocab_size_original} ({100 * self.kept_share:.1f}% kept), "
                f"params {self.params_before:,} -> {self.params_after:,}, word-embedding share "
                f"{100 * self.embedding_share_before:.1f}% -> {100 * self.embedding_share_after:.1f}%")


# --------------------------------------------------------------- tokenizer
def _backend(tokenizer):
    bt = getattr(tokenizer, "backend_tokenizer", None)
    if bt is None or not getattr(tokenizer, "is_fast", False):
        raise VocabPruneError(f"vocabulary pruning needs a fast (tokenizers-backed) tokenizer, got "
                              f"{type(tokenizer).__name__}")
    return bt


def _full_json(backend) -> dict[str, Any]:
    """``backend.to_str()`` as a dict, with a WordPiece model's FULL token->id table (``to_str``
    keeps one token per id)."""
    j = json.loads(backend.to_str())
    if j.get("model", {}).get("type") == "WordPiece":
        full = backend.get_vocab(with_added_tokens=False)
        unk = j["model"].get("unk_token")
        # id order, the canonical token ([UNK]) first among tokens sharing an id: readable, and
        # vocab.txt-like for the one-to-one part
        j["model"]["vocab"] = dict(sorted(full.items(), key=lambda kv: (kv[1], kv[0] != unk, kv[0])))
    return j


def _remap_post_processor(pp: dict[str, Any] | None, m: dict[int, int]) -> dict[str, Any] | None:
    if pp is None:
        return None
    pp = copy.deepcopy(pp)
    kind = pp.get("type")
    if kind == "TemplateProcessing":
        for st in pp.get("special_tokens", {}).values():
            st["ids"] = [m[i] for i in st["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            tok, i = pp[key]
            pp[key] = [tok, m[i]]
    elif kind == "Sequence":
        pp["processors"] = [_remap_post_processor(p, m) for p in pp.get("processors", [])]
    elif kind != "ByteLevel":
        raise VocabPruneError(f"unknown post-processor {kind!r}: cannot remap its token ids")
    return pp


def _vocab_txt_lines(j: dict[str, Any], n: int) -> list[str]:
    """One token per id 0..n-1: an added token's content where it has the id (``[UNK]`` for the
    shared unk id), else the model's token with that id."""
    by_id: dict[int, str] = {}
    for tok, i in j["model"]["vocab"].items():  # sorted: canonical first
        by_id.setdefault(i, tok)
    for a in j.get("added_tokens", []):
        by_id[a["id"]] = a["content"]
    return [by_id.get(i, f"[unused{i}]") for i in range(n)]


def write_tokenizer_files(tokenizer, folder, filename_prefix: str | None = None) -> tuple[str, str]:
    """Write ``tokenizer.json`` with the full WordPiece table and a one-token-per-id
    ``vocab.txt`` into ``folder`` (overwriting what a stock save wrote). Returns both paths."""
    bt = _backend(tokenizer)
    j = _full_json(bt)
    if j["model"].get("type") != "WordPiece":
        raise VocabPruneError(f"not a WordPiece tokenizer ({j['model'].get('type')})")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pre = (filename_prefix + "-") if filename_prefix else ""
    tj = folder / f"{pre}tokenizer.json"
    tj.write_text(json.dumps(j, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    ids = list(j["model"]["vocab"].values()) + [a["id"] for a in j.get("added_tokens", [])]
    vt = folder / f"{pre}vocab.txt"
    vt.write_text("".join(t + "\n" for t in _vocab_txt_lines(j, max(ids) + 1)), encoding="utf-8")
    return str(tj), str(vt)


class _FullTableSave:
    """Instance-level ``_save_pretrained`` of a pruned tokenizer: the stock one serialises the
    backend (collapsing shared ids); this writes the full table and vocab.txt."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, save_directory, file_names, legacy_format=None, filename_prefix=None):
        return tuple(file_names) + write_tokenizer_files(self.tokenizer, save_directory, filename_prefix)


def _install_save_hook(tokenizer) -> None:
    tokenizer._save_pretrained = _FullTableSave(tokenizer)
    setattr(tokenizer, _HOOK, True)


def save_tokenizer(tokenizer, folder) -> Path:
    """``tokenizer.save_pretrained(folder)`` that keeps a many-to-one WordPiece table (works
    for a pruned tokenizer re-loaded with stock ``AutoTokenizer``, whose stock save would
    collapse it). Writes ``tokenizer_config.json``, ``tokenizer.json`` and ``vocab.txt``."""
    tokenizer.save_pretrained(folder)
    if not getattr(tokenizer, _HOOK, False):
        write_tokenizer_files(tokenizer, folder)
    return Path(folder)


def _build_tokenizer(tokenizer, old_to_new: dict[int, int], unk_old: int, dropped: str):
    """A stock-class fast tokenizer mapping text to the new ids, loaded the way users load it
    (``from_pretrained`` of the written files)."""
    bt = _backend(tokenizer)
    j = _full_json(bt)
    model = j.get("model", {})
    if model.get("type") != "WordPiece":
        raise VocabPruneError(f"vocabulary pruning supports WordPiece tokenizers (BERT family); this one is "
                              f"{model.get('type')!r}")
    unk_tok = model.get("unk_token")
    unk_new = old_to_new[unk_old]
    if dropped == "unk":
        vocab = {t: old_to_new.get(i, unk_new) for t, i in model["vocab"].items()}
    else:  # resegment: kept tokens only, one per id (aliases of a shared unk id are dropped too)
        vocab = {t: old_to_new[i] for t, i in model["vocab"].items()
                 if i in old_to_new and (i != unk_old or t == unk_tok)}
    model["vocab"] = vocab
    for a in j.get("added_tokens", []):
        a["id"] = old_to_new[a["id"]]
    j["post_processor"] = _remap_post_processor(j.get("post_processor"), old_to_new)
    if j.get("padding"):
        j["padding"]["pad_id"] = old_to_new[j["padding"]["pad_id"]]

    with tempfile.TemporaryDirectory(prefix="pakd-vocab-") as tmp:
        tokenizer.save_pretrained(tmp)  # tokenizer_config.json (+ a tokenizer.json replaced below)
        for extra in ("vocab.txt", "special_tokens_map.json", "added_tokens.json"):
            (Path(tmp) / extra).unlink(missing_ok=True)
        cfg_path = Path(tmp) / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        if "added_tokens_decoder" in cfg:
            cfg["added_tokens_decoder"] = {str(old_to_new[int(k)]): v for k, v in cfg["added_tokens_decoder"].items()}
            cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
        (Path(tmp) / "tokenizer.json").write_text(json.dumps(j, ensure_ascii=False), encoding="utf-8")
        new = type(tokenizer).from_pretrained(tmp)
    got = new.backend_tokenizer.get_vocab(with_added_tokens=False)
    if got != vocab:
        raise VocabPruneError(f"{type(tokenizer).__name__}.from_pretrained did not rebuild the pruned table "
                              f"({len(got)} entries, expected {len(vocab)})")
    for a in j.get("added_tokens", []):
        if new.convert_tokens_to_ids(a["content"]) != a["id"]:
            raise VocabPruneError(f"special token {a['content']!r} got id {new.convert_tokens_to_ids(a['content'])},"
                                  f" expected {a['id']}")
    new.name_or_path = getattr(tokenizer, "name_or_path", "")
    _install_save_hook(new)
    return new


# ------------------------------------------------------------------- model
def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _remap_token_fields(cfg, m: dict[int, int]) -> None:
    if cfg is None:
        return
    for f in TOKEN_ID_FIELDS:
        v = getattr(cfg, f, None)
        if v is None:
            continue
        if isinstance(v, (list, tuple)):
            setattr(cfg, f, [m[int(x)] for x in v])
        else:
            setattr(cfg, f, m[int(v)])


def _config_token_ids(cfg, vocab_size: int) -> set[int]:
    out: set[int] = set()
    if cfg is None:
        return out
    for f in TOKEN_ID_FIELDS:
        v = getattr(cfg, f, None)
        for x in (v if isinstance(v, (list, tuple)) else [v]):
            if isinstance(x, int) and 0 <= x < vocab_size:
                out.add(x)
    return out


def _tokenizer_ids(tokenizer) -> tuple[set[int], set[int]]:
    """(all ids of the tokenizer's table, ids that must be kept: special + added tokens)."""
    bt = _backend(tokenizer)
    table = set(bt.get_vocab(with_added_tokens=True).values())
    must = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return table, must


def prune_vocabulary(model: nn.Module, tokenizer, keep_ids: Iterable[int], *, dropped: str = "unk") -> VocabPruneResult:
    """Keep only the word-embedding rows of ``keep_ids`` (plus every special/added token and the
    token ids named in the config), in place; return the new tokenizer and the bookkeeping.

    ``dropped="unk"`` (default): dropped tokens map to ``[UNK]``, segmentation unchanged (see the
    module docstring); ``"resegment"``: a plain subset vocabulary.

    The model's embedding parameters become NEW ``nn.Parameter`` objects (ties kept): rebuild any
    optimizer afterwards. Nothing is changed when an error is raised.
    """
    if dropped not in DROPPED_MODES:
        raise ValueError(f"dropped must be one of {DROPPED_MODES}, got {dropped!r}")
    emb = model.get_input_embeddings()
    if not isinstance(emb, nn.Embedding):
        raise VocabPruneError(f"input embeddings are a {type(emb).__name__}, not nn.Embedding")
    V, d = emb.weight.shape
    table, must = _tokenizer_ids(tokenizer)
    if table and max(table) >= V:
        raise VocabPruneError(f"the tokenizer produces ids up to {max(table)} but the embedding has {V} rows")
    unk_old = tokenizer.unk_token_id
    if unk_old is None:
        raise VocabPruneError("the tokenizer has no unk token: dropped tokens would have nowhere to go")
    keep = {int(i) for i in keep_ids} | must | {unk_old} | _config_token_ids(model.config, V)
    keep |= _config_token_ids(getattr(model, "generation_config", None), V)
    bad = sorted(i for i in keep if not 0 <= i < V)
    if bad:
        raise VocabPruneError(f"keep_ids outside 0..{V - 1}: {bad[:10]}")
    kept = sorted(keep)
    old_to_new = {o: n for n, o in enumerate(kept)}

    # Which parameters have one row per token: the input embedding, the output embedding
    # (weight and bias; possibly tied to the input). Anything else of that shape: refuse.
    targets: dict[int, nn.Parameter] = {id(emb.weight): emb.weight}
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None:
        if not isinstance(out, nn.Linear) or out.weight.shape[0] != V:
            raise VocabPruneError(f"output embeddings {type(out).__name__} {tuple(out.weight.shape)}: only an "
                                  f"nn.Linear with {V} output rows (an LM head) can be sliced")
        targets[id(out.weight)] = out.weight
        if out.bias is not None:
            targets[id(out.bias)] = out.bias
    others = sorted({n for n, p in model.named_parameters(remove_duplicate=False)
                     if p.dim() >= 1 and p.shape[0] == V and id(p) not in targets})
    if others:
        raise VocabPruneError(f"parameters with one row per token that vocabulary pruning does not know how to "
                              f"slice: {others}")

    new_tok = _build_tokenizer(tokenizer, old_to_new, unk_old, dropped)  # may raise: model untouched so far

    params_before = _num_params(model)
    emb_before = emb.weight.numel()
    idx = torch.tensor(kept, dtype=torch.long, device=emb.weight.device)
    repl = {pid: nn.Parameter(p.detach().index_select(0, idx).clone(), requires_grad=p.requires_grad)
            for pid, p in targets.items()}
    for mod in model.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None and id(p) in repl:
                mod._parameters[name] = repl[id(p)]
    n = len(kept)
    emb.num_embeddings = n
    if emb.padding_idx is not None:
        emb.padding_idx = old_to_new.get(emb.padding_idx)
    if out is not None:
        out.out_features = n
    model.config.vocab_size = n
    _remap_token_fields(model.config, old_to_new)
    _remap_token_fields(getattr(model, "generation_config", None), old_to_new)

    return VocabPruneResult(
        tokenizer=new_tok, kept_ids=kept, unk_id=old_to_new[unk_old], dropped=dropped, vocab_size_original=V,
        params_before=params_before, params_after=_num_params(model),
        embedding_params_before=emb_before, embedding_params_after=emb.weight.numel(), old_to_new=old_to_new,
    )


def prune_vocabulary_by_counts(model: nn.Module, tokenizer, input_ids: Iterable[Iterable[int]], *,
                               min_count: int = 1, dropped: str = "unk") -> VocabPruneResult:
    """:func:`prune_vocabulary` keeping the tokens that occur at least ``min_count`` times in
    ``input_ids`` (rows tokenized with ``tokenizer``, e.g. a training set's ``input_ids``).

    The result is also attached to the model (:func:`.carried.vocabulary_record`): a
    :class:`~pakd_hf.PaKDTrainer` given that student maps its inputs back to the original ids
    for a teacher with the full vocabulary, and records the pruning in ``pakd.json``.
    """
    counts: Counter[int] = Counter()
    for row in input_ids:
        counts.update(int(i) for i in row)
    keep = {i for i, c in counts.items() if c >= min_count}
    result = prune_vocabulary(model, tokenizer, keep, dropped=dropped)
    set_vocabulary_record(model, result)
    return result


# ----------------------------------------------------------- saved folders
def saved_vocab_problems(folder) -> list[str]:
    """What is wrong with a saved folder's tokenizer vs its model: ids past ``config.json``'s
    ``vocab_size``, a missing unk token, or (when ``pakd.json`` records a ``"vocab"`` entry in
    ``"unk"`` mode) a many-to-one table collapsed by a stock re-save. Empty list: fine."""
    folder = Path(folder)
    problems: list[str] = []
    tj = folder / "tokenizer.json"
    if not tj.exists():
        return [f"{tj} missing"]
    j = json.loads(tj.read_text(encoding="utf-8"))
    model = j.get("model", {})
    vocab = model.get("vocab", {})
    rows = None
    if (folder / "config.json").exists():
        rows = json.loads((folder / "config.json").read_text()).get("vocab_size")
    ids = list(vocab.values()) if isinstance(vocab, dict) else []
    ids += [a["id"] for a in j.get("added_tokens", [])]
    if rows is not None and ids and max(ids) >= rows:
        problems.append(f"tokenizer ids go up to {max(ids)} but config.json has vocab_size {rows}")
    unk = model.get("unk_token")
    if model.get("type") == "WordPiece" and unk not in vocab:
        problems.append(f"the WordPiece table has no {unk!r}: a stock re-serialisation collapsed it "
                        "(re-save with pakd_hf.prune.vocab.save_tokenizer)")
    rec = {}
    if (folder / "pakd.json").exists():
        rec = json.loads((folder / "pakd.json").read_text()).get("vocab") or {}
    if rec.get("dropped_tokens") == "unk" and len(vocab) != rec.get("vocab_size_original"):
        problems.append(f"tokenizer.json's WordPiece table has {len(vocab)} entries, pakd.json says the original "
                        f"{rec.get('vocab_size_original')} map onto {rec.get('vocab_size')} ids: the many-to-one "
                        "table was collapsed by a stock re-serialisation (re-save with save_tokenizer)")
    return problems


# ------------------------------------------------- pickling shared-id tables
def _tokenizer_from_str(s: str):
    return Tokenizer.from_str(s)


def _reduce_tokenizer(tok):
    """copyreg reducer for ``tokenizers.Tokenizer``: exact for WordPiece tables with shared ids;
    every other tokenizer reduces as before."""
    try:
        model = tok.model
        shared = type(model).__name__ == "WordPiece" and (
            len(set(tok.get_vocab(with_added_tokens=False).values())) != tok.get_vocab_size(with_added_tokens=False))
    except Exception:  # pragma: no cover - never block pickling
        shared = False
    if shared:
        return _tokenizer_from_str, (json.dumps(_full_json(tok), ensure_ascii=False),)
    return tok.__reduce_ex__(2)


def _register_pickle_fix() -> None:
    copyreg.pickle(Tokenizer, _reduce_tokenizer)


_register_pickle_fix()

__all__ = [
    "DROPPED_MODES",
    "VocabPruneError",
    "VocabPruneResult",
    "prune_vocabulary",
    "save_tokenizer",
    "saved_vocab_problems",
    "used_token_ids",
    "write_tokenizer_files",
]
