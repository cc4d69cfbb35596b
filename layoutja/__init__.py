"""layoutja: pretrain Japanese layout-aware language models on web pages."""

__version__ = "0.1.0"
