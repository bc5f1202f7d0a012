"""A callback for the two-process tests: at the start of training each rank writes, for every parameter of the
module that is a sharded DTensor, the number of elements it holds and the whole tensor's (``probe<rank>.json`` in
the run's folder). Imported by the ranks as ``shard_probe`` (``launch.py``'s folder is on their path)."""

import json
from pathlib import Path

from lightning.pytorch import Callback


class ShardProbe(Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        from torch.distributed.tensor import DTensor

        held = {n: [p.to_local().numel(), p.numel()] for n, p in pl_module.named_parameters() if isinstance(p, DTensor)}
        whole = [n for n, p in pl_module.named_parameters() if not isinstance(p, DTensor)]
        out = Path(trainer.default_root_dir) / f"probe{trainer.global_rank}.json"
        out.write_text(json.dumps({"sharded": held, "whole": whole}))
