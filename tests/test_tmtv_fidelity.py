"""TMTV-Net fidelity (issue 15): full-resolution deep supervision, air padding, trilinear decoder, refiner head
without bias, refiner respacing augmentation and schedule, gradient accumulation, the fine-tune trainer."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from torch import nn

from clips_nnunet.tmtv import augmentation as aug
from clips_nnunet.tmtv.loss import FullResolutionDeepSupervision, TMTVLoss, upsample_logits
from clips_nnunet.tmtv.network import TMTVRefiner, TMTVUNet, WindowingLayer
from clips_nnunet.tmtv.plans import add_tmtv_configurations
from clips_nnunet.tmtv.schedule import StepDecayLR
from test_tmtv_units import DATASET_JSON, fake_plans

SMOOTH = 1e-3


# ---------------------------------------------------------------------------------------------- deep supervision
def test_full_resolution_deep_supervision_keeps_a_one_voxel_lesion():
    target = torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)
    target[0, 0, 2, 4, 0] = 1  # one lesion voxel at even indices (nearest-exact keeps the odd ones)
    # nnU-Net's way: the 1/2 target (nearest-exact) loses the lesion
    down = DownsampleSegForDSTransform([[1.0] * 3, [0.5] * 3])(segmentation=target[0])["segmentation"]
    assert down[0].sum() == 1 and down[1].sum() == 0
    # TMTV-Net's way: constant logits 0 (p = 0.5) at both scales, both compared with the full-resolution target
    outputs = [torch.zeros(1, 2, 8, 8, 8), torch.zeros(1, 2, 4, 4, 4)]
    loss = FullResolutionDeepSupervision(TMTVLoss(smooth=SMOOTH), (1.0, 0.5))(outputs, [target, target])
    dice = 1 - (2 * 0.5 + SMOOTH) / (0.5 * 512 + 1 + SMOOTH)
    focal = 0.5 * math.log(2)  # -(1 - 0.5) * log(0.5) at every voxel
    sensitivity = 0.5          # mean (1 - p_fg) over the lesion voxel
    per_output = dice + 0.5 * focal + 2.0 * sensitivity
    assert loss.item() == pytest.approx(1.5 * per_output, rel=1e-5)
    # a single target tensor is used for every output
    assert FullResolutionDeepSupervision(TMTVLoss(smooth=SMOOTH), (1.0, 0.5))(outputs, target).item() == \
        pytest.approx(loss.item())


def test_upsample_logits_is_trilinear_with_aligned_corners():
    coarse = torch.tensor([0.0, 3.0]).view(1, 1, 1, 1, 2).expand(1, 1, 2, 2, 2).contiguous()
    fine = upsample_logits(coarse, (4, 4, 4))
    assert torch.allclose(fine[0, 0, 0, 0], torch.tensor([0.0, 1.0, 2.0, 3.0]))  # corners kept, linear between
    assert upsample_logits(fine, (4, 4, 4)) is fine


# ---------------------------------------------------------------------------------------------- network
def test_padding_is_air_after_windowing():
    x = torch.zeros(1, 2, 1, 1, 3)
    x[0, 1, 0, 0, 1] = 6.0      # CT 0 HU, SUV 6: inside the image
    x[0, 0, 0, 0, 2] = -1000.0  # air, SUV 0: inside
    out = WindowingLayer()(x)[0, :, 0, 0]
    assert torch.equal(out[:, 0], torch.zeros(5))  # all-zero voxel = nnU-Net's padding -> 0 in every window
    assert out[0, 1].item() == pytest.approx(150 / 450)  # 0 HU inside the image stays water
    assert torch.equal(out[:, 2], torch.zeros(5))
    water = WindowingLayer(zero_outside=False)(x)[0, :, 0, 0]
    assert water[0, 0].item() == pytest.approx(150 / 450) and water[2, 0].item() == pytest.approx(0.5)


def test_decoder_upsampling_is_trilinear():
    torch.manual_seed(0)
    net = TMTVUNet(2, 2, deep_supervision=False, features_per_stage=(4, 6), bottleneck_kernel=3).eval()
    seen = {}
    net.bottleneck.register_forward_hook(lambda m, i, o: seen.__setitem__("low", o))
    net.decoder.up_convs[0].register_forward_pre_hook(lambda m, i: seen.__setitem__("up", i[0]))
    x = torch.randn(1, 2, 8, 8, 8) * 100
    net(x)
    expected = nn.Upsample(scale_factor=2, mode="trilinear")(seen["low"])  # TMTV-Net's upsample_fn
    assert torch.allclose(seen["up"], expected, atol=1e-6)
    assert not torch.allclose(seen["up"], F.interpolate(seen["low"], scale_factor=2, mode="nearest"), atol=1e-3)
    with pytest.raises(ValueError, match="upsample_mode"):
        TMTVUNet(2, 2, upsample_mode="cubic")


def test_refiner_has_no_bias_and_a_normalised_head():
    net = TMTVRefiner(3, 2, n_image_channels=2)  # 2 image channels + 1 previous-stage channel -> 6 windowed inputs
    assert all(m.bias is None for m in net.modules() if isinstance(m, nn.Conv3d))
    assert [type(m) for m in net.head] == [nn.Conv3d, nn.InstanceNorm3d, nn.LeakyReLU]
    # 9^3 stem 6->32 + IN, 4 blocks of two 3^3 32->32 convs + 2 IN, 1x1x1 head 32->2 + IN (affine: 2 per channel)
    expected = (6 * 32 * 729 + 64) + 4 * (2 * 32 * 32 * 27 + 2 * 64) + (32 * 2 + 4)
    assert sum(p.numel() for p in net.parameters()) == expected == 361_796
    plain = TMTVRefiner(3, 2, n_image_channels=2, conv_bias=True, head_norm_act=False)
    assert isinstance(plain.head, nn.Conv3d) and plain.head.bias is not None


# ---------------------------------------------------------------------------------------------- respacing
def test_respacing_zooms_about_the_patch_centre():
    ramp = torch.arange(12, dtype=torch.float32).view(12, 1, 1).expand(12, 12, 12)
    image = torch.stack([ramp, torch.ones(12, 12, 12)])
    seg = torch.zeros(1, 12, 12, 12, dtype=torch.int16)
    t = aug.RandomRespacingTransform((4, 4, 4), (2.0, 2.0, 2.0), p=1.0, spacing_min=(4.0, 4.0, 4.0),
                                     spacing_max=(4.0, 4.0, 4.0), rng=np.random.default_rng(0))
    out = t(image=image.clone(), segmentation=seg.clone())
    # output voxel i samples 5.5 + (i - 1.5) * 4 / 2 along z: 2.5, 4.5, 6.5, 8.5 (linear is exact on a ramp)
    assert torch.allclose(out["image"][0, :, 2, 2], torch.tensor([2.5, 4.5, 6.5, 8.5]))
    assert out["image"].shape == (2, 4, 4, 4) and out["segmentation"].shape == (1, 4, 4, 4)
    # zooming out of a 6^3 region: voxels beyond it are outside (image 0, label -1)
    far = aug.RandomRespacingTransform((4, 4, 4), (1.0, 1.0, 1.0), p=1.0, spacing_min=(4.0, 4.0, 4.0),
                                       spacing_max=(4.0, 4.0, 4.0), rng=np.random.default_rng(0))
    out = far(image=image[:, :6, :6, :6].clone(), segmentation=seg[:, :6, :6, :6].clone())
    assert out["image"][1, 0, 0, 0] == 0 and out["segmentation"][0, 0, 0, 0] == -1
    assert out["segmentation"][0, 2, 2, 2] == 0  # centre inside
    # p = 0: exact centre crop, no interpolation
    crop = aug.RandomRespacingTransform((4, 4, 4), (2.0, 2.0, 2.0), p=0.0, rng=np.random.default_rng(0))
    out = crop(image=image.clone(), segmentation=seg.clone())
    assert torch.equal(out["image"], image[:, 4:8, 4:8, 4:8]) and torch.equal(out["segmentation"], seg[:, 4:8, 4:8, 4:8])


def test_respacing_draws_tmtv_ranges_with_y_tied_to_x():
    t = aug.RandomRespacingTransform((4, 4, 4), (2.0, 2.0, 2.0), p=1.0, rng=np.random.default_rng(1))
    draws = [t.get_parameters()["target_spacing"] for _ in range(200)]
    z, y, x = np.array(draws).T
    assert np.all(y == x) and 1.5 <= x.min() and x.max() <= 4.0 and 2.0 <= z.min() and z.max() <= 4.0
    half = aug.RandomRespacingTransform((4, 4, 4), (2.0, 2.0, 2.0), rng=np.random.default_rng(2))
    applied = sum(half.get_parameters()["target_spacing"] is not None for _ in range(2000))
    assert 900 < applied < 1100  # p = 0.5
    assert aug.respacing_initial_patch_size((96, 96, 96), (2.0, 3.0, 5.0)) == (192, 128, 96)


# ---------------------------------------------------------------------------------------------- trainers
@pytest.fixture
def trainer_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    return tmp_path


def _trainer(cls, configuration):
    plans = add_tmtv_configurations(fake_plans(), DATASET_JSON, clamp_patch_to_median=True)
    return cls(plans={**plans, "continue_training": False}, configuration=configuration, fold=0,
               dataset_json=DATASET_JSON, device=torch.device("cpu"))


def test_refiner_recipe_defaults(trainer_paths):
    from clips_nnunet.tmtv.recipe import nnUNetTrainerTMTVRefiner
    ref = _trainer(nnUNetTrainerTMTVRefiner, "3d_tmtv_refine")
    assert ref.configuration_manager.batch_size == 8
    assert ref.num_epochs == 576 and ref.grad_accumulation_steps == 2  # 144,000 iterations of 250 per epoch
    ref.network = ref.build_network_architecture(ref.plans_manager, ref.configuration_manager, 3, 2, False)
    sched = ref.configure_optimizers()[1]
    assert isinstance(sched, StepDecayLR) and (sched.step_epochs, sched.gamma) == (96, 0.3)
    assert sched.lr_at(95) == pytest.approx(5e-4) and sched.lr_at(96) == pytest.approx(1.5e-4)
    _, _, initial, mirror = ref.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert tuple(initial) == (32, 32, 32)  # 4 mm data: the coarsest target spacing (4 mm) needs no margin
    pipe = ref.get_training_transforms((32, 32, 32), None, None, mirror, False, is_cascaded=True,
                                       foreground_labels=[1])
    kinds = [type(t).__name__ for t in pipe.transforms]
    assert kinds[0] == "RandomRespacingTransform" and "JointAffineTransform" not in kinds
    assert pipe.transforms[0].current_spacing == (4.0, 4.0, 4.0)


def test_finetune_trainer_and_nnunet_switches(trainer_paths):
    from clips_nnunet.tmtv.recipe import nnUNetTrainerTMTV, nnUNetTrainerTMTVFinetune
    ft = _trainer(nnUNetTrainerTMTVFinetune, "3d_tmtv")
    ft.network = ft.build_network_architecture(ft.plans_manager, ft.configuration_manager, 2, 2, True)
    assert ft.initial_lr == 5e-5 and ft.configure_optimizers()[1].base_lr == 5e-5

    class NnunetWays(nnUNetTrainerTMTV):
        deep_supervision_upsample_logits = False
        decoder_upsample_mode = "nearest"
        padding_is_air = False

    tr = _trainer(NnunetWays, "3d_tmtv")
    assert tr._get_deep_supervision_scales() == [[1.0] * 3, [0.5] * 3, [0.25] * 3, [0.125] * 3]
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    assert isinstance(tr._build_loss(), DeepSupervisionWrapper)
    net = tr.build_network_architecture(tr.plans_manager, tr.configuration_manager, 2, 2, True)
    assert net.decoder.upsample_mode == "nearest" and not net.windowing.zero_outside


def test_gradient_accumulation_equals_one_step_on_the_joint_batch(trainer_paths):
    from clips_nnunet.tmtv.recipe import nnUNetTrainerTMTVRefiner

    def ready(steps):
        torch.manual_seed(0)
        tr = _trainer(nnUNetTrainerTMTVRefiner, "3d_tmtv_refine")
        tr.grad_accumulation_steps = steps
        tr.network = TMTVRefiner(3, 2, n_image_channels=2, features=4, n_blocks=1, first_kernel=3)
        tr.optimizer, tr.lr_scheduler = tr.configure_optimizers()
        tr.loss = tr._build_loss()
        return tr

    rng = np.random.default_rng(0)
    data = torch.from_numpy(np.concatenate([rng.normal(0, 300, (4, 1, 6, 6, 6)), rng.gamma(2, 2, (4, 1, 6, 6, 6)),
                                            rng.integers(0, 2, (4, 1, 6, 6, 6))], 1).astype(np.float32))
    target = torch.from_numpy(rng.integers(0, 2, (4, 1, 6, 6, 6)))
    acc, joint = ready(2), ready(1)
    before = [p.detach().clone() for p in acc.network.parameters()]
    acc.train_step({"data": data[:2], "target": target[:2]})
    assert all(torch.equal(a, b) for a, b in zip(before, acc.network.parameters()))  # no step after the first half
    acc.train_step({"data": data[2:], "target": target[2:]})
    joint.train_step({"data": data, "target": target})
    for a, b in zip(acc.network.parameters(), joint.network.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert not all(torch.equal(a, b) for a, b in zip(before, acc.network.parameters()))
