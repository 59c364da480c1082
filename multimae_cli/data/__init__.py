"""Datasets (synthetic scenes, multi-modal folders), shared transforms and loaders."""
