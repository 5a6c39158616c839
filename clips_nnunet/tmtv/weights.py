"""TMTV-Net's released weights on our networks: read its checkpoint files and map every tensor, checked.

TMTV-Net (qurit-frizi/TMTV-Net ``main/main.py``) saves and loads plain PyTorch state dicts
(``TrainerV2.save_state``/``load_state``: ``torch.save(model.state_dict())``, loaded with ``strict=True``). Its
released models are

- ``e_latest.model``: the stage-1 ensemble, ``ModelStacking`` (``main/src/model_stacking.py``) of 4 copies of
  ``SimpleMulticlassUNet_dice_ce_fov_v9_ds_lung_soft_hot_boundary``: keys ``base_models.<j>.<stage-1 key>`` and the
  linear stacking layer ``staking_blocks.weight`` (2, 4, 1, 1, 1) / ``staking_blocks.bias`` (TMTV-Net's spelling);
- ``r_latest.model``: the refiner ``Refiner_dice_ce_fov_v1_ds_lung_soft_hot_boundary``, keys ``model.ops.*``.

A single stage-1 model (keys ``model.backbone.*``, ``model.outputs.*``) is read as well. The stage-1 network is
``ModelUNetMulticlassDeepSupervision(DeepSupervision(UNetBase))`` (``layers/unet_base.py``, ``layers/blocks.py``,
``layers/deep_supervision.py``), the refiner ``Refiner`` (``model_refiner_multiclass_deepsupervision_configured_v1.py``).

Key mapping onto :class:`~clips_nnunet.tmtv.network.TMTVUNet` / ``TMTVRefiner`` (``{w,b}``: weight, bias):

========================================================  ==========================================
TMTV-Net                                                  ours
========================================================  ==========================================
``model.backbone.init_block.ops.0.ops.0.{w,b}``           ``stem.0.{w,b}`` (input channels reordered)
``model.backbone.init_block.ops.1.{w,b}`` (InstanceNorm)  ``stem.1.{w,b}``
``model.backbone.downs.<i>.ops.ops.0.ops.0.{w,b}``        ``encoder.<i>.0.{w,b}``
``model.backbone.downs.<i>.ops.ops.1.{w,b}``              ``encoder.<i>.1.{w,b}``
``model.backbone.middle_block.ops.ops.{0.ops.0,1}.*``     ``bottleneck.{0,1}.*``
``model.backbone.ups.<i>.ops.ops_deconv.ops.{1,2}.*``     ``decoder.up_convs.<i>.{0,1}.*``
``model.backbone.ups.<i>.ops.ops_conv.ops.0.ops.0.w``     ``decoder.fuse_convs.<i>.0.weight`` (halves swapped)
``model.backbone.ups.<i>.ops.ops_conv.ops.{0.ops.0.b,1}`` ``decoder.fuse_convs.<i>.{0.bias,1}``
``model.outputs.<i>.ops.0.ops.0.{w,b}``                   ``decoder.seg_heads.<i>.{w,b}``
``model.backbone.output.ops.0.ops.0.{w,b}``               dropped: UNetBase's own 3^3 output conv, computed but
                                                          never used (deep supervision and inference read
                                                          ``model.outputs``), 1,730 parameters
``model.ops.0.ops.0.ops.0.weight``, ``model.ops.0.ops.1`` ``stem.0.weight`` (reordered), ``stem.1``
``model.ops.<b+1>.block_1.ops.{0.ops.0,1}.*``             ``blocks.<b>.body.{0.0,0.1}.*``
``model.ops.<b+1>.block_2.ops.{0.ops.0,1}.*``             ``blocks.<b>.body.{1,2}.*``
``model.ops.<n+1>.ops.{0.ops.0,1}.*``                     ``head.{0,1}.*``
``staking_blocks.{w,b}``                                  ``StackingLayer.conv.{w,b}``
                                                          (:mod:`clips_nnunet.tmtv.stacking`)
========================================================  ==========================================

Two tensors are reordered, not only renamed: (1) the first convolution's input channels: TMTV-Net concatenates
its inputs as ``ct, suv, ct_lung, ct_soft, suv_hot`` (+ ``cascade.inference.output_found`` for the refiner;
``ModelUNetMulticlassDeepSupervision.features``), our windowing layer emits the windows in the order of
:data:`~clips_nnunet.tmtv.network.TMTV_WINDOWS`, then the cascade channel; (2) the decoder's fuse
convolution: TMTV-Net concatenates ``[skip, upsampled]`` (``BlockUpDeconvSkipConv``), ours ``[upsampled, skip]``.

Every check names the file and the tensor: a TMTV-Net tensor without a place in our network (extra), a tensor of
our network without a TMTV-Net source (missing) and a shape mismatch are :class:`~clips_nnunet.errors.DatasetError`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from clips_nnunet.errors import DatasetError
from clips_nnunet.tmtv.network import TMTV_WINDOWS, TMTVRefiner, TMTVUNet

#: TMTV-Net's input order (``ModelUNetMulticlassDeepSupervision.features`` with lung, soft and hot windows)
TMTV_NET_INPUT_ORDER: Tuple[str, ...] = ("ct", "suv", "ct_lung", "ct_soft", "suv_hot")
STAGE1, REFINER, ENSEMBLE = "stage1", "refiner", "ensemble"
#: file endings read from a models folder (TMTV-Net writes ``.model``)
MODEL_FILE_ENDINGS = (".model", ".pth", ".pt")
#: TMTV-Net tensors that have no counterpart because TMTV-Net never uses them (see module docstring)
UNUSED_STAGE1_KEYS = ("model.backbone.output.ops.0.ops.0.weight", "model.backbone.output.ops.0.ops.0.bias")
ENSEMBLE_PREFIX = "base_models."
STACKING_KEYS = ("staking_blocks.weight", "staking_blocks.bias")

_WB = ("weight", "bias")


@dataclass(frozen=True)
class TensorRule:
    """One TMTV-Net tensor -> one of ours; ``transform``: "" (copy), "inputs" (reorder the input channels of the
    first convolution), "skip_halves" (swap the two input halves of a decoder fuse convolution)."""
    source: str
    target: str
    transform: str = ""


@dataclass
class TMTVModelFile:
    """One released file: its name, kind (:data:`STAGE1`, :data:`REFINER`, :data:`ENSEMBLE`) and tensors."""
    name: str
    kind: str
    state_dict: Dict[str, torch.Tensor]


def stage1_rules(n_levels: int) -> List[TensorRule]:
    """Rules for TMTV-Net's stage-1 U-Net with ``n_levels`` stride-2 levels (TMTV-Net: 4)."""
    b = "model.backbone."
    rules = [TensorRule(f"{b}init_block.ops.0.ops.0.weight", "stem.0.weight", "inputs"),
             TensorRule(f"{b}init_block.ops.0.ops.0.bias", "stem.0.bias")]
    rules += [TensorRule(f"{b}init_block.ops.1.{p}", f"stem.1.{p}") for p in _WB]
    for i in range(n_levels):
        rules += [TensorRule(f"{b}downs.{i}.ops.ops.0.ops.0.{p}", f"encoder.{i}.0.{p}") for p in _WB]
        rules += [TensorRule(f"{b}downs.{i}.ops.ops.1.{p}", f"encoder.{i}.1.{p}") for p in _WB]
    rules += [TensorRule(f"{b}middle_block.ops.ops.0.ops.0.{p}", f"bottleneck.0.{p}") for p in _WB]
    rules += [TensorRule(f"{b}middle_block.ops.ops.1.{p}", f"bottleneck.1.{p}") for p in _WB]
    for i in range(n_levels):
        up = f"{b}ups.{i}.ops."
        rules += [TensorRule(f"{up}ops_deconv.ops.1.{p}", f"decoder.up_convs.{i}.0.{p}") for p in _WB]
        rules += [TensorRule(f"{up}ops_deconv.ops.2.{p}", f"decoder.up_convs.{i}.1.{p}") for p in _WB]
        rules += [TensorRule(f"{up}ops_conv.ops.0.ops.0.weight", f"decoder.fuse_convs.{i}.0.weight", "skip_halves"),
                  TensorRule(f"{up}ops_conv.ops.0.ops.0.bias", f"decoder.fuse_convs.{i}.0.bias")]
        rules += [TensorRule(f"{up}ops_conv.ops.1.{p}", f"decoder.fuse_convs.{i}.1.{p}") for p in _WB]
        rules += [TensorRule(f"model.outputs.{i}.ops.0.ops.0.{p}", f"decoder.seg_heads.{i}.{p}") for p in _WB]
    return rules


