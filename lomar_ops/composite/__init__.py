"""Backends of lomar_ops made of PyTorch's own ops (no kernels of ours): window_attention
through scaled_dot_product_attention ("sdpa") and FlexAttention ("flex")."""
