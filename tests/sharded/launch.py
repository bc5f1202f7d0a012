"""``train.py`` for the two-process tests: the tiny-bert preset without dropout (as ``tests/adversarial/test_resume``'s
``no_dropout`` fixture does in-process), so a sharded run and a one-process run draw no random numbers that differ.
Lightning starts the other rank by running this same script again, so both ranks get the change."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core import backbones  # noqa: E402

kind, kwargs = backbones.PRESETS["tiny-bert"]
backbones.PRESETS["tiny-bert"] = (kind, {**kwargs, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})

from train import main  # noqa: E402

if __name__ == "__main__":
    main()
