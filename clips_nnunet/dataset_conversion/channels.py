"""Which input each channel of an nnU-Net dataset or model is: CT (in HU) or PET (in body-weight SUV).

The one definition that conversion (which writes ``channel_names``, :data:`CHANNEL_NAMES`), TMTV-Net's plans and
trainers (:mod:`clips_nnunet.tmtv.plans`) and prediction (:mod:`clips_nnunet.prediction.models`) share: a channel's
role is read from its ``dataset.json`` name, and a name that tells no role is refused in one line, never guessed.
"""
from __future__ import annotations

import re
from typing import Dict, List, Mapping, Tuple

from clips_nnunet.errors import DatasetError

__all__ = ["INPUT_ROLES", "ROLE_NAMES", "CHANNEL_NAMES", "channel_roles"]

#: The inputs clips-nnunet gives a model, in the order of the converter's files (``_0000`` CT in HU, ``_0001`` PET
#: in body-weight SUV)
INPUT_ROLES = ("CT", "PET")

#: What the converter writes into dataset.json: both channels named CT, so that nnU-Net applies its CT
#: normalisation (clip to the foreground percentiles, z-score) to the PET too, as nnU-Net's own autoPET conversion
#: does (docs/conversion.md); :func:`channel_roles` reads this pair as CT, then PET
CHANNEL_NAMES: Dict[str, str] = {"0": "CT", "1": "CT"}

#: Words of a ``dataset.json`` channel name that mark its role (case-insensitive; a name is split at anything but a
#: letter or digit, e.g. ``PET_SUV`` -> pet, suv): exactly one role must be named
ROLE_NAMES: Dict[str, Tuple[str, ...]] = {"CT": ("ct",), "PET": ("pet", "suv", "pt")}


def channel_roles(channel_names: Mapping[str, str], what: str, hint: str = "") -> List[str]:
    """Role (``CT`` or ``PET``) of each channel, in channel order (by the integer keys), from a ``dataset.json``'s
    ``channel_names``. The converter's ``{"0": "CT", "1": "CT"}`` (:data:`CHANNEL_NAMES`) is CT, then PET.

    Raises :class:`DatasetError`, one line naming ``what`` (a model or dataset) and its channel names, when a
    channel names no role or two roles, a role is named twice, or there is no channel; ``hint`` ends the message
    (how the caller's user gives the roles by hand)."""
    try:
        ordered = [str(channel_names[k]) for k in sorted(channel_names, key=lambda k: int(k))]
    except (TypeError, ValueError, AttributeError):
        raise DatasetError(f"{what}: dataset.json channel_names must map channel numbers to names, got "
                           f"{channel_names!r}") from None
    if not ordered:
        raise DatasetError(f"{what}: its dataset.json names no input channel")
    if [n.strip().casefold() for n in ordered] == [v.casefold() for v in CHANNEL_NAMES.values()]:
        return list(INPUT_ROLES)
    roles: List[str] = []
    for name in ordered:
        words = set(re.split(r"[^a-z0-9]+", name.casefold()))
        found = [role for role, names in ROLE_NAMES.items() if words & set(names)]
        if len(found) != 1 or found[0] in roles:
            raise DatasetError(
                f"{what}: its channel names {ordered} cannot be matched to CT and PET (clips-nnunet feeds CT in HU "
                f"and PET in SUV; a channel must be named CT, or PET/SUV/PT, each once){'; ' + hint if hint else ''}")
        roles += found
    return roles
