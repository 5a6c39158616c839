"""Unit tests of the TMTV-Net recipe: windowing, loss terms, networks, schedule, augmentation, plans, trainers."""
from __future__ import annotations

import math
from copy import deepcopy

import pytest
import torch
from torch import nn

from clips_nnunet.errors import DatasetError
from clips_nnunet.tmtv import augmentation as aug
from clips_nnunet.tmtv.loss import (TMTVLoss, deep_supervision_weights, tmtv_loss_per_sample,
                                             tmtv_loss_terms)
from clips_nnunet.tmtv.network import TMTVRefiner, TMTVUNet, WindowingLayer
from clips_nnunet.tmtv.plans import (add_tmtv_configurations, clamp_patch, detect_channels,
                                               find_preprocessed_dataset_folder)
from clips_nnunet.tmtv.schedule import (CosineWarmRestartsDecayLR, StepDecayLR, cosine_warm_restarts_lr,
                                                 restart_period_epochs)


# ---------------------------------------------------------------------------------------------------- windowing
def test_windowing_values_on_known_inputs():
    ct = torch.tensor([-1000.0, -600.0, -150.0, 75.0, 300.0, 500.0])
    pet = torch.tensor([0.0, 2.0, 6.0, 10.0, 15.0, 40.0])
    x = torch.stack([ct, pet]).view(1, 2, 1, 1, 6)
    out = WindowingLayer()(x)[0, :, 0, 0]
    expected = torch.tensor([
        [0, 0, 0, 0.5, 1, 1],                   # ct [-150, 300]
        [0, 0.5, 1, 1, 1, 1],                   # ct_lung [-1000, -200]
        [0, 0, 0, 0.875, 1, 1],                 # ct_soft [-100, 100]
        [0, 2 / 30, 0.2, 1 / 3, 0.5, 1],        # suv [0, 30]
        [0, 0, 0.5, 1, 1, 1],                   # suv_hot [2, 10]
    ])
    assert torch.allclose(out, expected, atol=1e-6)


def test_windowing_channel_order_denormalisation_and_cascade_passthrough():
    # PET first, CT second; CT stored z-scored with mean 50 / std 100 (nnU-Net CTNormalization); 1 one-hot channel
    layer = WindowingLayer(ct_channel=1, pet_channel=0, n_image_channels=2,
                           input_scale={"ct": 100.0}, input_offset={"ct": 50.0})
    x = torch.tensor([6.0, 0.25, 1.0]).view(1, 3, 1, 1, 1)  # SUV 6, CT (0.25 * 100 + 50) = 75 HU, prev-stage fg 1
    out = layer(x).flatten()
    assert torch.allclose(out, torch.tensor([0.5, 1.0, 0.875, 0.2, 0.5, 1.0]), atol=1e-6)
    assert not list(layer.parameters())  # fixed layer


def test_windowing_rejects_bad_channels():
    with pytest.raises(ValueError, match="pet_channel=2"):
        WindowingLayer(ct_channel=0, pet_channel=2, n_image_channels=2)


# ---------------------------------------------------------------------------------------------------- loss
def _binary_logits(p_fg):
    p = torch.tensor(p_fg, dtype=torch.float64)
    fg = torch.log(p / (1 - p))
    return torch.stack([torch.zeros_like(fg), fg]).view(1, 2, 1, 1, len(p_fg))