def refiner_rules(n_blocks: int) -> List[TensorRule]:
    """Rules for TMTV-Net's refiner with ``n_blocks`` residual blocks (TMTV-Net: 4); its convolutions have no bias."""
    rules = [TensorRule("model.ops.0.ops.0.ops.0.weight", "stem.0.weight", "inputs")]
    rules += [TensorRule(f"model.ops.0.ops.1.{p}", f"stem.1.{p}") for p in _WB]
    for k in range(n_blocks):
        src, dst = f"model.ops.{k + 1}.", f"blocks.{k}.body."
        rules += [TensorRule(f"{src}block_1.ops.0.ops.0.weight", f"{dst}0.0.weight"),
                  TensorRule(f"{src}block_2.ops.0.ops.0.weight", f"{dst}1.weight")]
        rules += [TensorRule(f"{src}block_1.ops.1.{p}", f"{dst}0.1.{p}") for p in _WB]
        rules += [TensorRule(f"{src}block_2.ops.1.{p}", f"{dst}2.{p}") for p in _WB]
    head = f"model.ops.{n_blocks + 1}."
    rules += [TensorRule(f"{head}ops.0.ops.0.weight", "head.0.weight")]
    rules += [TensorRule(f"{head}ops.1.{p}", f"head.1.{p}") for p in _WB]
    return rules


