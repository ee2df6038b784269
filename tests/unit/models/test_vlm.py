"""The VLM: assembly, save/load, merging of image features, generation with the KV cache."""

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoTokenizer,
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from switchkd.config import ConfigError, ModelConfig
from switchkd.data.images import default_image_processor
from switchkd.demo.presets import qwen2_config, vision_config
from switchkd.models import VisionLanguageModel, build_vlm, load_vision_encoder, position_ids_from_mask
from switchkd.models.generation import GenerationConfig, generate
from tests.conftest import tiny_model_config


def _batch(model, n_images=1, text=(5, 6, 7)):
    ids = [9, 10] + [model.image_token_id] * model.num_image_tokens * n_images + list(text)
    return torch.tensor([ids])


def _pixels(model, n=1):
    size = model.vision_tower.image_size
    return torch.randn(n, 3, size, size)


@pytest.mark.parametrize(
    "vision,projector,kwargs",
    [
        ("clip", "mlp2x_gelu", {}),
        ("siglip", "mlp2x_gelu", {}),
        ("clip", "ldpv2", {"grid": 2}),
    ],
)
def test_config_built_model_saves_and_loads_identically(tmp_path, tiny_tokenizer_dir, vision, projector, kwargs):
    model = build_vlm(
        tiny_model_config(tiny_tokenizer_dir, vision=vision, projector=projector, projector_kwargs=kwargs)
    ).eval()
    model.save_pretrained(tmp_path / "m")
    loaded = VisionLanguageModel.from_pretrained(tmp_path / "m")
    ids, px = _batch(model), _pixels(model)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(ids, pixel_values=px).logits, model(ids, pixel_values=px).logits, rtol=0, atol=0
        )
    assert loaded.num_image_tokens == model.num_image_tokens
    assert loaded.vision_tower.drop_cls == (vision == "clip")
    assert loaded.config.projector == projector
    for (n, p), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n == n2 and torch.equal(p, p2)


def test_clip_drops_cls_and_siglip_keeps_all(tiny_tokenizer_dir):
    clip = build_vlm(tiny_model_config(tiny_tokenizer_dir, vision="clip"))
    siglip = build_vlm(tiny_model_config(tiny_tokenizer_dir, vision="siglip"))
    assert clip.vision_tower(_pixels(clip)).shape == (1, 16, 32)  # (56/14)^2 patches, CLS dropped
    assert siglip.vision_tower(_pixels(siglip)).shape == (1, 16, 32)
    keep = build_vlm(tiny_model_config(tiny_tokenizer_dir, vision="clip", drop_cls=False))
    assert keep.num_image_tokens == 17
    with pytest.raises(ValueError, match="no CLS token"):
        build_vlm(tiny_model_config(tiny_tokenizer_dir, vision="siglip", drop_cls=True))


def test_feature_layer_selects_hidden_state(tiny_tokenizer_dir):
    model = build_vlm(tiny_model_config(tiny_tokenizer_dir, vision_feature_layer=-1)).eval()
    px = _pixels(model)
    with torch.no_grad():
        ref = model.vision_tower.encoder(pixel_values=px, output_hidden_states=True).hidden_states[-1][:, 1:]
        torch.testing.assert_close(model.vision_tower(px), ref)


def _component_folders(tmp_path: Path, tokenizer_dir: Path):
    vcfg = vision_config("clip")
    vcfg.pop("model_type")
    vision = CLIPVisionModel(CLIPVisionConfig(**vcfg))
    vision.save_pretrained(tmp_path / "clip")
    default_image_processor("clip_vision_model", 56).save_pretrained(tmp_path / "clip")
    lcfg = qwen2_config(320)
    lcfg.pop("model_type")
    llm = Qwen2ForCausalLM(Qwen2Config(**lcfg))
    llm.save_pretrained(tmp_path / "qwen")
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(tmp_path / "qwen")
    return vision, llm