def test_loss_terms_against_hand_computed_values():
    p = [0.8, 0.6, 0.2, 0.5]
    logits = _binary_logits(p)
    target = torch.tensor([1, 1, 0, 0]).view(1, 1, 1, 1, 4)
    terms = tmtv_loss_terms(logits, target)
    s = 1e-3
    dice = 1 - (2 * (0.8 + 0.6) + s) / ((0.8 + 0.6 + 0.2 + 0.5) + 2 + s)
    p_t = [0.8, 0.6, 0.8, 0.5]
    focal = sum(-(1 - q) * math.log(q) for q in p_t) / 4
    sens = ((1 - 0.8) + (1 - 0.6)) / 2
    assert terms["dice"].item() == pytest.approx(dice, rel=1e-6)
    assert terms["focal"].item() == pytest.approx(focal, rel=1e-6)
    assert terms["sensitivity"].item() == pytest.approx(sens, rel=1e-6)
    total = tmtv_loss_per_sample(logits, target).item()
    assert total == pytest.approx(dice + 0.5 * focal + 2.0 * sens, rel=1e-6)
    refiner = tmtv_loss_per_sample(logits, target, {"dice": 1, "focal": 0.5, "sensitivity": 0.5}).item()
    assert refiner == pytest.approx(dice + 0.5 * focal + 0.5 * sens, rel=1e-6)


def test_loss_empty_foreground_ignore_label_and_batch_mean():
    logits = torch.cat([_binary_logits([0.8, 0.6, 0.2, 0.5]), _binary_logits([0.1, 0.3, 0.2, 0.5])])
    target = torch.tensor([[1, 1, 0, 2], [0, 0, 0, 0]]).view(2, 1, 1, 1, 4)  # label 2 = ignore (C = 2)
    terms = tmtv_loss_terms(logits, target)
    s = 1e-3
    # sample 0 without the ignored 4th voxel
    ref = tmtv_loss_terms(logits[:1, ..., :3], target[:1, ..., :3])
    for k in terms:
        assert terms[k][0].item() == pytest.approx(ref[k][0].item(), rel=1e-6)
    # sample 1: no ground truth -> sensitivity 0, Dice = 1 - s / (sum p + s)
    assert terms["sensitivity"][1].item() == 0.0
    assert terms["dice"][1].item() == pytest.approx(1 - s / (0.1 + 0.3 + 0.2 + 0.5 + s), rel=1e-6)
    assert TMTVLoss()(logits, target).item() == pytest.approx(tmtv_loss_per_sample(logits, target).mean().item())


def test_loss_gradient_and_deep_supervision_weights():
    logits = torch.randn(2, 2, 4, 4, 4, requires_grad=True)
    target = (torch.rand(2, 1, 4, 4, 4) > 0.7).long()
    TMTVLoss()(logits, target).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert deep_supervision_weights(4) == [1.0, 0.5, 0.25, 0.125]  # full resolution first (TMTV: 1/8..1)


# ---------------------------------------------------------------------------------------------------- networks
def _convs(module):
    return [m for m in module.modules() if isinstance(m, nn.Conv3d)]


def test_stage1_unet_channels_and_kernels():
    net = TMTVUNet(input_channels=2, num_classes=2, deep_supervision=True)
    convs = [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in _convs(net)]
    assert convs[0] == (5, 32, 3, 1)  # stem on the 5 windows
    assert convs[1:5] == [(32, 64, 3, 2), (64, 96, 3, 2), (96, 128, 3, 2), (128, 156, 3, 2)]
    assert convs[5] == (156, 156, 9, 1)  # bottleneck
    dec = net.decoder
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in _convs(dec.up_convs)] == \
        [(156, 128, 3), (128, 96, 3), (96, 64, 3), (64, 32, 3)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in _convs(dec.fuse_convs)] == \
        [(256, 128, 3), (192, 96, 3), (128, 64, 3), (64, 32, 3)]
    assert [(c.in_channels, c.kernel_size[0]) for c in _convs(dec.seg_heads)] == [(128, 1), (96, 1), (64, 1), (32, 1)]
    norms = [m for m in net.modules() if isinstance(m, nn.InstanceNorm3d)]
    assert len(norms) == 1 + 4 + 1 + 8 and all(n.affine for n in norms)
    assert {m.negative_slope for m in net.modules() if isinstance(m, nn.LeakyReLU)} == {0.01}
    x = torch.randn(1, 2, 32, 24, 24) * 100
    outs = net(x)
    assert [tuple(o.shape[2:]) for o in outs] == [(32, 24, 24), (16, 12, 12), (8, 6, 6), (4, 3, 3)]
    net.decoder.deep_supervision = False  # what nnU-Net's set_deep_supervision_enabled does
    assert net(x).shape == (1, 2, 32, 24, 24)


