"""Custom-code export of pruned models a stock config cannot describe (pakd_hf.export).

Tiny BERT / RoBERTa / ViT models are compacted in memory with the engine (non-uniform layers, a
dropped layer, heads without hidden, hidden without heads), saved with ``save_compact``, then
reloaded in FRESH subprocesses (one per mode, run in parallel, each loading every folder):

- ``remote``: pakd_hf blocked from import, ``trust_remote_code=True``;
- ``pakd_first``: ``import pakd_hf.export`` before transformers (post-import hook), no trust_remote_code;
- ``pakd_after``: transformers' Auto classes imported first, then ``pakd_hf.export``;
- ``plain``: pakd_hf blocked, no trust_remote_code: custom folders must fail, stock ones load.

Outputs are compared with the in-memory compacted model (<= 1e-5); weights must load with no
missing / unexpected / mismatched key.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import toy

from pakd_hf import export
from pakd_hf.prune.compact import compact
from pakd_hf.arch.structure import Structure
from pakd_hf.prune.structure import CheckpointMismatchError

TOL = 1e-5
ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------- models


def _sharpen(model, seed: int):
    """Random weights large enough that attention is far from uniform (so a wrong head_dim or
    scaling would show in the outputs); LayerNorm gains stay near 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("weight") and ("layernorm" in name.lower()):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.3 * noise)
    return model.eval()


def tiny_bert(seed=0):
    return _sharpen(toy.tiny_bert(vocab_size=100, max_positions=32, num_labels=3), seed)


def tiny_roberta(seed=1):
    return _sharpen(toy.tiny_roberta(num_labels=3, type_vocab_size=1, pad_token_id=1), seed)


def tiny_vit(seed=2):
    return _sharpen(toy.tiny_vit(), seed)


def pick(n: int, k: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=g)[:k].tolist())


def structure(layers, heads, ffn, hidden=32) -> Structure:
    """heads / ffn: kept COUNTS per original layer (0 for a dropped one), chosen at scattered indices."""
    return Structure(
        4, 4, 8, 64, 32, layers=layers,
        heads=[pick(4, h, 10 + i) if i in layers else [] for i, h in enumerate(heads)],
        ffn=[pick(64, f, 20 + i) if i in layers else [] for i, f in enumerate(ffn)],
        hidden=pick(32, hidden, 99),
    )


def text_inputs():
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 100, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[1, 6:] = 1
    return {"input_ids": ids, "attention_mask": mask}


def image_inputs():
    return {"pixel_values": torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(6))}


# Uniform structures that stock configs hold: BERT 2 heads x 8 = hidden 16; ViT any (head_dim key).
CASES = {
    # name: (builder, structure, inputs, custom code expected)
    "bert_nonuniform": (tiny_bert, structure([1, 2, 3], [4, 2, 1, 3], [64, 10, 33, 5]), text_inputs, True),
    "bert_heads_only": (tiny_bert, structure([0, 1, 2, 3], [2, 2, 2, 2], [64] * 4), text_inputs, True),
    "bert_hidden_only": (tiny_bert, structure([0, 1, 2, 3], [4] * 4, [64] * 4, hidden=30), text_inputs, True),
    "bert_uniform": (tiny_bert, structure([0, 2, 3], [2] * 4, [20] * 4, hidden=16), text_inputs, False),
    "roberta_nonuniform": (tiny_roberta, structure([0, 1, 3], [4, 2, 1, 3], [64, 10, 33, 5], hidden=28),
                           text_inputs, True),
    "vit_nonuniform": (tiny_vit, structure([0, 1, 3], [4, 2, 1, 3], [64, 10, 33, 5], hidden=28), image_inputs, True),
    "vit_uniform": (tiny_vit, structure([0, 1, 2, 3], [2] * 4, [40] * 4), image_inputs, False),
}
FAMILY_NAME = {"bert": "Bert", "roberta": "Roberta", "vit": "ViT"}
TASK_AUTO = {"bert": "AutoModelForSequenceClassification", "roberta": "AutoModelForSequenceClassification",
             "vit": "AutoModelForImageClassification"}


