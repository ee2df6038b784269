"""Exported students work where a LLaVA works; other formats import to identical logits.

The exported folder is read in separate processes that never import switchkd
(``transformers_user.py``): transformers 5 here, and transformers 4.x (slow test) installed into a
cached folder put first on ``PYTHONPATH``, as serving engines pinned below 5 would read it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from switchkd.config import ModelConfig
from switchkd.data.images import load_image, preprocess_images
from switchkd.demo.presets import qwen2_config, vision_config
from switchkd.formats.llava_hf import export_llava_hf, import_llava_hf
from switchkd.inference.predict import build_prompt
from switchkd.models import VisionLanguageModel, build_vlm
from switchkd.models.generation import GenerationConfig, generate

USER = Path(__file__).with_name("transformers_user.py")
QUESTION = "what colour is the circle ?"
ANSWER = "the circle is red ."
TRANSFORMERS_4 = "4.57.6"


def _image(world) -> Path:
    return sorted(world.paths["test"].parent.rglob("*.png"))[0]


@pytest.fixture(scope="module")
def talking_student(tiny_world, tmp_path_factory):
    """A student taught one answer ending in <|im_end|>, so generation that honours the end of the turn
    stops, and one that does not runs on. Its rope theta is Qwen2.5's 10^6, not the 10^4 default that
    a reader ignoring transformers 5's ``rope_parameters`` would use."""
    torch.manual_seed(0)
    llm = qwen2_config(400, width=48, layers=2)
    llm["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6}
    vision = vision_config("clip", width=32, image_size=32, patch_size=8)
    model = build_vlm(ModelConfig(vision=vision, llm=llm, tokenizer=str(tiny_world.tokenizer)))
    image = _image(tiny_world)
    prompt = build_prompt(model, [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}])
    pixels = preprocess_images([load_image(image)], model.image_processor)
    tok = model.tokenizer
    answer = tok(ANSWER, add_special_tokens=False).input_ids + [tok.convert_tokens_to_ids("<|im_end|>")]
    ids = torch.tensor([prompt + answer])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        logits = model(ids, pixel_values=pixels).logits[0, len(prompt) - 1 : -1]
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(answer))
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            if logits.argmax(-1).tolist() == answer:
                break
    model.eval()
    out = tmp_path_factory.mktemp("talking")
    model.save_pretrained(out / "student")
    export_llava_hf(model, out / "hf")
    return out, image, prompt, pixels, answer


def _ours(root: Path, image: Path, prompt: list[int]):
    model = VisionLanguageModel.from_pretrained(root / "student")
    pixels = preprocess_images([load_image(image)], model.image_processor)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        logits = model(ids, pixel_values=pixels).logits[0]
    new = generate(model, ids, pixel_values=pixels, cfg=GenerationConfig(max_new_tokens=30))[0].tolist()
    return model, pixels, logits, new


