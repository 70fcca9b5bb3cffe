"""The compiled modules: on the decision path, the basic features' sampled byte statistics
(src/dwcp_selector/_sample.c) and the single-row runtime of the dense networks (src/dwcp_selector/_dense.c);
in HDE's region coding, the content-defined anchors (src/dwcp_selector/_anchors.c).

Everything else about the package is declared in pyproject.toml; setuptools' own pyproject table for
extension modules is still experimental, so the extensions are declared here.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "dwcp_selector._sample",
            sources=["src/dwcp_selector/_sample.c"],
            # no contraction into fused multiply-adds: the row must round as Python's arithmetic does
            extra_compile_args=["-O2", "-ffp-contract=off"],
        ),
        Extension(
            "dwcp_selector._dense",
            sources=["src/dwcp_selector/_dense.c"],
            # -O3 vectorises the row updates; no -ffast-math: the sums stay in the order written
            extra_compile_args=["-O3"],
        ),
        Extension(
            "dwcp_selector._anchors",
            sources=["src/dwcp_selector/_anchors.c"],
            extra_compile_args=["-O3"],
        ),
    ]
)
