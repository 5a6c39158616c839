"""Build hook: ship ``clips_nnunet_autodiscovery.pth`` at the top of site-packages (metadata is in setup.cfg).

Python runs the ``.pth`` file's one import line at every interpreter start; it appends clips-nnunet's trainer shim to
``nnUNet_extTrainer`` (``clips_nnunet/nnunet_ext/__init__.py``), so ``nnUNetv2_train -tr <clips trainer>`` works
after ``pip install`` without setting anything. A wheel (``pip install .``) carries the file at its root, which
installers put into site-packages; an editable install (``pip install -e .``, PEP 660) is a wheel that setuptools
assembles from the ``install`` command's ``install_lib`` folder, so the file is placed there as well.
"""
import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "clips_nnunet_autodiscovery.pth"
HERE = os.path.dirname(os.path.abspath(__file__))


class build_py_with_pth(build_py):
    """``build_py`` that also copies :data:`PTH` to the root of what becomes site-packages."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            # setuptools' editable_wheel packs the folder it set as install_lib (the unpacked editable wheel)
            target = self.get_finalized_command("install").install_lib
        else:
            target = self.build_lib
        self.mkpath(target)
        self.copy_file(os.path.join(HERE, PTH), os.path.join(target, PTH), preserve_mode=0)

    def get_outputs(self, include_bytecode=1):
        outputs = super().get_outputs(include_bytecode)
        return outputs if getattr(self, "editable_mode", False) else [*outputs, os.path.join(self.build_lib, PTH)]


setup(cmdclass={"build_py": build_py_with_pth})