def test_model_from_component_folders_saves_and_loads_as_one(tmp_path, tiny_tokenizer_dir):
    vision, llm = _component_folders(tmp_path, tiny_tokenizer_dir)
    model = build_vlm(ModelConfig(vision=str(tmp_path / "clip"), llm=str(tmp_path / "qwen"))).eval()
    # The real weights were loaded, not fresh ones.
    torch.testing.assert_close(model.llm.model.embed_tokens.weight, llm.model.embed_tokens.weight)
    torch.testing.assert_close(
        model.vision_tower.encoder.embeddings.patch_embedding.weight, vision.embeddings.patch_embedding.weight
    )
    model.save_pretrained(tmp_path / "vlm")
    loaded = VisionLanguageModel.from_pretrained(tmp_path / "vlm")
    ids, px = _batch(model), _pixels(model)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(ids, pixel_values=px).logits, model(ids, pixel_values=px).logits, rtol=0, atol=0
        )
    assert loaded.image_processor.crop_size == {"height": 56, "width": 56}


def test_full_clip_folder_gives_its_vision_half(tmp_path):
    vcfg = vision_config("clip")
    vcfg.pop("model_type")
    full = CLIPModel(
        CLIPConfig(
            vision_config=vcfg,
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4),
            projection_dim=16,
        )
    )
    full.save_pretrained(tmp_path / "clip-full")
    enc = load_vision_encoder(str(tmp_path / "clip-full"))
    assert isinstance(enc, CLIPVisionModel)
    for name, p in enc.named_parameters():
        torch.testing.assert_close(p, full.vision_model.get_parameter(name), msg=name)


def test_missing_folders_and_mismatches_give_clear_errors(tmp_path, tiny_tokenizer_dir):
    with pytest.raises(ConfigError, match="local folder not found"):
        build_vlm(ModelConfig(vision=vision_config(), llm=str(tmp_path / "nope"), tokenizer=str(tiny_tokenizer_dir)))
    with pytest.raises(ConfigError, match="tokenizer folder is needed"):
        build_vlm(ModelConfig(vision=vision_config(), llm=qwen2_config(320)))
    with pytest.raises(ValueError, match="tokenizer has 300 tokens but the LLM embeds only 100"):
        build_vlm(tiny_model_config(tiny_tokenizer_dir, vocab=100))
    with pytest.raises(ValueError, match="no token '<img>'"):
        build_vlm(tiny_model_config(tiny_tokenizer_dir, image_token="<img>"))
    with pytest.raises(FileNotFoundError, match="not a switchkd model folder"):
        VisionLanguageModel.from_pretrained(tmp_path)


# ---- merging --------------------------------------------------------------------------------------


def _padded(rows: list[list[int]], pad: int, side: str):
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        ids[i, sl] = torch.tensor(r)
        mask[i, sl] = 1
    return ids, mask


@pytest.mark.parametrize("side", ["right", "left"])
def test_image_features_land_exactly_at_placeholders(tiny_tokenizer_dir, side):
    model = build_vlm(tiny_model_config(tiny_tokenizer_dir)).eval()
    img, n = model.image_token_id, model.num_image_tokens
    rows = [
        [9, 10] + [img] * n + [11, 12, 13],  # image sample
        [14, 15, 16],  # text-only sample in the same batch
        [17] + [img] * n + [18] + [img] * n + [19, 20, 21, 22],  # two images
    ]
    ids, mask = _padded(rows, model.tokenizer.pad_token_id, side)
    feats = torch.randn(3, n, 32)  # images in reading order: sample 0, then sample 2's two
    embeds = model.embed_inputs(ids, feats)
    table = model.llm.get_input_embeddings().weight
    slots = iter(feats.reshape(-1, 32))
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            expect = next(slots) if ids[b, t] == img else table[ids[b, t]]
            torch.testing.assert_close(embeds[b, t], expect, rtol=0, atol=0)
    assert next(slots, None) is None
    with pytest.raises(ValueError, match="placeholder tokens"):
        model.embed_inputs(ids, feats[:2])


