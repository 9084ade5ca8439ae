"""MATPAC / MATPAC++ self-supervised pretraining of the MATPAC++ teacher's ViT (``ssondo pretrain matpac``):
masked latent prediction against an EMA target encoder plus unsupervised classification onto K
prototypes. The encoder it writes loads with ``ssondo extract --teacher matpac --checkpoint``."""
