"""The one compiled module: the basic features' sampled byte statistics (see src/dwcp_selector/_sample.c).

Everything else about the package is declared in pyproject.toml; setuptools' own pyproject table for
extension modules is still experimental, so the extension is declared here.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "dwcp_selector._sample",
            sources=["src/dwcp_selector/_sample.c"],
            extra_compile_args=["-O2"],
        )
    ]
)
