"""The bench's measures (evaluate_arm) of one adapter, paired against the bench's base row.
usage: evalarm.py WORK ADAPTER NAME OUT"""
import json, sys
from kormed.bench.quality import evaluate_arm, paired_vs_base
work, adapter, name, out = sys.argv[1:5]
task = json.load(open(f"{work}/tasks/loop.task.json"))
task["arm"] = name
res = evaluate_arm(task, adapter, lambda m: print(m, flush=True))
base = json.load(open(f"{work}/tasks/base.result.json"))
base = base.get("result", base)
res["paired_vs_base"] = paired_vs_base(res, base, task["budget"]["seed"])
json.dump(res, open(out, "w"), indent=1)
for k, v in res["paired_vs_base"].items():
    print(k, {kk: (round(vv, 4) if isinstance(vv, float) else vv) for kk, vv in v.items()} if isinstance(v, dict) else v)
for k in ("bits_per_char_general", "bits_per_char_medical", "bits_per_char_medical_authored", "knowledge_trained", "knowledge_held_out", "accuracy_cyclic"):
    print(k, res.get(k), "base", base.get(k))