def test_refiner_channels_and_kernels():
    net = TMTVRefiner(input_channels=3, num_classes=2, n_image_channels=2)  # CT, PET + stage-1 fg (one-hot)
    convs = [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in _convs(net)]
    assert convs[0] == (6, 32, 9)
    assert convs[1:9] == [(32, 32, 3)] * 8  # 4 residual blocks of two 3^3 convs
    assert convs[9] == (32, 2, 1)
    assert net(torch.randn(1, 3, 12, 10, 8)).shape == (1, 2, 12, 10, 8)


# ---------------------------------------------------------------------------------------------------- schedule
def test_cosine_warm_restarts_with_decay_at_chosen_steps():
    lr = lambda t: cosine_warm_restarts_lr(t, 1e-3, period=10, decay=0.9)  # noqa: E731
    assert lr(0) == pytest.approx(1e-3)
    assert lr(5) == pytest.approx(0.5e-3)
    assert lr(10) == pytest.approx(0.9e-3)  # restart, peak x0.9
    assert lr(15) == pytest.approx(0.45e-3)
    assert lr(20) == pytest.approx(0.81e-3)
    assert lr(9) == pytest.approx(0.5e-3 * (1 + math.cos(math.pi * 0.9)))
    assert restart_period_epochs(3800, 250) == 15 and restart_period_epochs(3800, 19) == 200
    with pytest.raises(ValueError, match="period"):
        cosine_warm_restarts_lr(0, 1e-3, period=0)


def test_schedulers_set_optimizer_lr_per_epoch():
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = CosineWarmRestartsDecayLR(opt, 1e-3, period=15, decay=0.9)
    sched.step(15)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.9e-3)
    step = StepDecayLR(opt, 5e-4, step_epochs=25, gamma=0.5)
    for epoch, expected in ((0, 5e-4), (24, 5e-4), (25, 2.5e-4), (50, 1.25e-4)):
        step.step(epoch)
        assert opt.param_groups[0]["lr"] == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------------- augmentation
def test_augmentation_pipeline_parameters():
    pipe = aug.tmtv_training_transforms((32, 32, 32), [[1, 1, 1], [0.5] * 3, [0.25] * 3, [0.125] * 3], (0, 1, 2),
                                        suv_channel=1)
    t = pipe.transforms
    assert isinstance(t[0], aug.ChannelSubsetTransform) and t[0].channels == [1]
    suv = t[0].transform.transforms
    assert [r.apply_probability for r in suv] == [0.1] * 6
    inner = [r.transform for r in suv]
    assert [type(i).__name__ for i in inner] == ["GaussianBlurTransform", "MultiplicativeBrightnessTransform",
                                                 "ContrastTransform", "SimulateLowResolutionTransform",
                                                 "GammaTransform", "GammaTransform"]
    assert inner[0].blur_sigma == (0.5, 1.0)
    assert inner[1].multiplier_range.contrast_range == (0.75, 1.25)
    assert inner[2].contrast_range.contrast_range == (0.75, 1.25)
    assert inner[3].scale == (0.5, 1.0)
    assert inner[4].gamma.contrast_range == (0.7, 1.5) and inner[4].p_invert_image == 1 and inner[4].p_retain_stats == 1
    assert inner[5].p_invert_image == 0 and inner[5].p_retain_stats == 1
    assert type(t[1]).__name__ == "MirrorTransform" and tuple(t[1].allowed_axes) == (0, 1, 2)
    affine = t[2]
    assert isinstance(affine, aug.JointAffineTransform)
    assert affine.p_affine == 0.5 and affine.rotation == (-0.3, 0.3) and affine.scaling == (0.9, 1.1)
    assert affine.p_elastic_deform == 0 and affine.p_synchronize_scaling_across_axes == 1
    assert type(t[-1]).__name__ == "DownsampleSegForDSTransform"


