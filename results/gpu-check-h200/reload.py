"""A saved student in a fresh process with stock transformers: fp32 weights, the same logits on CPU and CUDA,
and pipeline() on the GPU."""
import sys

import numpy as np
import torch
from safetensors import safe_open
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification, pipeline

folder, task = sys.argv[1], sys.argv[2]
with safe_open(f"{folder}/model.safetensors", "pt") as f:
    dtypes = sorted({str(f.get_slice(k).get_dtype()) for k in f.keys()})
print(f"[{task}] saved dtypes: {dtypes}")
if task == "text":
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(folder)
    texts = ["a gorgeous, witty, seductive movie.", "the plot is nothing but boilerplate clichés.", "meh"] * 4
    inputs = dict(tok(texts, return_tensors="pt", padding=True))
    cls, pipe_task, sample = AutoModelForSequenceClassification, "text-classification", texts[0]
else:
    from PIL import Image
    from transformers import AutoImageProcessor
    proc = AutoImageProcessor.from_pretrained(folder)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), mode="L") for _ in range(8)]
    inputs = dict(proc(images, return_tensors="pt"))
    cls, pipe_task, sample = AutoModelForImageClassification, "image-classification", images[0]
logits = {}
for device in ("cpu", "cuda"):
    model = cls.from_pretrained(folder).to(device).eval()
    with torch.no_grad():
        logits[device] = model(**{k: v.to(device) for k, v in inputs.items()}).logits.float().cpu()
print(f"[{task}] max |logits cpu - cuda| = {(logits['cpu'] - logits['cuda']).abs().max().item():.2e}; "
      f"same argmax: {bool((logits['cpu'].argmax(-1) == logits['cuda'].argmax(-1)).all())}")
print(f"[{task}] pipeline on cuda:0: {pipeline(pipe_task, model=folder, device=0)(sample)[:1]}")
