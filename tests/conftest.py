import torch

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)  # tiny tensors: one thread avoids the OpenMP stalls seen on 2-core machines
