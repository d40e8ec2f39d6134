"""DW-FCOS with box refinement, EfficientNet-Lite0-FPN, synthetic data, CPU.

Differs from fcos_effnet_lite0_FPN.py (same data, schedule and seed) only in the method's
knobs: dw_fcos() in common/models/dense_methods.py. (Gradient clipping at norm 10, which
this small CPU setting needs for DW, is part of the shared schedule: common/cpu.py.)"""
from ..common.models.dense_methods import dw_fcos
from .fcos_effnet_lite0_FPN import dataloader, lr_multiplier, model, optimizer, train

dw_fcos(model, box_refine=True)
train.output_dir = "./output/synthetic/dw_fcos_refine_effnet_lite0_FPN"
