"""Train a small byte-level BPE tokenizer with the ChatML special tokens (for the built-in world and
tests), saved as a Hugging Face tokenizer folder that ``AutoTokenizer`` loads."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from switchkd.data.templates import get_template

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image_pad|>"]


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 512,
    out_dir: str | Path | None = None,
    system_prompt: str | None = "You are a helpful assistant.",
) -> PreTrainedTokenizerFast:
    """A BPE tokenizer trained on ``texts``; special tokens get the first ids (0..3)."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|image_pad|>"],
    )
    tokenizer.chat_template = get_template("chatml", system_prompt).jinja()
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer
