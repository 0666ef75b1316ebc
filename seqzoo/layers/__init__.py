"""One nn.Module per token mixer, plus norms, MLPs and position encodings. Layers call kernels through the registry."""