def test_suv_transforms_touch_only_the_pet_channel_and_pipeline_output_shapes():
    from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
    image = torch.rand(2, 8, 8, 8)
    double = MultiplicativeBrightnessTransform(multiplier_range=(2.0, 2.0), synchronize_channels=True,
                                               p_per_channel=1)
    out = aug.ChannelSubsetTransform(double, [1])(image=image.clone())["image"]
    assert torch.equal(out[0], image[0]) and torch.allclose(out[1], 2 * image[1])

    never, always = aug.JointAffineTransform((8, 8, 8), p_affine=0.0), aug.JointAffineTransform((8, 8, 8), 1.0)
    assert never.get_parameters(image=image)["affine"] is None
    assert always.get_parameters(image=image)["affine"] is not None

    pipe = aug.tmtv_training_transforms((16, 16, 16), [[1, 1, 1], [0.5] * 3, [0.25] * 3, [0.125] * 3])
    sample = pipe(image=torch.rand(2, 24, 24, 24), segmentation=torch.randint(0, 2, (1, 24, 24, 24)).short())
    assert sample["image"].shape == (2, 16, 16, 16)
    assert [tuple(s.shape[1:]) for s in sample["segmentation"]] == [(16,) * 3, (8,) * 3, (4,) * 3, (2,) * 3]


# ---------------------------------------------------------------------------------------------------- plans
def fake_plans(median=(32, 32, 32), spacing=(4.0, 4.0, 4.0), schemes=("CTNormalization", "CTNormalization")):
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"strides": [[1, 1, 1], [2, 2, 2]]}, "_kw_requires_import": []}
    fullres = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
               "batch_size": 2, "patch_size": [32, 32, 32], "median_image_size_in_voxels": list(median),
               "spacing": list(spacing), "normalization_schemes": list(schemes), "use_mask_for_norm": [False, False],
               "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
               "resampling_fn_data_kwargs": {}, "resampling_fn_seg_kwargs": {},
               "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
               "resampling_fn_probabilities_kwargs": {}, "architecture": arch, "batch_dice": False}
    return {"dataset_name": "Dataset991_ClipsTiny", "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": list(spacing), "original_median_shape_after_transp": list(median),
            "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "configurations": {"2d": {"x": 1}, "3d_fullres": fullres},
            "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {
                "0": {"mean": 50.0, "std": 100.0, "percentile_00_5": -1000, "percentile_99_5": 1000},
                "1": {"mean": 3.0, "std": 2.0, "percentile_00_5": 0, "percentile_99_5": 30}}}


DATASET_JSON = {"channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "lesion": 1},
                "numTraining": 12, "file_ending": ".nii.gz"}


def test_detect_channels():
    assert detect_channels({"0": "CT", "1": "PET"}) == (0, 1)
    assert detect_channels({"0": "PET", "1": "CT"}) == (1, 0)
    assert detect_channels({"0": "SUV", "1": "CT_HU"}) == (1, 0)
    assert detect_channels({"0": "CT", "1": "CT"}) == (0, 1)  # the converter's pair: CT, then PET
    # names that tell no role are refused, not guessed (the old rule read "attenuation" as CT and any pair as 0/1)
    for names in ({"0": "SUV", "1": "attenuation"}, {"0": "T1", "1": "T2"}):
        with pytest.raises(DatasetError, match="cannot be matched to CT and PET"):
            detect_channels(names)
    with pytest.raises(DatasetError, match="needs one CT and one PET"):
        detect_channels({"0": "CT"})


