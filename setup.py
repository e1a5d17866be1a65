"""Build hook: setuptools needs setup() to carry cffi's ``cffi_modules``."""
from setuptools import setup

setup(cffi_modules=["wlproxy/c/build.py:ffibuilder"])
