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
    for _ in range(1000):  # until the weights in hand give the answer (checked before a step moves them)
        logits = model(ids, pixel_values=pixels).logits[0, len(prompt) - 1 : -1]
        if logits.argmax(-1).tolist() == answer:
            break
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(answer))
        opt.zero_grad()
        loss.backward()
        opt.step()
    else:
        raise AssertionError("the talking student did not learn its answer in 1000 steps")
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
    assert result["llava_ids"] == prompt
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
    old = str(_transformers_4())
    result = _read_as_user(root / "hf", image, tmp_path / "v4.json", pythonpath=old)
    assert result["transformers"] == TRANSFORMERS_4
    _check_as_ours(result, talking_student, ours)
    # a SigLIP tower (no CLS token: the "full" strategy, 0 additional image tokens), untrained
    torch.manual_seed(0)
    vision = vision_config("siglip", width=32, image_size=32, patch_size=8)
    siglip = build_vlm(ModelConfig(vision=vision, llm=qwen2_config(400, width=48), tokenizer=str(root / "student")))
    export_llava_hf(siglip.eval(), tmp_path / "siglip")
    result = _read_as_user(tmp_path / "siglip", image, tmp_path / "siglip.json", pythonpath=old)
    assert result["ids"] == prompt and not result["switchkd_imported"]
    pixels = preprocess_images([load_image(image)], siglip.image_processor)
    with torch.no_grad():
        want = siglip(torch.tensor([prompt]), pixel_values=pixels).logits[0]
    assert (torch.tensor(result["logits"]).view_as(want) - want).abs().max() < 1e-5


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


# ---- the released checkpoint's layouts -------------------------------------------------------------


def _ldpv2_student(world):
    from tests.integration.conftest import world_model

    torch.manual_seed(1)
    return world_model(world.tokenizer, llm_width=48, projector="ldpv2", projector_kwargs={"grid": 2})


def _llm_json(model) -> dict:
    text = model.llm.config.to_dict()
    return {k: v for k, v in text.items() if k not in ("architectures", "_name_or_path")}


