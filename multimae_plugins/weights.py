"""The official MultiMAE and MAE ViT-B weights (github.com/EPFL-VILAB/MultiMAE, release `pretrained-weights`),
by short name. Each file name ends in a prefix of its sha256 (torch.hub's convention), which the download
checks. The weights are licensed CC-BY-NC 4.0 by their authors; the code that loads them is multimae's."""

from __future__ import annotations

from multimae_cli import Weights, hookimpl

RELEASE = "https://github.com/EPFL-VILAB/MultiMAE/releases/download/pretrained-weights/"
LICENCE = "CC-BY-NC 4.0 (EPFL-VILAB; non-commercial use)"
OFFICIAL = {"licence": LICENCE, "licence_id": "cc-by-nc-4.0"}
BASE_HEADS = {"num_heads": 12, "decoder_num_heads": 8}  # ViT-B and its 256-dim decoders: not stored in the files


@hookimpl
def register_weights(register):
    register(Weights(
        name="multimae-b", url=RELEASE + "multimae-b_98_rgb+-depth-semseg_1600e_multivit-afff3f8c.pth",
        sha256="afff3f8c83f4e5a22f2edda21f00b2efeb077f3303c933dc4a133becf28c8345", size=394_406_915,
        format="multivit", overrides=BASE_HEADS, **OFFICIAL,
        description="MultiMAE ViT-B, rgb + depth + semseg, 1600 epochs on ImageNet, with its three decoders"))
    register(Weights(
        name="multimae-b-timm", url=RELEASE + "multimae-b_98_rgb+-depth-semseg_1600e_timm-bafa5499.pth",
        sha256="bafa5499", format="timm", overrides={"num_heads": 12}, **OFFICIAL,
        description="the MultiMAE ViT-B encoder (rgb) as a timm ViT"))
    register(Weights(
        name="mae-b", url=RELEASE + "mae-b_dec512d8b_1600e_multivit-c477195b.pth",
        sha256="c477195b", format="multivit", overrides={"num_heads": 12}, **OFFICIAL,
        description="MAE ViT-B (rgb only), 1600 epochs on ImageNet: the paper's baseline, MultiViT format"))
    register(Weights(
        name="mae-b-timm", url=RELEASE + "mae-b_dec512d8b_1600e_timm-f74f3a8d.pth",
        sha256="f74f3a8d", format="timm", overrides={"num_heads": 12}, **OFFICIAL,
        description="the MAE ViT-B baseline as a timm ViT"))
