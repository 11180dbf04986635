"""Pick the study's budget from the SFT sweep: the (lr, epochs) with the lowest final dev loss.

    python configs/study/select_budget.py BUDGET_GRID_DIR OUT.json

Writes ``{"lr", "epochs", "dev_loss", "candidates": {...}}``; refuses to overwrite an existing file
(the budget is fixed once, before any KD result exists).
"""

import json
import sys
from pathlib import Path

grid, out = Path(sys.argv[1]), Path(sys.argv[2])
if out.exists():
    print(f"budget already fixed: {out.read_text()}")
    sys.exit(0)
res = json.loads((grid / "results.json").read_text())
cands = {}
for cell in res["cells"]:
    if cell["done"] and cell["dev_loss"] is not None:
        cands[cell["label"]] = cell["dev_loss"]
if len(cands) != len(res["cells"]):
    sys.exit(f"budget sweep incomplete: {len(cands)} of {len(res['cells'])} candidates have a dev loss")
best = min(cands, key=cands.get)
import yaml  # noqa: E402

methods = yaml.safe_load((Path(__file__).parent / "budget.yaml").read_text())["methods"]
train = methods[best]["train"]
choice = {"label": best, "lr": train["lr"], "epochs": train["epochs"], "dev_loss": cands[best], "candidates": cands}
tmp = out.with_suffix(".tmp")
tmp.write_text(json.dumps(choice, indent=2))
tmp.replace(out)
print(f"budget fixed: {choice}")
