"""Build the tiny byte-level BPE tokenizer shipped in ``core/assets/tiny_tokenizer``.

The corpus is text that every CPython install carries (the standard library's docstrings) plus the
phrases of the suite's synthetic datasets, so the script needs no network. Run it once; the result is
committed and canonical (the stdlib's docstrings differ between Python versions, so a rerun may number the
merges differently), and the tiny presets never depend on this script at run time::

    python scripts/make_tokenizer.py --vocab-size 4096
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import sys
import warnings
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from core.io import atomic_path  # noqa: E402

OUT = ROOT / "core" / "assets" / "tiny_tokenizer"

BOS, EOS, PAD, UNK = "<|begin_of_text|>", "<|eot|>", "<|pad|>", "<|unk|>"
HEADER_START, HEADER_END, END_OF_TEXT = "<|start_header|>", "<|end_header|>", "<|end_of_text|>"
SPECIALS = [PAD, BOS, EOS, UNK, HEADER_START, HEADER_END, END_OF_TEXT]

# Llama-3-style template: BOS once, a header per turn, every turn closed by EOS (<|eot|>).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|start_header|>{{ message['role'] }}<|end_header|>\n{{ message['content'] }}<|eot|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header|>assistant<|end_header|>\n{% endif %}"
)


def stdlib_corpus() -> list[str]:
    """Docstrings of the standard library: plain English prose, present on every machine."""
    texts: list[str] = []
    names = sorted(m.name for m in pkgutil.iter_modules() if m.name in sys.stdlib_module_names)
    for name in names:
        if name.startswith(("_", "idlelib", "tkinter", "turtle", "antigravity", "this")):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mod = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - optional stdlib modules may be missing
            continue
        for _, obj in inspect.getmembers(mod):
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str):
                texts.append(doc)
        if mod.__doc__:
            texts.append(mod.__doc__)
    return texts


def synthetic_corpus() -> list[str]:
    from datamodules.synthetic import corpus_lines

    return corpus_lines()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = stdlib_corpus() + synthetic_corpus() * 3
    tok.train_from_iterator(corpus, trainer=trainer)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "right"
    # Write beside, then swap in, so an interrupted run never leaves half a tokenizer.
    with atomic_path(args.out) as tmp:
        fast.save_pretrained(tmp)
    print(f"wrote {args.out} (vocab {len(fast)}, {len(corpus)} training texts)")


if __name__ == "__main__":
    main()