def input_permutation(windows: Sequence[Sequence], n_extra: int) -> List[int]:
    """For each input channel of our first convolution, the index of TMTV-Net's channel that feeds it.

    ``windows``: our windowing layer's ``(name, source, low, high)`` in order; they must be TMTV-Net's five windows
    (:data:`~clips_nnunet.tmtv.network.TMTV_WINDOWS`, any order). ``n_extra`` channels follow (the
    cascade's previous-stage channel), in the same place in both networks.
    """
    ours = {tuple(w) for w in windows}
    expected = {tuple(w) for w in TMTV_WINDOWS}
    if ours != expected or len(windows) != len(TMTV_WINDOWS):
        raise DatasetError(f"the network's input windows {[tuple(w) for w in windows]} are not TMTV-Net's "
                           f"{list(TMTV_WINDOWS)}; TMTV-Net's weights need its windows (use the plans of "
                           "clips-nnunet plan-tmtv, without custom windows)")
    perm = [TMTV_NET_INPUT_ORDER.index(str(w[0])) for w in windows]
    return perm + [len(perm) + k for k in range(n_extra)]


def _transform(tensor: torch.Tensor, rule: TensorRule, permutation: List[int]) -> torch.Tensor:
    if rule.transform == "inputs":
        if tensor.ndim != 5 or tensor.shape[1] != len(permutation):
            return tensor  # the shape check names it
        return tensor[:, permutation]
    if rule.transform == "skip_halves":
        if tensor.ndim != 5 or tensor.shape[1] % 2:
            return tensor
        half = tensor.shape[1] // 2
        return torch.cat([tensor[:, half:], tensor[:, :half]], dim=1)
    return tensor


