"""TMTV-Net's released-weight format -> our networks (clips_nnunet.tmtv.weights), no nnU-Net run.

The state dicts are built here with TMTV-Net's key names and shapes (qurit-frizi/TMTV-Net: ``UNetBase`` +
``DeepSupervision`` of ``SimpleMulticlassUNet_dice_ce_fov_v9_ds_lung_soft_hot_boundary``, ``Refiner`` of
``Refiner_dice_ce_fov_v1_ds_lung_soft_hot_boundary``, ``ModelStacking``). TMTV-Net's forward pass is written out
below with ``torch.nn.functional`` directly on those keys, in TMTV-Net's input order and skip-concatenation order,
so the mapping (renaming and the two reorderings) is checked against an independent computation.
"""
from __future__ import annotations

import io
from typing import Dict, Tuple

import pytest
import torch
import torch.nn.functional as F

from clips_nnunet.errors import DatasetError
from clips_nnunet.tmtv import weights as iw
from clips_nnunet.tmtv.network import TMTVRefiner, TMTVUNet

B = "model.backbone."
#: TMTV-Net's windows in its input order (main/src/preprocess.py PreprocessDataV4_lung_soft_tissues_hot)
TMTV_NET_WINDOWS = (("ct", -150.0, 300.0), ("suv", 0.0, 30.0), ("ct_lung", -1000.0, -200.0),
                    ("ct_soft", -100.0, 100.0), ("suv_hot", 2.0, 10.0))


def _cna(spec: Dict[str, Tuple[int, ...]], conv: str, norm: str, cin: int, cout: int, k: int, bias: bool = True):
    spec[f"{conv}.weight"] = (cout, cin, k, k, k)
    if bias:
        spec[f"{conv}.bias"] = (cout,)
    spec[f"{norm}.weight"] = (cout,)
    spec[f"{norm}.bias"] = (cout,)


def stage1_spec(n_classes: int = 2) -> Dict[str, Tuple[int, ...]]:
    """Key -> shape of TMTV-Net's stage-1 model (printed from its code: 66 tensors, 21,594,530 parameters)."""
    spec: Dict[str, Tuple[int, ...]] = {}
    channels = [64, 96, 128, 156]
    _cna(spec, f"{B}init_block.ops.0.ops.0", f"{B}init_block.ops.1", 5, 32, 3)
    previous = 32
    for i, c in enumerate(channels):
        _cna(spec, f"{B}downs.{i}.ops.ops.0.ops.0", f"{B}downs.{i}.ops.ops.1", previous, c, 3)
        previous = c
    _cna(spec, f"{B}middle_block.ops.ops.0.ops.0", f"{B}middle_block.ops.ops.1", 156, 156, 9)
    skips = [128, 96, 64, 32]
    below = 156
    for i, s in enumerate(skips):
        _cna(spec, f"{B}ups.{i}.ops.ops_deconv.ops.1", f"{B}ups.{i}.ops.ops_deconv.ops.2", below, s, 3)
        _cna(spec, f"{B}ups.{i}.ops.ops_conv.ops.0.ops.0", f"{B}ups.{i}.ops.ops_conv.ops.1", 2 * s, s, 3)
        below = s
    spec[f"{B}output.ops.0.ops.0.weight"] = (2, 32, 3, 3, 3)
    spec[f"{B}output.ops.0.ops.0.bias"] = (2,)
    for i, s in enumerate(skips):
        spec[f"model.outputs.{i}.ops.0.ops.0.weight"] = (n_classes, s, 1, 1, 1)
        spec[f"model.outputs.{i}.ops.0.ops.0.bias"] = (n_classes,)
    return spec


def refiner_spec() -> Dict[str, Tuple[int, ...]]:
    spec: Dict[str, Tuple[int, ...]] = {}
    _cna(spec, "model.ops.0.ops.0.ops.0", "model.ops.0.ops.1", 6, 32, 9, bias=False)
    for k in range(1, 5):
        for block in ("block_1", "block_2"):
            _cna(spec, f"model.ops.{k}.{block}.ops.0.ops.0", f"model.ops.{k}.{block}.ops.1", 32, 32, 3, bias=False)
    _cna(spec, "model.ops.5.ops.0.ops.0", "model.ops.5.ops.1", 32, 2, 1, bias=False)
    return spec


def random_state_dict(spec: Dict[str, Tuple[int, ...]], seed: int) -> Dict[str, torch.Tensor]:
    """Random weights of the right scale (fan-in), norm weights around 1, so activations stay O(1)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in spec.items():
        t = torch.randn(shape, generator=gen)
        if len(shape) == 5:
            t = t / (shape[1] * shape[2] * shape[3] * shape[4]) ** 0.5
        elif key.endswith("weight"):
            t = 1.0 + 0.2 * t
        else:
            t = 0.2 * t
        out[key] = t
    return out


def tmtv_net_inputs(ct: torch.Tensor, suv: torch.Tensor) -> torch.Tensor:
    """TMTV-Net's windowed inputs, in its order."""
    sources = {"ct": ct, "ct_lung": ct, "ct_soft": ct, "suv": suv, "suv_hot": suv}
    return torch.cat([((sources[n] - lo) / (hi - lo)).clamp(0, 1) for n, lo, hi in TMTV_NET_WINDOWS], 1)


