"""Model formats other than switchkd's own folders.

- ``llava_hf``: export to and import from Hugging Face's ``LlavaForConditionalGeneration`` (what
  transformers pipelines, vLLM, SGLang and lmms-eval's ``llava_hf`` load).
- ``release``: import of the released Switch-KD checkpoint (xtuner layout) and of MobileVLM V2.
- ``weights``: the shared machinery, a checkpoint read by names and shapes and mapped by rules.
"""

from pathlib import Path

from switchkd.formats.weights import FormatError

IMPORT_FORMATS = ("llava-hf", "switchkd-release", "mobilevlm")


def import_model(source: str | Path, out: str | Path, fmt: str, **options) -> None:
    """Read a model of format ``fmt`` (``IMPORT_FORMATS``) into the switchkd folder ``out``. ``options``:
    chat_template and system_prompt for every format; vision, llm, tokenizer and grid for the release
    layouts only (a LLaVA-HF folder holds every part)."""
    if fmt == "llava-hf":
        from switchkd.formats.llava_hf import import_llava_hf

        given = [f"--{k}" for k in ("vision", "llm", "tokenizer") if options.get(k) is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: only for the release layouts; a LLaVA folder holds every part")
        keep = {k: v for k, v in options.items() if k in ("chat_template", "system_prompt")}
        import_llava_hf(source, out, **keep)
    elif fmt in IMPORT_FORMATS:
        from switchkd.formats.release import import_release

        import_release(source, out, fmt, **options)
    else:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(IMPORT_FORMATS)}")


__all__ = ["IMPORT_FORMATS", "FormatError", "import_model"]