def _network_kind(network: nn.Module) -> Tuple[str, List[TensorRule]]:
    if isinstance(network, TMTVUNet):
        mode = getattr(network.decoder, "upsample_mode", None)
        if mode != "trilinear":
            raise DatasetError(f"the trainer builds a decoder with {mode!r} upsampling; TMTV-Net's weights were "
                               "trained with trilinear upsampling (use nnUNetTrainerTMTV or a subclass that keeps "
                               "decoder_upsample_mode = 'trilinear')")
        return STAGE1, stage1_rules(len(network.encoder))
    if isinstance(network, TMTVRefiner):
        return REFINER, refiner_rules(len(network.blocks))
    raise DatasetError(f"the trainer builds a {type(network).__name__}, not TMTV-Net's TMTVUNet or TMTVRefiner; "
                       "import into the 3d_tmtv / 3d_tmtv_refine configurations of clips-nnunet plan-tmtv")


def _short(keys: Sequence[str], n: int = 4) -> str:
    keys = list(keys)
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def map_state_dict(source: Mapping[str, torch.Tensor], network: nn.Module, source_name: str) -> Dict[str, torch.Tensor]:
    """Our network's complete state dict from a TMTV-Net state dict (stage 1 or refiner), every tensor checked.

    Raises :class:`DatasetError` naming ``source_name`` and the tensors for missing, extra or mis-shaped tensors.
    The result holds float32 copies, keys and shapes exactly those of ``network.state_dict()``.
    """
    kind, rules = _network_kind(network)
    target = network.state_dict()
    n_windows = len(network.windowing.windows)
    permutation = input_permutation(network.windowing.windows,
                                    network.stem[0].in_channels - n_windows)
    unused = set(UNUSED_STAGE1_KEYS) if kind == STAGE1 else set()
    by_source = {r.source: r for r in rules}
    missing = [r.source for r in rules if r.source not in source]
    extra = [k for k in source if k not in by_source and k not in unused]
    uncovered = [k for k in target if k not in {r.target for r in rules}]
    what = "stage-1 U-Net" if kind == STAGE1 else "refiner"
    if uncovered:
        raise DatasetError(f"{source_name}: our {what} has tensors without a TMTV-Net counterpart "
                           f"({_short(uncovered)}): the trainer builds a network that differs from TMTV-Net's "
                           "(e.g. refiner_conv_bias / refiner_head_norm_act changed); use nnUNetTrainerTMTV")
    if missing:
        raise DatasetError(f"{source_name}: TMTV-Net {what} tensor(s) missing: {_short(missing)}; the file is not "
                           f"TMTV-Net's {what} (or a different variant of it)")
    if extra:
        raise DatasetError(f"{source_name}: tensor(s) with no place in our {what}: {_short(extra)}; the file holds a "
                           f"different TMTV-Net variant than the released one")
    mapped: Dict[str, torch.Tensor] = {}
    for rule in rules:
        tensor = source[rule.source]
        if not isinstance(tensor, torch.Tensor):
            raise DatasetError(f"{source_name}: {rule.source} is a {type(tensor).__name__}, not a tensor")
        value = _transform(tensor.detach().to("cpu", torch.float32), rule, permutation).contiguous()
        if tuple(value.shape) != tuple(target[rule.target].shape):
            raise DatasetError(f"{source_name}: {rule.source} has shape {tuple(tensor.shape)} but our "
                               f"{rule.target} needs {tuple(target[rule.target].shape)}; the plans or the number "
                               f"of classes/input channels differ from TMTV-Net's (2 classes; CT and PET)")
        if not torch.isfinite(value).all():
            raise DatasetError(f"{source_name}: {rule.source} holds non-finite values; the file is damaged")
        mapped[rule.target] = value.clone()
    return mapped


