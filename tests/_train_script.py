"""`python tests/_train_script.py RECIPE [--resume] KEY=VALUE...`: train in a fresh process or torchrun.

Every rank then saves its own final weights (rank<N>.safetensors) and eq record, so a test can compare ranks.
"""

import json
import os
import sys
from pathlib import Path

from safetensors.torch import save_file

from eqsurgeon.io import record_to_dict
from eqsurgeon.training.config import load_config
from eqsurgeon.training.loop import train

recipe, *args = sys.argv[1:]
resume = "--resume" in args
overrides = [a for a in args if a != "--resume"]
rank = int(os.environ.get("RANK", 0))
result = train(load_config(Path(recipe), overrides), resume=resume)
state = {k: v.detach().contiguous() for k, v in result.model.state_dict().items()}
save_file(state, str(result.run_dir / f"rank{rank}.safetensors"))
eq = None if result.eq is None else record_to_dict(result.eq)
(result.run_dir / f"rank{rank}.json").write_text(json.dumps({"eq": eq}))
