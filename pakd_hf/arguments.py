"""PaKDTrainingArguments: TrainingArguments plus the path of a recipe, nothing more.

Everything about stages, distillation and pruning lives in the recipe (data, versioned with
the result); everything about how to run (batch size, logging, saving, devices) stays in
TrainingArguments, where transformers users expect it.
"""

from __future__ import annotations

import difflib
import tempfile
from dataclasses import dataclass, field

from transformers import TrainingArguments

__all__ = ["PaKDTrainingArguments", "training_overrides", "TRAINING_FLAGS_REFUSED", "result_flags"]


@dataclass
class PaKDTrainingArguments(TrainingArguments):
    """[`~transformers.TrainingArguments`] with two more fields, `recipe` and `eval_on_stage_end`.

    Works with `HfArgumentParser` like any TrainingArguments subclass (`--recipe path.yaml`).
    """

    recipe: str | None = field(
        default=None,
        metadata={
            "help": "Path to a PaKD recipe YAML (stages, distillation, pruning). A `recipe` passed to "
            "PaKDTrainer overrides it."
        },
    )
    eval_on_stage_end: bool = field(
        default=False,
        metadata={
            "help": "Evaluate on the eval dataset at the end of every stage (Trainer's evaluate, so "
            "compute_metrics and the trackers see it), beside whatever eval_strategy asks."
        },
    )


# TrainingArguments flags `pakd compress` refuses, with what to do instead: the recipe plans the
# stages (their steps, learning rates, schedules), and some flags have a pakd spelling.
TRAINING_FLAGS_REFUSED = {
    "output_dir": "use --output-dir (the stages run in OUT/.student-run)",
    "max_steps": "the recipe's stages set the steps (steps: / epochs: per stage)",
    "num_train_epochs": "the recipe's stages set the steps (steps: / epochs: per stage)",
    "learning_rate": "each stage has its own learning_rate in the recipe",
    "lr_scheduler_type": "each stage runs its own schedule (the recipe's stages)",
    "warmup_steps": "set warmup in the recipe's stages",
    "warmup_ratio": "set warmup in the recipe's stages",
    "resume_from_checkpoint": "run the same command again to resume (--restart starts over)",
    "recipe": "the recipe is the command's first argument",
    "push_to_hub": "use --push-to-hub --hub-model-id NAMESPACE/NAME",
    "hub_model_id": "use --hub-model-id",
    "hub_token": "set HF_TOKEN or run `hf auth login` (a token on the command line shows in the process list)",
    "do_train": "compress always trains", "do_eval": "compress evaluates on validation and test itself",
    "do_predict": "compress evaluates on validation and test itself",
    "eval_strategy": "compress evaluates on validation and test itself (and the teacher stage on validation with fine_tune.keep_best)",
    "load_best_model_at_end": "the recipe's last stage is the student (choices are made on validation with pakd ablate)",
    "metric_for_best_model": "the recipe's last stage is the student",
    "save_steps": "use pakd compress's own --save_steps",
    # Pruning cuts whole parameters (and compacts them) in every process at the same step; a
    # sharded model holds a slice of each per process. Trainer itself refuses FSDP in one
    # process, after the data and the teacher folder are made: refused here, before any work.
    "fsdp": "pruning needs every parameter whole in every process: train in several processes with DDP "
            "(torchrun --nproc_per_node N $(which pakd) compress ...)",
    "fsdp_config": "pruning needs every parameter whole in every process: use DDP (torchrun)",
    "deepspeed": "pruning needs every parameter whole in every process: use DDP (torchrun)",
}

# Flags that change how a run is watched, not what it trains: they stay out of the keys of the
# cached teacher and of the checkpoints a rerun resumes (every other flag is in both).
NON_RESULT_FLAGS = frozenset({
    "eval_on_stage_end", "report_to", "run_name", "project", "trackio_space_id", "logging_strategy", "logging_steps", "logging_first_step",
    "logging_nan_inf_filter", "log_level", "log_level_replica", "log_on_each_node", "disable_tqdm",
    "dataloader_num_workers", "dataloader_prefetch_factor", "dataloader_persistent_workers", "dataloader_pin_memory",
    "save_strategy", "save_total_limit", "save_only_model", "save_safetensors",
})


def result_flags(overrides: dict | None) -> dict:
    """The part of ``overrides`` that can change a trained model (see NON_RESULT_FLAGS)."""
    return {k: str(v) for k, v in sorted((overrides or {}).items()) if k not in NON_RESULT_FLAGS}


def default_device_flags() -> list[str]:
    """What `pakd compress` gives TrainingArguments before the user's flags: ``--use_cpu`` on a
    machine without CUDA or MPS (Trainer would pick the CPU anyway; ``--bf16`` needs it said)."""
    import torch

    accelerated = torch.cuda.is_available() or (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())
    return [] if accelerated else ["--use_cpu", "true"]


def training_overrides(flags: list[str]) -> dict:
    """TrainingArguments flags (``--report_to tensorboard --bf16 --logging_steps 10``) parsed
    by ``HfArgumentParser`` into {field: value}, only the fields given. Raises ValueError with
    one line naming the flag: unknown (with the nearest name), refused (with what to use
    instead), or a value TrainingArguments rejects."""

    from transformers import HfArgumentParser

    fields = PaKDTrainingArguments.__dataclass_fields__
    names = []
    for token in flags:
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0].replace("-", "_")
            if name not in fields:
                near = difflib.get_close_matches(name, list(fields), n=1)
                raise ValueError(f"--{name}: not a TrainingArguments flag" + (f" (did you mean --{near[0]}?)" if near else ""))
            if name in TRAINING_FLAGS_REFUSED:
                raise ValueError(f"--{name}: not for pakd compress: {TRAINING_FLAGS_REFUSED[name]}")
            names.append(name)
        elif not names:
            raise ValueError(f"{token!r}: unexpected argument (TrainingArguments flags start with --)")
    parser = HfArgumentParser(PaKDTrainingArguments, exit_on_error=False)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            (parsed,) = parser.parse_args_into_dataclasses(args=["--output_dir", tmp, *default_device_flags(), *flags])
        except SystemExit:  # argparse reports some errors by exiting, whatever exit_on_error says
            raise ValueError(f"cannot parse {' '.join(flags)!r} as TrainingArguments flags (a value that starts "
                             "with '-' is written --flag=value)") from None
        except Exception as e:  # argparse.ArgumentError, or TrainingArguments.__post_init__'s ValueError
            raise ValueError(" ".join(str(e).split())[:300]) from None
    if "report_to" in names:  # an unknown or uninstalled tracker fails now, not after the teacher
        from transformers.integrations import get_reporting_integration_callbacks

        try:
            get_reporting_integration_callbacks(parsed.report_to)
        except Exception as e:  # ValueError (unknown name) or RuntimeError (package missing)
            raise ValueError(f"--report_to: {' '.join(str(e).split())[:300]}") from None
    return {name: getattr(parsed, name) for name in names}
