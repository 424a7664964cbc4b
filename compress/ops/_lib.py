"""The one torch.library handle for namespace `compress`; every schema is defined through it."""
import torch

lib = torch.library.Library("compress", "FRAGMENT")