def split_ensemble(state_dict: Mapping[str, torch.Tensor], source_name: str
                   ) -> Tuple[List[Dict[str, torch.Tensor]], Dict[str, torch.Tensor]]:
    """TMTV-Net's ``ModelStacking`` state dict -> (one stage-1 state dict per base model, the stacking layer's
    ``{"weight", "bias"}``). Only the linear stacking (``linear_stacking_fn``) is supported."""
    models: Dict[int, Dict[str, torch.Tensor]] = {}
    other = []
    for key, value in state_dict.items():
        if key.startswith(ENSEMBLE_PREFIX):
            index, _, rest = key[len(ENSEMBLE_PREFIX):].partition(".")
            if not index.isdigit() or not rest:
                other.append(key)
                continue
            models.setdefault(int(index), {})[rest] = value
        elif key not in STACKING_KEYS:
            other.append(key)
    if other:
        raise DatasetError(f"{source_name}: tensor(s) outside TMTV-Net's linear stacking ensemble: {_short(other)} "
                           "(the residual-block stacking variant is not supported)")
    absent = [k for k in STACKING_KEYS if k not in state_dict]
    if absent:
        raise DatasetError(f"{source_name}: stacking tensor(s) missing: {', '.join(absent)}")
    if sorted(models) != list(range(len(models))) or len(models) < 2:
        raise DatasetError(f"{source_name}: the ensemble's base models are numbered {sorted(models)}; expected "
                           "0, 1, ... (at least 2)")
    weight, bias = (state_dict[k].detach().to("cpu", torch.float32) for k in STACKING_KEYS)
    if tuple(weight.shape) != (2, len(models), 1, 1, 1) or tuple(bias.shape) != (2,):
        raise DatasetError(f"{source_name}: staking_blocks.weight {tuple(weight.shape)} / bias {tuple(bias.shape)} "
                           f"do not fit {len(models)} base models and 2 classes (expected (2, {len(models)}, 1, 1, 1)"
                           " and (2,))")
    return [models[i] for i in range(len(models))], {"weight": weight.clone(), "bias": bias.clone()}


def classify(state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    """:data:`ENSEMBLE`, :data:`STAGE1`, :data:`REFINER` from the key names, or None."""
    keys = list(state_dict)
    if any(k.startswith(ENSEMBLE_PREFIX) for k in keys):
        return ENSEMBLE
    if any(k.startswith("model.backbone.") for k in keys):
        return STAGE1
    if any(k.startswith("model.ops.") for k in keys):
        return REFINER
    return None


def read_model_file(path: Path) -> TMTVModelFile:
    """Load one released file (a plain state dict, read with ``weights_only=True``) and classify it."""
    path = Path(path)
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated download, not a torch file, pickled objects: many exception types
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise DatasetError(f"{path.name} cannot be read as a PyTorch state dict ({type(exc).__name__}: {first}); "
                           "download the TMTV-Net models again") from None
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not data or not all(isinstance(k, str) for k in data):
        raise DatasetError(f"{path.name} holds a {type(data).__name__}, not a state dict of named tensors")
    kind = classify(data)
    if kind is None:
        raise DatasetError(f"{path.name} is not a TMTV-Net model: its keys ({_short(list(data), 3)}) are neither "
                           "the stage-1 U-Net (model.backbone.*), the refiner (model.ops.*) nor the ensemble "
                           "(base_models.*)")
    return TMTVModelFile(path.name, kind, dict(data))


def find_model_files(models_dir: Path) -> List[TMTVModelFile]:
    """Every released file in ``models_dir`` (:data:`MODEL_FILE_ENDINGS`), read and classified, sorted by name."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise DatasetError(f"models folder {models_dir} does not exist; give the folder holding TMTV-Net's "
                           "e_latest.model and r_latest.model")
    files = sorted(p for p in models_dir.iterdir() if p.is_file() and p.name.endswith(MODEL_FILE_ENDINGS)
                   and not p.name.startswith("."))
    if not files:
        raise DatasetError(f"{models_dir} holds no {'/'.join(MODEL_FILE_ENDINGS)} file; give the folder holding "
                           "TMTV-Net's e_latest.model and r_latest.model")
    return [read_model_file(p) for p in files]
