"""The end-to-end pipeline: `pakd compress` and what only it needs.

    compress.py      a recipe to a saved, measured, carded student (teacher fine-tune, stages, report)
    ablate.py        the simpler routes to the same student shape, side by side (`pakd ablate`)
    compare.py       two saved folders side by side (`pakd benchmark`)
    deploy.py        ONNX / int8 / ExecuTorch export of a saved folder (`pakd export`)
    tasks.py         what differs per task: Auto class, teacher, preprocessor, inputs, score
    preflight.py     what a recipe names, checked before any work
    augment.py       the text transfer set (perturbed copies of the training texts)
    augmented.py     a training split whose batches come back randomly changed (`data.augment`)
    image_augment.py random shifts, flips and erasing of training images
    audio_augment.py random time shifts and SpecAugment masks of training clips
    data/            offline data sets and teachers by name

It uses the library (`pakd_hf.trainer`, `prune`, `arch`, `distill`, `export`, `hub`, ...) and is
never imported by it: a user of `PaKDTrainer` with their own data loads none of this.
"""
