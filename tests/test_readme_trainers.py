"""The README's trainer table and nnU-Net's trainer discovery follow from one list: the classes that the discovery
shim ``clips_nnunet/nnunet_ext/clips_trainers.py`` exports.

Every name the table gives is a class the shim exports (``nnUNetv2_train -tr NAME`` finds it), and every exported
trainer is in the table: by its own name, as a variant in ``(+ Linear, ...)``, as a ``...Random``/``...Anti``
control of a listed curriculum, or as the ``nnUNetTrainerTMTVCL<Method>`` row.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_trainer_rows():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text[text.index("## Trainers"):]
    table = table[: table.index("\n\n", table.index("| trainer |"))]
    return [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]


def exported_trainers():
    import clips_nnunet.nnunet_ext.clips_trainers as shim

    return {name for name, obj in vars(shim).items() if name.startswith("nnUNetTrainer") and isinstance(obj, type)
            and name not in ("nnUNetTrainerCurriculum", "nnUNetTrainerCurriculumArm")}


def test_readme_names_only_trainers_the_shim_exports():
    exported = exported_trainers()
    named = set()
    for cell in readme_trainer_rows():
        for base in re.findall(r"`(nnUNetTrainer\w+)`", cell):
            named.add(base)
            for variant in re.findall(r"`(\w+)`", cell.split("(+", 1)[1]) if "(+" in cell else []:
                named.add(base + variant)
    assert named, "no trainer rows found in README.md"
    named.discard("nnUNetTrainerTMTVCL")  # the row written `nnUNetTrainerTMTVCL<Method>`
    assert not named - exported, f"README names trainers nnU-Net cannot find: {sorted(named - exported)}"


def test_every_exported_trainer_is_in_the_readme_table():
    rows = readme_trainer_rows()
    listed = set()
    for cell in rows:
        for base in re.findall(r"`(nnUNetTrainer\w+)`", cell):
            listed.add(base)
            for variant in re.findall(r"`(\w+)`", cell.split("(+", 1)[1]) if "(+" in cell else []:
                listed.add(base + variant)
    controls = any("`...Random`, `...Anti`" in cell for cell in rows)
    tmtv_cl = any("nnUNetTrainerTMTVCL<Method>" in cell for cell in rows)
    missing = []
    for name in sorted(exported_trainers()):
        if name in listed:
            continue
        if tmtv_cl and name.startswith("nnUNetTrainerTMTVCL"):
            continue
        stem = re.sub(r"(Random|Anti)$", "", name)
        if controls and stem != name and stem in listed:
            continue
        missing.append(name)
    assert not missing, f"trainers nnU-Net finds but the README's table does not list: {missing}"
