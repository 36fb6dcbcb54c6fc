"""The rsp version, recorded in every poison file and results file."""

__version__ = '0.1.0'