def test_add_tmtv_configurations():
    plans = fake_plans()
    original = deepcopy(plans)
    new = add_tmtv_configurations(plans, DATASET_JSON)
    assert plans == original  # input untouched
    assert set(new["configurations"]) == {"2d", "3d_fullres", "3d_tmtv", "3d_tmtv_refine"}
    s1, r = new["configurations"]["3d_tmtv"], new["configurations"]["3d_tmtv_refine"]
    assert s1["spacing"] == [6.0, 6.0, 6.0] and s1["patch_size"] == [128, 96, 96]
    assert s1["normalization_schemes"] == ["NoNormalization"] * 2 and s1["next_stage"] == "3d_tmtv_refine"
    assert s1["median_image_size_in_voxels"] == [21.33] * 3 and s1["data_identifier"] == "nnUNetPlans_3d_tmtv"
    assert r["previous_stage"] == "3d_tmtv" and r["patch_size"] == [96, 96, 96] and r["inherits_from"] == "3d_fullres"
    assert r["normalization_schemes"] == ["NoNormalization"] * 2
    assert s1["architecture"]["arch_kwargs"]["pet_channel"] == 1
    tiny = add_tmtv_configurations(plans, DATASET_JSON, clamp_patch_to_median=True)
    assert tiny["configurations"]["3d_tmtv"]["patch_size"] == [24, 24, 24]
    assert tiny["configurations"]["3d_tmtv_refine"]["patch_size"] == [32, 32, 32]
    big = add_tmtv_configurations(fake_plans(median=(400, 200, 200), spacing=(2.0, 2.0, 2.0)), DATASET_JSON, True)
    assert big["configurations"]["3d_tmtv"]["patch_size"] == [128, 64, 64]  # 133.3, 66.7, 66.7 -> multiples of 8
    assert clamp_patch([128, 96, 96], [21.3, 50, 200], 8, 24) == [24, 48, 96]
    with pytest.raises(DatasetError, match="3d_fullres"):
        add_tmtv_configurations({"configurations": {}}, DATASET_JSON)


def test_plan_tmtv_cli_writes_plans_atomically(tmp_path, monkeypatch):
    from clips_nnunet.cli import main
    from clips_nnunet.io_utils import atomic_write_json, read_json
    folder = tmp_path / "Dataset991_ClipsTiny"
    atomic_write_json(folder / "nnUNetPlans.json", fake_plans())
    atomic_write_json(folder / "dataset.json", DATASET_JSON)
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    assert main(["plan-tmtv", "-d", "991", "--clamp-patch-to-median"]) == 0
    plans = read_json(folder / "nnUNetPlans.json")
    assert plans["configurations"]["3d_tmtv"]["patch_size"] == [24, 24, 24]
    assert sorted(p.name for p in folder.iterdir()) == ["dataset.json", "nnUNetPlans.json"]  # no temp files left
    first = (folder / "nnUNetPlans.json").read_text()
    assert main(["plan-tmtv", "-d", "991", "--clamp-patch-to-median"]) == 0  # re-run: same plans
    assert (folder / "nnUNetPlans.json").read_text() == first
    assert main(["plan-tmtv", "-d", "992"]) == 2  # missing dataset: clear error, exit 2 (the command could not run)
    monkeypatch.delenv("nnUNet_preprocessed")
    with pytest.raises(DatasetError, match="nnUNet_preprocessed is not set"):
        find_preprocessed_dataset_folder(991)


# ---------------------------------------------------------------------------------------------------- trainers
@pytest.fixture
def trainer_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))  # nnU-Net reads its paths lazily
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    return tmp_path


def _trainer(cls, configuration, plans=None):
    plans = add_tmtv_configurations(plans or fake_plans(), DATASET_JSON)
    return cls(plans={**plans, "continue_training": False}, configuration=configuration, fold=0,
               dataset_json=DATASET_JSON, device=torch.device("cpu"))


