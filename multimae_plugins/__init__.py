"""The built-in modality plugins of multimae (rgb, depth, semseg, normals).

They register through the `multimae` entry-point group and the public API only, like any third party.
"""
