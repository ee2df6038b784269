"""Model formats other than switchkd's own folders.

- ``llava_hf``: export to and import from Hugging Face's ``LlavaForConditionalGeneration`` (what
  transformers pipelines, vLLM, SGLang and lmms-eval's ``llava_hf`` load).
- ``release``: import of the released Switch-KD checkpoint (xtuner layout) and of MobileVLM V2.
- ``weights``: the shared machinery, a checkpoint read by names and shapes and mapped by rules.
"""

from switchkd.formats.weights import FormatError

__all__ = ["FormatError"]
