"""Run by tests/test_compress_ddp.py under `torchrun --nproc_per_node 2`: `pakd compress` as the
user runs it, in this process, recording what it writes under the output folder.

Usage: ddp_compress.py REPORT_DIR -- PAKD ARGUMENTS...; each rank writes REPORT_DIR/rank-N.json
(its exit status and the paths it opened for writing, created, renamed or removed under OUT)."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toy import record_writes, refuse_device_barriers  # noqa: E402

report_dir, argv = Path(sys.argv[1]), sys.argv[sys.argv.index("--") + 1:]
out_dir = Path(argv[argv.index("--output-dir") + 1]).resolve()
written = record_writes(out_dir)
refuse_device_barriers()

from pakd_hf.cli import main  # noqa: E402

code = main(argv)
report_dir.mkdir(parents=True, exist_ok=True)
(report_dir / f"rank-{os.environ.get('RANK', '0')}.json").write_text(json.dumps({"code": code, "written": sorted(set(written))}))
sys.exit(code)
