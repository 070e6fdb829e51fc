"""Backbones: SimpleViT (Myna), ViT-1D (Emergent/MT2), Conformer/Branchformer (MuSE-LQ)."""