def _block(sd, x, conv, norm, stride=1, act=True):
    w = sd[f"{conv}.weight"]
    x = F.conv3d(x, w, sd.get(f"{conv}.bias"), stride=stride, padding=w.shape[-1] // 2)
    x = F.instance_norm(x, weight=sd[f"{norm}.weight"], bias=sd[f"{norm}.bias"], eps=1e-5)
    return F.leaky_relu(x, 0.01) if act else x


def tmtv_net_stage1(sd, features):
    """TMTV-Net's stage-1 inference: UNetBase.forward_with_intermediate, then model.outputs[-1] on the last up."""
    x = _block(sd, features, f"{B}init_block.ops.0.ops.0", f"{B}init_block.ops.1")
    levels = [x]
    for i in range(4):
        x = _block(sd, x, f"{B}downs.{i}.ops.ops.0.ops.0", f"{B}downs.{i}.ops.ops.1", stride=2)
        levels.append(x)
    x = _block(sd, x, f"{B}middle_block.ops.ops.0.ops.0", f"{B}middle_block.ops.ops.1")
    for i, skip in enumerate(reversed(levels[:-1])):
        up = F.interpolate(x, scale_factor=2, mode="trilinear")
        up = _block(sd, up, f"{B}ups.{i}.ops.ops_deconv.ops.1", f"{B}ups.{i}.ops.ops_deconv.ops.2")
        x = _block(sd, torch.cat([skip, up], 1), f"{B}ups.{i}.ops.ops_conv.ops.0.ops.0", f"{B}ups.{i}.ops.ops_conv.ops.1")
    return F.conv3d(x, sd["model.outputs.3.ops.0.ops.0.weight"], sd["model.outputs.3.ops.0.ops.0.bias"])


def tmtv_net_refiner(sd, features):
    x = _block(sd, features, "model.ops.0.ops.0.ops.0", "model.ops.0.ops.1")
    for k in range(1, 5):
        o = _block(sd, x, f"model.ops.{k}.block_1.ops.0.ops.0", f"model.ops.{k}.block_1.ops.1")
        o = _block(sd, o, f"model.ops.{k}.block_2.ops.0.ops.0", f"model.ops.{k}.block_2.ops.1", act=False)
        x = F.leaky_relu(x + o, 0.01)
    return _block(sd, x, "model.ops.5.ops.0.ops.0", "model.ops.5.ops.1")


def _inputs(seed=3, shape=(1, 1, 32, 32, 32)):
    gen = torch.Generator().manual_seed(seed)
    ct = torch.randn(shape, generator=gen) * 500 - 200
    suv = torch.rand(shape, generator=gen).pow(3) * 15 + 0.01
    return ct, suv


def test_stage1_spec_is_tmtv_nets_size():
    spec = stage1_spec()
    assert len(spec) == 66
    # 21,594,530 = the stage-1 network's 21,592,800 + UNetBase's unused 3^3 output conv (2*32*27 + 2 = 1,730)
    assert sum(torch.Size(s).numel() for s in spec.values()) == 21_594_530


def test_input_permutation_hand_computed():
    net = TMTVUNet(2, 2)
    # ours: ct, ct_lung, ct_soft, suv, suv_hot; TMTV-Net: ct(0), suv(1), ct_lung(2), ct_soft(3), suv_hot(4)
    assert iw.input_permutation(net.windowing.windows, 0) == [0, 2, 3, 1, 4]
    assert iw.input_permutation(net.windowing.windows, 1) == [0, 2, 3, 1, 4, 5]
    with pytest.raises(DatasetError, match="not TMTV-Net's"):
        iw.input_permutation(net.windowing.windows[:4] + (("suv_hot", "pet", 2.0, 12.0),), 0)


@torch.no_grad()
def test_stage1_mapping_reproduces_tmtv_net_logits():
    sd = random_state_dict(stage1_spec(), seed=0)
    net = TMTVUNet(2, 2, deep_supervision=False).eval()
    mapped = iw.map_state_dict(sd, net, "e_latest.model")
    assert set(mapped) == set(net.state_dict())
    net.load_state_dict(mapped)
    ct, suv = _inputs()
    expected = tmtv_net_stage1(sd, tmtv_net_inputs(ct, suv))
    ours = net(torch.cat([ct, suv], 1))
    assert expected.abs().max() > 0.1 and expected.std() > 0.01  # not a degenerate comparison
    assert (ours - expected).abs().max() < 1e-4
    # the reorderings matter: the stem without the input permutation gives other logits
    wrong = dict(mapped)
    wrong["stem.0.weight"] = sd[f"{B}init_block.ops.0.ops.0.weight"]
    net.load_state_dict(wrong)
    assert (net(torch.cat([ct, suv], 1)) - expected).abs().max() > 1e-2


@torch.no_grad()
def test_refiner_mapping_reproduces_tmtv_net_logits():
    sd = random_state_dict(refiner_spec(), seed=1)
    net = TMTVRefiner(3, 2, n_image_channels=2).eval()
    net.load_state_dict(iw.map_state_dict(sd, net, "r_latest.model"))
    ct, suv = _inputs(shape=(1, 1, 16, 20, 24))
    previous = (torch.rand(ct.shape, generator=torch.Generator().manual_seed(4)) > 0.7).float()
    expected = tmtv_net_refiner(sd, torch.cat([tmtv_net_inputs(ct, suv), previous], 1))
    assert expected.std() > 0.01
    assert (net(torch.cat([ct, suv, previous], 1)) - expected).abs().max() < 1e-4


def _ensemble(n: int = 2) -> Dict[str, torch.Tensor]:
    sd = {}
    for j in range(n):
        sd.update({f"base_models.{j}.{k}": v for k, v in random_state_dict(stage1_spec(), seed=10 + j).items()})
    sd["staking_blocks.weight"] = torch.arange(2 * n, dtype=torch.float32).view(2, n, 1, 1, 1)
    sd["staking_blocks.bias"] = torch.tensor([0.5, -0.5])
    return sd


def test_split_ensemble_and_classify():
    sd = _ensemble(2)
    assert iw.classify(sd) == iw.ENSEMBLE
    members, stacking = iw.split_ensemble(sd, "e_latest.model")
    assert len(members) == 2 and set(members[1]) == set(stage1_spec())
    assert torch.equal(members[1][f"{B}init_block.ops.1.bias"], sd[f"base_models.1.{B}init_block.ops.1.bias"])
    assert stacking["weight"].flatten().tolist() == [0, 1, 2, 3] and stacking["bias"].tolist() == [0.5, -0.5]
    assert iw.classify(refiner_spec()) == iw.REFINER and iw.classify(stage1_spec()) == iw.STAGE1
    resblock_stacking = {k: v for k, v in sd.items() if not k.startswith("staking_blocks")}
    resblock_stacking["staking_blocks.ops.0.ops.0.ops.0.weight"] = torch.zeros(32, 2, 9, 9, 9)
    with pytest.raises(DatasetError, match=r"e_latest.model: .*staking_blocks.ops.0.ops.0.ops.0.weight"):
        iw.split_ensemble(resblock_stacking, "e_latest.model")


@pytest.mark.parametrize("change, message", [
    ("missing", r"r_latest.model: TMTV-Net refiner tensor\(s\) missing: model.ops.3.block_2.ops.1.bias"),
    ("extra", r"r_latest.model: tensor\(s\) with no place in our refiner: model.ops.6.ops.0.ops.0.weight"),
    ("shape", r"r_latest.model: model.ops.5.ops.0.ops.0.weight has shape \(3, 32, 1, 1, 1\) but our head.0.weight "
              r"needs \(2, 32, 1, 1, 1\)"),
    ("bias", r"r_latest.model: tensor\(s\) with no place in our refiner: model.ops.0.ops.0.ops.0.bias"),
])
def test_wrong_key_or_shape_is_named(change, message):
    sd = random_state_dict(refiner_spec(), seed=2)
    if change == "missing":
        del sd["model.ops.3.block_2.ops.1.bias"]
    elif change == "extra":
        sd["model.ops.6.ops.0.ops.0.weight"] = torch.zeros(2, 2, 1, 1, 1)
    elif change == "shape":
        sd["model.ops.5.ops.0.ops.0.weight"] = torch.zeros(3, 32, 1, 1, 1)
    else:
        sd["model.ops.0.ops.0.ops.0.bias"] = torch.zeros(32)
    with pytest.raises(DatasetError, match=message):
        iw.map_state_dict(sd, TMTVRefiner(3, 2, n_image_channels=2), "r_latest.model")


def test_network_that_differs_from_tmtv_nets_is_refused():
    sd = random_state_dict(stage1_spec(), seed=0)
    with pytest.raises(DatasetError, match="'nearest' upsampling"):
        iw.map_state_dict(sd, TMTVUNet(2, 2, upsample_mode="nearest"), "e_latest.model")
    with pytest.raises(DatasetError, match="head.weight"):  # nnU-Net-style head with bias, no norm
        iw.map_state_dict(random_state_dict(refiner_spec(), 0), TMTVRefiner(3, 2, n_image_channels=2,
                                                                           head_norm_act=False), "r_latest.model")


def test_read_model_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "e_latest.model"
    buffer = io.BytesIO()
    torch.save({"a.weight": torch.zeros(2)}, buffer)
    bad.write_bytes(buffer.getvalue()[:-40])  # truncated download
    with pytest.raises(DatasetError, match="e_latest.model cannot be read"):
        iw.read_model_file(bad)
    other = tmp_path / "other.pth"
    torch.save({"encoder.0.weight": torch.zeros(2)}, other)
    with pytest.raises(DatasetError, match="other.pth is not a TMTV-Net model"):
        iw.read_model_file(other)
    good = tmp_path / "r_latest.model"
    torch.save(random_state_dict(refiner_spec(), 0), good)
    assert iw.read_model_file(good).kind == iw.REFINER
    with pytest.raises(DatasetError, match="does not exist"):
        iw.find_model_files(tmp_path / "absent")