def _write_release(model, folder: Path, layout: str, *, bin_file: bool = False, vision_weights: bool = True) -> Path:
    """``model`` saved as the documented layouts would save it (names, config, tokenizer), not by switchkd."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    tied = model.lm_head.weight is model.llm.get_input_embeddings().weight
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "llm.lm_head.weight" and tied:
            continue
        if name.startswith("vision_tower.encoder."):
            if not vision_weights:
                continue
            rest = name.removeprefix("vision_tower.encoder.")
            name = {
                "switchkd-release": "visual_encoder.vision_model.",
                "mobilevlm": "model.vision_tower.vision_tower.vision_model.",
            }[layout] + rest
        elif name.startswith("projector."):
            rest = name.removeprefix("projector.")
            name = {"switchkd-release": "projector.model.", "mobilevlm": "model.mm_projector."}[layout] + rest
        elif layout == "mobilevlm":
            name = name.replace("llm.model.", "model.", 1).replace("llm.lm_head.", "lm_head.", 1)
        state[name] = tensor.detach().clone().contiguous()
    if layout == "mobilevlm":  # a buffer older transformers saved; recomputed on load
        state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(6)
    if bin_file:
        torch.save(state, folder / "pytorch_model.bin")
    else:
        save_file(state, str(folder / "model.safetensors"))
    model.tokenizer.save_pretrained(folder)
    vision = model.vision_tower.config.to_dict()
    if layout == "switchkd-release":
        config = {
            "architectures": ["SwitchKDModel"],
            "auto_map": {"AutoModel": "modeling_switchkd.SwitchKDModel"},
            "model_type": "switchkd_llava",
            "llm_config": _llm_json(model),
            "visual_encoder_config": vision,
            "projector_type": "ldpnetv2",
            "visual_select_layer": -2,
        }
    else:
        config = {
            **_llm_json(model),
            "model_type": "mobilevlm",
            "architectures": ["MobileQwen2ForCausalLM"],
            "mm_projector_type": "ldpnetv2",
            "mm_vision_tower": "openai/clip-vit-large-patch14-336",
            "mm_vision_select_layer": -2,
            "mm_vision_select_feature": "patch",
            "mm_hidden_size": vision["hidden_size"],
        }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _same_logits(a, b, world) -> None:
    ids = torch.tensor([build_prompt(a, [{"role": "user", "content": f"<image>\n{QUESTION}"}])])
    pixels = preprocess_images([load_image(_image(world))], a.image_processor)
    with torch.no_grad():
        torch.testing.assert_close(
            b(ids, pixel_values=pixels).logits, a(ids, pixel_values=pixels).logits, rtol=0, atol=0
        )


def test_release_layout_imports_to_identical_logits(tiny_world, tmp_path):
    from switchkd.formats.release import import_release

    model = _ldpv2_student(tiny_world).eval()
    for bin_file in (False, True):
        folder = _write_release(model, tmp_path / f"release-{bin_file}", "switchkd-release", bin_file=bin_file)
        back = import_release(folder, tmp_path / f"ours-{bin_file}", "switchkd-release", grid=2)
        _same_logits(model, back, tiny_world)
        _same_logits(model, VisionLanguageModel.from_pretrained(tmp_path / f"ours-{bin_file}"), tiny_world)
        assert back.config.projector == "ldpv2" and back.num_image_tokens == 4


def test_mobilevlm_layout_with_its_vision_tower_from_a_folder(tiny_world, tmp_path):
    from switchkd.formats import FormatError
    from switchkd.formats.release import import_release

    model = _ldpv2_student(tiny_world).eval()
    folder = _write_release(model, tmp_path / "mvlm", "mobilevlm", vision_weights=False)
    with pytest.raises(FormatError, match=r"no vision tower config \(it names 'openai/clip-vit-large-patch14-336'\)"):
        import_release(folder, None, "mobilevlm")
    model.vision_tower.encoder.save_pretrained(tmp_path / "clip")
    back = import_release(folder, None, "mobilevlm", vision=str(tmp_path / "clip"), grid=2)
    _same_logits(model, back, tiny_world)
    # with the tower in the checkpoint, the checkpoint's weights win over the folder's
    folder = _write_release(model, tmp_path / "mvlm-full", "mobilevlm")
    patch = model.vision_tower.encoder.embeddings.patch_embedding.weight
    kept = patch.detach().clone()
    with torch.no_grad():
        patch.add_(1.0)
    model.vision_tower.encoder.save_pretrained(tmp_path / "other-clip")
    with torch.no_grad():
        patch.copy_(kept)
    _same_logits(
        model, import_release(folder, None, "mobilevlm", vision=str(tmp_path / "other-clip"), grid=2), tiny_world
    )


def test_an_unknown_layout_is_one_line_listing_every_name_that_did_not_map(tiny_world, tmp_path):
    from safetensors.torch import load_file, save_file

    from switchkd.formats import FormatError
    from switchkd.formats.release import import_release

    model = _ldpv2_student(tiny_world)
    folder = _write_release(model, tmp_path / "odd", "switchkd-release")
    state = load_file(folder / "model.safetensors")
    for i in range(2):  # an adapter per layer, and a renamed projector layer
        state[f"llm.model.layers.{i}.adapter.weight"] = torch.zeros(2)
        state[f"extra.layers.{i}.weight"] = torch.zeros(2)
    state["projector.model.mlp.mlp.9.weight"] = state.pop("projector.model.mlp.mlp.2.weight")
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(FormatError) as caught:
        import_release(folder, None, "switchkd-release", grid=2)
    message = str(caught.value)
    assert "\n" not in message and str(folder) in message
    assert "no rule maps 2: extra.layers.{0-1}.weight (2)" in message
    assert (
        "3 map to no parameter of ours: llm.model.layers.{0-1}.adapter.weight (2), projector.model.mlp.mlp.9.weight "
        "(read as llm.model.layers.{0-1}.adapter.weight (2), projector.mlp.mlp.9.weight)"
    ) in message
    assert "nothing fills 1: projector.mlp.mlp.2.weight" in message
    # a wrong config is found from shapes on the meta device, before any weight is read
    config = json.loads((folder / "config.json").read_text())
    config["llm_config"]["hidden_size"] = 4096
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(FormatError, match="shapes differ: .*llm.model.embed_tokens.weight"):
        import_release(folder, None, "switchkd-release")


def test_a_tied_head_that_differs_from_the_embeddings_is_refused(tiny_world, tmp_path):
    from safetensors.torch import load_file, save_file

    from switchkd.formats import FormatError
    from switchkd.formats.release import import_release

    model = _ldpv2_student(tiny_world)
    folder = _write_release(model, tmp_path / "r", "switchkd-release")
    state = load_file(folder / "model.safetensors")
    state["llm.lm_head.weight"] = state["llm.model.embed_tokens.weight"] + 1
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(FormatError, match="ties the LM head to the embeddings, but llm.lm_head.weight differs"):
        import_release(folder, None, "switchkd-release")


def test_import_of_a_folder_that_is_not_a_llava_is_one_line(tiny_world, tmp_path):
    from switchkd.formats import FormatError

    with pytest.raises(FormatError, match="a switchkd model folder already"):
        import_llava_hf(tiny_world.student, None)
    (tmp_path / "qwen").mkdir()
    (tmp_path / "qwen" / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(FormatError, match=r"model_type is 'qwen2', not 'llava'"):
        import_llava_hf(tmp_path / "qwen", None)
    config = {"model_type": "llava", "text_config": {"model_type": "qwen2"}}
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.json").write_text(json.dumps(config))
    with pytest.raises(FormatError, match="no vision_config with a model_type"):
        import_llava_hf(tmp_path / "bare", None)
    (tmp_path / "bare" / "config.json").write_text("{not json")
    with pytest.raises(FormatError, match="config.json: not valid JSON"):
        import_llava_hf(tmp_path / "bare", None)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "switchkd", *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )


def test_the_imported_release_chats_evaluates_and_teaches(tiny_world, tmp_path):
    """Through the command line as a user would: import, chat with chat.py's repetition penalty, eval,
    and a DFT dry run with the imported model as the teacher."""
    import yaml

    folder = _write_release(_ldpv2_student(tiny_world).eval(), tmp_path / "release", "switchkd-release")
    done = _cli("import", folder, "--from", "switchkd-release", "--ldpv2-grid", "2", "--out", tmp_path / "ours")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "You are using a model of type" not in done.stderr  # the release's config.json is not transformers'
    image = _image(tiny_world)
    chat = _cli("chat", "--model", tmp_path / "ours", "--image", image, "--question", QUESTION, "--max-new-tokens", "4")
    assert chat.returncode == 0, chat.stderr[-2000:]
    data = tiny_world.paths["test"].parent
    evaluated = _cli("eval", "--model", tmp_path / "ours", "--benchmark", "world", "--data", data, "--limit", "4")
    assert evaluated.returncode == 0 and "world" in evaluated.stdout, evaluated.stderr[-2000:]
    student = _ldpv2_student(tiny_world)
    student.save_pretrained(tmp_path / "student")
    config = {
        "model": {"pretrained": str(tmp_path / "student")},
        "teacher": {"pretrained": str(tmp_path / "ours")},
        "data": {"train": str(tiny_world.paths["dft"]), "num_workers": 0},
        "train": {"stage": "dft", "max_steps": 1, "output_dir": str(tmp_path / "run"), "progress": False},
    }
    (tmp_path / "dft.yaml").write_text(yaml.safe_dump(config))
    dry = _cli("train", "--config", tmp_path / "dft.yaml", "--dry-run")
    assert dry.returncode == 0, dry.stderr[-2000:]
    # a LLaVA import of a folder that is not one: one line, exit 2
    wrong = _cli("import", tmp_path / "release", "--from", "llava-hf", "--out", tmp_path / "x")
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "not 'llava'" in wrong.stderr, wrong.stderr
    assert not (tmp_path / "x").exists()


def test_chat_repetition_penalty_reaches_generation(talking_student):
    """--repetition-penalty is chat.py's 1.05 by default and changes what is generated when large."""
    from switchkd.cli.main import build_parser

    root, image, _, _, _ = talking_student
    args = build_parser().parse_args(["chat", "--model", "m", "--image", "i", "--question", "q"])
    assert args.repetition_penalty == 1.05
    plain = _cli(
        "chat", "--model", root / "student", "--image", image, "--question", QUESTION, "--max-new-tokens", "12"
    )
    heavy = _cli(
        "chat", "--model", root / "student", "--image", image, "--question", QUESTION,
        "--max-new-tokens", "12", "--repetition-penalty", "50",
    )  # fmt: skip
    assert plain.returncode == 0 and heavy.returncode == 0, heavy.stderr[-2000:]
    assert plain.stdout.strip() == ANSWER
    assert heavy.stdout.strip() != ANSWER
