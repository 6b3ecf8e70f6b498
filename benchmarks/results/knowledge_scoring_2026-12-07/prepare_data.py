"""Write the bench's data (bundled sample general text; dictionaries with a seeded 20 % hold-out)."""
import json, sys
from pathlib import Path
from kormed.bench.quality import Budget, prepare_data
seed = int(sys.argv[2]) if len(sys.argv) > 2 else 42
out = prepare_data(Path(sys.argv[1]), korean_text=None, budget=Budget(seed=seed))
Path(sys.argv[1], "paths.json").write_text(json.dumps(out["paths"], indent=1))
print(json.dumps(out["info"]["dictionaries"], indent=1))