def _read_as_user(folder: Path, image: Path, out: Path, pythonpath: str | None = None) -> dict:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run(
        [sys.executable, str(USER), str(folder), str(image), QUESTION, str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def _check_as_ours(result: dict, talking_student, ours) -> None:
    root, image, prompt, _, answer = talking_student
    model, pixels, logits, new = ours
    assert not result["switchkd_imported"]
    # apply_chat_template(tokenize=True) with structured content == switchkd's input_ids; plain content
    # with the image token, through the processor, too
    assert result["ids"] == prompt
    assert result["plain_ids"] == prompt
    assert torch.tensor(result["pixels"]).view_as(pixels).sub(pixels).abs().max() < 1e-5
    theirs = torch.tensor(result["logits"]).view_as(logits)
    assert (theirs - logits).abs().max() < 1e-5
    # generate stops at <|im_end|> from the folder's own generation config, after the taught answer
    assert new == answer
    assert result["generated"] == answer


def test_exported_student_works_with_transformers_alone(talking_student, tmp_path):
    root, image, prompt, _, _ = talking_student
    ours = _ours(root, image, prompt)
    result = _read_as_user(root / "hf", image, tmp_path / "v5.json")
    assert result["transformers"].startswith("5.")
    _check_as_ours(result, talking_student, ours)
    assert result["pipeline"] == ANSWER  # pipeline("image-text-to-text") with chat messages


def _transformers_4() -> Path:
    """transformers 4.x (and the huggingface-hub/tokenizers it needs) in a cached folder; torch, numpy
    and PIL come from this environment."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "switchkd-tests"
    target = cache / f"transformers-{TRANSFORMERS_4}"
    if (target / "transformers").is_dir():
        return target
    partial = cache / f".partial-{os.getpid()}"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--target", str(partial), f"transformers=={TRANSFORMERS_4}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        pytest.fail(
            f"could not install transformers {TRANSFORMERS_4} (needs the package registry): {done.stderr[-800:]}"
        )
    partial.rename(target)
    return target


@pytest.mark.slow
def test_exported_student_loads_in_transformers_4_with_equal_logits(talking_student, tmp_path):
    root, image, prompt, _, _ = talking_student
    ours = _ours(root, image, prompt)
    result = _read_as_user(root / "hf", image, tmp_path / "v4.json", pythonpath=str(_transformers_4()))
    assert result["transformers"] == TRANSFORMERS_4
    _check_as_ours(result, talking_student, ours)


def test_exported_names_and_config_are_what_llava_loaders_read(talking_student):
    from safetensors import safe_open

    root = talking_student[0]
    with safe_open(str(root / "hf" / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    prefixes = {n.split(".")[0] + "." + n.split(".")[1] for n in names}
    # The Hub's LLaVA names: vLLM and SGLang load these; the vision tower under vision_model.
    assert prefixes == {
        "vision_tower.vision_model",
        "multi_modal_projector.linear_1",
        "multi_modal_projector.linear_2",
        "language_model.model",
    }
    assert "language_model.lm_head.weight" not in names  # tied: the embedding holds it
    config = json.loads((root / "hf" / "config.json").read_text())
    text = config["text_config"]
    assert text["architectures"] == ["Qwen2ForCausalLM"] and text["rope_theta"] == 1e6
    assert config["model_type"] == "llava" and config["vision_feature_select_strategy"] == "default"
    assert config["image_aspect_ratio"] == "pad" and config["torch_dtype"] == "float32"
    generation = json.loads((root / "hf" / "generation_config.json").read_text())
    student = VisionLanguageModel.from_pretrained(root / "student")
    assert student.tokenizer.convert_tokens_to_ids("<|im_end|>") in generation["eos_token_id"]


def test_llava_hf_export_matches_logits_tokens_and_processor(tiny_world, tmp_path):
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    model = VisionLanguageModel.from_pretrained(tiny_world.student)
    export_llava_hf(model, tmp_path / "hf")
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    ids = torch.tensor([build_prompt(model, [{"role": "user", "content": f"<image>\n{QUESTION}"}])])
    pixels = preprocess_images([load_image(_image(tiny_world))], model.image_processor)
    with torch.no_grad():
        ours = model(ids, pixel_values=pixels).logits
        theirs = hf(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids)).logits
    assert (ours - theirs).abs().max().item() < 1e-5
    mine = generate(model, ids, pixel_values=pixels, cfg=GenerationConfig(max_new_tokens=8, stop_token_ids=[]))
    with torch.no_grad():
        hf_out = hf.generate(
            input_ids=ids,
            pixel_values=pixels,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=8,
            min_new_tokens=8,
        )
    assert hf_out[0, ids.shape[1] :].tolist() == mine[0].tolist()
    # The exported processor pads to square with the mean colour, like switchkd.
    processor = LlavaProcessor.from_pretrained(tmp_path / "hf")
    odd = Image.new("RGB", (40, 24), (200, 30, 30))
    theirs_px = processor.image_processor(images=[odd], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(theirs_px, preprocess_images([odd], model.image_processor), rtol=0, atol=1e-5)


def test_llava_hf_import_round_trips(tiny_world, tmp_path):
    model = VisionLanguageModel.from_pretrained(tiny_world.student)
    export_llava_hf(model, tmp_path / "hf")
    back = import_llava_hf(tmp_path / "hf", tmp_path / "back")
    reloaded = VisionLanguageModel.from_pretrained(tmp_path / "back")
    ids = torch.tensor([build_prompt(model, [{"role": "user", "content": f"<image>\n{QUESTION}"}])])
    pixels = preprocess_images([load_image(_image(tiny_world))], model.image_processor)
    with torch.no_grad():
        want = model(ids, pixel_values=pixels).logits
        for other in (back, reloaded):
            torch.testing.assert_close(other(ids, pixel_values=pixels).logits, want, rtol=0, atol=1e-6)
    assert reloaded.num_image_tokens == model.num_image_tokens and reloaded.vision_tower.drop_cls


def test_llava_hf_import_reads_transformers_5_names_too(tiny_world, tmp_path):
    """A folder written by transformers 5's own save_pretrained (``model.language_model.*``)."""
    from safetensors.torch import load_file, save_file

    model = VisionLanguageModel.from_pretrained(tiny_world.student)
    export_llava_hf(model, tmp_path / "hf")
    state = load_file(tmp_path / "hf" / "model.safetensors")
    renamed = {}
    for name, tensor in state.items():
        name = name.replace("language_model.model.", "model.language_model.", 1)
        name = name.replace("vision_tower.vision_model.", "model.vision_tower.", 1)
        name = name.replace("multi_modal_projector.", "model.multi_modal_projector.", 1)
        renamed[name] = tensor
    save_file(renamed, tmp_path / "hf" / "model.safetensors")
    back = import_llava_hf(tmp_path / "hf", None)
    for name, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name


def test_export_refuses_ldpv2(tiny_world, tmp_path):
    from tests.integration.conftest import world_model

    ldp = world_model(tiny_world.tokenizer, llm_width=48, projector="ldpv2", projector_kwargs={"grid": 2})
    with pytest.raises(ValueError, match="'ldpv2' cannot be expressed"):
        export_llava_hf(ldp, tmp_path / "x")