def _outputs(model, inputs) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    res = {"hidden_states[-1]": out.hidden_states[-1]}
    for name in ("logits", "last_hidden_state"):
        if getattr(out, name, None) is not None:
            res[name] = getattr(out, name)
    return res


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every case compacted, saved and described in a manifest for the subprocess worker."""
    base = tmp_path_factory.mktemp("export")
    manifest, info = [], {}
    for name, (build, st, make_inputs, custom) in CASES.items():
        model = build()
        compact(model, st, check_export=False)
        assert export.needs_custom_code(model) is custom, name
        folder = export.save_compact(model, base / name, extra_pakd={"note": name})
        inputs = make_inputs()
        family = name.split("_")[0]
        ref = base / f"{name}.pt"
        torch.save({"inputs": inputs, "outputs": _outputs(model, inputs)}, ref)
        manifest.append({"name": name, "folder": str(folder), "auto": TASK_AUTO[family], "ref": str(ref),
                         "custom": custom, "base": False})
        if name in ("bert_nonuniform", "vit_nonuniform"):  # the base model class, from the same folder
            bref = base / f"{name}_base.pt"
            torch.save({"inputs": inputs, "outputs": _outputs(model.base_model, inputs)}, bref)
            manifest.append({"name": f"{name}_base", "folder": str(folder), "auto": "AutoModel", "ref": str(bref),
                             "custom": custom, "base": True})
        info[name] = {"folder": folder, "model": model, "inputs": inputs}
    # a custom model loaded through pakd_hf and re-saved with a PLAIN save_pretrained keeps working
    resaved = base / "bert_resaved"
    export.load_compact(info["bert_nonuniform"]["folder"]).save_pretrained(resaved)
    manifest.append({**manifest[0], "name": "bert_resaved", "folder": str(resaved)})
    (base / "manifest.json").write_text(json.dumps(manifest))
    return base, info


WORKER = textwrap.dedent('''
    import importlib.abc, json, sys

    mode, manifest = sys.argv[1], sys.argv[2]
    if mode in ("remote", "plain"):
        class _Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "pakd_hf" or name.startswith("pakd_hf."):
                    raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
                return None
        sys.meta_path.insert(0, _Block())
    if mode == "pakd_first":
        import pakd_hf.export  # before transformers: registration through the post-import hook
    import torch
    import transformers

    torch.set_num_threads(1)


    def get(out, name):
        return out.hidden_states[-1] if name == "hidden_states[-1]" else getattr(out, name)


    def load_all(trust):
        results = {}
        for case in json.load(open(manifest)):
            auto = getattr(transformers, case["auto"])
            kwargs = {"trust_remote_code": True} if trust else {}
            try:
                model, info = auto.from_pretrained(case["folder"], output_loading_info=True, **kwargs)
            except Exception as e:
                results[case["name"]] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}
                continue
            ref = torch.load(case["ref"], weights_only=True)
            with torch.no_grad():
                out = model.eval()(**ref["inputs"], output_hidden_states=True)
            results[case["name"]] = {
                "ok": True,
                "class": type(model).__name__,
                "module": type(model).__module__,
                "diff": {k: float((get(out, k) - v).abs().max()) for k, v in ref["outputs"].items()},
                "missing": sorted(info["missing_keys"]),
                "unexpected": sorted(info["unexpected_keys"]),
                "mismatched": sorted(str(m) for m in info["mismatched_keys"]),
            }
        results["_pakd_imported"] = any(m == "pakd_hf" or m.startswith("pakd_hf.") for m in sys.modules)
        return results


    report = {mode: load_all(trust=mode == "remote")}
    if mode == "plain":
        # same process, now with pakd_hf imported AFTER transformers' Auto classes: immediate registration
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Block)]
        import pakd_hf.export
        report["pakd_after"] = load_all(trust=False)
    print("\\nRESULT " + json.dumps(report))
''')

WORKERS = ("remote", "pakd_first", "plain")  # "plain" also reports "pakd_after"


@pytest.fixture(scope="module")
def reloaded(exported, tmp_path_factory):
    """{mode: {case: result}}: fresh interpreters, all running at once (stderr goes to a file so that
    no pipe fills up while another worker is read)."""
    base, _ = exported
    work = tmp_path_factory.mktemp("worker")
    script = work / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1",
           "HF_HOME": str(work / "hf_home")}
    env.pop("PYTHONPATH", None)
    procs = {}
    for mode in WORKERS:
        with open(work / f"{mode}.out", "w") as out, open(work / f"{mode}.err", "w") as err:
            procs[mode] = subprocess.Popen([sys.executable, str(script), mode, str(base / "manifest.json")], cwd=work,
                                           env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    results = {}
    for mode, p in procs.items():
        p.wait(timeout=300)
        out, err = (work / f"{mode}.out").read_text(), (work / f"{mode}.err").read_text()
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]  # input() prompts lack a newline
        assert p.returncode == 0 and lines, f"{mode} worker failed:\n{err[-3000:]}"
        results.update(json.loads(lines[-1][len("RESULT "):]))
    return results


def _assert_exact(res: dict, case: str, base: bool) -> None:
    assert res["ok"], f"{case}: {res.get('error')}"
    assert max(res["diff"].values()) <= TOL, f"{case}: {res['diff']}"
    assert res["mismatched"] == [], case
    if base:  # AutoModel from a task folder: the task head is unexpected, a ViT pooler missing
        assert all(k.startswith("pooler.") for k in res["missing"]), res["missing"]
    else:
        assert res["missing"] == [] and res["unexpected"] == [], f"{case}: {res}"


# ----------------------------------------------------------------------------- tests
def test_custom_code_loads_with_trust_remote_code_without_pakd(exported, reloaded):
    res = reloaded["remote"]
    assert res.pop("_pakd_imported") is False
    for case, r in res.items():
        _assert_exact(r, case, base=case.endswith("_base"))
        if r["class"].startswith("PaKD"):
            assert r["module"].startswith("transformers_modules."), r  # the folder's own code ran


@pytest.mark.parametrize("mode", ["pakd_first", "pakd_after"])
def test_custom_code_loads_without_trust_remote_code_with_pakd(exported, reloaded, mode):
    res = reloaded[mode]
    assert res.pop("_pakd_imported") is True
    for case, r in res.items():
        _assert_exact(r, case, base=case.endswith("_base"))
        if r["class"].startswith("PaKD"):
            assert r["module"].startswith("pakd_hf.templates."), r  # registered classes, no remote code


def test_without_pakd_and_without_trust_remote_code_custom_folders_fail(exported, reloaded):
    res = reloaded["plain"]
    assert res.pop("_pakd_imported") is False
    for case, r in res.items():
        custom = True if case == "bert_resaved" else CASES[case.removesuffix("_base")][3]
        if custom:
            assert not r["ok"], f"{case} loaded custom code without trust_remote_code: {r}"
        else:
            _assert_exact(r, case, base=False)
            assert r["module"].startswith("transformers.models."), r


def test_folder_contents_and_generated_code(exported):
    _, info = exported
    for name, (_, st, _, custom) in CASES.items():
        folder = info[name]["folder"]
        config = json.loads((folder / "config.json").read_text())
        rec = json.loads((folder / "pakd.json").read_text())
        code = sorted(p.name for p in folder.glob("*.py"))
        assert rec["custom_code"] is custom and rec["note"] == name
        assert Structure.from_dict(rec["structure"]) == st.normalized()
        if not custom:  # (6) stock-expressible: stock config, no code, no auto_map
            assert code == [] and "auto_map" not in config and not config["model_type"].startswith("pakd_")
            continue
        family = name.split("_")[0]
        assert config["model_type"] == f"pakd_{family}"
        assert code == [f"configuration_pakd_{family}.py", f"modeling_pakd_{family}.py"]
        assert config["auto_map"]["AutoConfig"] == f"configuration_pakd_{family}.PaKD{FAMILY_NAME[family]}Config"
        assert config["auto_map"][TASK_AUTO[family]] == f"modeling_pakd_{family}.{config['architectures'][0]}"
        assert config["pakd_heads_per_layer"] == st.heads_per_layer()
        assert config["pakd_ffn_per_layer"] == st.ffn_per_layer()
        assert config["pakd_head_dim"] == 8 and config["hidden_size"] == len(st.hidden)
        for f in code:  # self-contained: only torch, transformers and the sibling file
            tree = ast.parse((folder / f).read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    assert all(a.name.split(".")[0] in ("torch", "transformers") for a in node.names), f
                elif isinstance(node, ast.ImportFrom):
                    assert node.level == 1 or node.module.split(".")[0] in ("torch", "transformers"), f
        doc = ast.get_docstring(ast.parse((folder / f"modeling_pakd_{family}.py").read_text()))
        assert "generated by pakd-hf" in doc and type(info[name]["model"]).__name__ in doc
        for i, (h, f) in enumerate(zip(st.heads_per_layer(), st.ffn_per_layer())):
            assert f"{i:>5}  {st.layers[i]:>14}  {h:>5}  {h * 8:>11}  {f:>4}" in doc, doc


def test_heads_only_bert_goes_through_custom_code(exported):
    _, info = exported
    folder = info["bert_heads_only"]["folder"]
    config = json.loads((folder / "config.json").read_text())
    assert config["hidden_size"] == 32 and config["pakd_heads_per_layer"] == [2, 2, 2, 2]
    assert config["num_attention_heads"] == 2 and config["pakd_head_dim"] == 8  # stock would derive 16


def test_load_compact_in_process_and_prune_again(exported, tmp_path):
    _, info = exported
    for name in CASES:
        model = export.load_compact(info[name]["folder"])
        ref = _outputs(info[name]["model"], info[name]["inputs"])
        got = _outputs(model, info[name]["inputs"])
        assert max(float((got[k] - v).abs().max()) for k, v in ref.items()) <= TOL, name
        assert Structure.from_model(model) == Structure.from_dict(
            json.loads((info[name]["folder"] / "pakd.json").read_text())["structure"])
    base = export.load_compact(info["bert_nonuniform"]["folder"], auto_class="AutoModel")
    assert type(base).__name__ == "PaKDBertModel"
    ref = _outputs(info["bert_nonuniform"]["model"].base_model, info["bert_nonuniform"]["inputs"])
    assert float((_outputs(base, info["bert_nonuniform"]["inputs"])["last_hidden_state"]
                  - ref["last_hidden_state"]).abs().max()) <= TOL
    # a loaded custom model pruned further (one more head and neuron gone) re-exports as custom code
    model = export.load_compact(info["bert_nonuniform"]["folder"])
    st = Structure.from_model(model)
    st.heads[3] = st.heads[3][1:]
    st.ffn[2] = st.ffn[2][1:]
    compact(model, st, check_export=False)
    again = export.load_compact(export.save_compact(model, tmp_path / "again"))
    assert type(again).__name__ == "PaKDBertForSequenceClassification"
    inputs = info["bert_nonuniform"]["inputs"]
    assert float((_outputs(again, inputs)["logits"] - _outputs(model, inputs)["logits"]).abs().max()) <= TOL
    # ... and one pruned back to stock-expressible shapes (2 heads x 8 = hidden 16) saves WITHOUT code
    model = export.load_compact(info["bert_heads_only"]["folder"])
    st = Structure.from_model(model)
    st.hidden = st.hidden[:16]
    compact(model, st, check_export=False)
    assert not export.needs_custom_code(model)
    folder = export.save_compact(model, tmp_path / "stock")
    assert json.loads((folder / "config.json").read_text())["model_type"] == "bert"
    assert not list(folder.glob("*.py"))
    stock = export.load_compact(folder)
    assert type(stock).__module__.startswith("transformers.")
    assert float((_outputs(stock, inputs)["logits"] - _outputs(model, inputs)["logits"]).abs().max()) <= TOL


def _tampered(src: Path, dst: Path, file: str, edit) -> Path:
    shutil.copytree(src, dst)
    data = json.loads((dst / file).read_text())
    edit(data)
    (dst / file).write_text(json.dumps(data))
    return dst


@pytest.mark.parametrize("what", ["config_ffn", "config_heads", "pakd_json", "code_file"])
def test_tampered_folder_fails_load_compact_with_one_line(exported, tmp_path, what):
    _, info = exported
    src = info["bert_nonuniform"]["folder"]
    dst = tmp_path / what
    if what == "config_ffn":  # layer 1 FFN 33 -> 34 (max stays 64)
        _tampered(src, dst, "config.json", lambda c: c["pakd_ffn_per_layer"].__setitem__(1, 34))
        expect = "layer 1 fc1"
    elif what == "config_heads":
        _tampered(src, dst, "config.json", lambda c: c["pakd_heads_per_layer"].__setitem__(0, 3))
        expect = "layer 0 q"
    elif what == "pakd_json":
        _tampered(src, dst, "pakd.json", lambda r: r["structure"]["heads"][1].pop())
        expect = "pakd.json structure implies heads per layer"
    else:
        shutil.copytree(src, dst)
        (dst / "modeling_pakd_bert.py").unlink()
        expect = "modeling_pakd_bert.py is missing"
    with pytest.raises(CheckpointMismatchError) as e:
        export.load_compact(dst)
    msg = str(e.value)
    assert "\n" not in msg and expect in msg, msg


def test_import_export_is_cheap():
    """`import pakd_hf.export` imports neither torch nor transformers (the registration waits)."""
    code = ("import sys, pakd_hf.export; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_roberta_templates_are_the_bert_templates_renamed():
    """The RoBERTa templates are kept as the BERT ones with names swapped (edit both together)."""
    subs = [("PaKD BERT", "PaKD RoBERTa"), ("stock transformers BERT", "stock transformers RoBERTa"),
            ("pruned BERT", "pruned RoBERTa"), ("plain BERT", "plain RoBERTa"),
            ("models.bert.modeling_bert", "models.roberta.modeling_roberta"), ("pakd_bert", "pakd_roberta"),
            ("Bert", "Roberta")]
    for kind in ("configuration", "modeling"):
        text = (export.TEMPLATES / f"{kind}_pakd_bert.py").read_text()
        for a, b in subs:
            text = text.replace(a, b)
        assert text == (export.TEMPLATES / f"{kind}_pakd_roberta.py").read_text(), kind


def test_adapters_flag_exactly_the_families_with_generated_code():
    """The engine asks the adapter (`custom_code`) instead of importing export: the two agree."""
    from pakd_hf.arch import registered_adapters
    from pakd_hf.export import CUSTOM_MODEL_TYPES

    flagged = {t for a in registered_adapters() if a.custom_code for t in a.model_types}
    assert {f"pakd_{t}" for t in flagged} == set(CUSTOM_MODEL_TYPES)
