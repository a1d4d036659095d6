"""Tiny models and a toy task for the tests (importable from test modules and scripts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import BertConfig, BertForSequenceClassification

VOCAB = 40
SEQ = 12


def toy_dataset(n: int = 256, seed: int = 0) -> Dataset:
    """Label 1 iff token 5 occurs more often than token 6: learnable by a tiny BERT."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (n, SEQ), generator=g)
    ids[:, 0] = 2  # [CLS]-like
    labels = ((ids == 5).sum(1) > (ids == 6).sum(1)).long()
    # Make the classes less unbalanced by planting token 5 in half of the rows.
    plant = torch.rand(n, generator=g) < 0.4
    ids[plant, 3] = 5
    labels = ((ids == 5).sum(1) > (ids == 6).sum(1)).long()
    lengths = torch.randint(SEQ // 2, SEQ + 1, (n,), generator=g)
    mask = (torch.arange(SEQ)[None, :] < lengths[:, None]).long()
    ids = ids * mask  # pad id 0
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "labels": labels.tolist()})


def tiny_bert(hidden=32, layers=4, heads=4, ffn=64, seed=0, dropout=0.0, num_labels=2, vocab_size=VOCAB,
              max_positions=SEQ, cls=None, **kw):
    """A randomly initialised BERT (seeded) of the given shape; ``cls``: a class or a class name
    of transformers (default ``BertForSequenceClassification``); other BertConfig fields in ``kw``."""
    import transformers

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=max_positions,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        num_labels=num_labels,
        **kw,
    )
    cls = getattr(transformers, cls) if isinstance(cls, str) else (cls or BertForSequenceClassification)
    return cls(cfg)


def tiny_roberta(hidden=32, layers=4, heads=4, ffn=64, seed=0, dropout=0.0, num_labels=2, vocab_size=100,
                 max_positions=40, **kw):
    """A randomly initialised RoBERTa classifier (seeded); other RobertaConfig fields in ``kw``."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(seed)
    cfg = RobertaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=ffn, max_position_embeddings=max_positions, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout, num_labels=num_labels, **kw)
    return RobertaForSequenceClassification(cfg)


def toy_images(n: int = 128, seed: int = 0) -> Dataset:
    """3x8x8 images; label = which of 3 channels is brightest on average (learnable by a tiny ViT)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    pixels = torch.randn(n, 3, 8, 8, generator=g) * 0.5
    pixels[torch.arange(n), labels] += 1.0
    return Dataset.from_dict({"pixel_values": pixels.tolist(), "labels": labels.tolist()}).with_format("torch")


