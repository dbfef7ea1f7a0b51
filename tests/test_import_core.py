"""flowsr import (issue 22) without spandrel: reading weights files safely, and the one-line answers when spandrel
is missing. These run everywhere (CI has no spandrel: its torchvision needs a CUDA torch); tests/test_import.py
covers the import itself where spandrel is installed."""

import sys

import pytest
import torch
from safetensors.torch import save_file

from flowsr.checkpoint import ModelLoadError, load_model_dir
from flowsr.cli import main
from flowsr.config import ModelConfig
from flowsr.importing import read_weights
from flowsr.nets import SRNetConfig


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 12, 3, padding=1)
        self.shuffle = torch.nn.PixelShuffle(2)


@pytest.fixture
def hidden_spandrel(monkeypatch):
    monkeypatch.setitem(sys.modules, "spandrel", None)  # `import spandrel` raises ImportError


def test_a_state_dict_reads_the_same_from_a_pickle_and_from_safetensors(tmp_path):
    state = Tiny().state_dict()
    torch.save(state, tmp_path / "net.pth")
    save_file(state, str(tmp_path / "net.safetensors"))
    for name in ("net.pth", "net.safetensors"):
        read = read_weights(tmp_path / name)
        assert read.keys() == state.keys() and all(torch.equal(read[k], state[k]) for k in state)


def test_a_pickle_that_needs_code_is_refused_without_running_it(tmp_path):
    torch.save(Tiny(), tmp_path / "whole.pth")  # the module itself: loading it means importing this test's class
    with pytest.raises(ValueError) as caught:
        read_weights(tmp_path / "whole.pth")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'whole.pth'}: refused: this pickle needs more than tensors")
    assert "weights_only=True" in message and "Tiny" in message and "\n" not in message


@pytest.mark.parametrize("name, content, message", [
    ("list.pth", [torch.zeros(1)], "holds a list, not a state dict of tensors"),
    ("cut.pth", b"PK\x03\x04 not a whole zip", "cannot read it as a PyTorch pickle (RuntimeError: "),
    ("text.pth", b"hello world", "cannot read it as a PyTorch pickle"),
    ("bad.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":", "not a readable safetensors file"),
    ("net.onnx", b"", "unknown weights format .onnx"),
    ("missing.pth", None, "no such file"),
])
def test_unreadable_weights_are_named_in_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises((ValueError, ModelLoadError)) as caught:
        read_weights(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_import_without_spandrel_says_what_to_install_and_writes_nothing(tmp_path, capsys, hidden_spandrel):
    torch.save(Tiny().state_dict(), tmp_path / "net.pth")
    assert main(["import", str(tmp_path / "net.pth"), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {tmp_path / 'net.pth'}: importing it needs spandrel")
    assert "pip install" in err and "flowsr[import]" in err and not (tmp_path / "out").exists()


def test_an_imported_model_without_spandrel_is_refused_in_one_line(tmp_path, hidden_spandrel):
    directory = tmp_path / "imported"
    directory.mkdir()
    save_file(Tiny().state_dict(), str(directory / "model.safetensors"))
    config = ModelConfig(kind="sr", scale=2, net=None, name="tiny",
                         sr_net=SRNetConfig(arch="spandrel", spandrel_arch="ESRGAN"))
    (directory / "config.json").write_text(config.to_json())
    with pytest.raises(ModelLoadError) as caught:
        load_model_dir(directory)
    assert "imported with spandrel; loading it needs spandrel" in str(caught.value)
    assert "flowsr[import]" in str(caught.value) and "\n" not in str(caught.value)
