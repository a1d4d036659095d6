"""Model cards and Hub pushes for compressed students.

The card is built with huggingface_hub's `ModelCardData` / `EvalResult` / `ModelCard` from
the Jinja template in `hub_cards/`; every number in it comes from a measured report
(`pakd_hf.benchmark.compare_models`) and the saved `pakd.json`, never from the template.

A push uploads an allowlist of the student's files only: weights, config,
tokenizer/processor, `pakd.json`, `pakd_recipe.yaml`, the card and its figure, any
generated modeling file, and the ONNX export in `onnx/` when there is one; never the teacher, optimizer or trainer state, checkpoints,
distillation projections or `training_args.bin` (which can hold a token).

matplotlib (the card's figure, about a second to import) and huggingface_hub's card and
upload classes are imported where they are used: `import pakd_hf` imports this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import yaml

from .export_files import FP32_FILE, INT8_FILE, ONNX_DIR, read_export_info

__all__ = ["PushError", "build_card", "write_card", "push_folder", "PUSH_PATTERNS", "INTERNAL_FILES", "CARD_FIGURE"]

CARD_FIGURE = "pakd_card.png"
TEMPLATE = Path(__file__).resolve().parent.parent / "hub_cards" / "pakd_model_card.md"
PACKAGED_TEMPLATE = Path(__file__).resolve().parent / "hub_cards" / "pakd_model_card.md"

PUSH_PATTERNS = [
    "*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "*.model",
    "preprocessor_config.json",
    "processor_config.json",
    "feature_extractor_config.json",
    "chat_template.jinja",
    "pakd.json",
    "pakd_recipe.yaml",
    "README.md",
    CARD_FIGURE,
    "modeling_pakd*.py",
    "configuration_pakd*.py",
]

PIPELINE_TAGS = {
    "text-classification": "text-classification",
    "token-classification": "token-classification",
    "image-classification": "image-classification",
    "audio-classification": "audio-classification",
    "text-generation": "text-generation",
}
AUTO_CLASSES = {
    "text-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "image-classification": "AutoModelForImageClassification",
    "audio-classification": "AutoModelForAudioClassification",
    "text-generation": "AutoModelForCausalLM",
}
MODALITY_TAGS = {"text": "nlp", "vision": "vision", "audio": "audio"}


class PushError(RuntimeError):
    """A push failed; the message says what happened and what to do. Nothing local changed."""


def _template_path() -> Path:
    for path in (PACKAGED_TEMPLATE, TEMPLATE):
        if path.is_file():
            return path
    raise FileNotFoundError(f"model-card template not found (looked at {PACKAGED_TEMPLATE} and {TEMPLATE})")


# A path that names this machine's folders: absolute (POSIX, Windows drive or UNC), or from a home.
_ABSOLUTE = re.compile(r"^(?:/|~|[A-Za-z]:[/\\]|\\\\|\$HOME\b|\$\{HOME\})")
# A command token: unquoted characters and quoted strings run together (``--out="/a b/c"``).
_TOKEN = re.compile(r"""(?:[^\s'"]+|'[^']*'|"[^"]*")+""")


def _last_part(path: str) -> str:
    parts = [p for p in re.split(r"[/\\]", path) if p]
    return parts[-1] if parts else path


def public_command(command: str) -> str:
    """`command` as a public card shows it: a path that names this machine's folders (absolute,
    Windows, UNC, ``~/x``, ``$HOME/x``; also the value of ``--flag=``, ``-f=`` or ``VAR=``)
    becomes its last part, quoted as the shell needs, so a card pushed to the Hub does not
    publish them; relative paths and everything else stay as typed. Commands are recorded with
    their paths shell-quoted (``pakd compress``, ``pakd ablate``), so a path with spaces is one token."""
    import shlex

    def short(token: str) -> str:
        head, eq, value = token.partition("=")
        if not eq or not re.fullmatch(r"-{0,2}[A-Za-z_][\w-]*", head):
            head, eq, value = "", "", token
        try:
            words = shlex.split(value)
        except ValueError:  # an unbalanced quote: leave it as typed
            return token
        if len(words) != 1 or not _ABSOLUTE.match(words[0]):
            return token
        return head + eq + shlex.quote(_last_part(words[0]))

    return _TOKEN.sub(lambda m: short(m.group(0)), command)


def _public_path(value: str) -> str:
    """A path on this machine as a public page shows it: a folder of the Hub's cache as its Hub id,
    any other by its last part."""
    return _hub_cache_id(value) or _last_part(value)


def _public_recipe(text: str) -> str:
    """The recipe's YAML as a public card and push show it: a string value that is a path on this
    machine (``teacher.model: /home/me/teacher``, ``data.dataset: ~/data``) becomes
    :func:`_public_path`, as in :func:`public_command`. A recipe with no such value comes back as
    it is. Otherwise it is parsed and written again: ``Recipe.save`` (the writer of
    ``pakd_recipe.yaml``) wraps a long plain scalar at a space onto the next line, where a
    line-by-line rewrite would miss the rest of the path, and it writes no comments to lose. Text
    that is not YAML falls back to shortening each line's scalar."""
    def shorten(node):
        if isinstance(node, dict):
            return {k: shorten(v) for k, v in node.items()}
        if isinstance(node, list):
            return [shorten(v) for v in node]
        if isinstance(node, str) and _ABSOLUTE.match(node):
            return _public_path(node)
        return node

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return _public_recipe_lines(text)
    public = shorten(data)
    if public == data:
        return text
    return yaml.safe_dump(public, sort_keys=False, allow_unicode=True, width=float("inf"))


def _public_recipe_lines(text: str) -> str:
    def line(m: re.Match) -> str:
        key, value, comment = m.group(1), m.group(2), m.group(3) or ""
        quote = value[:1] if value[:1] in "'\"" and value.endswith(value[:1]) and len(value) > 1 else ""
        bare = value[1:-1] if quote else value
        if not _ABSOLUTE.match(bare):
            return m.group(0)
        return key + quote + _public_path(bare) + quote + comment

    return re.sub(r"(?m)^(\s*(?:-\s+)?[^\s:#'\"][^:#\n]*:[ \t]+|\s*-[ \t]+)([^#\n]*?)([ \t]+#[^\n]*)?[ \t]*$", line, text)


def _is_local(name: str) -> bool:
    """Whether a model or data set name is a folder of this machine rather than a Hub id."""
    if _ABSOLUTE.match(name) or name.startswith(("./", "../", ".\\", "..\\")):
        return True
    try:
        return Path(name).exists()
    except (OSError, ValueError):  # a name too long or odd to be a path
        return False


def _hub_cache_id(path: str) -> str | None:
    """The Hub id of a folder in the Hub's cache (``.../models--org--name/snapshots/<sha>``)."""
    for part in reversed(re.split(r"[/\\]", path)):
        m = re.fullmatch(r"(?:models|datasets)--(.+)", part)
        if m:
            return m.group(1).replace("--", "/")
    return None


def _fmt_int(n: float) -> str:
    return f"{int(round(n)):,}"


def _fmt_bytes(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def _repeats(r: dict[str, Any]) -> str:
    """'20', or '284 (batch 1) and 20 (batch 32)' when the rounds ran on for a minimum time."""
    b1, b32 = r.get("latency_repeats_b1"), r.get("latency_repeats_b32")
    if b1 is not None and b32 is not None and b1 != b32:
        return f"{b1} (batch 1) and {b32} (batch 32)"
    return str(b1 if b1 is not None else r.get("latency_repeats", "?"))


def _compression_rows(r: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    if "params_teacher" in r:
        rows.append({"name": "parameters", "teacher": _fmt_int(r["params_teacher"]),
                     "student": _fmt_int(r["params_student"]), "ratio": _ratio(r["params_teacher"], r["params_student"])})
    if "bytes_teacher" in r:
        rows.append({"name": "safetensors size", "teacher": _fmt_bytes(r["bytes_teacher"]),
                     "student": _fmt_bytes(r["bytes_student"]), "ratio": _ratio(r["bytes_teacher"], r["bytes_student"])})
    if r.get("vocab_student") is not None and r.get("vocab_student") != r.get("vocab_teacher"):
        rows.append({"name": f"size with the student's {r['vocab_student']:,}-token vocabulary",
                     "teacher": _fmt_bytes(r["bytes_teacher_same_vocab"]), "student": _fmt_bytes(r["bytes_student"]),
                     "ratio": _ratio(r["bytes_teacher_same_vocab"], r["bytes_student"])})
    if "macs_teacher" in r:
        rows.append({"name": "MACs per sample", "teacher": _fmt_int(r["macs_teacher"]),
                     "student": _fmt_int(r["macs_student"]), "ratio": _ratio(r["macs_teacher"], r["macs_student"])})
    for key, label in (("b1", "CPU latency, batch 1"), ("b32", "CPU latency, batch 32")):
        if f"latency_ms_{key}_teacher" in r:
            t, s = r[f"latency_ms_{key}_teacher"], r[f"latency_ms_{key}_student"]
            rows.append({"name": f"{label} (ms, median)", "teacher": f"{t:.2f}", "student": f"{s:.2f}",
                         "ratio": f"{t / s:.2f}x faster"})
    if "generate_tokens_per_s_teacher" in r:
        t, s = r["generate_tokens_per_s_teacher"], r["generate_tokens_per_s_student"]
        rows.append({"name": f"greedy generation, batch 1 (new tokens/s, {r.get('generate_new_tokens', '?')} tokens)",
                     "teacher": f"{t:.1f}", "student": f"{s:.1f}", "ratio": f"{s / t:.2f}x faster"})
    for split, suffix, n in (("validation", "_validation", r.get("n_validation")), (r.get("split", "test"), "", r.get("n_eval"))):
        if r.get(f"perplexity_teacher{suffix}") is not None:
            t, s = r[f"perplexity_teacher{suffix}"], r[f"perplexity_student{suffix}"]
            where = f"{split}, {n:,} tokens" if n else split
            rows.append({"name": f"perplexity ({where})", "teacher": f"{t:.2f}", "student": f"{s:.2f}",
                         "ratio": f"{s / t:.3f}x the teacher's"})
    if r.get("accuracy_teacher_validation") is not None:
        rows.append({"name": f"accuracy (validation, n={r['n_validation']})",
                     "teacher": f"{r['accuracy_teacher_validation']:.4f}",
                     "student": f"{r['accuracy_student_validation']:.4f}",
                     "ratio": f"{r['accuracy_kept_validation']:.3f} kept"})
    if r.get("accuracy_teacher") is not None:
        where = f" ({r.get('split', 'eval')}, n={r['n_eval']})" if r.get("n_eval") else ""
        rows.append({"name": f"accuracy{where}", "teacher": f"{r['accuracy_teacher']:.4f}",
                     "student": f"{r['accuracy_student']:.4f}",
                     "ratio": f"{r['accuracy_student'] / r['accuracy_teacher']:.3f} kept"})
    return rows


def _whisper_window(folder: Path) -> bool:
    """Does the folder's feature extractor pad every clip to a fixed window (Whisper's)? Then
    ``padding=True`` would cut the window to the clip, and the exported model refuses it."""
    try:
        return "n_samples" in json.loads((folder / "preprocessor_config.json").read_text())
    except (OSError, ValueError):
        return False


_INT8_WHAT = {  # export.json's int8_mode (absent before static int8 existed: those were dynamic)
    "dynamic": "dynamic int8 quantization (int8 weights, activations quantized at run time)",
    "static": "static int8 quantization (int8 weights per channel, activation ranges calibrated on training examples)",
}


def _deploy_section(folder: Path, r: dict[str, Any], modality: str, target: str) -> dict[str, Any]:
    """The card's "Deploy" section when the student has an ONNX export (``onnx/``): its files,
    the ONNX Runtime figures of the report, and a snippet that runs the int8 (else fp32) model
    with the tokenizer / processor saved beside it."""
    info = read_export_info(folder / ONNX_DIR)
    if info is None:
        return {}
    model_file = INT8_FILE if (folder / ONNX_DIR / INT8_FILE).is_file() else FP32_FILE
    files = [{"name": f"{ONNX_DIR}/{FP32_FILE}", "bytes": _fmt_bytes(info["bytes_onnx"]),
              "what": f"fp32, opset {info['opset']}; logits within {info['max_abs_diff']:.1g} of PyTorch's"}]
    if model_file == INT8_FILE:
        files.append({"name": f"{ONNX_DIR}/{INT8_FILE}", "bytes": _fmt_bytes(info["bytes_onnx_int8"]),
                      "what": _INT8_WHAT.get(info.get("int8_mode", "dynamic"), "int8 quantization")})
    rows = []
    if r.get("bytes_onnx_int8") is not None:
        rows.append({"name": "size, int8 ONNX vs fp32 safetensors", "teacher": _fmt_bytes(r["bytes_teacher"]),
                     "student": _fmt_bytes(r["bytes_onnx_int8"]), "ratio": f"{r['size_ratio_int8']:.1f}x"})
    for key, label in (("b1", "ONNX Runtime latency, batch 1"), ("b32", "ONNX Runtime latency, batch 32")):
        if f"latency_ms_{key}_teacher_ort" not in r:
            continue
        t = r[f"latency_ms_{key}_teacher_ort"]
        rows.append({"name": f"{label} (ms, median), fp32 student", "teacher": f"{t:.2f}",
                     "student": f"{r[f'latency_ms_{key}_student_ort']:.2f}", "ratio": f"{r[f'speedup_{key}_ort']:.2f}x faster"})
        if f"latency_ms_{key}_student_ort_int8" in r:
            rows.append({"name": f"{label} (ms, median), int8 student", "teacher": f"{t:.2f}",
                         "student": f"{r[f'latency_ms_{key}_student_ort_int8']:.2f}",
                         "ratio": f"{r[f'speedup_{key}_ort_int8']:.2f}x faster"})
    if r.get("accuracy_student_int8") is not None and r.get("accuracy_teacher") is not None:
        rows.append({"name": f"accuracy ({r.get('split', 'test')}), int8 student", "teacher": f"{r['accuracy_teacher']:.4f}",
                     "student": f"{r['accuracy_student_int8']:.4f}", "ratio": f"{r['accuracy_kept_int8']:.3f} kept"})
    preprocessor, call = {
        "text": ("AutoTokenizer", 'tokenizer = AutoTokenizer.from_pretrained(folder)\n'
                 'inputs = tokenizer(["an example to classify"], padding=True, truncation=True, return_tensors="np")'),
        "vision": ("AutoImageProcessor", 'processor = AutoImageProcessor.from_pretrained(folder)\n'
                   'image = Image.new("RGB", (64, 64))  # your image\n'
                   'inputs = processor(images=[image], return_tensors="np")'),
        "audio": ("AutoFeatureExtractor", 'extractor = AutoFeatureExtractor.from_pretrained(folder)\n'
                  'clip = np.zeros(extractor.sampling_rate, dtype=np.float32)  # one second of your audio\n'
                  'inputs = extractor([clip], sampling_rate=extractor.sampling_rate, '
                  + ("" if _whisper_window(folder / ONNX_DIR) else "padding=True, ") + 'return_tensors="np")'),
    }[modality]
    code = (
        "import numpy as np\nimport onnxruntime as ort\nfrom huggingface_hub import snapshot_download\n"
        + ("from PIL import Image\n" if modality == "vision" else "")
        + f"from transformers import {preprocessor}\n\n"
        + f'folder = snapshot_download({target!r}, allow_patterns=["{ONNX_DIR}/*"]) + "/{ONNX_DIR}"\n'
        + f'session = ort.InferenceSession(folder + "/{model_file}")\n'
        + call + "\n"
        + "logits = session.run(None, {i.name: inputs[i.name] for i in session.get_inputs()})[0]\n"
        + "print(logits.argmax(-1))"
    )
    note = ""
    if r.get("ort_threads"):
        cpu = r.get("hardware", "the same machine") if r.get("benchmark_device", "cpu") == "cpu" else "this machine's CPU"
        note = (f"ONNX Runtime {info['versions']['onnxruntime']} on {cpu}, "
                f"CPU, intra-op threads: {r['ort_threads']}; the teacher exported the same way (fp32) and timed with "
                "the protocol above, in the same rounds as the student.")
    return {"deploy_files": files, "deploy_rows": rows, "deploy_code": code, "deploy_note": note,
            "deploy_exporter": info["exporter"], "deploy_labels": ", ".join(info.get("labels", [])),
            "deploy_axes": _dynamic_axes(info)}


def _dynamic_axes(info: dict[str, Any]) -> str:
    """What export.json's ``dynamic_axes`` leave free, in words: a Whisper window or an image
    size is fixed, a text's tokens and a raw clip's samples are not."""
    words = {"sequence": "the text length", "samples": "the clip length"}
    free = sorted({a for axes in info.get("dynamic_axes", {}).values() for a in axes if a != "batch"})
    if "input_values" in info.get("inputs", []):  # a raw-audio model's mask ran along "sequence" before
        free = ["samples"]
    if not free:
        return "the batch is dynamic, the input's size is fixed"
    return " and ".join(["the batch", *(words.get(a, a) for a in free)]) + " are dynamic"


def _figure(folder: Path, r: dict[str, Any], structure: dict | None) -> str | None:
    """Accuracy (or perplexity) vs batch-1 latency, teacher and student, plus kept heads/FFN per layer."""
    metric = "perplexity" if r.get("perplexity_teacher") is not None else "accuracy"
    if r.get(f"{metric}_teacher") is None or "latency_ms_b1_teacher" not in r:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_structure = bool(structure and structure.get("layers"))
    trace = r.get("curve") or {}
    has_curve = bool(trace.get("params_kept") or trace.get(f"eval_{metric}"))
    panels = 1 + has_structure + has_curve
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4), dpi=110, squeeze=False)
    ax = axes[0][0]
    for who, color in (("teacher", "#888888"), ("student", "#d6604d")):
        x, y = r[f"latency_ms_b1_{who}"], r[f"{metric}_{who}"]
        ax.scatter([x], [y], s=80, color=color, label=who, zorder=3)
        ax.annotate(f"{who}\n{x:.1f} ms, {y:.3f}", (x, y), textcoords="offset points", xytext=(8, -4), fontsize=8)
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    lows = [r["latency_ms_b1_teacher"], r["latency_ms_b1_student"]]
    ax.set_xlim(min(lows) / 1.6, max(lows) * 3.0)  # room for the labels right of the points
    ax.set_xlabel(f"CPU latency, batch 1 (ms, {r.get('threads', '?')} threads)")
    ax.set_ylabel(f"{metric} ({r.get('split', 'eval')}" + (", lower is better)" if metric == "perplexity" else ")"))
    ax.set_title(f"{metric} vs latency", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if has_structure:
        ax2 = axes[0][1]
        layers = structure["layers"]
        heads = [len(structure["heads"][i]) for i in layers]
        ffn = [len(structure["ffn"][i]) for i in layers]
        xs = range(len(layers))
        if structure["original"]["num_heads"]:
            ax2.bar([x - 0.2 for x in xs], [h / structure["original"]["num_heads"] for h in heads], width=0.4,
                    label="heads kept")
            ax2.bar([x + 0.2 for x in xs], [f / structure["original"]["intermediate_size"] for f in ffn], width=0.4,
                    label="FFN kept")
            ax2.set_ylabel("share of the teacher's layer kept")
            ax2.set_ylim(0, 1.05)
        else:  # a CNN: no heads, and each block's inner width is its stage's, so channels, not a share
            ax2.bar(list(xs), ffn, width=0.6, label="inner channels kept")
            ax2.set_ylabel("channels kept per block")
        ax2.set_xticks(list(xs), [str(i) for i in layers])
        ax2.set_xlabel("original layer index (kept layers)")
        ax2.set_title(f"{len(layers)}/{structure['original']['num_layers']} layers, hidden "
                      f"{len(structure['hidden'])}/{structure['original']['hidden_size']}", fontsize=10)
        ax2.legend(fontsize=8)
    if has_curve:
        _curve_panel(axes[0][panels - 1], trace, metric, r.get(f"{metric}_teacher_validation"))
    fig.tight_layout()
    tmp = folder / f".{CARD_FIGURE}.tmp"  # aside, then renamed: never half a figure
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, folder / CARD_FIGURE)
    return CARD_FIGURE


def _curve_panel(ax, trace: dict[str, list], metric: str, teacher: float | None) -> None:
    """The compression curve: parameters kept over training steps, and the validation metric
    after each stage on a second axis (the teacher's as a dashed line)."""
    if trace.get("params_kept"):
        ax.plot(trace["steps"], trace["params_kept"], color="#4393c3", label="parameters kept")
        ax.set_ylim(0, 1.05)
    ax.set_xlabel("training step (PaKD stages)")
    ax.set_ylabel("parameters kept (share of the start)", color="#4393c3")
    ax.set_title("compression curve", fontsize=10)
    ax.grid(alpha=0.3)
    scores = trace.get(f"eval_{metric}")
    if scores:
        right = ax.twinx()
        right.plot(trace["eval_steps"], scores, "o-", color="#d6604d", label=f"validation {metric} (stage ends)")
        if teacher is not None:
            right.axhline(teacher, color="#888888", linestyle="--", linewidth=1, label="teacher")
        right.set_ylabel(f"validation {metric}", color="#d6604d")
        right.legend(fontsize=7, loc="lower left")


ARM_NAMES = {
    "scratch": "same shape, random init, labels only",
    "kd": "same shape, random init, distillation",
    "prune-once-kd": "teacher cut in one shot, then distillation",
    "prune-only": "the recipe's pruning, no teacher",
    "pakd": "this recipe (pruning + distillation, stage by stage)",
}


def _ablation_section(summary: dict[str, Any] | None) -> dict[str, Any]:
    """Template fields for a `pakd ablate` summary: mean ± sd and worst seed per route."""
    if not summary or not summary.get("arms"):
        return {"ablation_rows": [], "ablation_intro": "", "ablation_claim": "", "ablation_metric": "accuracy"}

    metric = summary.get("metric", "accuracy")

    def cell(stats):
        return f"{stats['mean']:.4f} ± {stats['sd']:.4f} (worst {stats['worst']:.4f})"

    def arm_name(spec: str) -> str:
        name, _, scale = spec.partition("@")
        return ARM_NAMES.get(name, name) + (f", learning rates x{scale}" if scale else "")

    rows = [{"arm": arm_name(arm), "seeds": entry["validation"]["n"], "validation": cell(entry["validation"]),
             "test": cell(entry["test"])} for arm, entry in summary["arms"].items()]
    intro = ("Students of this model's exact shape made by other routes, each for the same number of steps on the "
             "same examples from the same teacher, over seeds (mean ± standard deviation, worst seed), from "
             f"`{public_command(summary.get('command', 'pakd ablate'))}`:")
    claim = summary.get("claim") or {}
    text = ""
    if claim and metric == "perplexity":
        text = (f"On validation this recipe's perplexity is {claim['pakd_minus_best_validation']:+.3f} from the best "
                f"other route's ({arm_name(claim['best_other_arm'])}; lower is better).")
    elif claim:
        text = (f"On validation this recipe is {claim['pakd_minus_best_validation'] * 100:+.2f} points from the best "
                f"other route ({arm_name(claim['best_other_arm'])}).")
    seeds = [summary["arms"].get(a, {}).get("validation", {}).get("n", 0) for a in ("pakd", claim.get("best_other_arm"))]
    if claim and "sd" in claim and min(seeds) > 1:  # over one seed an sd says nothing
        scale, places = (1, 3) if metric == "perplexity" else (100, 2)
        text += (f" The sd of that difference over seeds is {claim['sd'] * scale:.{places}f} "
                 + (f"(paired by seed; this recipe ahead on {claim['pakd_ahead']} of {claim['n_seeds']})"
                    if claim.get("sd_paired") else "(the two routes' sds combined, as if their seeds were independent)")
                 + ".")
    if summary.get("quick"):
        text += f" Smoke run (`--quick`): these {metric} figures mean nothing."
    return {"ablation_rows": rows, "ablation_intro": intro, "ablation_claim": text.strip(),
            "ablation_metric": metric}


def _structure_rows(structure: dict | None, family: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    if not structure:
        return "The student keeps the teacher's architecture shape (distillation only).", []
    layers = structure["layers"]
    if not structure["original"]["num_heads"]:  # a CNN (ResNet): residual blocks and channels
        rows = [{"layer": i, "heads": None, "ffn": str(len(structure["ffn"][i]))} for i in layers]
        return (f"{len(layers)} of {structure['original']['num_layers']} residual blocks; {len(structure['hidden'])} of "
                f"{structure['original']['hidden_size']} channels of the residual streams (every stage's width, added up; "
                "each block's inner channels follow its stage's). Indices refer to the teacher."), rows
    groups = family == "llama"  # decoders prune grouped-query attention by whole KV groups
    rows = [{"layer": i, "heads": f"{len(structure['heads'][i])} / {structure['original']['num_heads']}",
             "ffn": f"{len(structure['ffn'][i])} / {structure['original']['intermediate_size']}"} for i in layers]
    summary = (
        f"{len(layers)} of {structure['original']['num_layers']} layers, hidden size {len(structure['hidden'])} of "
        f"{structure['original']['hidden_size']} (indices refer to the teacher)."
        + (" Attention is counted in KV groups: each keeps one key/value head and all the query heads that read it."
           if groups else "")
    )
    return summary, rows


def _kinds_used(structure: dict | None, pakd: dict) -> list[str]:
    tags = []
    if structure and not structure["original"]["num_heads"]:  # a CNN: blocks and channels
        if len(structure["layers"]) < structure["original"]["num_layers"]:
            tags.append("layer-pruning")
        if len(structure["hidden"]) < structure["original"]["hidden_size"]:
            tags.append("channel-pruning")
    elif structure:
        if any(len(structure["heads"][i]) < structure["original"]["num_heads"] for i in structure["layers"]):
            tags.append("head-pruning")
        if any(len(structure["ffn"][i]) < structure["original"]["intermediate_size"] for i in structure["layers"]):
            tags.append("ffn-pruning")
        if len(structure["layers"]) < structure["original"]["num_layers"]:
            tags.append("layer-pruning")
        if len(structure["hidden"]) < structure["original"]["hidden_size"]:
            tags.append("hidden-pruning")
    if pakd.get("hidden_rotation"):
        tags.append("hidden-rotation")
    if pakd.get("vocabulary"):
        tags.append("vocabulary-pruning")
    if pakd.get("sparsity", {}).get("weights"):
        tags.append("unstructured-sparsity")
    return tags


def build_card(
    student_dir: str | os.PathLike,
    report: dict[str, Any],
    *,
    repo_id: str | None = None,
    teacher: str | None = None,
    license: str | None = None,
    dataset: dict[str, str] | None = None,
    reproduce: str | None = None,
    write_figure: bool = True,
    location: str | None = None,
    ablation: dict[str, Any] | None = None,
):
    """Render the card of a saved student from its measured `report` (see module docs).

    `dataset`: {"id": Hub id or name, "name": display name}. `teacher`: the teacher's Hub id or
    path (else taken from pakd.json). `license`: the teacher's license where known.
    `location`: what the card's code passes to from_pretrained (default: `repo_id`, else a
    placeholder). `ablation`: the summary of `pakd ablate` for the same recipe and shape
    (`ablation.json`): the card then reports the recipe over seeds beside same-size baselines.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    # A report written by `pakd compress` carries these too; explicit arguments win.
    teacher = teacher or report.get("teacher")
    license = license or report.get("license")
    dataset = dataset or report.get("dataset")
    dataset_on_hub = True  # a local data set folder is named by its last part, and is no Hub id
    if dataset and _is_local(str(dataset.get("id", ""))):
        cached = _hub_cache_id(dataset["id"])
        short = cached or _last_part(str(Path(dataset["id"]).expanduser().absolute()))
        name_ = dataset.get("name")
        dataset = {**dataset, "id": short, "name": short if not name_ or _is_local(name_) else name_}
        dataset_on_hub = bool(cached)
    reproduce = reproduce or report.get("reproduce")
    folder = Path(student_dir)
    config = json.loads((folder / "config.json").read_text())
    pakd = json.loads((folder / "pakd.json").read_text()) if (folder / "pakd.json").is_file() else {}
    recipe_text = (folder / "pakd_recipe.yaml").read_text() if (folder / "pakd_recipe.yaml").is_file() else ""
    recipe = yaml.safe_load(recipe_text) if recipe_text else {}
    task = recipe.get("task") or report.get("task") or "text-classification"
    modality = recipe.get("modality") or {"text-classification": "text", "token-classification": "text",
                                          "image-classification": "vision", "audio-classification": "audio",
                                          "text-generation": "text"}[task]
    metric = "perplexity" if report.get("perplexity_student") is not None else "accuracy"
    structure = pakd.get("structure")
    teacher = teacher or (pakd.get("teacher") or {}).get("name_or_path") or None
    # base_model names a Hub model; a teacher trained from scratch by the recipe has none, and
    # the card then describes it (e.g. "vit trained from scratch"). Nor has a local folder: the
    # card names it by its last part (a Hub page must not publish the machine's folders, and
    # base_model must be a Hub id).
    # A folder of the Hub's cache is its Hub id.
    base_model = teacher
    if teacher and _is_local(teacher):
        base_model = _hub_cache_id(teacher)
        teacher = base_model or f"a local model ({_last_part(str(Path(teacher).expanduser().absolute()))})"
    teacher = teacher or report.get("teacher_description") or "the teacher"
    architecture = (config.get("architectures") or [pakd.get("architecture", "the model")])[0]
    custom_code = bool(pakd.get("custom_code") or config.get("auto_map"))
    name = repo_id.split("/")[-1] if repo_id else (recipe.get("name") or folder.name)

    # The model-index holds the student's own results (the teacher's stay in the card's table).
    eval_results = []
    if dataset and not report.get("quick"):
        splits = (("validation", report.get(f"{metric}_student_validation")),
                  (report.get("split", "test"), report.get(f"{metric}_student")))
        for split, value in splits:
            if value is None:
                continue
            eval_results.append(EvalResult(
                task_type=PIPELINE_TAGS[task], dataset_type=dataset["id"], dataset_name=dataset.get("name", dataset["id"]),
                dataset_split=split, metric_type=metric, metric_value=value, metric_name=f"{metric.capitalize()} ({split})",
            ))
    tags = ["pakd", "pruned", "knowledge-distillation", MODALITY_TAGS[modality], *_kinds_used(structure, pakd)]
    card_data = ModelCardData(
        library_name="transformers",
        base_model=base_model,
        pipeline_tag=PIPELINE_TAGS[task],
        tags=tags,
        datasets=[dataset["id"]] if dataset and dataset_on_hub else None,
        metrics=[metric] if eval_results else None,
        license=license,
        model_name=name,
        eval_results=eval_results or None,
    )
    figure = _figure(folder, report, structure) if write_figure else (CARD_FIGURE if (folder / CARD_FIGURE).is_file() else None)
    structure_summary, layer_rows = _structure_rows(structure, pakd.get("family"))
    rotation = pakd.get("hidden_rotation")
    if rotation:
        structure_summary += (
            f" The hidden stream was rotated onto its {rotation['width_after']} principal directions before it was cut "
            f"(they hold {rotation['energy_kept']:.0%} of its energy; the best {rotation['width_after']} coordinates "
            f"{rotation['energy_kept_best_coordinates']:.0%}), so hidden indices do not name the teacher's coordinates."
        )
    auto = AUTO_CLASSES[task]
    # Where the card's code loads from: the Hub repository, never the folder the card was written in.
    target = location or repo_id or f"<namespace>/{name}"
    trc = ", trust_remote_code=True" if custom_code else ""
    load_code = f"from transformers import {auto}\n\nmodel = {auto}.from_pretrained({target!r}{trc})"
    if modality == "text":
        load_code += f"\n\nfrom transformers import AutoTokenizer\ntokenizer = AutoTokenizer.from_pretrained({target!r})"
    elif (folder / "preprocessor_config.json").is_file():
        processor = "AutoImageProcessor" if modality == "vision" else "AutoFeatureExtractor"
        load_code += f"\n\nfrom transformers import {processor}\nprocessor = {processor}.from_pretrained({target!r})"
    note = ""
    if report.get("hardware"):
        processes = report.get("latency_processes", 1)
        examples = report.get("latency_examples")
        split = f" {report['split']}" if report.get("split") else ""
        note = (
            "Measured with `pakd_hf.benchmark` (what `pakd compress` and `pakd benchmark` run) on "
            + (f"{report['hardware']}, {report.get('threads', '?')} threads, PyTorch eager on CPU, median of "
               if report.get("benchmark_device", "cpu") == "cpu" else
               f"{report['hardware']}, PyTorch eager on {report['benchmark_device']}, median of ")
            + f"{_repeats(report)} timed runs after warm-up"
            + (f" (the median of {processes} fresh processes)" if processes > 1 else "")
            + "; teacher and student measured side by side in one process on the same inputs"
            + (f" (the same {examples}{split} examples at both batch sizes; at batch 1 one example per timed "
               "run, cycling through them)." if examples else ".")
        )
    data_note = (dataset or {}).get("note", "")
    balance = report.get("balance_by")
    if isinstance(balance, dict) and balance.get("examples"):
        counts = ", ".join(f"{value} {n:,}" for value, n in balance["examples"].items())
        data_note = (data_note + f" The pruning and distillation stages drew every value of `{balance.get('column')}` "
                     f"equally often (training examples per value: {counts}).").strip()
    if report.get("quick"):
        data_note = ("**Smoke run** (`--quick`): a few training steps on small slices of the data. The "
                     f"{metric} figures mean nothing; this card only shows that the pipeline ran. " + data_note).strip()
    limitations = [
        f"{metric.capitalize()} was measured on one split of one data set; check it on your own data before relying on it.",
        "Latency depends on hardware, threads, batch size and sequence length; the numbers above are for the "
        "stated machine only.",
        "A pruned and distilled model can lose capabilities of the teacher that the distillation data did not "
        "exercise, and inherits the teacher's biases.",
    ]
    if pakd.get("sparsity", {}).get("weights"):
        limitations.append("Unstructured / N:M sparsity is stored as dense zeros: it makes the model no smaller "
                           "or faster on CPU by itself.")
    vocabulary = pakd.get("vocabulary")
    if vocabulary:
        if vocabulary.get("dropped_tokens", vocabulary.get("dropped")) == "resegment":
            limitations.append("The vocabulary was reduced to the tokens of the training corpus: a word made of "
                               "dropped tokens is split into smaller kept pieces, so rare words and other domains "
                               "are read in more, less meaningful pieces.")
        else:
            limitations.append("The vocabulary was reduced to the tokens of the training corpus: other tokens map "
                               "to the unknown token.")
    augment = recipe.get("augment")
    if isinstance(augment, dict):
        limitations.append(
            f"The student learned from the teacher's outputs only, on the training texts and "
            f"{augment.get('copies', 4)} perturbed copies of each (words masked or swapped for nearest words, "
            "spans): it copies the teacher's mistakes as faithfully as its strengths."
        )
    card = ModelCard.from_template(
        card_data,
        template_path=str(_template_path()),
        title=name,
        summary=(
            f"A compressed `{architecture}` for {task.replace('-', ' ')}, pruned and distilled from "
            + (f"`{teacher}`" if base_model else teacher) + " with pakd-hf."
        ),
        figure=figure,
        figure_alt=f"{metric} vs latency of the teacher and the student",
        compression_rows=_compression_rows(report),
        measurement_note=note,
        structure_summary=structure_summary,
        layer_rows=layer_rows,
        kv_groups=pakd.get("family") == "llama",
        load_code=load_code,
        custom_code=custom_code,
        architecture=architecture,
        teacher_name=teacher,
        teacher_link=f"https://huggingface.co/{teacher}" if base_model and "/" in teacher else teacher,
        recipe_yaml=_public_recipe(recipe_text),
        reproduce=public_command(reproduce) if reproduce else None,
        limitations=limitations,
        data_note=data_note,
        **_ablation_section(ablation),
        **_deploy_section(folder, report, modality, target),
    )
    return card


def write_card(student_dir: str | os.PathLike, report: dict[str, Any], **kwargs) -> Path:
    """Render the card (and its figure) into `student_dir/README.md`: written aside, then
    renamed, so a kill never leaves half a card."""
    card = build_card(student_dir, report, **kwargs)
    path = Path(student_dir) / "README.md"
    tmp = path.with_name(".README.md.tmp")
    card.save(str(tmp))
    os.replace(tmp, path)
    return path


# pakd's own training state, written into checkpoint folders (PaKDTrainer): never pushed, even
# where an allowlist pattern (`*.safetensors`) would match it.
INTERNAL_FILES = frozenset({
    "pakd_state.json", "pakd_masks.safetensors", "pakd_importance.safetensors", "pakd_distill_projections.safetensors",
    "pakd_teacher.json", "training_args.bin",
})


# In the student's ONNX folder (`pakd export`, a recipe's `export` stage): the models, their
# record and the tokenizer / processor files that run them.
ONNX_PUSH_PATTERNS = [
    "model.onnx", "model_int8.onnx", "model.onnx.data", "model_int8.onnx.data", "export.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "*.model", "preprocessor_config.json",
    "processor_config.json", "feature_extractor_config.json",
]


def _public_file(path: Path) -> str | bytes:
    """What the Hub receives for a file to push: its path, or for the run's own records
    (``pakd_recipe.yaml``, ``pakd.json``) their text with this machine's folders shortened as the
    card shows them (:func:`_public_recipe`; the teacher's ``name_or_path`` by :func:`_public_path`).
    The local files stay as they are: a rerun on this machine needs them."""
    if path.name == "pakd_recipe.yaml":
        text = path.read_text(encoding="utf-8")
        public = _public_recipe(text)
        return public.encode("utf-8") if public != text else str(path)
    if path.name == "pakd.json":
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return str(path)
        teacher = info.get("teacher") if isinstance(info, dict) else None
        name = teacher.get("name_or_path") if isinstance(teacher, dict) else None
        if isinstance(name, str) and _is_local(name):
            teacher["name_or_path"] = _public_path(name)
            return (json.dumps(info, indent=1) + "\n").encode("utf-8")
    return str(path)


def _files_to_push(folder: Path) -> list[str]:
    def listed(where: Path, patterns: list[str]) -> list[Path]:
        return [p for p in where.iterdir()
                if p.is_file() and p.name not in INTERNAL_FILES and any(fnmatch(p.name, pat) for pat in patterns)]

    files = [p.name for p in listed(folder, PUSH_PATTERNS)]
    onnx = folder / ONNX_DIR
    if onnx.is_dir() and read_export_info(onnx) is not None:
        files += [f"{ONNX_DIR}/{p.name}" for p in listed(onnx, ONNX_PUSH_PATTERNS)]
    return sorted(files)


# Seconds any one request of a push may wait for the Hub (to connect, to send, for an answer):
# huggingface_hub's own client waits forever, so a Hub that stalls would hang the push. Generous
# for a commit of a few hundred MB; the environment variable PAKD_PUSH_TIMEOUT overrides it.
PUSH_TIMEOUT = float(os.environ.get("PAKD_PUSH_TIMEOUT", 300))
# `HfApi.create_commit` posts the commit once (only `upload_folder`'s Xet pipeline retries it), so
# a Hub that answers 5xx for a moment would fail the push: try the commit this many times, waiting
# 1, 2, 4 ... s between. Each try starts from new operations, so the client asks the Hub again which
# files it holds and skips those equal to ours: a commit that landed behind a 5xx (a gateway timing
# out after the Hub stored it) leaves the next try nothing to commit, not a second commit (unless the
# Hub had not stored it yet when the next try asked: then a second commit of the same tree). The
# same operation objects would keep the answer of the first try, and commit everything again.
COMMIT_TRIES = 4
_wait = time.sleep  # between tries; tests replace it


def _commit(api, repo_id: str, files: dict[str, str | bytes], **kwargs):
    """`api.create_commit` of ``files`` (path in the repository -> a local path or the bytes) with :data:`COMMIT_TRIES`
    tries on a 5xx answer (nothing else is retried: a timeout already waited :data:`PUSH_TIMEOUT`)."""
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import HfHubHTTPError

    for attempt in range(COMMIT_TRIES):
        try:
            operations = [CommitOperationAdd(path, data) for path, data in files.items()]
            return api.create_commit(repo_id, operations=operations, **kwargs)
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status is None or status < 500 or attempt == COMMIT_TRIES - 1:
                if status is not None and status >= 500:
                    exc.add_note(f" after {COMMIT_TRIES} tries")
                raise
            _wait(2 ** attempt)


@contextlib.contextmanager
def request_timeout(seconds: float):
    """Every request huggingface_hub's shared HTTP client sends inside the block times out after
    ``seconds``. The client is created without a timeout; an httpx request hook sets the
    request's own timeout (the transport reads it from ``request.extensions``), and is removed
    again afterwards, so the user's client is left as it was."""
    from huggingface_hub import get_session

    hooks = get_session().event_hooks
    limits = {"connect": seconds, "read": seconds, "write": seconds, "pool": seconds}

    def bound(request) -> None:
        request.extensions["timeout"] = limits

    hooks["request"].append(bound)
    try:
        yield
    finally:
        hooks["request"].remove(bound)


def _remove_empty_repo(api, repo_id: str, token: str) -> str:
    """Delete the repository a failed first push created, if it holds no file (a commit whose
    answer timed out may still have landed); say what is left either way."""
    try:
        with request_timeout(PUSH_TIMEOUT):
            files = [f for f in api.list_repo_files(repo_id, token=token) if f != ".gitattributes"]
            if files:
                return (f"; the repository '{repo_id}' it created holds {len(files)} file(s) (a commit may have "
                        "landed after all): check it before pushing again")
            api.delete_repo(repo_id, token=token)
        return f"; the empty repository '{repo_id}' it created was deleted again"
    except Exception as exc:  # noqa: BLE001 - reported in the one line
        return f"; the repository '{repo_id}' it created is left empty (deleting it failed: {type(exc).__name__})"


def _left(exc: BaseException) -> str:
    return "".join(getattr(exc, "__notes__", []))


def push_folder(
    student_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str = "Upload compressed model (pakd-hf)",
) -> str:
    """Upload the student's allowlisted files to `repo_id`; returns the commit URL.

    Raises :class:`PushError` with one message naming what happened and what to do. The local
    folder is only read.
    """
    from huggingface_hub import CommitOperationAdd, HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(student_dir)
    if not (folder / "config.json").is_file():
        raise PushError(f"{folder} is not a saved model folder (no config.json): nothing to push")
    try:  # read before the Hub is asked anything: a file that cannot be read creates no repository
        files = {f: _public_file(folder / f) for f in _files_to_push(folder)}
        [CommitOperationAdd(f, data) for f, data in files.items()]  # opens each file (built anew per try)
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # ValueError: a file gone since it was listed
        raise PushError(f"cannot read {folder} ({type(exc).__name__}: {exc}): nothing was pushed") from None
    api = HfApi()
    token = token or api.token or None
    if not token:
        from huggingface_hub import get_token

        token = get_token()
    if not token:
        raise PushError("no Hugging Face token: run `hf auth login` or set HF_TOKEN, then push again")
    endpoint = constants.ENDPOINT
    created = False
    try:
        with request_timeout(PUSH_TIMEOUT):
            created = not api.repo_exists(repo_id, token=token)
            api.create_repo(repo_id, private=private, exist_ok=True, token=token)
            try:
                if revision and revision != "main":
                    api.create_branch(repo_id, branch=revision, exist_ok=True, token=token)
                info = _commit(
                    api, repo_id, files,
                    revision=revision, commit_message=commit_message, token=token,
                )
            except BaseException as exc:
                if created:  # the repository this call made, still empty: remove it again
                    exc.add_note(_remove_empty_repo(api, repo_id, token))
                raise
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            raise PushError(f"the Hub at {endpoint} rejected the token (401): log in again with a valid write token") from None
        if status == 403:
            raise PushError(
                f"no write access to '{repo_id}' (403): push to your own namespace or ask for write access"
            ) from None
        if status is not None and status >= 500:
            raise PushError(
                f"the Hub at {endpoint} failed ({status}) while pushing '{repo_id}'{_left(exc)}; no commit was "
                "confirmed: retry later (a push of the same files commits only what the Hub does not hold)"
            ) from None
        raise PushError(f"push of '{repo_id}' failed: {str(exc).splitlines()[0]}{_left(exc)}") from None
    except (OSError, ConnectionError) as exc:
        raise PushError(f"cannot reach the Hub at {endpoint} ({type(exc).__name__}){_left(exc)}: check the network "
                        "and retry") from None
    except Exception as exc:  # httpx errors and the like, without importing httpx
        if "Timeout" in type(exc).__name__:
            raise PushError(f"the Hub at {endpoint} did not answer within {PUSH_TIMEOUT:g} s ({type(exc).__name__}) "
                            f"while pushing '{repo_id}'{_left(exc)}: retry later") from None
        if "Connect" in type(exc).__name__:
            raise PushError(f"cannot reach the Hub at {endpoint} ({type(exc).__name__}){_left(exc)}: check the network "
                            "and retry") from None
        if any(cls.__name__ == "TransportError" for cls in type(exc).__mro__):  # e.g. the Hub hung up mid-answer
            raise PushError(f"the Hub at {endpoint} broke off the push of '{repo_id}' ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}){_left(exc)}: retry later") from None
        raise
    return getattr(info, "commit_url", None) or str(info)
