import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from styletransfer.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from styletransfer.errors import StyleTransferError
from styletransfer.network import TransformerNet
from styletransfer.norms import NORMS

from .conftest import Exploit


@pytest.mark.parametrize("norm", NORMS)
def test_metadata_alone_rebuilds_the_right_network(tmp_path, norm):
    torch.manual_seed(0)
    model = TransformerNet(norm).eval()
    save_checkpoint(tmp_path / "m.safetensors", model, {"norm": norm, "style": "stripes", "step": 7})
    ckpt = load_checkpoint(tmp_path / "m.safetensors")
    rebuilt = ckpt.build_model()
    x = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))
    assert ckpt.meta["style"] == "stripes" and ckpt.meta["step"] == 7


def test_half_precision_export_is_smaller_and_close(tmp_path):
    model = TransformerNet("iebn").eval()
    meta = {"norm": "iebn"}
    save_checkpoint(tmp_path / "full.safetensors", model, meta)
    save_checkpoint(tmp_path / "half.safetensors", model, meta, dtype=torch.float16)
    assert (tmp_path / "half.safetensors").stat().st_size < 0.55 * (tmp_path / "full.safetensors").stat().st_size
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        full = load_checkpoint(tmp_path / "full.safetensors").build_model()(x)
        half = load_checkpoint(tmp_path / "half.safetensors").build_model()(x)
    assert (full - half).abs().max() < 0.02


def test_optimizer_state_round_trips(tmp_path):
    model = TransformerNet("bn")
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    model(torch.rand(2, 3, 16, 16)).mean().backward()
    opt.step()
    save_checkpoint(tmp_path / "c.safetensors", model, {"norm": "bn"}, optimizer=opt)
    state = load_checkpoint(tmp_path / "c.safetensors", with_optimizer=True).optimizer_state
    opt2 = torch.optim.Adam(TransformerNet("bn").parameters(), lr=1.0)
    opt2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == 3e-4
    original = opt.state_dict()["state"][0]
    torch.testing.assert_close(opt2.state_dict()["state"][0]["exp_avg"], original["exp_avg"])


def test_no_temporary_files_are_left_behind(tmp_path):
    save_checkpoint(tmp_path / "m.safetensors", TransformerNet("in"), {"norm": "in"})
    save_checkpoint(tmp_path / "m.safetensors", TransformerNet("in"), {"norm": "in"})
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def good_checkpoint(tmp_path):
    return save_checkpoint(tmp_path / "good.safetensors", TransformerNet("in"), {"norm": "in"})


def assert_refused(path, match):
    with pytest.raises(StyleTransferError, match=match) as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value)


def test_truncated_checkpoint_is_refused(tmp_path):
    data = good_checkpoint(tmp_path).read_bytes()
    for cut in (10, len(data) // 2, len(data) - 1):
        (tmp_path / "cut.safetensors").write_bytes(data[:cut])
        assert_refused(tmp_path / "cut.safetensors", "cut.safetensors")


def test_files_that_are_not_checkpoints_are_refused(tmp_path):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    assert_refused(tmp_path / "empty.safetensors", "not a styletransfer checkpoint")
    (tmp_path / "text.safetensors").write_text("hello")
    assert_refused(tmp_path / "text.safetensors", "not a styletransfer checkpoint")
    assert_refused(tmp_path / "missing.safetensors", "no such checkpoint")
    assert_refused(tmp_path, "is a folder")


def test_safetensors_of_another_kind_is_refused(tmp_path):
    save_file({"weight": torch.zeros(3)}, tmp_path / "other.safetensors")
    assert_refused(tmp_path / "other.safetensors", "not a styletransfer checkpoint")
    save_file({"w": torch.zeros(1)}, tmp_path / "odd.safetensors", metadata={"styletransfer": json.dumps({"format": "x"})})
    assert_refused(tmp_path / "odd.safetensors", "format")


def test_tensors_of_another_network_are_refused(tmp_path):
    meta = {"styletransfer": json.dumps({"format": "styletransfer-checkpoint", "version": 1, "norm": "iebn"})}
    sd = {f"model.{k}": v for k, v in TransformerNet("bn").state_dict().items()}
    save_file(sd, tmp_path / "bn-as-iebn.safetensors", metadata=meta)
    with pytest.raises(StyleTransferError, match="do not fit a iebn network"):
        load_checkpoint(tmp_path / "bn-as-iebn.safetensors").build_model()
    sd["model.encoder.0.1.weight"] = torch.zeros(5, 5)
    save_file(sd, tmp_path / "shape.safetensors", metadata=meta)
    with pytest.raises(StyleTransferError, match="do not fit"):
        load_checkpoint(tmp_path / "shape.safetensors").build_model()


def test_a_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    for name in ("evil.safetensors", "evil.pth"):
        with open(tmp_path / name, "wb") as f:
            pickle.dump({"model": Exploit(marker)}, f)
        with pytest.raises(StyleTransferError):
            load_checkpoint(tmp_path / name)
    torch.save({"model": Exploit(marker)}, tmp_path / "evil-torch.safetensors")
    with pytest.raises(StyleTransferError):
        load_checkpoint(tmp_path / "evil-torch.safetensors")
    assert not marker.exists()
    # The same bytes really do run code when unpickled: the refusal above is what kept it away.
    with open(tmp_path / "evil.pth", "rb") as f:
        pickle.load(f).get("model").close()
    assert marker.exists()


def test_metadata_is_readable_without_the_tensors(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", TransformerNet("se"), {"norm": "se", "style": "x"})
    assert read_metadata(path)["norm"] == "se"
