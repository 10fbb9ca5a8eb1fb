"""torch.hub entry points of lomar: one per LoMaR model (lomar.hub.hub_model_names()).

    import torch
    model = torch.hub.load("/path/to/lomar", "lomar_vit_base_patch16", source="local")
    model = torch.hub.load("/path/to/lomar", "vit_base_patch16", source="local",
                           checkpoint="output/finetune/checkpoint-best.pt")

``checkpoint``: a local file, ours (checkpoint-*.pt, model.safetensors) or the
authors' (converted); other keyword arguments are the model's. Without a build of
the C++ extension (as a fresh hub download is), the ops run on their pure-PyTorch
references. See docs/training.md, "torch.hub"."""

from lomar.hub import entry_points as _entry_points

dependencies = ["torch", "torchvision", "timm", "yaml", "safetensors", "numpy"]

globals().update(_entry_points())