def tiny_vit(hidden=32, layers=4, heads=4, ffn=64, seed=0, **kw):
    """A randomly initialised ViT (seeded) for 3x8x8 images, 3 labels; other ViTConfig fields in ``kw``."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    cfg = ViTConfig(**{
        "image_size": 8, "patch_size": 4, "num_channels": 3, "hidden_size": hidden, "num_hidden_layers": layers,
        "num_attention_heads": heads, "intermediate_size": ffn, "num_labels": 3,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, **kw,
    })
    return ViTForImageClassification(cfg)


def tiny_resnet(layer_type="bottleneck", seed=0, embedding=16, hidden_sizes=(16, 32), depths=(2, 2), bare=False,
                perturb_norms=True):
    """A seeded ResNet for 3-channel images, 3 labels. ``embedding == hidden_sizes[0]``: stage 0's
    first block has an identity shortcut (the stem is tied to stage 0); otherwise a conv shortcut
    and the stem is its own stream. ``perturb_norms`` moves BatchNorm away from its init (running
    statistics and affine terms then matter to every comparison)."""
    from transformers import ResNetConfig, ResNetForImageClassification, ResNetModel

    torch.manual_seed(seed)
    cfg = ResNetConfig(num_channels=3, embedding_size=embedding, hidden_sizes=list(hidden_sizes), depths=list(depths),
                       layer_type=layer_type, num_labels=3)
    model = (ResNetModel if bare else ResNetForImageClassification)(cfg).eval()
    if perturb_norms:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.add_(0.3 * torch.randn(m.weight.shape, generator=g))
                    m.bias.add_(0.3 * torch.randn(m.bias.shape, generator=g))
                    m.running_mean.add_(0.3 * torch.randn(m.running_mean.shape, generator=g))
                    m.running_var.mul_(1 + torch.rand(m.running_var.shape, generator=g))
    return model


def tiny_wav2vec2(seed=0, stable=False, weighted=False, hubert=False, **kw):
    """A seeded wav2vec2 (or HuBERT) classifier: hidden 32, 4 layers, 4 heads, FFN 64, two conv
    layers (a 320-sample hop), 3 labels, no dropout; other config fields in ``kw``."""
    from transformers import (
        HubertConfig,
        HubertForSequenceClassification,
        Wav2Vec2Config,
        Wav2Vec2ForSequenceClassification,
    )

    torch.manual_seed(seed)
    config_cls, model_cls = (HubertConfig, HubertForSequenceClassification) if hubert else (
        Wav2Vec2Config, Wav2Vec2ForSequenceClassification)
    cfg = config_cls(**{
        "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 64,
        "conv_dim": (16, 16), "conv_stride": (5, 4), "conv_kernel": (10, 8), "num_conv_pos_embeddings": 8,
        "num_conv_pos_embedding_groups": 4, "do_stable_layer_norm": stable,
        "feat_extract_norm": "layer" if stable else "group", "use_weighted_layer_sum": weighted,
        "classifier_proj_size": 24, "num_labels": 3, "layerdrop": 0.0, "hidden_dropout": 0.0,
        "attention_dropout": 0.0, "activation_dropout": 0.0, "feat_proj_dropout": 0.0, "initializer_range": 0.2,
        "vocab_size": 10, **kw,
    })
    return model_cls(cfg)


def tiny_whisper(seed=0, layers=4, **kw):
    """A randomly initialised Whisper encoder classifier (seeded; d_model 32, 4 heads, FFN 64,
    80 mel bins, 50 positions: 1 s clips); other WhisperConfig fields in ``kw``."""
    from transformers import WhisperConfig, WhisperForAudioClassification

    torch.manual_seed(seed)
    cfg = WhisperConfig(**{
        "d_model": 32, "encoder_layers": layers, "encoder_attention_heads": 4, "encoder_ffn_dim": 64,
        "decoder_layers": 1, "decoder_attention_heads": 4, "decoder_ffn_dim": 64, "num_mel_bins": 80,
        "max_source_positions": 50, "vocab_size": 64, "classifier_proj_size": 16, **kw,
    })
    return WhisperForAudioClassification(cfg)


def save_tiny_whisper(folder: Path, **kw) -> Path:
    """:func:`tiny_whisper` saved with the 1 s WhisperFeatureExtractor the offline tiny.en teacher uses."""
    from pakd_hf.pipeline.data.whisper_ct2 import feature_extractor

    tiny_whisper(**kw).save_pretrained(folder)
    feature_extractor().save_pretrained(folder)
    return folder


def refuse_device_barriers() -> None:
    """In a gloo run: fail on accelerate's ``wait_for_everyone``, which names ``device_ids=[local
    rank]``; torch then puts the barrier on ``cuda:N`` where the machine has a GPU, and process 1
    of 2 CPU processes on a one-GPU machine died there ("invalid device ordinal"). PaKD's own waits
    go through ``pakd_hf.trainer.wait_for_everyone``."""
    import accelerate.state

    def refuse(self):
        import torch.distributed as dist

        if not dist.is_initialized():  # one process (the reference run): accelerate waits for nobody
            return
        raise AssertionError("accelerate's wait_for_everyone in a gloo run: its barrier names a GPU where one is "
                             "(use pakd_hf.trainer.wait_for_everyone)")

    accelerate.state.PartialState.wait_for_everyone = refuse


def with_repo_on_path(env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment (or ``env``) for a child that imports the checkout's pakd_hf:
    the repository first on PYTHONPATH, whatever was there kept after it."""
    import os

    env = dict(os.environ if env is None else env)
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    return env


