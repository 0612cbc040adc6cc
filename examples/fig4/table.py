"""Markdown table of examples/fig4/run.sh's results: accuracy, past / future per method.
usage: python examples/fig4/table.py WORK_DIR"""
import json
import sys
from pathlib import Path

w = Path(sys.argv[1] if len(sys.argv) > 1 else "fig4_run")
print("| T, S | method | accuracy % | past % | future % | pairs |")
print("|---|---|---|---|---|---|")
for f in sorted(w.glob("fig4_T*S*.json")):
    for r in json.loads(f.read_text()):
        print(f"| {r['T']}, {r['stride']} | {r['method']} | {100 * r['accuracy']:.1f} | "
              f"{100 * r['past']['accuracy']:.1f} | {100 * r['future']['accuracy']:.1f} | {r['pairs']} |")