def test_position_ids_ignore_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2], [0, 1, 2, 3, 4]]


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_matches_samples_run_alone(tiny_tokenizer_dir, side):
    """Attention mask and position ids are right iff padding changes no real position's logits."""
    model = build_vlm(tiny_model_config(tiny_tokenizer_dir)).eval()
    img, n = model.image_token_id, model.num_image_tokens
    rows = [[9, 10] + [img] * n + [11, 12, 13], [14, 15, 16], [17] + [img] * n + [18, 19, 20, 21, 22, 23]]
    px = _pixels(model, 2)
    ids, mask = _padded(rows, model.tokenizer.pad_token_id, side)
    with torch.no_grad():
        batch = model(ids, mask, pixel_values=px).logits
        alone = [
            model(torch.tensor([rows[0]]), pixel_values=px[:1]).logits[0],
            model(torch.tensor([rows[1]])).logits[0],
            model(torch.tensor([rows[2]]), pixel_values=px[1:]).logits[0],
        ]
    for b, ref in enumerate(alone):
        got = batch[b][mask[b].bool()]
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_logits_only_where_asked(tiny_tokenizer_dir):
    model = build_vlm(tiny_model_config(tiny_tokenizer_dir)).eval()
    ids, px = _batch(model), _pixels(model)
    where = torch.zeros_like(ids, dtype=torch.bool)
    where[0, -3:] = True
    with torch.no_grad():
        full = model(ids, pixel_values=px).logits
        some = model(ids, pixel_values=px, logits_at=where).logits
        last = model(ids, pixel_values=px, logits_at=1).logits
    assert some.shape == (3, 320)
    torch.testing.assert_close(some, full[0, -3:])
    torch.testing.assert_close(last[:, -1], full[:, -1])


# ---- generation -----------------------------------------------------------------------------------


@pytest.fixture
def sharp_model(tiny_tokenizer_dir):
    """Large init so logits are far apart and greedy choices are unambiguous."""
    cfg = tiny_model_config(tiny_tokenizer_dir)
    cfg.llm["initializer_range"] = 0.5
    return build_vlm(cfg).eval()


@pytest.mark.parametrize("side", ["right", "left"])
def test_kv_cache_generation_equals_greedy_without_cache(sharp_model, side):
    model = sharp_model
    img, n = model.image_token_id, model.num_image_tokens
    rows = [[9, 10] + [img] * n + [11, 12, 13], [14, 15, 16, 30, 31], [17] + [img] * n + [18]]
    px = _pixels(model, 2)
    ids, mask = _padded(rows, model.tokenizer.pad_token_id, side)
    cfg = dict(max_new_tokens=12, stop_token_ids=[])
    cached = generate(model, ids, mask, pixel_values=px, cfg=GenerationConfig(use_cache=True, **cfg))
    plain = generate(model, ids, mask, pixel_values=px, cfg=GenerationConfig(use_cache=False, **cfg))
    assert cached.shape == (3, 12)
    assert torch.equal(cached, plain)
    # And each row equals that sample generated alone.
    alone = generate(model, torch.tensor([rows[1]]), cfg=GenerationConfig(**cfg))
    assert torch.equal(alone[0], cached[1])
    assert len(set(cached[0].tolist())) > 1  # not a degenerate constant sequence


def test_generation_stops_and_pads(sharp_model):
    model = sharp_model
    pad = model.tokenizer.pad_token_id
    ids = torch.tensor([[14, 15, 16], [20, 21, 22]])
    free = generate(model, ids, cfg=GenerationConfig(max_new_tokens=6, stop_token_ids=[]))
    stop_at = free[0, 2].item()
    cut = free[0].tolist().index(stop_at) + 1
    out = generate(model, ids, cfg=GenerationConfig(max_new_tokens=6, stop_token_ids=[stop_at]))
    assert out[0, :cut].tolist() == free[0, :cut].tolist()
    assert (out[0, cut:] == pad).all()  # row 0 finished: padded from there on
    row1 = free[1].tolist()
    cut1 = row1.index(stop_at) + 1 if stop_at in row1 else 6
    assert out[1, :cut1].tolist() == row1[:cut1]