def kill_at_checkpoint(command: list[str], run_dir: Path, step: int = 12) -> None:
    """Run ``command`` (a pakd command that checkpoints into ``run_dir``) with the checkout on its
    path and SIGKILL it once ``checkpoint-<step>`` is complete: a run cut off mid-way."""
    import signal
    import time

    proc = subprocess.Popen(command, env=with_repo_on_path(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not (run_dir / f"checkpoint-{step}" / "pakd_checkpoint.json").is_file():
            assert proc.poll() is None, f"the run ended before its checkpoint at step {step}"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


# A fresh interpreter with stock packages only: offline, no PYTHONPATH (pakd_hf is not put on
# its path; the check below catches an installed copy being imported anyway).
STOCK_ENV = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
_NO_PAKD = "\nimport sys as _sys\nassert not any(m.split('.')[0] == 'pakd_hf' for m in _sys.modules), 'pakd_hf was imported'\n"


def run_stock(script: str, *args: str, cwd: str | Path = "/", timeout: int = 600, pythonpath: str | None = None,
              env: dict[str, str] | None = None) -> str:
    """Run ``script`` (with ``args`` in ``sys.argv[1:]``) in a fresh stock interpreter; its stdout.

    The test fails with the child's stderr when the script fails or when it imported pakd_hf
    (unless ``pythonpath`` deliberately puts code on the path, e.g. for ``trust_remote_code``).
    ``env`` adds to (or overrides) the stock environment, e.g. to reach the loopback Hub."""
    env = {**STOCK_ENV, **(env or {}), **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    code = script if pythonpath else script + _NO_PAKD
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=str(cwd),
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def stock_result(script: str, jobs: Any, **kw: Any) -> Any:
    """``run_stock`` with ``jobs`` as JSON in argv[1]; the JSON the script printed after "RESULT"."""
    out = run_stock(script, json.dumps(jobs), **kw)
    line = [line for line in out.splitlines() if line.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


def tiny_text_teacher(folder: Path, **config: Any) -> Path:
    """A randomly initialised 4-layer BERT (hidden 32) with MiniLM's real tokenizer, saved in
    ``folder``; ``config``: BertConfig fields over these."""
    from transformers import AutoTokenizer

    from pakd_hf.pipeline.data import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("all-minilm-l6-v2"))
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, **config,
    ))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tiny_rt_recipe(teacher: Path | str, copies: int = 2) -> dict:
    """The main NLP recipe's shape on the tiny teacher: vocabulary pruned first, a transfer set,
    layers and FFN, then the hidden stream rotated and cut with the heads, then recovery."""
    return {
        "name": "tiny-rt", "task": "text-classification",
        "data": {"dataset": "rotten-tomatoes", "max_length": 48},
        "teacher": {"model": str(teacher), "fine_tune": {"epochs": 1, "learning_rate": 1e-3, "batch_size": 16}},
        "training": {"batch_size": 16, "eval_batch_size": 64, "logging_steps": 4, "group_by_length": True},
        "vocabulary": {"at": "start", "dropped": "resegment"},
        "augment": {"copies": copies},
        "stages": [
            {"name": "prune", "epochs": 0.5, "learning_rate": 1e-3, "distillation": {"alpha": 0.5, "hidden": {}},
             "pruning": {"ffn": {"keep": 32}, "layers": {"keep": 2}}},
            {"name": "prune-hidden", "epochs": 0.5, "learning_rate": 1e-3, "distillation": {"alpha": 0.5, "hidden": {}},
             "pruning": {"heads": {"keep": 2}, "hidden": {"keep": 16, "method": "rotate", "calibration": 64}}},
            {"name": "recover", "epochs": 1, "learning_rate": 1e-3, "distillation": {"alpha": 0.5}},
        ],
    }


def record_writes(root: Path) -> list[str]:
    """From now on, every Python-level open for writing, mkdir, rename and removal under ``root``
    is appended to the returned list (an audit hook: what a process wrote, for the tests that run
    several)."""
    import os
    import sys

    root_text, written = str(root), []

    def under(path) -> bool:
        text = os.fsdecode(path)
        return text == root_text or text.startswith(root_text + os.sep)

    def audit(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            mode = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            writes = any(c in mode for c in "wax+") or (flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writes and under(args[0]):
                written.append(os.fsdecode(args[0]))
        elif event in ("os.mkdir", "os.rename", "os.remove", "shutil.rmtree"):
            paths = args[:2] if event == "os.rename" else args[:1]  # a rename writes its target too
            written.extend(os.fsdecode(p) for p in paths if isinstance(p, (str, bytes, os.PathLike)) and under(p))

    sys.addaudithook(audit)
    return written


def launcher_failure(stderr: str) -> str:
    """What a failed torchrun printed, for an assertion message: every rank's own lines past the
    first (the rank that failed first is rarely the one whose traceback ends the output), then the
    end of the output."""
    others = [line for line in stderr.splitlines() if line.startswith("[rank") and not line.startswith("[rank0]")]
    return "\n".join(others)[-6000:] + "\n...\n" + stderr[-3000:]


def needs(missing: bool, reason: str):
    """A skip marker for a missing system package or data file on a developer's machine; in CI
    (``CI`` set) the test runs anyway and fails on what is missing, never skips silently."""
    import os

    import pytest

    return pytest.mark.skipif(missing and not os.environ.get("CI"), reason=reason)


def missing(reason: str):
    """Inside a test or fixture: skip for a missing system package or asset on a developer's
    machine; in CI (``CI`` set) fail instead, never skip silently."""
    import os

    import pytest

    if os.environ.get("CI"):
        pytest.fail(f"missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require(module: str, reason: str):
    """``pytest.importorskip`` on a developer's machine; in CI (``CI`` set, as `.ci/run` does) a
    missing package or asset fails the test instead of skipping it silently."""
    import importlib
    import os

    import pytest

    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is missing in CI: {reason}", pytrace=False)
        pytest.skip(f"{module} is not installed: {reason}", allow_module_level=True)