def test_stage1_trainer_settings(trainer_paths):
    from clips_nnunet.tmtv.recipe import nnUNetTrainerTMTV
    from clips_nnunet.tmtv.loss import FullResolutionDeepSupervision
    tr = _trainer(nnUNetTrainerTMTV, "3d_tmtv")
    assert (tr.initial_lr, tr.weight_decay, tr.oversample_foreground_percent, tr.grad_clip_norm) == \
        (1e-3, 1e-6, 0.0, 1.0)
    assert tr._get_deep_supervision_scales() == [[1.0] * 3] * 4  # TMTV-Net: full-resolution target everywhere
    rotation, dummy_2d, initial_patch, mirror = tr.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert rotation == (-0.3, 0.3) and not dummy_2d and mirror == (0, 1, 2)
    assert tr.inference_allowed_mirroring_axes is None  # no test-time mirroring
    assert all(i >= p for i, p in zip(initial_patch, (128, 96, 96)))
    tr.network = tr.build_network_architecture(tr.plans_manager, tr.configuration_manager, 2, 2, True)
    assert isinstance(tr.network, TMTVUNet)
    loss = tr._build_loss()
    assert isinstance(loss, FullResolutionDeepSupervision) and loss.weight_factors == (1.0, 0.5, 0.25, 0.125)
    assert loss.loss.weights == {"dice": 1.0, "focal": 0.5, "sensitivity": 2.0}
    opt, sched = tr.configure_optimizers()
    assert isinstance(opt, torch.optim.AdamW) and isinstance(sched, CosineWarmRestartsDecayLR)
    assert sched.period == 15 and sched.decay == 0.9
    pipe = tr.get_training_transforms((128, 96, 96), rotation, None, mirror, False)
    assert pipe.transforms[0].channels == [1]
    logits, target = torch.randn(2, 2, 4, 4, 4), torch.randint(0, 2, (2, 1, 4, 4, 4))
    assert torch.allclose(tr.per_sample_loss(logits, target), tmtv_loss_per_sample(logits, target))


def test_refiner_and_stock_fullres(trainer_paths):
    from clips_nnunet.tmtv.recipe import nnUNetTrainerTMTV, nnUNetTrainerTMTVRefiner
    ref = _trainer(nnUNetTrainerTMTVRefiner, "3d_tmtv_refine")
    assert (ref.initial_lr, ref.weight_decay, ref.enable_deep_supervision) == (5e-4, 1e-4, False)
    assert "nnUNetTrainerTMTV__nnUNetPlans__3d_tmtv" in ref.folder_with_segs_from_previous_stage
    ref.network = ref.build_network_architecture(ref.plans_manager, ref.configuration_manager, 3, 2, False)
    assert isinstance(ref.network, TMTVRefiner) and isinstance(ref.configure_optimizers()[1], StepDecayLR)
    assert ref._build_loss().weights == {"dice": 1.0, "focal": 0.5, "sensitivity": 0.5}
    with pytest.raises(DatasetError, match="previous_stage"):
        _trainer(nnUNetTrainerTMTVRefiner, "3d_tmtv")
    same = _trainer(nnUNetTrainerTMTV, "3d_tmtv_refine")  # nnU-Net's convention: same trainer for both stages
    assert same.tmtv_is_refiner and same._get_deep_supervision_scales() is None
    assert "nnUNetTrainerTMTV__nnUNetPlans__3d_tmtv" in same.folder_with_segs_from_previous_stage

    # stock 3d_fullres (CTNormalization): the windowing layer maps stored values back to HU / SUV
    full = _trainer(nnUNetTrainerTMTV, "3d_fullres")
    net = full.build_network_architecture(full.plans_manager, full.configuration_manager, 2, 2, True)
    x = torch.tensor([(75.0 - 50.0) / 100.0, (6.0 - 3.0) / 2.0]).view(1, 2, 1, 1, 1)  # 75 HU, SUV 6, normalised
    assert torch.allclose(net.windowing(x).flatten(), torch.tensor([0.5, 1.0, 0.875, 0.2, 0.5]), atol=1e-6)
    zscore = fake_plans(schemes=("CTNormalization", "ZScoreNormalization"))
    with pytest.raises(DatasetError, match="ZScoreNormalization"):
        _trainer(nnUNetTrainerTMTV, "3d_fullres", zscore)
