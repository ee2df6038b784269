"""Reading checkpoints by name and shape: sharded files, pickles, damaged files, the folded name lists."""

import json
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import save_file

from switchkd.formats.weights import FormatError, Rule, checkpoint_index, compact, map_names


@pytest.mark.parametrize(
    ("names", "want"),
    [
        (["a.weight"], "a.weight"),
        (["l.0.w", "l.1.w", "l.2.w"], "l.{0-2}.w (3)"),
        (["l.0.w", "l.2.w", "l.3.w", "l.7.w"], "l.{0,2-3,7}.w (4)"),
        (["l.1.w", "l.0.w", "x.b"], "l.{0-1}.w (2), x.b"),
        (["l.0.mlp.0.w", "l.1.mlp.0.w", "l.0.mlp.2.w", "l.1.mlp.2.w"], "l.{0-1}.mlp.{0,2}.w (4)"),
    ],
)
def test_compact_folds_numbers_into_ranges(names, want):
    assert compact(names) == want


def test_a_sharded_checkpoint_is_read_through_its_index(tmp_path):
    save_file({"a.weight": torch.zeros(2, 3)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b.weight": torch.zeros(4, dtype=torch.bfloat16)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    save_file({"stray": torch.zeros(1)}, str(tmp_path / "optimizer.safetensors"))  # not in the index: not read
    weight_map = {"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    index = checkpoint_index(tmp_path)
    assert {k: (v.shape, v.dtype) for k, v in index.items()} == {
        "a.weight": ((2, 3), torch.float32),
        "b.weight": ((4,), torch.bfloat16),
    }
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FormatError, match="names missing shards"):
        checkpoint_index(tmp_path)


class _Payload:
    """Unpickling runs ``exec``: a stand-in for code planted in a checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_a_pickle_with_code_or_a_damaged_file_is_refused_naming_the_file(tmp_path):
    torch.save({"a": torch.zeros(1), "cfg": OrderedDict(x=1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(FormatError, match="pytorch_model.bin: expected a flat dict of tensors"):
        checkpoint_index(tmp_path)
    # A live payload: unpickling it writes a marker file (shown by loading it the unsafe way first).
    marker = tmp_path / "payload-ran"
    torch.save({"a": torch.zeros(1), "fn": _Payload(marker)}, tmp_path / "pytorch_model.bin")
    torch.load(tmp_path / "pytorch_model.bin", weights_only=False)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(FormatError, match="pytorch_model.bin: not a plain tensor checkpoint"):
        checkpoint_index(tmp_path)
    assert not marker.exists()
    (tmp_path / "pytorch_model.bin").unlink()
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with pytest.raises(FormatError, match="model.safetensors: not a readable safetensors file"):
        checkpoint_index(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FormatError, match="no \\*.safetensors or pytorch_model\\*.bin weights"):
        checkpoint_index(tmp_path)


def test_two_names_mapping_to_one_parameter_are_refused(tmp_path):
    save_file({"x.w": torch.zeros(2), "y.w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    rules = [Rule(r"[xy]\.(.+)", r"p.\1")]
    with pytest.raises(FormatError, match=r"1 map to one parameter: x.w and y.w -> p.w"):
        map_names(tmp_path, checkpoint_index(tmp_path), rules, {"p.w": torch.Size([2])})
    ok = map_names(tmp_path, checkpoint_index(tmp_path), rules, {"p.w": torch.Size([2])}, ignore=[r"y\..*"])
    assert ok == {"p.w": "x.w"}
