"""Build hook: the wheel carries the top-level recipes/ and data/ as hkllm/_assets/{recipes,data}.

They stay at the top of the repository, where a reader looks for them; hkllm.assets finds them
there in a checkout and under hkllm/_assets once installed. Everything else is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
ASSETS = ("recipes", "data")          # hkllm/assets.py: NAMES


class build_py_with_assets(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return                    # an editable install reads them from the checkout
        for name in ASSETS:
            target = Path(self.build_lib) / "hkllm" / "_assets" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(HERE / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": build_py_with_assets})
