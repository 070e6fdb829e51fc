"""Training objectives shared by the recipes (contrastive, CPSD, masked prediction)."""
