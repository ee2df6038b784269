"""Which family a folder is, read from its config.json, and the Hub's Qwen2.5-VL image processor file."""

import json

import pytest

from switchkd.data.images import GridImages, load_image_processor
from switchkd.models.pathway import family_of, load_vlm

# preprocessor_config.json as Qwen/Qwen2.5-VL-3B-Instruct ships it
HUB_QWEN_PROCESSOR = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
}


def test_the_hubs_qwen_processor_file_loads_with_its_pixel_bounds_and_overrides(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(HUB_QWEN_PROCESSOR))
    reader = GridImages(load_image_processor(tmp_path))
    assert (reader.processor.size.shortest_edge, reader.processor.size.longest_edge) == (3136, 12845056)
    assert reader.max_tokens == 16384  # 12,845,056 pixels / (28 x 28) per token
    smaller = GridImages(load_image_processor(tmp_path, max_pixels=448 * 448))
    assert smaller.max_tokens == 256


@pytest.mark.parametrize(
    ("config", "family", "error"),
    [
        ({"model": {"vision": {}}}, "llava", None),
        ({"model_type": "qwen2_5_vl"}, "qwen2_5_vl", None),
        ({"model_type": "llava"}, None, "is a LLaVA-HF folder: convert it once with `switchkd import"),
        ({"model_type": "qwen3_vl"}, None, "model_type 'qwen3_vl' is not a VLM family switchkd reads"),
        ([1, 2], None, "not a JSON object"),
    ],
)
def test_a_folders_family_is_read_from_its_config(tmp_path, config, family, error):
    (tmp_path / "config.json").write_text(json.dumps(config))
    if error is None:
        assert family_of(tmp_path) == family
    else:
        with pytest.raises(ValueError, match=error) as err:
            family_of(tmp_path)
        assert "\n" not in str(err.value)


def test_a_folder_without_a_config_or_with_broken_json_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a model folder"):
        load_vlm(tmp_path)
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match="config.json: not a JSON config"):
        load_vlm(tmp_path)
