import os
import sys
import tempfile
from pathlib import Path

# No network, no stray caches: set before transformers / huggingface_hub are imported.
_HF_HOME = tempfile.mkdtemp(prefix="pakd-hf-home-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))

# One loopback Hub for the whole session, started before anything imports huggingface_hub,
# which reads HF_ENDPOINT at import time. Tests that talk to it go online with
# hub_server.patch_hub_endpoint (everything else stays HF_HUB_OFFLINE=1).
from hub_server import HubServer, assert_loopback  # noqa: E402

HUB = HubServer().start()
os.environ["HF_ENDPOINT"] = HUB.endpoint

import pytest  # noqa: E402


def pytest_sessionstart(session):
    from huggingface_hub import constants

    try:
        assert_loopback(constants.ENDPOINT)
    except RuntimeError as exc:  # never let a test talk to a real Hub
        pytest.exit(f"the Hub endpoint is not loopback: {exc}", returncode=3)


def pytest_sessionfinish(session, exitstatus):
    HUB.stop()


# The repository's top level before the tests: a test (or the code it runs) that leaves a file
# there writes into its caller's working directory, as users would find it in theirs.
_TOP_LEVEL = {p.name for p in ROOT.iterdir()}
_CACHES = {".pytest_cache", "__pycache__", "pakd_hf.egg-info", ".benchmarks"}  # .benchmarks: pytest-benchmark, if installed


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_in_the_working_directory():
    yield
    left = sorted(n for n in {p.name for p in ROOT.iterdir()} - _TOP_LEVEL - _CACHES if not n.startswith(".coverage"))
    assert not left, f"the tests left files in {ROOT}: {left}"


@pytest.fixture(scope="session")
def hub_server():
    return HUB


@pytest.fixture(scope="session")
def toy_data():
    from toy import toy_dataset

    return toy_dataset(256, seed=0)


@pytest.fixture(scope="session")
def trained_teacher(toy_data, tmp_path_factory):
    """A tiny BERT trained on the toy task with the plain Trainer, saved once per session."""
    from transformers import Trainer, TrainingArguments

    from toy import tiny_bert

    out = tmp_path_factory.mktemp("teacher")
    model = tiny_bert(hidden=32, layers=4, heads=4, ffn=64, seed=0)
    args = TrainingArguments(
        output_dir=str(out / "run"),
        per_device_train_batch_size=16,
        num_train_epochs=8,
        learning_rate=3e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    Trainer(model=model, args=args, train_dataset=toy_data).train()
    model.save_pretrained(out / "model")
    return out / "model"


@pytest.fixture
def teacher(trained_teacher):
    from transformers import BertForSequenceClassification

    return BertForSequenceClassification.from_pretrained(trained_teacher)