def test_sampling_is_seeded(sharp_model):
    ids = torch.tensor([[14, 15, 16]])
    cfg = dict(max_new_tokens=8, do_sample=True, temperature=1.5, top_p=0.9, stop_token_ids=[], seed=3)
    a = generate(sharp_model, ids, cfg=GenerationConfig(**cfg))
    b = generate(sharp_model, ids, cfg=GenerationConfig(**cfg))
    assert torch.equal(a, b)
    # ... and it samples: other seeds draw other tokens, and not the greedy ones
    greedy = generate(sharp_model, ids, cfg=GenerationConfig(max_new_tokens=8, stop_token_ids=[]))
    others = [generate(sharp_model, ids, cfg=GenerationConfig(**{**cfg, "seed": s})) for s in range(4, 12)]
    assert any(not torch.equal(o, a) for o in others)
    assert any(not torch.equal(o, greedy) for o in [a, *others])


def test_the_model_owns_one_template_for_data_prompts_and_its_saved_tokenizer(tmp_path, tiny_tokenizer_dir):
    from switchkd.data.dataset import LlavaDataset
    from switchkd.inference.predict import build_prompt

    model = build_vlm(tiny_model_config(tiny_tokenizer_dir, system_prompt="Be brief."))
    assert model.template.system_prompt == "Be brief."
    user = [{"role": "user", "content": "what colour is the circle ?"}]
    rendered = model.template.render(user, add_generation_prompt=True)
    assert "Be brief." in rendered
    assert model.tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True) == rendered
    assert model.tokenizer.decode(build_prompt(model, user)) == rendered
    record = {
        "id": "r",
        "conversations": [{"from": "human", "value": user[0]["content"]}, {"from": "gpt", "value": "red"}],
    }
    sample = LlavaDataset.for_model([record], None, model)[0]
    assert model.tokenizer.decode(sample["input_ids"]).startswith(rendered.split("<|im_start|>user")[0])
    model.save_pretrained(tmp_path / "m")
    again = VisionLanguageModel.from_pretrained(tmp_path / "m")
    assert again.template == model.template
    assert (
        AutoTokenizer.from_pretrained(tmp_path / "m").apply_chat_template(
            user, tokenize=False, add_generation_prompt=True
        )
        == rendered
    )


def test_loading_a_saved_model_prints_no_false_warnings(qwen_tokenizer_dir, tmp_path):
    """transformers warned of a Mistral regex on every load of a folder with Qwen's 151k vocabulary
    (config.json without transformers_version) and, for a config.json it does not know, of a model type
    mismatch; neither applies to our folders."""
    import logging

    model = build_vlm(tiny_model_config(qwen_tokenizer_dir, vocab=151936, width=16))
    model.save_pretrained(tmp_path / "m")
    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(handler)
    try:
        VisionLanguageModel.from_pretrained(tmp_path / "m")
        AutoTokenizer.from_pretrained(tmp_path / "m")
    finally:
        hf_logger.removeHandler(handler)
    assert not [m for m in seen if "incorrect regex pattern" in m or "You are using a model of type" in m], seen
    # real warnings still reach the user: nothing here turned transformers' logging down
    assert hf_logger.getEffectiveLevel() <= logging.WARNING


def test_siglips_pooling_head_is_not_computed_and_changes_nothing(tiny_tokenizer_dir):
    """Its output was never read (the features are a hidden layer); skipping it keeps the features and the
    weights (folders load and save unchanged), and the head stays among the unused parameters."""
    from switchkd.models.vision import VisionTower

    model = build_vlm(tiny_model_config(tiny_tokenizer_dir, vision="siglip"))
    encoder = model.vision_tower.encoder
    assert encoder.use_head is False and any(n.startswith("head.") for n, _ in encoder.named_parameters())
    pixels = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        ours = model.vision_tower(pixels)
        encoder.use_head = True
        full = VisionTower(encoder, model.vision_tower.feature_layer)  # sets it back off
        assert encoder.use_head is False
        encoder.use_head = True
        reference = encoder(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    assert full.unused_parameter_names() and all(
        n.startswith(("head.", "post_layernorm.", "encoder.layers.1.")) for n in full.unused_parameter_names()
    )
